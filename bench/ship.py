"""Copy a trained run into ``saved_models/<task>/`` with its model card (the shipped defaults).

    python bench/ship.py --task ser --run runs/ser_ensemble --title "..." --data "..." --split "..." \
        --licence "..." --command "python -m ser.train ..." --command "..."

Only what inference, evaluation and the card need is copied (no checkpoints, no history backups).
"""
from __future__ import annotations

import argparse
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.cli import CLIParser, add_verbose_flag, quiet_tensorflow  # noqa: E402

KEEP = ("model.keras", "config.json", "normalization.npz", "metrics.json", "val_metrics.json",
        "confusion_matrix.png", "split.csv", "data_report.json", "export.json", "model_float16.tflite",
        "model_int8.tflite", "curve_loss.png", "curve_accuracy.png", "history.csv", "late_fusion.json")


def build_parser() -> argparse.ArgumentParser:
    parser = CLIParser(prog="python bench/ship.py", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", required=True, choices=["ser", "fer", "fusion"], help="which kind of model")
    parser.add_argument("--run", required=True, help="the finished run folder to ship")
    parser.add_argument("--name", default=None, help="folder under saved_models/ (default: the task, e.g. fer_tiny "
                        "for a second face model)")
    parser.add_argument("--title", required=True, help="the model card's title")
    parser.add_argument("--data", required=True, help="model card: the training data")
    parser.add_argument("--split", required=True, help="model card: the split every number refers to")
    parser.add_argument("--licence", required=True, help="model card: licence of the training data")
    parser.add_argument("--command", action="append", default=[],
                        help="model card: one command to reproduce the model (repeatable, in order)")
    parser.add_argument("--row", action="append", default=[],
                        help="extra card row 'name=value' (split at the first '=' with no space around it)")
    parser.add_argument("--notes", default="", help="model card: free-text notes (targets met or not, caveats)")
    parser.add_argument("--metrics", default=None,
                        help="an evaluation folder (e.g. fer.evaluate --output) whose metrics.json and "
                             "confusion_matrix.png the card reports instead of the run's: for a run refit on every "
                             "item, which has no held-out score (name its split in --split)")
    add_verbose_flag(parser)
    return parser


def parse_row(text: str) -> tuple[str, str]:
    """``'name=value'`` -> ``(name, value)``, split at the first ``=`` with no space on either side, so the name
    may hold prose such as ``(n = 2871)``."""
    match = re.search(r"(?<! )=(?! )", text)
    if not match or match.start() == 0:
        raise ValueError(f"--row {text!r}: expected 'name=value', the '=' with no space around it")
    return text[:match.start()].strip(), text[match.end():].strip()


def main(argv: Sequence[str] | None = None) -> None:
    import importlib

    from core.io import read_json
    from core.model_card import write_model_card

    parser = build_parser()
    args = parser.parse_args(argv)
    run, dest = Path(args.run), REPO / "saved_models" / (args.name or args.task)
    # Everything is checked before the model shipped now is removed.
    try:
        rows = dict(parse_row(r) for r in args.row)
    except ValueError as exc:
        parser.error(str(exc))
    if not (run / "model.keras").is_file():
        parser.error(f"--run {run}: no model.keras there (a finished run folder is needed)")
    scores = Path(args.metrics) if args.metrics else run
    if not (scores / "metrics.json").is_file():
        parser.error(f"{scores}: no metrics.json there")
    if not read_json(scores / "metrics.json").get("n"):
        parser.error(f"{scores}/metrics.json scores no held-out item (a run refit on every item): evaluate it on "
                     "other data and pass that folder as --metrics")
    importlib.import_module(f"{args.task}.models")  # registers custom layers, so the card can count parameters
    dest.mkdir(parents=True, exist_ok=True)
    for stale in (dest / name for name in KEEP + ("MODEL_CARD.md",)):  # files of the model shipped before
        stale.unlink(missing_ok=True)
    for name in KEEP:
        if name == "split.csv" and args.task == "fer":
            continue  # 2 MB for FER2013; fer.train.load_split re-creates it from config.json
        source = scores if name in ("metrics.json", "confusion_matrix.png") else run
        if (source / name).exists():
            shutil.copy2(source / name, dest / name)
    card = write_model_card(dest, args.title, args.data, args.split, args.licence, args.command, rows, args.notes,
                            task=args.task)
    total = sum(p.stat().st_size for p in dest.iterdir()) / 1024
    print(f"shipped {run} -> {dest} ({total:.0f} KB); card {card}")


if __name__ == "__main__":
    quiet_tensorflow()
    main()
