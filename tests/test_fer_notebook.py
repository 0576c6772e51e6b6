"""notebooks/fer.ipynb runs headless, top to bottom, on a tiny synthetic FER2013 CSV."""
from __future__ import annotations

import nbformat
from nbclient import NotebookClient

from synth_faces import write_fer2013_csv


def test_fer_notebook_runs(repo_root, tmp_path, monkeypatch):
    write_fer2013_csv(tmp_path / "data" / "fer2013" / "fer2013.csv", per_class=6)
    run_dir = tmp_path / "run"
    for name, value in {"FER_NOTEBOOK_DATA": str(tmp_path / "data"), "FER_NOTEBOOK_DATASET": "fer2013",
                        "FER_NOTEBOOK_EPOCHS": "2", "FER_NOTEBOOK_MAX_PER_CLASS": "0",
                        "FER_NOTEBOOK_FILTERS": "4,8", "FER_NOTEBOOK_OUTPUT": str(run_dir)}.items():
        monkeypatch.setenv(name, value)  # the kernel inherits the environment
    notebook = nbformat.read(repo_root / "notebooks" / "fer.ipynb", as_version=4)
    # Start in notebooks/ as a user would: the notebook must find the repository root itself.
    client = NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(repo_root / "notebooks")}})
    client.execute()
    text = "\n".join(out.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                     for out in cell.get("outputs", []) if out.get("output_type") == "stream")
    assert "loaded 42 faces" in text
    assert "duplicate images" in text
    assert "test faces misclassified" in text
    assert (run_dir / "model.keras").is_file() and (run_dir / "metrics.json").is_file()
    images = sum("image/png" in out.get("data", {}) for cell in notebook.cells if cell.cell_type == "code"
                 for out in cell.get("outputs", []))
    assert images >= 4  # balance, samples, curves, confusion matrix (+ mistakes)
