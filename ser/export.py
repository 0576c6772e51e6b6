"""Export a trained SER model to TFLite: ``python -m ser.export --model-dir saved_models/ser --data-dir ../shared/data``.

Writes ``model_float16.tflite`` and ``model_int8.tflite`` into the model folder and
``export.json`` with each file's size and its accuracy next to the Keras model's on the
run's own test split (when the data is found). ``python -m ser.predict --tflite int8`` runs them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from core.cli import quiet_tensorflow, refuse_missing_dir
from core.export import export_model_dir, export_parser, refuse_export_without_data
from core.io import ModelFolderError

REPRESENTATIVE_CLIPS = 200


def split_arrays(predictor, data_dir: str | None, which: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Normalised features and labels of one split of the model's own split.csv, or None without data."""
    import pandas as pd

    from ser.corpora import clip_key, load_clips, parse_corpus_list
    from ser.dataset import extract_clips, to_arrays

    split = pd.read_csv(predictor.model_dir / "split.csv")
    wanted = set(split.loc[split["split"] == which, "file"])
    try:
        clips, reports = load_clips(parse_corpus_list(predictor.config["train"]["corpora"]), data_dir)
    except (FileNotFoundError, ValueError):
        return None
    clips = [c for c in clips if clip_key(c, reports) in wanted]
    if not clips:
        return None
    clips, feats, _ = extract_clips(clips, predictor.features, None, -1)
    x, y, _ = to_arrays(feats, clips, predictor.features, predictor.normalizer)
    return x, y


def build_parser() -> argparse.ArgumentParser:
    from ser.predict import DEFAULT_MODEL_DIR

    return export_parser(__name__, "speech emotion model", DEFAULT_MODEL_DIR,
                         "corpora for calibration and the accuracy check")


def main(argv: Sequence[str] | None = None) -> int:
    from ser.predict import SERPredictor

    parser = build_parser()
    args = parser.parse_args(argv)
    refuse_missing_dir(parser, args.data_dir)  # leaving --data-dir out exports without data (a warning), unless that
    # would replace measured exports
    model_dir = Path(args.model_dir)
    if (model_dir / "members").is_dir() and not (model_dir / "model.keras").exists():
        print(f"error: {model_dir} is an ensemble of members with different front ends (ser.ensemble of Whisper "
              "and MFCC runs), which cannot be exported as one TFLite file; export each member run instead",
              file=sys.stderr)
        return 2
    try:
        predictor = SERPredictor(args.model_dir)
    except (FileNotFoundError, ModelFolderError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    train = split_arrays(predictor, args.data_dir, "train")
    test = split_arrays(predictor, args.data_dir, "test")
    if train is None and test is None:
        refusal = refuse_export_without_data(predictor.model_dir, args.data_dir, "none of the model's clips were found")
        if refusal:
            print(f"error: {refusal}", file=sys.stderr)
            return 2
    rng = np.random.default_rng(0)
    if train is not None:
        representative = train[0][rng.permutation(len(train[0]))[:REPRESENTATIVE_CLIPS]]
    else:  # normalised features are ~N(0, 1): a usable stand-in when no data is at hand
        note = "; int8 is calibrated on random normal features" if "int8" in args.modes else ""
        print(f"warning: the model's training clips were not found (give --data-dir){note}", file=sys.stderr)
        representative = rng.standard_normal((REPRESENTATIVE_CLIPS, *predictor.model.input_shape[1:]), np.float32)
    if test is None:
        print("warning: the model's test clips were not found: the exports' accuracy is not measured", file=sys.stderr)
    split = f"the run's test split ({len(test[1])} clips found)" if test is not None else ""
    export_model_dir(predictor.model, predictor.model_dir, args.modes, representative, test, split)
    return 0


if __name__ == "__main__":
    quiet_tensorflow()
    sys.exit(main())
