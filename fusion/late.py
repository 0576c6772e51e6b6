"""Late fusion of separately trained ``ser`` and ``fer`` models on a video, without retraining.

The audio track goes through ``ser.predict.SERPredictor``; faces found in frames sampled at ``fps`` go
through ``fer.predict.FERPredictor`` and their probabilities are averaged over time. The two are combined
as a weighted mean; when one modality is unavailable (no audio track or silent, no face in any frame)
the other is used alone. Weights can be fitted on a validation set: a grid search over the audio weight
maximising macro-F1.

    python -m fusion.late --split-csv runs/fusion/split.csv --split val \\
        --ser-model-dir saved_models/ser --fer-model-dir saved_models/fer --output saved_models/fusion_late
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from core.cli import add_verbose_flag, module_prog, progress, quiet_tensorflow
from core.io import read_json, write_json
from core.labels import EMOTIONS
from core.reports import compute_metrics, format_summary, write_report
from fer.faces import DEFAULT_DETECTOR, DETECTORS
from fusion.media import MediaError, decode_clip

log = logging.getLogger("fusion.late")

LATE_MODALITIES = ("audio", "face")
DEFAULT_WEIGHTS = {"audio": 0.5, "face": 0.5}
WEIGHTS_FILE = "late_fusion.json"
LATE_FPS = 5.0          # faces change slowly; 5 frames/s halves detection cost against the joint model's 10
GRID_STEPS = 21         # audio weight 0.00, 0.05, ..., 1.00
MAX_CLIP_SECONDS = 60.0


def fuse(probs: dict[str, np.ndarray | None], weights: dict[str, float]) -> np.ndarray:
    """Weighted mean of the available modalities' probabilities (weights renormalised over them)."""
    present = {m: p for m, p in probs.items() if p is not None and weights.get(m, 0.0) > 0}
    if not present:
        present = {m: p for m, p in probs.items() if p is not None}
        if not present:
            raise ValueError("no modality produced a prediction (no usable audio and no face)")
        return np.mean(list(present.values()), axis=0)
    total = sum(weights[m] for m in present)
    return sum(weights[m] / total * np.asarray(p) for m, p in present.items())


def load_weights(spec: str | os.PathLike | None) -> dict[str, float]:
    """Weights from a ``late_fusion.json`` (or a folder holding one), ``audio=0.6,face=0.4``, or the default."""
    if not spec:
        return dict(DEFAULT_WEIGHTS)
    path = Path(spec)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if path.is_file():
        return {m: float(w) for m, w in read_json(path)["weights"].items()}
    try:
        pairs = dict(item.split("=", 1) for item in str(spec).split(",") if item.strip())
        weights = {m.strip(): float(w) for m, w in pairs.items()}
    except ValueError:
        raise ValueError(f"late-fusion weights must be a file or 'audio=W,face=W', got {spec!r}") from None
    unknown = set(weights) - set(LATE_MODALITIES)
    if unknown or not weights or min(weights.values()) < 0 or sum(weights.values()) <= 0:
        raise ValueError(f"late-fusion weights need non-negative values for {LATE_MODALITIES}, got {spec!r}")
    return weights


