"""Speaker-independent k-fold cross-validation: every speaker of one corpus is a test speaker exactly once.

    python -m ser.crossval --folds 5 --model cnn --corpora ravdess,tess --data-dir ../shared/data \
        --epochs 30 --augment 3 --output runs/ser_cv

Three held-out actors give an accuracy that moves by +-7 points with the choice of actors. Rotating the test
speakers over the whole corpus scores every clip once, with a model that never heard its speaker. Each fold is
an ordinary ``ser.train`` run (``fold<k>/``) with that fold's speakers as ``--test-speakers`` and every other
speaker (and the small corpora such as TESS) in training; with no validation speakers left, each fold runs
``--refit`` (fixed ``--epochs``, cosine schedule, last weights). The output folder gets the pooled report
(``metrics.json``, ``confusion_matrix.png``) and ``crossval.json`` (folds, speakers, per-fold scores, mean and
standard deviation). Re-running the command skips finished folds and resumes an interrupted one.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from core.config import parse_config
from core.io import read_json, write_json
from core.reports import format_summary, write_report
from ser.corpora import speaker_folds
from ser.train import ADVANCED
from ser.train import HELP as TRAIN_HELP
from ser.train import MODEL_RECIPES, TrainConfig, with_model_recipe

log = logging.getLogger("ser.crossval")


@dataclass
class CrossValConfig(TrainConfig):
    folds: int = 5
    fold_corpus: str = "ravdess"   # whose speakers rotate through the test fold
    output: str = "runs/ser_cv"
    schedule: str = "cosine"
    fold: int = -1                 # run only this fold (0-based), e.g. one per machine; -1 = all, then pool

    def validate(self) -> None:
        super().validate()
        if self.fold < -1:
            raise ValueError(f"--fold must be -1 (all folds) or a fold number >= 0, got {self.fold}")


HELP = TRAIN_HELP | {
    "folds": "number of folds; the fold corpus's speakers are split into this many groups of neighbours",
    "fold_corpus": "the corpus whose speakers take turns as test speakers (the others always train)",
    "output": "folder for fold<k>/ runs and the pooled report; re-running resumes",
    "fold": "run only this fold (0-based) and stop, e.g. folds in parallel on several machines sharing --output; "
            "a later run without --fold trains what is missing and pools",
}


def fold_configs(cfg: CrossValConfig) -> list[tuple[list[str], TrainConfig]]:
    """The test speakers and the ser.train settings of each fold."""
    from ser.corpora import load_clips, parse_corpus_list
    from ser.train import _slugs

    if cfg.schedule != "cosine":
        raise ValueError("cross-validation folds have no validation split: use --schedule cosine")
    if cfg.val_speakers or cfg.test_speakers:
        raise ValueError("--val-speakers / --test-speakers are chosen by the folds; leave them empty")
    corpora = parse_corpus_list(cfg.corpora)
    if cfg.fold_corpus not in corpora:
        raise ValueError(f"--fold-corpus {cfg.fold_corpus!r} is not among --corpora {cfg.corpora!r}")
    clips, _ = load_clips(corpora, cfg.data_dir, _slugs(cfg.slugs))
    speakers = [c.speaker for c in clips if c.corpus == cfg.fold_corpus]
    if not speakers:
        raise ValueError(f"no {cfg.fold_corpus} clips found")
    train_fields = {f.name for f in fields(TrainConfig)}
    base = TrainConfig(**{k: v for k, v in asdict(cfg).items() if k in train_fields})
    return [(group, replace(base, split="speaker", test_speakers=",".join(group), refit=True,
                            output=str(Path(cfg.output) / f"fold{k}")))
            for k, group in enumerate(speaker_folds(speakers, cfg.folds))]


def pooled_predictions(fold_metrics: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    """(y_true, y_pred) of every test clip of every fold, rebuilt from the folds' confusion matrices."""
    true, pred = [], []
    for metrics in fold_metrics:
        cm = np.asarray(metrics["confusion_matrix"], dtype=int)
        rows, cols = np.nonzero(cm)
        counts = cm[rows, cols]
        true.append(np.repeat(rows, counts))
        pred.append(np.repeat(cols, counts))
    return np.concatenate(true), np.concatenate(pred)


