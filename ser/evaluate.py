"""Evaluate a trained model on a data folder: ``python -m ser.evaluate --model-dir DIR --data-dir PATH``.

Writes metrics.json, confusion_matrix.png and predictions.csv to ``--output``.
``--split test`` scores only the files the run held out as its test split (from its split.csv).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from core.cli import (CLIParser, add_verbose_flag, module_prog, quiet_tensorflow, refuse_file_output,
                      refuse_training_run)
from core.io import write_json
from core.labels import EMOTION_INDEX
from core.reports import format_summary, write_report


FALLBACK_CORPORA = "ravdess,tess"  # a model folder whose config.json does not name its corpora


def build_parser() -> argparse.ArgumentParser:
    parser = CLIParser(prog=module_prog(__name__),
                       description="Evaluate a speech emotion model on labelled corpora.")
    parser.add_argument("--model-dir", default=None, help="trained run folder (default: saved_models/ser)")
    parser.add_argument("--corpora", default=None,
                        help="comma-separated: ravdess, crema_d, tess, savee (default: the corpora the model was "
                             f"trained on, from its config.json; else {FALLBACK_CORPORA})")
    parser.add_argument("--data-dir", default=None, help="folder holding the corpora (or one corpus); "
                        "default $EMOTION_DATA_DIR, else kagglehub")
    parser.add_argument("--split", default="all", choices=["all", "train", "val", "test"],
                        help="all files, or one split of the model's own split.csv")
    parser.add_argument("--output", default="runs/ser-eval",
                        help="folder for metrics.json, confusion_matrix.png, data_report.json, predictions.csv")
    parser.add_argument("--n-jobs", type=int, default=-1,
                        help="worker processes for feature extraction (-1 = all cores)")
    add_verbose_flag(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import pandas as pd

    from ser.corpora import clip_key, load_clips, parse_corpus_list
    from ser.predict import SERPredictor

    parser = build_parser()
    args = parser.parse_args(argv)
    refuse_file_output(parser, args.output)  # before the model and data load
    refuse_training_run(parser, args.output)
    if args.n_jobs == 0 or args.n_jobs < -1:
        parser.error(f"--n-jobs must be -1 (all cores) or a positive number of processes, got {args.n_jobs}")
    given = args.corpora is not None
    try:
        if given:
            parse_corpus_list(args.corpora)  # a typo is refused before the model loads
        predictor = SERPredictor(args.model_dir)
        # By default the model is scored on what it was trained on (its test speakers are among them).
        args.corpora = args.corpora or predictor.config.get("train", {}).get("corpora") or FALLBACK_CORPORA
        clips, reports = load_clips(parse_corpus_list(args.corpora), args.data_dir)
    except (FileNotFoundError, ValueError) as exc:
        hint = "" if given or args.corpora is None else f" (or --corpora: by default the model's own, {args.corpora})"
        print(f"error: {exc}{hint}", file=sys.stderr)
        return 2
    if args.split != "all":
        split = pd.read_csv(predictor.model_dir / "split.csv")
        wanted = set(split.loc[split["split"] == args.split, "file"])
        if not wanted:  # say why, rather than blame the data folder
            refit = args.split == "val" and predictor.config.get("train", {}).get("refit")
            why = "was refit on its validation speakers: they are training data" if refit else \
                f"has no {args.split} split in its split.csv"
            print(f"error: {predictor.model_dir} {why}", file=sys.stderr)
            return 2
        clips = [c for c in clips if clip_key(c, reports) in wanted]
        if not clips:
            print(f"error: none of the model's {args.split} files are in this data folder", file=sys.stderr)
            return 2
        if len(clips) < len(wanted):
            print(f"warning: only {len(clips)} of the model's {len(wanted)} {args.split} files are in this data "
                  "folder: the score is theirs alone", file=sys.stderr)
    elif set(parse_corpus_list(args.corpora)) & set(parse_corpus_list(
            predictor.config.get("train", {}).get("corpora") or FALLBACK_CORPORA)):
        print("warning: --split all: these corpora hold the model's training clips too; --split test scores its "
              "held-out speakers alone", file=sys.stderr)
    clips, probs, errors = predictor.clip_probabilities(clips, args.n_jobs)
    y_true = np.array([EMOTION_INDEX[c.label] for c in clips])
    y_pred = probs.argmax(axis=1)
    out = Path(args.output)
    metrics = write_report(out, y_true, y_pred, extra={"split": args.split, "model_dir": str(predictor.model_dir),
                                                       "corpora": args.corpora, "unreadable": len(errors)})
    write_json(out / "data_report.json", {"corpora": reports, "unreadable_files": errors})
    pd.DataFrame({"path": [c.path for c in clips], "label": [c.label for c in clips],
                  "predicted": [predictor.class_names[i] for i in y_pred]}).to_csv(out / "predictions.csv", index=False)
    print(f"{args.corpora} ({args.split}): {format_summary(metrics)}")
    return 0


if __name__ == "__main__":
    quiet_tensorflow()
    sys.exit(main())