class LateFusion:
    """Saved SER + FER models applied to one video: per-modality and fused probabilities."""

    def __init__(self, ser_model_dir: str | os.PathLike | None = None, fer_model_dir: str | os.PathLike | None = None,
                 weights: dict[str, float] | str | None = None, fps: float = LATE_FPS, detector: str = DEFAULT_DETECTOR,
                 max_seconds: float = MAX_CLIP_SECONDS):
        from fer.predict import FERPredictor
        from ser.predict import SERPredictor

        self.ser = SERPredictor(ser_model_dir)
        self.fer = FERPredictor(fer_model_dir, detector=detector)
        self.weights = weights if isinstance(weights, dict) else load_weights(weights)
        self.fps, self.max_seconds, self.detector = fps, max_seconds, detector
        self.class_names = list(EMOTIONS)

    def face_crops(self, frames_rgb: np.ndarray) -> np.ndarray:
        """The largest face of each frame, cropped the way the FER model was trained; (n, s, s) uint8."""
        import cv2

        from fer.faces import align_face, detect_faces_with_landmarks

        crops = []
        for rgb in frames_rgb:
            bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
            faces = detect_faces_with_landmarks(bgr, method=self.detector)
            if faces:
                crops.append(align_face(bgr, faces[0], size=self.fer.face_size, margin=self.fer.margin))
        size = self.fer.face_size
        return np.stack(crops) if crops else np.zeros((0, size, size), np.uint8)

    def modality_probs(self, path: str | os.PathLike) -> tuple[dict[str, np.ndarray | None], dict[str, Any]]:
        """(probabilities per modality or None when unavailable, facts such as why one is missing)."""
        from ser.audio import AudioError

        clip = decode_clip(path, fps=self.fps, max_seconds=self.max_seconds, require_audio=False)
        info: dict[str, Any] = {"seconds": round(clip.seconds, 3), "frames": int(len(clip.frames))}
        probs: dict[str, np.ndarray | None] = {"audio": None, "face": None}
        if clip.audio.size == 0:
            info["audio_missing"] = "no audio track"
        else:
            try:
                probs["audio"] = np.asarray(self.ser.predict_waveform(clip.audio, clip.sample_rate), np.float64)
            except AudioError as exc:
                info["audio_missing"] = str(exc)
        crops = self.face_crops(clip.frames)
        info["face_frames"] = int(len(crops))
        if len(crops):
            probs["face"] = self.fer.predict_crops(crops).mean(axis=0).astype(np.float64)
        else:
            info["face_missing"] = "no face found in any sampled frame"
        return probs, info

    def result(self, path: str | os.PathLike, probs: dict[str, np.ndarray | None], info: dict[str, Any]) -> dict:
        fused = fuse(probs, self.weights)
        out = {"path": str(path), "mode": "late", **as_result(fused, self.class_names),
               "weights": self.weights, "modalities": {m: as_result(p, self.class_names)
                                                       for m, p in probs.items() if p is not None}}
        out.update(info)
        return out

    def predict_clip(self, path: str | os.PathLike) -> dict:
        """Fused label and probabilities plus each modality's own; raises MediaError / ValueError."""
        probs, info = self.modality_probs(path)
        if probs["audio"] is None and probs["face"] is None:
            raise ValueError(f"{path}: nothing to predict from ({info.get('audio_missing')}; "
                             f"{info.get('face_missing')})")
        return self.result(path, probs, info)


def as_result(probs: np.ndarray, class_names: Sequence[str] = EMOTIONS) -> dict:
    return {"label": class_names[int(np.argmax(probs))],
            "probabilities": {name: round(float(p), 6) for name, p in zip(class_names, probs)}}


def fit_weights(probs: Sequence[dict[str, np.ndarray | None]], y_true: Sequence[int],
                steps: int = GRID_STEPS) -> tuple[dict[str, float], float, list[tuple[float, float]]]:
    """Grid-search the audio weight (face = 1 - audio) maximising macro-F1; ties go to the more even split."""
    y_true = np.asarray(y_true, int)
    grid = np.linspace(0.0, 1.0, steps)
    scores = []
    for w in grid:
        weights = {"audio": float(w), "face": float(1.0 - w)}
        pred = [int(np.argmax(fuse(p, weights))) for p in probs]
        scores.append(compute_metrics(y_true, pred)["f1_macro"])
    scores_arr = np.asarray(scores)
    best = np.flatnonzero(np.isclose(scores_arr, scores_arr.max()))
    w = float(grid[best[np.argmin(np.abs(grid[best] - 0.5))]])
    return {"audio": round(w, 4), "face": round(1.0 - w, 4)}, float(scores_arr.max()), list(zip(grid.tolist(), scores))


