"""Test-time augmentation: a face model that averages its predictions over the face and its mirror image,
and optionally over crops moved a few pixels.

    python -m fer.tta --model-dir runs/fer_cnn --data-dir ../shared/data            # flips
    python -m fer.tta --model-dir runs/fer_tiny --data-dir ../shared/data --shift 2  # flips, or flips x 5 crops
    python -m fer.tta --model-dir runs/fer_refit --decided-by runs/fer_tiny --data-dir ../shared/data

Faces are (nearly) left-right symmetric and the models are trained with random flips and shifts, so
averaging views removes some of the noise of one view, for 2 (flips) or 10 (flips x 5 crops) times the
compute. The CLI scores the run's validation split plain and with each candidate and, only when the best
candidate beats the plain model on validation, replaces ``model.keras`` by it (the plain one is kept as
``model_plain.keras``) and rewrites the run's reports. The test split is reported, never used to decide.
A refit run has no validation images left: ``--decided-by`` applies the decision fer.tta made on the run its
recipe was chosen with.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from core.cli import quiet_tensorflow
from core.config import config_parser, parse_config
from core.datasets import DatasetNotFoundError
from core.io import read_json, read_model_config, save_model, write_json

log = logging.getLogger("fer.tta")

PLAIN_FILE = "model_plain.keras"


@dataclass
class TTAConfig:
    model_dir: str = "runs/fer"
    data_dir: str | None = None
    batch_size: int = 256
    min_gain: float = 0.0
    shift: int = 0
    decided_by: str = ""

    def validate(self) -> None:
        if not self.min_gain >= -1:  # accuracies differ by at most 1: -1 already keeps averaging in any case
            raise ValueError(f"--min-gain must be >= -1 (-1 keeps averaging whatever validation says), got "
                             f"{self.min_gain}")


HELP = {
    "batch_size": "faces per prediction batch (memory only; results do not change)",
    "model_dir": "a finished fer.train run folder (model.keras, config.json)",
    "data_dir": "the corpus the run was trained on (as for fer.train); default the run's own --data-dir",
    "min_gain": "keep test-time averaging only when it raises validation accuracy by more than this (-1 to 1; "
                "-1 keeps it whatever validation says)",
    "shift": "also try averaging 5 crops (centre, and moved this many pixels left/right/up/down) of both flips; "
             "0 = flips only",
    "decided_by": "apply the decision fer.tta made on this run folder instead of deciding on validation (for a "
                  "--refit run: the run its recipe was chosen with)",
}


DESCRIPTION = "Add test-time flip (and crop) averaging to a trained face model if validation says it helps."


def build_parser() -> argparse.ArgumentParser:
    return config_parser(TTAConfig, DESCRIPTION, HELP)


def apply(cfg: TTAConfig) -> dict[str, Any]:
    """Decide on validation; returns {"val_accuracy_plain", "val_accuracy_flip", ..., "kept", "shift"}."""
    import keras  # here, not at the top: `python -m fer.tta` must quiet TensorFlow before it loads

    from fer.models import is_flip_averaged, with_tta
    from fer.train import check_run_split, load_split, predict_labels, run_config

    run_dir = Path(cfg.model_dir)
    if not (run_dir / "model.keras").is_file() or not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a finished fer.train run (model.keras + config.json)")
    config = read_model_config(run_dir / "config.json", "fer")  # a speech run: say so before any data loads
    if cfg.decided_by and cfg.shift:
        raise ValueError("--shift comes from the --decided-by run's decision; leave it out")
    decision = earlier_decision(Path(cfg.decided_by), config) if cfg.decided_by else None
    if config.get("refit") and decision is None:
        raise ValueError(f"{run_dir} was refit on its validation images: nothing is left to decide on; apply the "
                         "decision made on the run its recipe was chosen with: --decided-by RUN")
    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    if is_flip_averaged(model) or config.get("flip_tta"):  # the same command again: done, as a finished run is
        print(f"{run_dir}/model.keras already averages flips: nothing to do ({PLAIN_FILE} is the plain model)")
        return config.get("flip_tta_validation", {})
    if cfg.shift < 0:
        raise ValueError(f"--shift must be >= 0 pixels, got {cfg.shift}")
    train_cfg = run_config(config, cfg.data_dir)
    data, splits = load_split(train_cfg)
    check_run_split(run_dir, data.sources, splits)  # before anything of the run is rewritten
    val, test = splits == "val", splits == "test"
    if decision is not None:
        return _apply_decision(run_dir, config, model, decision, cfg, train_cfg, data.labels[test],
                               data.images[test])
    val_pred_plain = predict_labels(model, data.images[val], cfg.batch_size)
    val_plain = float(np.mean(val_pred_plain == data.labels[val]))
    result: dict[str, Any] = {"val_accuracy_plain": val_plain}
    best = None  # (accuracy, shift, model, validation predictions)
    for shift in sorted({0, cfg.shift}):
        candidate = with_tta(model, shift)
        predicted = predict_labels(candidate, data.images[val], cfg.batch_size)
        accuracy = float(np.mean(predicted == data.labels[val]))
        result["val_accuracy_flip" if shift == 0 else f"val_accuracy_flip_shift{shift}"] = accuracy
        if best is None or accuracy > best[0]:
            best = (accuracy, shift, candidate, predicted)
    kept = best[0] > val_plain + cfg.min_gain
    result |= {"kept": bool(kept), "shift": best[1] if kept else None}
    scores = ", ".join(f"{k.removeprefix('val_accuracy_')} {v:.4f}" for k, v in result.items()
                       if k.startswith("val_accuracy_"))
    choice = (f"flips x 5 crops (shift {best[1]}) kept" if best[1] else "flips kept") if kept else "plain model kept"
    print(f"validation accuracy: {scores} -> {choice}")
    if kept:
        _, shift, tta_model, val_predicted = best
        _keep(run_dir, model, tta_model, shift, train_cfg, cfg.batch_size, (data.labels[test], data.images[test]),
              val=(data.labels[val], val_predicted))
    write_json(run_dir / "config.json", config | {"flip_tta": bool(kept), "tta_shift": result["shift"],
                                                  "flip_tta_validation": result})
    return result


def earlier_decision(decided_by: Path, config: dict) -> dict[str, Any]:
    """The fer.tta decision recorded in ``decided_by``'s config.json (a run of the same classes and input)."""
    path = decided_by / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"--decided-by {decided_by}: not a fer.train run folder (no config.json)")
    earlier = read_json(path)
    validation = earlier.get("flip_tta_validation")
    if validation is None:
        raise ValueError(f"--decided-by {decided_by}: fer.tta has not decided on that run yet (run fer.tta on it)")
    for key in ("class_names", "input_shape", "dataset"):
        if earlier.get(key) != config.get(key):
            raise ValueError(f"--decided-by {decided_by}: {key} differs from the run being averaged")
    return {"run": str(decided_by), **validation}


