"""Write ``MODEL_CARD.md`` for a shipped model from its run folder's own config and metrics."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

from core.io import atomic_write, read_json


def _parameters(model_dir: Path, config: Mapping) -> int:
    if config.get("parameters"):
        return int(config["parameters"])
    import keras

    return int(keras.models.load_model(model_dir / "model.keras", compile=False).count_params())


def write_model_card(model_dir: str | os.PathLike, title: str, data: str, split: str, licence: str,
                     commands: Sequence[str], extra_rows: Mapping[str, str] | None = None,
                     notes: str = "", task: str = "") -> Path:
    model_dir = Path(model_dir)
    config = read_json(model_dir / "config.json")
    metrics = read_json(model_dir / "metrics.json")
    size_kb = sum(p.stat().st_size for p in model_dir.glob("model.keras")) / 1024
    rows = {
        "task": config.get("task", task),
        "architecture": config.get("model", ""),
        "classes": ", ".join(config["class_names"]),
        "input": str(config.get("input_shape")),
        "parameters": f"{_parameters(model_dir, config):,}",
        "file size (model.keras)": f"{size_kb:.0f} KB",
        "training data": data,
        "split": split,
        f"test accuracy ({split})": f"{metrics['accuracy']:.3f} (n = {metrics['n']})",
        "test macro-F1": f"{metrics['f1_macro']:.3f}",
        "test weighted-F1": f"{metrics['f1_weighted']:.3f}",
        **(extra_rows or {}),
        "licence of the training data": licence,
    }
    per_class = metrics["per_class"]
    lines = [f"# {title}", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows.items()]
    lines += ["", "## Per-class results (test split)", "", "| class | precision | recall | F1 | support |",
              "|---|---|---|---|---|"]
    for name in config["class_names"]:
        c = per_class[name]
        lines.append(f"| {name} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1-score']:.3f} | {c['support']:.0f} |")
    lines += ["", "![confusion matrix](confusion_matrix.png)", "", "## Reproduce", "", "```bash", *commands, "```"]
    if notes:
        lines += ["", "## Notes", "", notes]
    path = model_dir / "MODEL_CARD.md"
    atomic_write(path, lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
    return path
