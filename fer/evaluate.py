"""Score a trained face model on a corpus folder or CSV and write the same report as training.

    python -m fer.evaluate --model-dir runs/fer_cnn --dataset jaffe --data-dir ../shared/data --output runs/eval_jaffe
    python -m fer.evaluate --model-dir runs/fer_cnn --dataset fer2013 --data-dir fer2013.csv --split test --output out

``--split all`` (default) scores every usable item, e.g. for cross-dataset accuracy; ``train`` / ``val`` /
``test`` re-create the split with the model's own split settings (config.json) for the same corpus.
Writes metrics.json, confusion_matrix.png, data_report.json and predictions.csv to ``--output``.
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from core.cli import progress, quiet_tensorflow, training_run_problem
from core.config import config_parser, parse_config
from core.datasets import DatasetNotFoundError
from core.io import atomic_write, write_json
from core.labels import EMOTIONS

log = logging.getLogger("fer.evaluate")

SPLIT_CHOICES = ("all", "train", "val", "test")


@dataclass
class EvaluateConfig:
    model_dir: str | None = None
    dataset: str = "fer2013"
    data_dir: str | None = None
    output: str = "runs/fer_eval"
    split: str = "all"
    detector: str = "blazeface"
    max_per_class: int = 0
    batch_size: int = 256
    slug: str | None = None

    def validate(self) -> None:
        """Choices no evaluation can use, refused before the model or any data loads."""
        from fer.data import check_dataset
        from fer.faces import check_loader_detector

        check_dataset(self.dataset)
        if self.split not in SPLIT_CHOICES:
            raise ValueError(f"unknown --split {self.split!r}; choose one of {', '.join(SPLIT_CHOICES)}")
        check_loader_detector(self.detector)
        problem = training_run_problem(self.output)
        if problem:
            raise ValueError(problem)


HELP = {
    "batch_size": "faces per prediction batch (memory only; results do not change)",
    "model_dir": "trained run folder with model.keras (default saved_models/fer)",
    "dataset": "fer2013, jaffe or ckplus",
    "data_dir": "corpus folder, a root holding it, or a fer2013.csv file; default $EMOTION_DATA_DIR, else a "
                "kagglehub download",
    "output": "folder for metrics.json, confusion_matrix.png, data_report.json, predictions.csv",
    "split": "all, or train / val / test as split by the model's training settings",
    "detector": "jaffe: face detector used to crop the photos (blazeface, blazeface-full, haar, mtcnn, none)",
    "max_per_class": "use at most this many images per class; 0 = all (--split train/val/test on the model's own "
                     "dataset uses the run's own setting, to re-create its split)",
}


DESCRIPTION = "Evaluate a facial expression model on a corpus."


def build_parser() -> argparse.ArgumentParser:
    return config_parser(EvaluateConfig, DESCRIPTION, HELP)


def evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    import pandas as pd

    from core.reports import format_summary, write_report
    from fer.data import load_corpus, split_faceset
    from fer.predict import FERPredictor
    from fer.train import held_out_split, refit_on_every_face

    cfg.validate()  # also when called without the CLI
    predictor = FERPredictor(cfg.model_dir)
    train_cfg = predictor.config
    if cfg.split == "val" and train_cfg.get("refit") and train_cfg.get("dataset") == cfg.dataset:
        raise ValueError(f"{predictor.model_dir} was refit on its validation images: --split val is training data")
    if cfg.split != "all" and train_cfg.get("dataset") == cfg.dataset and refit_on_every_face(train_cfg):
        raise ValueError(f"{predictor.model_dir} was trained on every {cfg.dataset} face (--refit true "
                         f"--test-fraction 0): none is held out; score it on a corpus it did not see "
                         f"(--dataset ckplus or --dataset jaffe)")
    seed = int(train_cfg.get("seed", 42))
    if cfg.split != "all" and train_cfg.get("dataset") == cfg.dataset:
        # The run's own corpus: its split exactly as training made it, as fer.ensemble and fer.export re-create it.
        data, splits = held_out_split(train_cfg, predictor.model_dir, data_dir=cfg.data_dir,
                                      image_size=predictor.face_size, slug=cfg.slug or train_cfg.get("slug"))
        data = data.subset(splits == cfg.split)
        if not len(data):
            raise ValueError(f"{cfg.dataset}: the {cfg.split} split is empty")
    else:
        data = load_corpus(cfg.dataset, cfg.data_dir, size=predictor.face_size, max_per_class=cfg.max_per_class,
                           seed=seed, detector=cfg.detector, slug=cfg.slug)
    if cfg.split == "all" and train_cfg.get("dataset") == cfg.dataset:
        log.warning("--split all: these are the %s images the model was trained on, with its held-out ones; "
                    "--split test scores the held-out test images alone", cfg.dataset)
    if cfg.split != "all" and train_cfg.get("dataset") != cfg.dataset:
        if train_cfg.get("dataset") is not None:
            log.warning("the model was trained on %s: the %s split of %s is not its held-out data",
                        train_cfg.get("dataset"), cfg.split, cfg.dataset)
        splits = split_faceset(data, float(train_cfg.get("val_fraction", 0.1)),
                               float(train_cfg.get("test_fraction", 0.2)), seed,
                               [s for s in str(train_cfg.get("val_subjects") or "").split(",") if s],
                               [s for s in str(train_cfg.get("test_subjects") or "").split(",") if s])
        data = data.subset(splits == cfg.split)
        if not len(data):
            raise ValueError(f"{cfg.dataset}: the {cfg.split} split is empty")
    starts = range(0, len(data), cfg.batch_size)
    probs = np.concatenate([predictor.predict_crops(data.images[i:i + cfg.batch_size])
                            for i in progress(starts, desc="predict", unit="batch")])
    predicted = probs.argmax(axis=1)
    out_dir = Path(cfg.output)
    extra = {"split": cfg.split, "dataset": cfg.dataset, "model_dir": str(predictor.model_dir),
             "trained_on": train_cfg.get("dataset")}
    metrics = write_report(out_dir, data.labels, predicted, extra=extra)
    write_json(out_dir / "data_report.json", data.report())
    frame = pd.DataFrame({"file": data.sources, "label": [EMOTIONS[i] for i in data.labels],
                          "predicted": [predictor.class_names[i] for i in predicted],
                          "confidence": probs.max(axis=1).round(4)})
    atomic_write(out_dir / "predictions.csv", lambda tmp: frame.to_csv(tmp, index=False))
    print(f"{cfg.dataset} ({cfg.split}): {format_summary(metrics)}")
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = parse_config(EvaluateConfig, argv, DESCRIPTION, HELP)
    from fer.data import FaceDataError
    from fer.predict import ModelNotFoundError

    try:
        evaluate(cfg)
    except (DatasetNotFoundError, FaceDataError, ModelNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    quiet_tensorflow()
    sys.exit(main())