def _validation_clips(args: argparse.Namespace) -> tuple[list[str], np.ndarray]:
    import pandas as pd

    if args.split_csv:
        frame = pd.read_csv(args.split_csv)
        if "status" in frame:
            frame = frame[frame["status"].isin(["ok", "cached"])]
    else:
        from fusion.data import assign_splits, corpus_root, load_index, parse_groups

        frame, _ = load_index(args.corpus, corpus_root(args.corpus, args.data_dir))
        frame = assign_splits(frame, args.val_fraction, args.test_fraction, args.seed,
                              parse_groups(args.val_actors, "actor_"), parse_groups(args.test_actors, "actor_"))
    frame = frame[frame["split"] == args.split]
    if frame.empty:
        raise ValueError(f"no clips in split {args.split!r}")
    return frame["path"].tolist(), frame["label"].to_numpy(int)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=module_prog(__name__),
                                     description="Fit late-fusion weights of saved SER and FER models on "
                                                 "validation videos (grid search maximising macro-F1).")
    parser.add_argument("--ser-model-dir", default=None, help="SER run folder (default: saved_models/ser)")
    parser.add_argument("--fer-model-dir", default=None, help="FER run folder (default: saved_models/fer)")
    parser.add_argument("--split-csv", default=None, help="split.csv of a fusion.train run (path,label,split)")
    parser.add_argument("--corpus", default="ravdess", help="meld | ravdess (when no --split-csv)")
    parser.add_argument("--data-dir", default=None, help="folder holding the corpus (when no --split-csv); "
                        "default $EMOTION_DATA_DIR, else a kagglehub download")
    parser.add_argument("--split", default="val", help="which split to fit on (val) or only evaluate (test)")
    parser.add_argument("--val-fraction", type=float, default=0.15,
                        help="RAVDESS without --split-csv: fraction of the actors held out for validation")
    parser.add_argument("--test-fraction", type=float, default=0.15,
                        help="RAVDESS without --split-csv: fraction of the actors held out for testing")
    parser.add_argument("--val-actors", default="", help="RAVDESS: validation actors, e.g. 19,20 "
                        "(overrides --val-fraction)")
    parser.add_argument("--test-actors", default="", help="RAVDESS: test actors, e.g. 21,22,23,24 "
                        "(overrides --test-fraction)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the split by actor (default: 42)")
    parser.add_argument("--fps", type=float, default=LATE_FPS,
                        help="frames per second searched for faces (default: %(default)s)")
    parser.add_argument("--detector", choices=DETECTORS, default=DEFAULT_DETECTOR,
                        help="face detector (default: %(default)s)")
    parser.add_argument("--output", default="runs/fusion_late", help="writes late_fusion.json and metrics here")
    add_verbose_flag(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        late = LateFusion(args.ser_model_dir, args.fer_model_dir, fps=args.fps, detector=args.detector)
        paths, labels = _validation_clips(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    probs, kept, skipped = [], [], []
    for path, label in progress(list(zip(paths, labels)), desc="clips", unit="clip"):
        try:
            p, _ = late.modality_probs(path)
        except (MediaError, FileNotFoundError) as exc:
            skipped.append({"path": path, "reason": str(exc)})
            log.warning("skipping %s: %s", path, exc)
            continue
        if p["audio"] is None and p["face"] is None:
            skipped.append({"path": path, "reason": "no usable audio and no face"})
            continue
        probs.append(p)
        kept.append(label)
    if not kept:
        print("error: no usable validation clips", file=sys.stderr)
        return 2
    weights, score, curve = fit_weights(probs, kept)
    out = Path(args.output)
    single = {m: compute_metrics(kept, [int(np.argmax(fuse(p, {m: 1.0}))) for p in probs])["f1_macro"]
              for m in LATE_MODALITIES}
    metrics = write_report(out, kept, [int(np.argmax(fuse(p, weights))) for p in probs], prefix="late_", extra={
        "split": args.split, "weights": weights, "f1_macro_single_modality": single, "skipped": len(skipped)})
    write_json(out / WEIGHTS_FILE, {"weights": weights, "fitted_on": args.split, "f1_macro": score,
                                    "f1_macro_single_modality": single, "clips": len(kept),
                                    "skipped": skipped, "grid": curve, "fps": args.fps,
                                    "ser_model_dir": args.ser_model_dir, "fer_model_dir": args.fer_model_dir})
    print(f"weights {weights}; {args.split}: {format_summary(metrics)}; single modality macro-F1 {single}")
    return 0


if __name__ == "__main__":
    quiet_tensorflow()
    sys.exit(main())
