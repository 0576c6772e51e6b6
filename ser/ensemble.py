"""Average several trained SER runs into one model: ``python -m ser.ensemble RUN RUN ... --output DIR``.

The runs must share feature settings, normalisation and split (same ``--corpora``, ``--split``,
``--seed`` and feature flags), so the ensemble is scored on the same held-out speakers.
The output folder is an ordinary run folder that ``ser.predict`` / ``ser.evaluate`` load.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from core.io import read_json, save_model, write_json
from core.reports import format_summary, write_report


def build_ensemble(run_dirs: Sequence[Path]):
    """One Keras model whose output is the mean of the runs' softmax outputs."""
    import keras

    from core.ensemble import average_models

    models = [keras.saving.load_model(Path(d) / "model.keras", compile=False) for d in run_dirs]
    return average_models(models, "features", "ser_ensemble")


def check_compatible(run_dirs: Sequence[Path]) -> None:
    first = read_json(run_dirs[0] / "config.json")
    norm0 = np.load(run_dirs[0] / "normalization.npz")
    split0 = (run_dirs[0] / "split.csv").read_bytes()
    for d in run_dirs[1:]:
        config = read_json(d / "config.json")
        if config["features"] != first["features"]:
            raise ValueError(f"{d}: feature settings differ from {run_dirs[0]}")
        if (d / "split.csv").read_bytes() != split0:
            raise ValueError(f"{d}: split differs from {run_dirs[0]}; ensemble runs must share one split")
        norm = np.load(d / "normalization.npz")
        if not (np.allclose(norm["mean"], norm0["mean"]) and np.allclose(norm["std"], norm0["std"])):
            raise ValueError(f"{d}: normalisation statistics differ from {run_dirs[0]}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Average trained SER runs into one model.")
    parser.add_argument("runs", nargs="+", help="run folders written by ser.train")
    parser.add_argument("--output", required=True)
    parser.add_argument("--data-dir", default=None, help="corpora, to score the ensemble on the runs' test split")
    args = parser.parse_args(argv)
    runs = [Path(r) for r in args.runs]
    try:
        check_compatible(runs)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    model = build_ensemble(runs)
    save_model(model, out / "model.keras")
    for name in ("normalization.npz", "split.csv", "data_report.json"):
        shutil.copy(runs[0] / name, out / name)
    config = read_json(runs[0] / "config.json")
    config.update(model="ensemble(" + "+".join(read_json(r / "config.json")["model"] for r in runs) + ")",
                  parameters=model.count_params(), members=[str(r) for r in runs])
    write_json(out / "config.json", config)

    from ser.export import split_arrays
    from ser.predict import SERPredictor

    predictor = SERPredictor(out)
    for which, prefix in (("val", "val_"), ("test", "")):
        arrays = split_arrays(predictor, args.data_dir, which)
        if arrays is None:
            print(f"warning: {which} split not found in the data; no {prefix}metrics.json", file=sys.stderr)
            continue
        pred = model.predict(arrays[0], verbose=0).argmax(1)
        metrics = write_report(out, arrays[1], pred, prefix=prefix,
                               extra={"split": f"{config['train']['split']} ({which})", "model": config["model"]})
        print(f"{which}: {format_summary(metrics)}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
