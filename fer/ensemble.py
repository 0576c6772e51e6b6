"""Average several trained face models into one: ``python -m fer.ensemble RUN RUN ... --output DIR``.

    python -m fer.ensemble runs/fer_tiny runs/fer_tiny_cos --output runs/fer_tiny_ens --data-dir ../shared/data

The runs must share their validation and test images (same dataset, ``--seed`` and fractions; ``--dedupe``
and other training-side options may differ). Each member's plain model is used (``model_plain.keras`` when
``fer.tta`` replaced ``model.keras``); the average is then wrapped in test-time flip averaging (``--shift N``
adds 5 crops, ``--flip false`` none). The output folder is an ordinary run folder (``model.keras``,
``config.json``, ``split.csv``, reports on the validation and test images) that ``fer.predict``,
``fer.evaluate``, ``fer.export`` and the live page load.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any, Sequence

from core.cli import (CLIParser, add_verbose_flag, module_prog, path_arg, quiet_tensorflow, refuse_file_output,
                      refuse_training_run)
from core.ensemble import check_member_count
from core.config import parse_bool
from core.io import read_json, read_model_config, save_model, write_json

HELD_OUT = ("val", "test")


def member_model_file(run_dir: Path) -> Path:
    """The run's model without test-time averaging."""
    from fer.tta import PLAIN_FILE

    plain = run_dir / PLAIN_FILE
    path = plain if plain.is_file() else run_dir / "model.keras"
    if not path.is_file() or not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a finished fer.train run (model.keras + config.json)")
    return path


def check_compatible(run_dirs: Sequence[Path]) -> None:
    """Same classes, input and held-out images in every run (training images may differ)."""
    import pandas as pd

    def held_out(d: Path):
        if not (d / "split.csv").is_file():  # shipped folders leave it out: it names 28 k training images
            raise FileNotFoundError(f"{d} has no split.csv, which the members' held-out images are checked "
                                    "against: pass the fer.train run folders")
        frame = pd.read_csv(d / "split.csv")
        return frame[frame["split"].isin(HELD_OUT)].reset_index(drop=True)

    configs = [read_model_config(d / "config.json", "fer") for d in run_dirs]  # a speech run: named as one
    first, ref = configs[0], held_out(run_dirs[0])
    for d, config in zip(run_dirs[1:], configs[1:]):
        for key in ("class_names", "input_shape", "dataset"):
            if config.get(key) != first.get(key):
                raise ValueError(f"{d}: {key} differs from {run_dirs[0]}")
        if not held_out(d).equals(ref):
            raise ValueError(f"{d}: validation/test images differ from {run_dirs[0]}; members must share them")


def build(run_dirs: Sequence[Path], flip: bool = True, shift: int = 0):
    import keras

    from core.ensemble import average_models
    from fer.models import with_tta  # importing fer.models registers the custom layers a member may hold

    members = [keras.models.load_model(member_model_file(d), compile=False) for d in run_dirs]
    model = average_models(members, "face", "fer_ensemble")
    return with_tta(model, shift) if flip else model


def make(run_dirs: Sequence[Path], output: Path, data_dir: str | None, flip: bool = True,
         shift: int = 0) -> dict[str, Any]:
    from core.reports import format_summary, write_report
    from fer.train import held_out_split, predict_labels

    check_member_count(run_dirs)
    if shift < 0:
        raise ValueError(f"--shift must be >= 0 pixels, got {shift}")
    for d in run_dirs:
        member_model_file(d)
    check_compatible(run_dirs)
    output.mkdir(parents=True, exist_ok=True)
    model = build(run_dirs, flip, shift)
    save_model(model, output / "model.keras")
    first = read_json(run_dirs[0] / "config.json")
    members = [read_json(d / "config.json")["model"] for d in run_dirs]
    config = {k: v for k, v in first.items() if k not in ("flip_tta", "flip_tta_validation", "tta_shift")}
    config |= {"model": f"ensemble({'+'.join(members)})", "members": [str(d) for d in run_dirs],
               "params": int(model.count_params()), "flip_tta": flip, "tta_shift": shift if flip else None}
    write_json(output / "config.json", config)
    for name in ("split.csv", "data_report.json"):
        if (run_dirs[0] / name).exists():
            shutil.copy(run_dirs[0] / name, output / name)

    # The first member's held-out images are every member's (check_compatible).
    data, splits = held_out_split(first, run_dirs[0], **({"data_dir": data_dir} if data_dir else {}))
    results = {}
    extra = {"dataset": first["dataset"], "model": config["model"], "params": config["params"], "flip_tta": flip,
             "tta_shift": config["tta_shift"]}
    for which, prefix in (("val", "val_"), ("test", "")):
        mask = splits == which
        if not mask.any():
            continue
        results[which] = write_report(output, data.labels[mask], predict_labels(model, data.images[mask]),
                                      extra=extra | {"split": which}, prefix=prefix)
        print(f"{which}: {format_summary(results[which])}")
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = CLIParser(prog=module_prog(__name__), description="Average trained face models into one.")
    parser.add_argument("runs", nargs="+", type=path_arg, help="run folders written by fer.train")
    parser.add_argument("--output", required=True, help="run folder for the ensemble")
    parser.add_argument("--data-dir", default=None, help="the corpus, to score the ensemble on the held-out images")
    parser.add_argument("--flip", type=parse_bool, default=True, metavar="BOOL",
                        help="average each face with its mirror image (default: true)")
    parser.add_argument("--shift", type=int, default=0, help="also average 5 crops moved this many pixels (0 = off)")
    add_verbose_flag(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from core.datasets import DatasetNotFoundError
    from fer.data import FaceDataError

    parser = build_parser()
    args = parser.parse_args(argv)
    refuse_file_output(parser, args.output)  # before the members load
    refuse_training_run(parser, args.output)
    try:
        make([Path(r) for r in args.runs], Path(args.output), args.data_dir, args.flip, args.shift)
    except (DatasetNotFoundError, FaceDataError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    quiet_tensorflow()
    sys.exit(main())
