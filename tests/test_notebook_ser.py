import nbformat
from nbclient import NotebookClient

from core.io import read_json
from tests import synth_audio as synth


def test_ser_notebook_runs_headless_on_synthetic_corpus(tmp_path, repo_root, monkeypatch):
    synth.make_ravdess(tmp_path / "data", actors=5)
    out = tmp_path / "run"
    monkeypatch.setenv("SER_NOTEBOOK_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("SER_NOTEBOOK_CORPORA", "ravdess")
    monkeypatch.setenv("SER_NOTEBOOK_EPOCHS", "2")
    monkeypatch.setenv("SER_NOTEBOOK_SECONDS", "1.0")
    monkeypatch.setenv("SER_NOTEBOOK_OUTPUT", str(out))
    monkeypatch.setenv("EMOTION_CACHE_DIR", str(tmp_path / "cache"))
    nb = nbformat.read(repo_root / "notebooks" / "ser.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(repo_root / "notebooks")}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    assert read_json(out / "metrics.json")["n"] > 0
    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
