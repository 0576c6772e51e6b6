"""Emotion of video clips from speech and face together.

    python -m fusion.predict clip.mp4 more_clips/ --json        # the shipped models, no flags needed
    python -m fusion.predict clip.mp4 --model-dir runs/fusion   # a fusion.train run (joint model)
    python -m fusion.predict clip.mp4 --mode late --ser-model-dir saved_models/ser --fer-model-dir saved_models/fer \\
        --late-weights runs/fusion_late/late_fusion.json

``--mode auto`` (the default) uses the joint model when the fusion folder (``--model-dir``, default
``saved_models/fusion``) holds one (``model.keras``), else late fusion of the ``ser`` and ``fer`` models with
the folder's ``late_fusion.json``. A clip the joint model cannot take (no audio track, or an audio file) goes
to late fusion, which uses the voice alone for audio, the face alone for a clip without sound or speech.

Per clip: the fused label and probabilities, plus each model's own (late mode: ``voice`` and ``face``, the SER and
FER models; the joint model: its auxiliary heads ``audio`` / ``frame`` / ``face`` under ``heads``), in the same
object the server's video endpoint answers (``fusion.late.clip_answer``). ``--json`` prints
one object per line. A clip with neither a face nor speech gets no label (``"label": null``, with ``no_speech``
saying what its sound was) and a warning; clips that cannot be used (corrupt, cut short, no pictures and no
usable sound) are reported on stderr and skipped; the exit code is then 1.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from core.cli import (CLIParser, add_verbose_flag, echo, module_prog, none_exist, path_arg, progress,
                      quiet_tensorflow)
from core.io import load_keras_model, read_model_config
from core.media_types import AUDIO_EXTENSIONS, VIDEO_EXTENSIONS, files_below
from fer.data import IMAGE_EXTENSIONS
from fer.faces import DEFAULT_DETECTOR, DETECTORS
from fusion.late import MAX_SEGMENTS, SEGMENT_SECONDS, as_result, clip_answer
from fusion.media import MAX_CLIP_SECONDS, PHOTO, MediaError, NoAudioError, NoVideoError, StillImageError
from fusion.preprocess import PreprocessConfig, clip_features, decode_media

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_DIR = REPO_ROOT / "saved_models" / "fusion"
MODES = ("auto", "joint", "late")

log = logging.getLogger("fusion.predict")


class FusionPredictor:
    """A trained ``fusion.train`` run folder (model.keras + config.json) ready for inference."""

    def __init__(self, model_dir: str | os.PathLike | None = None, max_seconds: float = MAX_CLIP_SECONDS,
                 speech_model: str | os.PathLike | bool = True):
        """``speech_model``: the SER run folder whose check a clip's sound must pass before the joint model answers
        (``ser.predict.SERPredictor.predict_segments``: the signal check, then, for a Whisper model encoded in
        trailing silence such as the shipped one, Whisper's no-speech probability, which refuses music); True: the
        shipped ``saved_models/ser`` where it exists; False: the signal check alone (a caller that has checked)."""
        import tensorflow as tf

        import fusion.models  # noqa: F401  registers the custom layers of a saved fusion model
        from fusion.pipeline import input_keys

        self.model_dir = Path(model_dir or DEFAULT_MODEL_DIR)
        config_path = self.model_dir / "config.json"
        if not config_path.is_file() or not (self.model_dir / "model.keras").is_file():
            raise FileNotFoundError(f"no fusion model in {self.model_dir} (model.keras / config.json missing); "
                                    "train one with `python -m fusion.train --output DIR` and pass --model-dir DIR")
        self.config = read_model_config(config_path, "fusion")
        if self.config.get("task") != "fusion":
            raise ValueError(f"{config_path} is not a fusion run (task={self.config.get('task')!r})")
        self.class_names: list[str] = self.config["class_names"]
        self.modalities: list[str] = self.config["modalities"]
        self.preprocess = PreprocessConfig(**self.config["preprocess"])
        if self.preprocess.pretrained:
            from fusion.preprocess import resolve_encoders

            now = resolve_encoders(self.preprocess).encoder_key
            if now != self.preprocess.encoder_key:
                log.warning("%s was trained on other encoder outputs (%s) than these (%s), e.g. a replaced face "
                            "model: retrain it for trustworthy predictions", self.model_dir,
                            self.preprocess.encoder_key, now)
        self.max_seconds = float(self.config["max_seconds"])  # the training cap: longer clips go in windows
        self.clip_seconds = check_max_seconds(max_seconds)       # what is read of a clip at all
        self.model = load_keras_model(self.model_dir / "model.keras")
        self.keys = input_keys(self.modalities, self.preprocess.pretrained)
        self.speech_model = load_speech_model(speech_model)
        specs = {k: tf.TensorSpec([None, *v.shape[1:]], v.dtype) for k, v in self.model.input.items()}
        # One traced graph with open batch/time axes: no retracing per clip length, no model.predict overhead.
        self._forward = tf.function(lambda x: self.model(x, training=False), input_signature=[specs])

    def windows(self, arrays: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
        """Cut a clip longer than the training cap into windows of ``max_seconds`` (the last one end-aligned)."""
        # fusion.pipeline imports TensorFlow: imported here so `python -m fusion.predict` can quiet it first.
        from fusion.pipeline import clip_seconds, window

        total = clip_seconds(arrays, self.preprocess)
        if total <= self.max_seconds:
            return [arrays]
        count = int(np.ceil(total / self.max_seconds))
        starts = np.linspace(0.0, total - self.max_seconds, count)
        return [window(arrays, self.preprocess, self.max_seconds, float(s)) for s in starts]

    def predict_arrays(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Probabilities per output for one preprocessed clip, averaged over its windows."""
        from fusion.pipeline import batch_inputs, to_model_inputs

        items = [to_model_inputs(w, self.modalities) for w in self.windows(arrays)]
        outputs = self._forward(batch_inputs(items))
        return {k: np.asarray(v).mean(axis=0) for k, v in outputs.items()}

    def predict_clip(self, path: str | os.PathLike) -> dict[str, Any]:
        """Fused and per-modality predictions; raises FileNotFoundError / MediaError with the reason."""
        from fusion.pipeline import clip_seconds
        from ser.frontend import NoSpeechError, require_speech

        try:
            clip = decode_media(path, self.preprocess, self.clip_seconds)
            # The joint model answers whatever it is given: hum, a fan or music would get a confident emotion. The
            # signal check (ser.frontend) refuses hum and noise, the speech model's Whisper check music, as late
            # fusion and the server refuse a voice without speech.
            require_speech(clip.audio, clip.sample_rate, source=str(path))
            if self.speech_model is not None:
                self.speech_model.predict_segments(clip.audio, clip.sample_rate, source=str(path))
        except (NoAudioError, NoSpeechError) as exc:
            raise NoAudioError(f"{exc}; the joint model needs speech: use --mode late for face-only "
                               "prediction") from exc
        arrays = clip_features(clip, self.preprocess)
        probs = self.predict_arrays(arrays)
        mask = arrays.get("face_mask")
        info = {"seconds": round(min(clip_seconds(arrays, self.preprocess), clip.seconds), 3),
                **clip.span(self.clip_seconds),
                "frames_sampled": None if mask is None else int(len(mask)),
                "frames_with_face": None if mask is None else int(mask.sum())}
        # The joint model's own heads are not the face and voice models': they are reported apart, as "heads".
        result = clip_answer(path, {"audio": None, "face": None}, info, None, fused=probs["emotion"],
                             class_names=self.class_names)
        result["heads"] = {k: as_result(v, self.class_names) for k, v in probs.items() if k != "emotion"}
        return result


def load_speech_model(speech_model: str | os.PathLike | bool) -> Any:
    """The SERPredictor that gates the joint model (see ``FusionPredictor``), or None for the signal check alone."""
    from ser.predict import DEFAULT_MODEL_DIR as SER_DIR, SERPredictor

    if speech_model is False:
        return None
    if speech_model is True:
        if not (SER_DIR / "config.json").is_file():
            log.info("no %s: the joint model's clips get the signal check alone", SER_DIR)
            return None
        speech_model = SER_DIR
    return SERPredictor(speech_model)


def check_max_seconds(max_seconds: float) -> float:
    if not max_seconds > 0 or not np.isfinite(max_seconds):  # NaN too
        raise ValueError(f"--max-seconds must be a number of seconds > 0, got {max_seconds}")
    return float(max_seconds)


def has_joint_model(model_dir: str | os.PathLike | None = None) -> bool:
    folder = Path(model_dir or DEFAULT_MODEL_DIR)
    return (folder / "model.keras").is_file() and (folder / "config.json").is_file()


class AutoPredictor:
    """The joint model where it can answer, late fusion of the ``ser`` and ``fer`` models for the rest.

    Without a joint model in ``model_dir`` every clip goes to late fusion with the folder's ``late_fusion.json``
    (the shipped ``saved_models/fusion``); the late-fusion models load on first need only.
    """

    def __init__(self, model_dir: str | os.PathLike | None = None, ser_model_dir: str | os.PathLike | None = None,
                 fer_model_dir: str | os.PathLike | None = None, late_weights: str | os.PathLike | None = None,
                 detector: str = DEFAULT_DETECTOR, max_seconds: float = MAX_CLIP_SECONDS):
        from fusion.late import read_late_config

        self.model_dir = Path(model_dir or DEFAULT_MODEL_DIR)
        check_max_seconds(max_seconds)
        has_joint = has_joint_model(self.model_dir)
        # The weights first: a bad --late-weights is refused before any model loads.
        if late_weights:
            self.late_config = read_late_config(late_weights)
        elif (self.model_dir / "late_fusion.json").is_file():
            self.late_config = read_late_config(self.model_dir)
        elif model_dir is not None and not has_joint:
            raise FileNotFoundError(f"{self.model_dir} holds neither a joint fusion model (model.keras, config.json) "
                                    "nor late-fusion weights (late_fusion.json)")
        else:  # no shipped folder: the even default, as --mode late without --late-weights
            self.late_config = read_late_config(None)
        self.joint = FusionPredictor(self.model_dir, max_seconds, ser_model_dir or True) if has_joint else None
        self._late_args = (ser_model_dir, fer_model_dir, detector, max_seconds)
        self._late = None
        if self.joint is None:
            self.late  # noqa: B018  load now: a missing SER / FER model is an error at start, not per clip

    @property
    def late(self):
        if self._late is None:
            from fusion.late import LateFusion

            ser_dir, fer_dir, detector, max_seconds = self._late_args
            self._late = LateFusion(ser_dir, fer_dir, self.late_config, detector=detector, max_seconds=max_seconds)
        return self._late

    def predict_clip(self, path: str | os.PathLike, segments: bool = False,
                     segment_seconds: float = SEGMENT_SECONDS) -> dict[str, Any]:
        """The joint model's answer where it can take the clip, else late fusion's (``segments``: late only)."""
        if self.joint is not None and not segments and Path(path).suffix.lower() not in AUDIO_EXTENSIONS:
            try:
                return self.joint.predict_clip(path)
            except (NoAudioError, NoVideoError):
                pass  # late fusion takes the modality there is
        return self.late.predict_clip(path, segments, segment_seconds)


def load_predictor(mode: str = "auto", model_dir: str | os.PathLike | None = None,
                   ser_model_dir: str | os.PathLike | None = None, fer_model_dir: str | os.PathLike | None = None,
                   late_weights: str | os.PathLike | None = None, detector: str = DEFAULT_DETECTOR,
                   max_seconds: float = MAX_CLIP_SECONDS) -> Any:
    """A predictor with ``predict_clip(path) -> dict`` for ``mode`` auto | joint | late (see the module doc).

    Late mode reads ``late_weights`` (a late_fusion.json, a folder holding one, or 'audio=W,face=W'), else
    ``model_dir``'s late_fusion.json, else the shipped one, else even weights. The first ``max_seconds`` of
    each clip are used; a result says ``truncated`` when the clip was longer.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    check_max_seconds(max_seconds)
    if mode == "joint":
        return FusionPredictor(model_dir, max_seconds, ser_model_dir or True)
    if mode == "auto":
        return AutoPredictor(model_dir, ser_model_dir, fer_model_dir, late_weights, detector, max_seconds)
    from fusion.late import LateFusion, find_late_fusion

    if not late_weights:
        folder = Path(model_dir) if model_dir else None
        late_weights = (folder / "late_fusion.json" if folder and (folder / "late_fusion.json").is_file()
                        else find_late_fusion())
    return LateFusion(ser_model_dir, fer_model_dir, late_weights, detector=detector, max_seconds=max_seconds)


def expand_paths(paths: Sequence[str]) -> list[Path]:
    """Files as given; folders expanded to the video and audio files below them."""
    out: list[Path] = []
    media = VIDEO_EXTENSIONS + AUDIO_EXTENSIONS
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(files_below(p, media))
        else:
            out.append(p)
    return out


PHOTO_HINT = " (`python -m fer.predict` reads it)"  # as fer.predict points sound files to ser.predict


def photo_error(path: Path) -> str | None:
    """Why a file named as a photo is refused before decoding: FFmpeg would read it as a silent one-frame video and
    judge its face as a 0.2 s clip. (A photo under a video name is found by its content: StillImageError.)"""
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return f"{path}: {PHOTO}{PHOTO_HINT}"
    return None


def format_text(result: dict) -> str:
    if result["mode"] == "joint":
        own, used = result["heads"], list(result["heads"])
    else:  # late mode: a model of weight 0 did not decide
        own, used = {m: result[m] for m in ("voice", "face") if result[m]}, result["used"]
    parts = "  ".join(f"{m}: {r['label']}" + ("" if m in used else " (not used)") for m, r in own.items())
    return f"{result['path']}: {result['label']} ({result['probabilities'][result['label']]:.2f})  [{parts}]"


def format_segment(row: dict) -> str:
    said = lambda r: r["label"] if r else "-"  # noqa: E731
    return (f"  {row['start']:7.2f}-{row['end']:7.2f} s  {said(row['fused']):8s}  voice: {said(row['voice'])}  "
            f"face: {said(row['face'])}")


def no_label_reason(result: dict) -> str:
    return f"{result.get('face_missing') or 'no face'}; {result.get('audio_missing') or 'no speech'}"


def build_parser() -> argparse.ArgumentParser:
    parser = CLIParser(prog=module_prog(__name__),
                       description="Emotion of video clips (or audio files) from speech and faces.",
                       epilog="exit status: 0 every clip got an emotion; 1 some clip was unreadable or had neither a "
                              "face nor speech (label null); 2 usage error")
    parser.add_argument("paths", nargs="+", type=path_arg, metavar="CLIP",
                        help="video or audio files, or folders of them")
    parser.add_argument("--mode", choices=MODES, default="auto",
                        help="auto: the joint model if --model-dir holds one, else late fusion (default); joint: "
                             "the fusion.train model; late: saved ser + fer models combined")
    parser.add_argument("--model-dir", default=None,
                        help=f"fusion folder: a fusion.train run and/or late_fusion.json (default: {DEFAULT_MODEL_DIR})")
    parser.add_argument("--ser-model-dir", default=None,
                        help="SER run folder: late fusion's voice model; in joint mode, the check that a clip holds "
                             "speech (Whisper's no-speech probability refuses music) (default saved_models/ser)")
    parser.add_argument("--fer-model-dir", default=None, help="late fusion: FER run folder (default saved_models/fer)")
    parser.add_argument("--late-weights", default=None,
                        help="late fusion: late_fusion.json (from python -m fusion.late) or 'audio=0.6,face=0.4' (or "
                             "voice=...), both named, 0 leaves one out (default: the fusion folder's late_fusion.json)")
    parser.add_argument("--detector", choices=DETECTORS, default=DEFAULT_DETECTOR,
                        help="late fusion face detector (default: %(default)s)")
    parser.add_argument("--max-seconds", type=float, default=MAX_CLIP_SECONDS,
                        help="seconds of each clip analysed, from its start (the server's --max-video-seconds); a "
                             "longer clip is reported as truncated, with a warning (default: %(default)s)")
    parser.add_argument("--segments", action="store_true",
                        help="late fusion: also a timeline, voice, face and fused per --segment-seconds of the clip "
                             "(the server's ?segments=true)")
    parser.add_argument("--segment-seconds", type=float, default=SEGMENT_SECONDS,
                        help="length of a --segments row; a long clip gets longer ones, at most "
                             f"{MAX_SEGMENTS} rows (default: %(default)s)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    add_verbose_flag(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_max_seconds(args.max_seconds)
    except ValueError as exc:
        parser.error(str(exc))
    if not args.segment_seconds > 0 or not np.isfinite(args.segment_seconds):
        parser.error(f"--segment-seconds must be a number of seconds > 0, got {args.segment_seconds}")
    if args.segments and (args.mode == "joint" or (args.mode == "auto" and has_joint_model(args.model_dir))):
        parser.error("--segments is for late fusion (the voice and face models per stretch of the clip); the joint "
                     "model answers whole clips: add --mode late")
    paths = expand_paths(args.paths)  # before the models load: an empty folder is a usage error, found at once
    if not paths:
        media = ", ".join(sorted(VIDEO_EXTENSIONS + AUDIO_EXTENSIONS))
        print(f"error: no video or audio files ({media}) in {args.paths}", file=sys.stderr)
        return 2
    if args.late_weights:  # a usage error comes first (it is read again with the models)
        from fusion.late import read_late_config

        try:
            read_late_config(args.late_weights)
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if none_exist(paths):  # said at once, not after the models load
        return 1
    try:
        predictor = load_predictor(args.mode, args.model_dir, args.ser_model_dir, args.fer_model_dir,
                                   args.late_weights, args.detector, args.max_seconds)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failures = 0
    for path in progress(paths, desc="clips", unit="clip"):
        problem = photo_error(path)
        if problem:
            failures += 1
            echo(f"error: {problem}", err=True)
            continue
        try:
            result = (predictor.predict_clip(path, segments=True, segment_seconds=args.segment_seconds)
                      if args.segments else predictor.predict_clip(path))
        except (MediaError, FileNotFoundError, ValueError) as exc:
            failures += 1
            echo(f"error: {exc}{PHOTO_HINT if isinstance(exc, StillImageError) else ''}", err=True)
            continue
        if result["label"] is None:  # neither a face nor speech: said so (as ser.predict does), exit status 1
            failures += 1
            echo(f"warning: {path}: no label: {no_label_reason(result)}", err=True)
            if args.json:
                echo(json.dumps(result))
            continue
        if result.get("truncated"):
            echo(f"warning: {path}: {result['duration_seconds']:.1f} s long; only its first {args.max_seconds:g} s "
                 "were used (--max-seconds)", err=True)
        echo(json.dumps(result) if args.json else format_text(result))
        if not args.json:
            for row in result.get("segments", []):
                echo(format_segment(row))
    if failures:
        echo(f"{failures} of {len(paths)} input(s) got no emotion", err=True)
    return 1 if failures else 0


if __name__ == "__main__":
    quiet_tensorflow()
    sys.exit(main())
