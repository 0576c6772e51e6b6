"""Metrics and the run report every training / evaluation run writes next to its model."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: reports are written on servers and in CI
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import (
    ConfusionMatrixDisplay,
    accuracy_score,
    classification_report,
    confusion_matrix,
    precision_recall_fscore_support,
)

from core.io import atomic_write, write_json
from core.labels import EMOTIONS


def compute_metrics(y_true: Sequence[int], y_pred: Sequence[int],
                    class_names: Sequence[str] = EMOTIONS) -> dict[str, Any]:
    """Accuracy; precision / recall / F1 macro, weighted and micro; per-class report; confusion matrix."""
    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    labels = list(range(len(class_names)))
    metrics: dict[str, Any] = {"accuracy": float(accuracy_score(y_true, y_pred)), "n": int(len(y_true))}
    for avg in ("macro", "weighted", "micro"):
        # Macro over the classes present in y_true: an absent class has no recall to average.
        present = sorted(set(y_true.tolist())) if avg == "macro" else labels
        p, r, f, _ = precision_recall_fscore_support(y_true, y_pred, labels=present, average=avg, zero_division=0)
        metrics[f"precision_{avg}"] = float(p)
        metrics[f"recall_{avg}"] = float(r)
        metrics[f"f1_{avg}"] = float(f)
    metrics["per_class"] = classification_report(
        y_true, y_pred, labels=labels, target_names=list(class_names), output_dict=True, zero_division=0)
    metrics["confusion_matrix"] = confusion_matrix(y_true, y_pred, labels=labels).tolist()
    metrics["class_names"] = list(class_names)
    return metrics


def plot_confusion_matrix(cm: Sequence[Sequence[int]], path: str | os.PathLike,
                          class_names: Sequence[str] = EMOTIONS, title: str = "") -> Path:
    fig, ax = plt.subplots(figsize=(7, 6))
    ConfusionMatrixDisplay(np.asarray(cm), display_labels=list(class_names)).plot(
        ax=ax, cmap="Blues", colorbar=False, xticks_rotation=45)
    ax.set_title(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return Path(path)


def plot_history(history: Mapping[str, Sequence[float]], out_dir: str | os.PathLike) -> list[Path]:
    """One PNG per metric (loss, accuracy, ...), train and validation curves together."""
    out_dir = Path(out_dir)
    written = []
    for name in sorted(k for k in history if not k.startswith("val_") and k not in ("learning_rate", "lr", "epoch")):
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(history[name], label=f"train {name}")
        if f"val_{name}" in history:
            ax.plot(history[f"val_{name}"], label=f"validation {name}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.legend()
        fig.tight_layout()
        path = out_dir / f"curve_{name}.png"
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
        plt.close(fig)
        written.append(path)
    return written


def write_report(out_dir: str | os.PathLike, y_true: Sequence[int], y_pred: Sequence[int],
                 class_names: Sequence[str] = EMOTIONS, extra: Mapping[str, Any] | None = None,
                 prefix: str = "") -> dict[str, Any]:
    """Write ``{prefix}metrics.json`` and ``{prefix}confusion_matrix.png``; return the metrics."""
    out_dir = Path(out_dir)
    metrics = compute_metrics(y_true, y_pred, class_names)
    if extra:
        metrics.update(extra)
    write_json(out_dir / f"{prefix}metrics.json", metrics)
    title = f"{extra.get('split', '')} accuracy {metrics['accuracy']:.3f}" if extra else ""
    plot_confusion_matrix(metrics["confusion_matrix"], out_dir / f"{prefix}confusion_matrix.png", class_names, title)
    return metrics


def format_summary(metrics: Mapping[str, Any]) -> str:
    if not metrics.get("n"):
        return "no held-out items (refit on every item)"
    return (f"accuracy {metrics['accuracy']:.4f}  macro-F1 {metrics['f1_macro']:.4f}  "
            f"weighted-F1 {metrics['f1_weighted']:.4f}  (n={metrics['n']})")
