"""Speaker cross-validation of an ensemble: fold k of each ``ser.crossval`` output, averaged with ``ser.ensemble``.

    python bench/bench_ser_crossval_ensemble.py runs/cv_whisper runs/cv_cnn --data-dir ../shared/data \
        --out bench/results/ser_crossval_ensemble

The cross-validations must use the same folds (same --folds, --fold-corpus, corpora and data). For every
fold the members' fold runs are averaged (probabilities, equal weights) into OUT/fold<k>/, scored on that
fold's test speakers; OUT/metrics.json, confusion_matrix.png and crossval.json pool the folds.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.cli import CLIParser, add_verbose_flag, quiet_tensorflow  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = CLIParser(prog="python bench/bench_ser_crossval_ensemble.py", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("crossvals", nargs="+", help="ser.crossval output folders (fold0/, fold1/, ... inside)")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"), help="corpora folder")
    parser.add_argument("--out", required=True, help="folder for the per-fold ensembles and the pooled report")
    add_verbose_flag(parser)
    return parser


def main() -> int:
    args = build_parser().parse_args()
    quiet_tensorflow(args.verbose)
    from core.io import read_json, write_json
    from core.reports import format_summary, write_report
    from ser.crossval import pooled_predictions
    from ser.ensemble import main as ensemble_main

    sources = [Path(c) for c in args.crossvals]
    folds = sorted(p.name for p in sources[0].glob("fold*") if (p / "metrics.json").is_file())
    missing = [str(s / f) for s in sources for f in folds if not (s / f / "metrics.json").is_file()]
    if not folds or missing:
        print(f"error: unfinished folds: {missing or 'no fold with metrics.json in ' + str(sources[0])}", file=sys.stderr)
        return 2
    out = Path(args.out)
    fold_metrics = []
    for fold in folds:
        if ensemble_main([*(str(s / fold) for s in sources), "--output", str(out / fold), "--data-dir", args.data_dir]):
            return 2
        fold_metrics.append(read_json(out / fold / "metrics.json"))
    y_true, y_pred = pooled_predictions(fold_metrics)
    pooled = write_report(out, y_true, y_pred, extra={"split": "speaker cross-validation, test folds pooled",
                                                      "members": [str(s) for s in sources]})
    accuracy = [m["accuracy"] for m in fold_metrics]
    write_json(out / "crossval.json", {"members": [str(s) for s in sources], "folds": folds,
                                       "fold_accuracy": accuracy, "fold_f1_macro": [m["f1_macro"] for m in fold_metrics],
                                       "pooled": {k: pooled[k] for k in ("accuracy", "f1_macro", "n")},
                                       "fold_accuracy_std": float(np.std(accuracy))})
    print(f"pooled over {len(folds)} folds: {format_summary(pooled)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
