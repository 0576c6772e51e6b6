"""Average several trained SER runs into one model: ``python -m ser.ensemble RUN RUN ... --output DIR``.

The runs must share feature settings, normalisation and split (same ``--corpora``, ``--split``,
``--seed`` and feature flags), so the ensemble is scored on the same held-out speakers.
The output folder is an ordinary run folder that ``ser.predict`` / ``ser.evaluate`` load.
"""
from __future__ import annotations

import argparse
import csv
import shutil
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from core.cli import (CLIParser, add_verbose_flag, module_prog, path_arg, quiet_tensorflow, refuse_file_output,
                      refuse_missing_dir, refuse_training_run)
from core.ensemble import check_member_count
from core.io import read_json, read_model_config, save_model, write_json
from core.reports import format_summary, write_report


def build_ensemble(run_dirs: Sequence[Path]):
    """One Keras model whose output is the mean of the runs' softmax outputs."""
    import keras

    import ser.layers  # noqa: F401  (registers the custom layers a Whisper member holds)
    from core.ensemble import average_models

    models = [keras.saving.load_model(Path(d) / "model.keras", compile=False) for d in run_dirs]
    return average_models(models, "features", "ser_ensemble")


def same_front_end(run_dirs: Sequence[Path]) -> bool:
    """True when every run has the first one's feature settings and normalisation (one shared input)."""
    first = read_json(run_dirs[0] / "config.json")
    norm0 = np.load(run_dirs[0] / "normalization.npz")
    for d in run_dirs[1:]:
        if read_json(d / "config.json")["features"] != first["features"]:
            return False
        norm = np.load(d / "normalization.npz")
        if norm["mean"].shape != norm0["mean"].shape or not (
                np.allclose(norm["mean"], norm0["mean"]) and np.allclose(norm["std"], norm0["std"])):
            return False
    return True


def split_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "split.csv", newline="") as f:
        return list(csv.DictReader(f))


def check_compatible(run_dirs: Sequence[Path]) -> None:
    """Members may have trained on different corpora (the Whisper recipe leaves TESS out, the MFCC one keeps
    it), but all must hold out the same test clips, and none may have trained on a test speaker."""
    check_member_count(run_dirs)
    for d in run_dirs:
        if not (d / "config.json").is_file():
            raise FileNotFoundError(f"{d}: not a ser.train run folder (config.json missing)")
        if read_model_config(d / "config.json", "ser").get("members_dirs"):  # a face run: named as one
            raise ValueError(f"{d}: is an ensemble itself; pass its member runs instead")
    first = split_rows(run_dirs[0])
    test = sorted((r["file"], r["label"]) for r in first if r["split"] == "test")
    test_speakers = {r["speaker"] for r in first if r["split"] == "test"}
    for d in run_dirs[1:]:
        rows = split_rows(d)
        if sorted((r["file"], r["label"]) for r in rows if r["split"] == "test") != test:
            raise ValueError(f"{d}: its test split differs from {run_dirs[0]}'s; ensemble runs must hold out the "
                             f"same test clips")
        heard = {r["speaker"] for r in rows if r["split"] != "test"} & test_speakers
        if heard:
            raise ValueError(f"{d}: trained on test speakers of {run_dirs[0]} ({', '.join(sorted(heard))})")


def write_member_ensemble(runs: Sequence[Path], out: Path) -> dict:
    """Runs with different front ends (Whisper states, MFCCs): each is copied under ``members/`` and the
    ensemble's config lists them; ``SERPredictor`` averages their probabilities."""
    members = []
    for i, run in enumerate(runs):
        name = f"members/{i}_{read_json(run / 'config.json')['model']}"
        shutil.rmtree(out / name, ignore_errors=True)
        shutil.copytree(run, out / name, ignore=shutil.ignore_patterns("checkpoints", "*.tflite", "*.png", "history.csv"))
        members.append(name)
    config = {key: value for key, value in read_json(runs[0] / "config.json").items()
              if key in ("task", "class_names", "train")}
    config.update(model="ensemble(" + "+".join(read_json(r / "config.json")["model"] for r in runs) + ")",
                  members_dirs=members, members=[str(r) for r in runs], features=None, input_shape=None,
                  parameters=sum(read_json(r / "config.json")["parameters"] for r in runs))
    return config


def build_parser() -> argparse.ArgumentParser:
    parser = CLIParser(prog=module_prog(__name__),
                       description="Average trained SER runs (same test clips) into one model folder.")
    parser.add_argument("runs", nargs="+", type=path_arg,
                        help="run folders written by ser.train that hold out the same test clips (training data may "
                             "differ)")
    parser.add_argument("--output", required=True, help="folder for the ensemble (an ordinary model folder for "
                        "ser.predict / ser.evaluate / the web app)")
    parser.add_argument("--data-dir", default=None, help="corpora, to score the ensemble on the runs' test split")
    add_verbose_flag(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    refuse_file_output(parser, args.output)  # before the members load
    refuse_training_run(parser, args.output)
    refuse_missing_dir(parser, args.data_dir)
    runs = [Path(r) for r in args.runs]
    try:
        check_compatible(runs)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("split.csv", "data_report.json"):
        shutil.copy(runs[0] / name, out / name)
    if same_front_end(runs):  # one Keras graph: exports to TFLite like a single model
        model = build_ensemble(runs)
        save_model(model, out / "model.keras")
        shutil.copy(runs[0] / "normalization.npz", out / "normalization.npz")
        config = read_json(runs[0] / "config.json")
        config.update(model="ensemble(" + "+".join(read_json(r / "config.json")["model"] for r in runs) + ")",
                      parameters=model.count_params(), members=[str(r) for r in runs])
    else:
        config = write_member_ensemble(runs, out)
    write_json(out / "config.json", config)
    score(out, args.data_dir, config)
    return 0


def score(out: Path, data_dir: str | None, config: dict) -> None:
    """metrics.json / val_metrics.json of the ensemble on its runs' own split, when the corpora are found."""
    import pandas as pd

    from core.labels import EMOTION_INDEX
    from ser.corpora import clip_key, load_clips, parse_corpus_list
    from ser.predict import SERPredictor

    predictor = SERPredictor(out)
    split = pd.read_csv(out / "split.csv")
    try:
        clips, reports = load_clips(parse_corpus_list(config["train"]["corpora"]), data_dir)
    except (FileNotFoundError, ValueError):
        clips, reports = [], {}
    for which, prefix in (("val", "val_"), ("test", "")):
        wanted = set(split.loc[split["split"] == which, "file"])
        chosen = [c for c in clips if clip_key(c, reports) in wanted]
        if not chosen:
            print(f"warning: {which} split not found in the data; no {prefix}metrics.json", file=sys.stderr)
            continue
        chosen, probs, _ = predictor.clip_probabilities(chosen)
        y = np.array([EMOTION_INDEX[c.label] for c in chosen])
        metrics = write_report(out, y, probs.argmax(1), prefix=prefix,
                               extra={"split": f"{config['train']['split']} ({which})", "model": config["model"]})
        print(f"{which}: {format_summary(metrics)}")


if __name__ == "__main__":
    quiet_tensorflow()
    sys.exit(main())