def _apply_decision(run_dir: Path, config: dict, model, decision: dict[str, Any], cfg: TTAConfig, train_cfg,
                    test_labels: np.ndarray, test_images: np.ndarray) -> dict[str, Any]:
    from fer.models import with_tta

    kept, shift = bool(decision["kept"]), decision.get("shift") or 0
    print(f"decided on {decision['run']}: " + (f"flips x 5 crops (shift {shift})" if shift else "flips" if kept
                                               else "plain model") + " kept")
    if kept:
        _keep(run_dir, model, with_tta(model, shift), shift, train_cfg, cfg.batch_size, (test_labels, test_images))
    result = {**decision, "kept": kept, "shift": shift if kept else None}
    write_json(run_dir / "config.json", config | {"flip_tta": kept, "tta_shift": result["shift"],
                                                  "flip_tta_validation": result})
    return result


def _keep(run_dir: Path, model, tta_model, shift: int, train_cfg, batch_size: int,
          test: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """Make ``tta_model`` the run's model (the plain one kept beside it) and rewrite the reports for it:
    validation from its already computed (labels, predictions), the test split predicted here."""
    from core.reports import format_summary, write_report
    from fer.train import predict_labels

    save_model(model, run_dir / PLAIN_FILE)
    save_model(tta_model, run_dir / "model.keras")
    extra = {"dataset": train_cfg.dataset, "model": train_cfg.model, "params": int(model.count_params()),
             "flip_tta": True, "tta_shift": shift}
    if val is not None:
        write_report(run_dir, *val, extra=extra | {"split": "val"}, prefix="val_")
    labels, images = test
    if len(labels):
        metrics = write_report(run_dir, labels, predict_labels(tta_model, images, batch_size),
                               extra=extra | {"split": "test"})
        print(f"test (test-time averaged): {format_summary(metrics)}")


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = parse_config(TTAConfig, argv, DESCRIPTION, HELP)
    from fer.data import FaceDataError

    try:
        apply(cfg)
    except (DatasetNotFoundError, FaceDataError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    quiet_tensorflow()
    sys.exit(main())
