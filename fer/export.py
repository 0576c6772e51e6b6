"""Export a trained FER model to TFLite: ``python -m fer.export --model-dir saved_models/fer --data-dir ../shared/data``.

Writes ``model_float16.tflite`` and ``model_int8.tflite`` (full-integer calibration on training
faces) next to the model and ``export.json`` with sizes and the accuracy change on the run's own
test split. ``python -m fer.predict --tflite int8`` runs them.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

import numpy as np

from core.cli import quiet_tensorflow, refuse_missing_dir
from core.export import export_model_dir, export_parser, refuse_export_without_data
from core.io import ModelFolderError

REPRESENTATIVE_FACES = 300
MAX_TEST_FACES = 2000  # TFLite runs one face per call: cap the accuracy check


def split_faces(predictor, data_dir: str | None, max_test: int) -> tuple[dict, str | None]:
    """{'train': (x, y), 'test': (x, y)} re-created from the model's own split settings, or ({}, reason)."""
    from core.datasets import DatasetNotFoundError
    from fer.train import SplitMismatchError, held_out_split

    cfg = predictor.config
    seed = int(cfg.get("seed", 42))
    try:  # the run's own split, as fer.evaluate and fer.ensemble re-create it
        data, splits = held_out_split(cfg, predictor.model_dir, data_dir=data_dir, image_size=predictor.face_size)
    except SplitMismatchError:  # other data than the run's: refused, not exported with stand-in calibration
        raise
    except (DatasetNotFoundError, FileNotFoundError, ValueError) as exc:
        return {}, str(exc)
    def faces(idx: np.ndarray) -> np.ndarray:
        return data.images[idx].astype(np.float32)[..., None]

    rng = np.random.default_rng(seed)
    out, drawn = {}, {}
    for name, cap in (("train", REPRESENTATIVE_FACES), ("test", max_test)):
        drawn[name] = rng.permutation(np.flatnonzero(splits == name))
        out[f"{name}_total"] = len(drawn[name])
        idx = drawn[name][:cap or None]
        out[name] = (faces(idx), np.asarray(data.labels)[idx])
    if not out["test_total"]:  # a refit on every face keeps no test split: the conversion is checked on other
        # training faces than calibration's (agreement with the Keras model; labels unused)
        out["test"] = (faces(drawn["train"][REPRESENTATIVE_FACES:][:max_test or None]), None)
    return out, None


def split_text(sets: dict, predictor) -> str:
    """How export.json names the faces its accuracies were measured on."""
    n, total = len(sets["test"][0]), sets["test_total"]
    corpus = predictor.config.get("dataset", "the corpus")
    seed = predictor.config.get("seed", 42)
    if not total:
        return (f"{n} training faces of {corpus} not used for calibration, drawn with seed {seed} (agreement with "
                "the Keras model only: the run was refit on every face and kept no test split)")
    drawn = f"{n} of its {total} faces, drawn with seed {seed}" if n < total else f"all {n} faces"
    return f"the run's test split of {corpus} ({drawn})"


def build_parser() -> argparse.ArgumentParser:
    from fer.predict import DEFAULT_MODEL_DIR

    parser = export_parser(__name__, "facial expression model", DEFAULT_MODEL_DIR,
                           "corpus for calibration and the accuracy check")
    parser.add_argument("--max-test", type=int, default=MAX_TEST_FACES,
                        help="test faces scored (0 = all; default: %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from fer.predict import FERPredictor

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_test < 0:
        parser.error(f"--max-test must be >= 0 (0 = all), got {args.max_test}")
    refuse_missing_dir(parser, args.data_dir)  # leaving --data-dir out exports without data (a warning), unless that
    # would replace measured exports
    try:
        predictor = FERPredictor(args.model_dir)
    except (FileNotFoundError, ModelFolderError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        sets, problem = split_faces(predictor, args.data_dir, args.max_test)
    except ValueError as exc:  # fer.train.SplitMismatchError: the exports and export.json are left as they were
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if problem:
        refusal = refuse_export_without_data(predictor.model_dir, args.data_dir, problem)
        if refusal:
            print(f"error: {refusal}", file=sys.stderr)
            return 2
        note = "; int8 is calibrated on random faces" if "int8" in args.modes else ""
        print(f"warning: {problem}{note}; the exports' accuracy is not measured", file=sys.stderr)
        representative = np.random.default_rng(0).integers(
            0, 256, (REPRESENTATIVE_FACES, predictor.face_size, predictor.face_size, 1)).astype(np.float32)
    else:
        representative = sets["train"][0]
    check = sets["test"] if sets and len(sets["test"][0]) else None
    if sets and check is None:  # refit on so few faces that calibration took them all
        print("warning: no face is left to check the exports against the Keras model", file=sys.stderr)
    export_model_dir(predictor.model, predictor.model_dir, args.modes, representative, check,
                     split_text(sets, predictor) if check is not None else "")
    return 0


if __name__ == "__main__":
    quiet_tensorflow()
    sys.exit(main())