def run(cfg: CrossValConfig) -> dict[str, Any]:
    from core.training import check_resume, record_run_settings
    from ser.train import run as train_run

    out = Path(cfg.output)
    plan = fold_configs(cfg)
    if cfg.fold >= len(plan):
        raise ValueError(f"--fold {cfg.fold} does not exist: there are {len(plan)} folds (0-based)")
    # Which fold a machine runs is not a setting; --folds 3 on a 2-fold folder is refused by name (it was refused
    # by a fold's own check, naming --test-speakers).
    settings = {k: v for k, v in asdict(cfg).items() if k != "fold"}
    check_resume(out, "ser.crossval", settings)
    out.mkdir(parents=True, exist_ok=True)  # after the checks: a refused run leaves no folder
    record_run_settings(out, "ser.crossval", settings)
    fold_metrics = []
    for k, (speakers, fold_cfg) in enumerate(plan):
        if cfg.fold >= 0 and k != cfg.fold:
            continue
        done = Path(fold_cfg.output) / "metrics.json"
        if done.exists() and read_json(Path(fold_cfg.output) / "config.json")["train"] == asdict(fold_cfg):
            log.info("fold%d (%d of %d) already finished: %s", k, k + 1, len(plan), done)
        else:
            log.info("fold%d (%d of %d): test speakers %s", k, k + 1, len(plan), ", ".join(speakers))
            train_run(fold_cfg)
        fold_metrics.append(read_json(done))
    if cfg.fold >= 0:
        print(f"fold {cfg.fold}: {format_summary(fold_metrics[0])}; run without --fold to pool all folds")
        return {"fold": cfg.fold, "metrics": fold_metrics[0]}
    y_true, y_pred = pooled_predictions(fold_metrics)
    pooled = write_report(out, y_true, y_pred, extra={
        "split": f"speaker-independent {len(plan)}-fold cross-validation over {cfg.fold_corpus} speakers (pooled)",
        "model": cfg.model, "corpora": cfg.corpora})
    accuracies = [m["accuracy"] for m in fold_metrics]
    f1s = [m["f1_macro"] for m in fold_metrics]
    summary = {
        "folds": [{"test_speakers": s, "run": c.output, "n": m["n"], "accuracy": m["accuracy"],
                   "f1_macro": m["f1_macro"]} for (s, c), m in zip(plan, fold_metrics)],
        "pooled": {k: pooled[k] for k in ("accuracy", "f1_macro", "f1_weighted", "n")},
        "fold_accuracy_mean": float(np.mean(accuracies)), "fold_accuracy_std": float(np.std(accuracies)),
        "fold_f1_macro_mean": float(np.mean(f1s)), "fold_f1_macro_std": float(np.std(f1s)),
        "config": asdict(cfg) | {"refit": True},  # every fold is a refit run: no validation speakers are left
    }
    write_json(out / "crossval.json", summary)
    print(f"pooled over {len(plan)} folds: {format_summary(pooled)}; per fold accuracy "
          f"{summary['fold_accuracy_mean']:.4f} +- {summary['fold_accuracy_std']:.4f}")
    return summary


DESCRIPTION = "Speaker-independent k-fold cross-validation of a SER recipe."


def build_parser():
    from core.config import config_parser

    return config_parser(CrossValConfig, DESCRIPTION, HELP, advanced=ADVANCED, recipes=MODEL_RECIPES)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parsed = parse_config(CrossValConfig, argv, DESCRIPTION, HELP, advanced=ADVANCED, recipes=MODEL_RECIPES)
    cfg = with_model_recipe(parsed, argv)
    try:
        run(cfg)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from core.cli import quiet_tensorflow, resumable_main

    quiet_tensorflow()
    sys.exit(resumable_main(main))
