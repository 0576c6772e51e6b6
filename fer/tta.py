"""Test-time flip averaging: a face model that averages its predictions for the face and its mirror image.

    python -m fer.tta --model-dir runs/fer_cnn --data-dir ../shared/data

Faces are (nearly) left-right symmetric and the models are trained with random flips, so averaging both
views removes some of the noise of one view for twice the compute. The CLI scores the run's validation split
with and without flipping and, only when flipping is better on validation, replaces ``model.keras`` by the
averaging model (the plain one is kept as ``model_plain.keras``) and rewrites the run's reports. The test
split is reported, never used to decide.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import keras
import numpy as np

from core.config import parse_config
from core.datasets import DatasetNotFoundError
from core.io import read_json, save_model, write_json
from fer.models import is_flip_averaged, with_flip_average

log = logging.getLogger("fer.tta")

PLAIN_FILE = "model_plain.keras"


@dataclass
class TTAConfig:
    model_dir: str = "runs/fer"
    data_dir: str | None = None
    batch_size: int = 256
    min_gain: float = 0.0


HELP = {
    "model_dir": "a finished fer.train run folder (model.keras, config.json)",
    "data_dir": "the corpus the run was trained on (as for fer.train)",
    "min_gain": "keep flip averaging only when it raises validation accuracy by more than this",
}


def apply(cfg: TTAConfig) -> dict[str, Any]:
    """Decide on validation; returns {"val_plain", "val_flip", "kept", ...}."""
    from core.reports import format_summary, write_report
    from fer.train import load_split, predict_labels, run_config

    run_dir = Path(cfg.model_dir)
    if not (run_dir / "model.keras").is_file() or not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a finished fer.train run (model.keras + config.json)")
    config = read_json(run_dir / "config.json")
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    if is_flip_averaged(model) or config.get("flip_tta"):
        raise ValueError(f"{run_dir}/model.keras already averages flips")
    train_cfg = run_config(config, cfg.data_dir)
    data, splits = load_split(train_cfg)
    val, test = splits == "val", splits == "test"
    flip_model = with_flip_average(model)
    val_pred_plain = predict_labels(model, data.images[val], cfg.batch_size)
    val_pred_flip = predict_labels(flip_model, data.images[val], cfg.batch_size)
    val_plain = float(np.mean(val_pred_plain == data.labels[val]))
    val_flip = float(np.mean(val_pred_flip == data.labels[val]))
    kept = val_flip > val_plain + cfg.min_gain
    result = {"val_accuracy_plain": val_plain, "val_accuracy_flip": val_flip, "kept": bool(kept)}
    print(f"validation accuracy: plain {val_plain:.4f}, flip-averaged {val_flip:.4f} -> "
          f"{'flip averaging kept' if kept else 'plain model kept'}")
    if kept:
        save_model(model, run_dir / PLAIN_FILE)
        save_model(flip_model, run_dir / "model.keras")
        extra = {"dataset": train_cfg.dataset, "model": train_cfg.model, "params": int(model.count_params()),
                 "flip_tta": True}
        write_report(run_dir, data.labels[val], val_pred_flip, extra=extra | {"split": "val"}, prefix="val_")
        if test.any():
            predicted = predict_labels(flip_model, data.images[test], cfg.batch_size)
            metrics = write_report(run_dir, data.labels[test], predicted, extra=extra | {"split": "test"})
            print(f"test (flip-averaged): {format_summary(metrics)}")
    write_json(run_dir / "config.json", config | {"flip_tta": bool(kept), "flip_tta_validation": result})
    return result


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = parse_config(TTAConfig, argv, "Add test-time flip averaging to a trained face model if validation "
                                        "says it helps.", HELP)
    from fer.data import FaceDataError

    try:
        apply(cfg)
    except (DatasetNotFoundError, FaceDataError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
