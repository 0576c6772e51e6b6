"""Late fusion of separately trained ``ser`` and ``fer`` models on a video, without retraining.

The audio track goes through ``ser.predict.SERPredictor``; faces found in frames sampled at ``fps`` go
through ``fer.predict.FERPredictor`` and their probabilities are averaged over time. The two are combined
as a weighted mean (or a weighted geometric mean, rule ``product``); when one modality is unavailable (an
audio file, no audio track, no speech, no face in any frame) the other is used alone. Weights and rule are
fitted on validation clips: a grid search over the audio weight maximising macro-F1 that keeps a mix only
when it beats the better modality alone (``fit_late_fusion``).

    python -m fusion.late --split-csv runs/fusion/split.csv --split val \\
        --ser-model-dir saved_models/ser --fer-model-dir saved_models/fer --output runs/fusion_late

The shipped ``saved_models/fusion/late_fusion.json`` is fitted on paired validation clips by
``python bench/bench_fusion.py --ship``; ``load_late_fusion()`` reads it for ``fusion.predict`` and the server.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from core.cli import CLIParser, add_verbose_flag, module_prog, progress, quiet_tensorflow, refuse_file_output
from core.io import read_json, write_json
from core.labels import EMOTIONS
from core.reports import compute_metrics, format_summary, write_report
from core.weights import sha256_of
from fer.faces import DEFAULT_DETECTOR, DETECTORS
from fusion.media import MAX_CLIP_FRAMES, MAX_CLIP_SECONDS, Clip, MediaError, NoAudioError, NoVideoError, decode_clip

log = logging.getLogger("fusion.late")

LATE_MODALITIES = ("audio", "face")
ANSWER_NAMES = {"audio": "voice", "face": "face"}  # late_fusion.json's modality names -> the answers'
SPEC_NAMES = {answer: name for name, answer in ANSWER_NAMES.items()}  # and back, for --late-weights
DEFAULT_WEIGHTS = {"audio": 0.5, "face": 0.5}
WEIGHTS_FILE = "late_fusion.json"
LATE_FPS = 5.0          # faces change slowly; 5 frames/s halves detection cost against the joint model's 10
SEGMENT_SECONDS = 3.0   # a timeline row (--segments): about one Whisper speech window
MAX_SEGMENTS = 40       # a long clip gets longer rows rather than a table nobody reads
NO_FACE_FOUND = "no face found in any sampled frame"  # face_missing, as fusion.predict and the server say it
GRID_STEPS = 21         # audio weight 0.00, 0.05, ..., 1.00
# "product" (log-linear pooling) treats the modalities as independent evidence: one confident modality can
# overrule a hesitant one.
RULE_WORDS = {"mean": "weighted mean of the probabilities", "product": "weighted geometric mean"}
RULES = tuple(RULE_WORDS)
PROB_FLOOR = 1e-4       # product rule: a single near-zero probability must not veto a class outright
REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_MODELS = REPO_ROOT / "saved_models"


def fuse(probs: dict[str, np.ndarray | None], weights: dict[str, float], rule: str = "mean") -> np.ndarray:
    """Weighted mean (or geometric mean, ``rule="product"``) of the available modalities' probabilities.

    Weights are renormalised over the modalities present, so a missing modality (no audio track, no face)
    leaves the other one alone; a present modality with weight 0 is ignored unless it is the only one.
    """
    if rule not in RULES:
        raise ValueError(f"late-fusion rule must be one of {RULES}, got {rule!r}")
    share = fusion_shares(probs, weights)
    present = {m: np.asarray(probs[m], np.float64) for m in share}
    if rule == "mean" or len(present) == 1:  # one modality: its own probabilities, unfloored
        return sum(share[m] * p for m, p in present.items())
    log_p = sum(share[m] * np.log(np.clip(p, PROB_FLOOR, 1.0)) for m, p in present.items())
    fused = np.exp(log_p - log_p.max())
    return fused / fused.sum()


def fusion_shares(probs: Mapping[str, np.ndarray | None], weights: Mapping[str, float]) -> dict[str, float]:
    """Each modality's share of the fused answer (``fuse``'s rule): the weights renormalised over the modalities
    present, leaving out one with weight 0 unless no weighted one is present. Its keys are the modalities used."""
    present = [m for m, p in probs.items() if p is not None]
    weighted = [m for m in present if weights.get(m, 0.0) > 0]
    if weighted:
        total = sum(weights[m] for m in weighted)
        return {m: weights[m] / total for m in weighted}
    if not present:
        raise ValueError("no modality produced a prediction (no usable audio and no face)")
    return {m: 1.0 / len(present) for m in present}


@dataclass(frozen=True)
class LateFusionConfig:
    """Late-fusion weights and rule, as ``fusion.late`` writes them to ``late_fusion.json``.

    ``meta`` keeps the rest of the file (what the weights were fitted on, validation scores, the models'
    fingerprints); ``source`` is the file they came from (None for defaults or a command-line spec).
    """

    weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    rule: str = "mean"
    source: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def fuse(self, probs: dict[str, np.ndarray | None]) -> np.ndarray:
        """Fused probabilities (in the models' class order) from ``{"audio": p or None, "face": p or None}``."""
        return fuse(probs, self.weights, self.rule)

    def fuse_named(self, face: Mapping[str, float] | None, voice: Mapping[str, float] | None,
                   class_names: Sequence[str] = EMOTIONS) -> dict[str, float] | None:
        """The server's form: ``{emotion: p}`` dicts in, a ``{emotion: p}`` dict out (None when both are None)."""
        if face is None and voice is None:
            return None
        as_vector = lambda d: None if d is None else np.array([float(d.get(c, 0.0)) for c in class_names])  # noqa: E731
        fused = self.fuse({"audio": as_vector(voice), "face": as_vector(face)})
        return {c: round(float(p), 6) for c, p in zip(class_names, fused)}


def _checked_weights(weights: Mapping[str, Any], where: str) -> dict[str, float]:
    try:
        out = {str(m): float(w) for m, w in weights.items()}
    except (TypeError, ValueError):
        raise ValueError(f"{where}: late-fusion weights must be numbers, got {dict(weights)!r}") from None
    unknown = set(out) - set(LATE_MODALITIES)
    # Every modality named: 'audio=0.5' alone would silently give the face weight 0.
    missing = [m for m in LATE_MODALITIES if m not in out]
    if (unknown or missing or min(out.values()) < 0 or sum(out.values()) <= 0
            or not all(map(np.isfinite, out.values()))):
        lacks = f"; missing: {', '.join(missing)}" if missing else ""
        raise ValueError(f"{where}: late-fusion weights need a non-negative number for each of "
                         f"{', '.join(LATE_MODALITIES)}, not all zero, as in 'audio=0.6,face=0.4' (0 leaves a "
                         f"modality out), got {dict(weights)!r}{lacks}")
    return out


def read_late_config(spec: str | os.PathLike | LateFusionConfig | None = None) -> LateFusionConfig:
    """A ``late_fusion.json`` (or a folder holding one), ``audio=0.6,face=0.4[,rule=product]`` (``voice`` for
    ``audio`` too), or the default."""
    if isinstance(spec, LateFusionConfig):
        return spec
    if spec is None or str(spec) == "":
        return LateFusionConfig()
    path = Path(spec)
    if path.is_dir():
        path = path / WEIGHTS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file (write one with `python -m fusion.late --output "
                                    f"{path.parent}`)")
    if path.is_file():
        try:
            data = read_json(path)
            weights = _checked_weights(data["weights"], str(path))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"{path}: not a late-fusion file ({exc})") from None
        rule = str(data.get("rule", "mean"))
        if rule not in RULES:
            raise ValueError(f"{path}: unknown late-fusion rule {rule!r} (choose one of {RULES})")
        return LateFusionConfig(weights, rule, str(path), {k: v for k, v in data.items() if k not in ("weights", "rule")})
    if str(spec).endswith(".json"):
        raise FileNotFoundError(f"{spec}: no such file")
    try:
        pairs = dict(item.split("=", 1) for item in str(spec).split(",") if item.strip())
    except ValueError:
        raise ValueError(f"late-fusion weights must be a file or 'audio=W,face=W[,rule=mean|product]', "
                         f"got {spec!r}") from None
    # "voice" as the answers name it (clip_answer's weights) is "audio" here
    pairs = {SPEC_NAMES.get(k.strip(), k.strip()): v.strip() for k, v in pairs.items()}
    rule = pairs.pop("rule", "mean")
    if rule not in RULES:
        raise ValueError(f"late-fusion rule must be one of {RULES}, got {rule!r}")
    return LateFusionConfig(_checked_weights(pairs, repr(str(spec))), rule)


def load_weights(spec: str | os.PathLike | None) -> dict[str, float]:
    """Weights from a ``late_fusion.json`` (or a folder holding one), ``audio=0.6,face=0.4``, or the default."""
    return dict(read_late_config(spec).weights)


def find_late_fusion(models_dir: str | os.PathLike | None = None) -> Path | None:
    """The late-fusion file of a models folder: ``<models>/fusion/late_fusion.json`` (what ships), else the older
    ``<models>/late_fusion.json``; None when there is neither. ``models_dir`` defaults to ``saved_models/``."""
    root = Path(models_dir) if models_dir else SHIPPED_MODELS
    for path in (root / "fusion" / WEIGHTS_FILE, root / WEIGHTS_FILE):
        if path.is_file():
            return path
    return None


def load_late_fusion(models_dir: str | os.PathLike | None = None) -> LateFusionConfig:
    """The late-fusion config the server and ``fusion.predict`` use: ``find_late_fusion(models_dir)`` read and
    checked (ValueError for a damaged file), or the even default (0.5 / 0.5, mean) when the folder has none.

    Server use: ``cfg = load_late_fusion("saved_models")``, then ``cfg.fuse_named(face_probs, voice_probs)``
    (``{emotion: p}`` dicts, either may be None) gives the fused ``{emotion: p}``; ``cfg.weights`` and
    ``cfg.rule`` say how.
    """
    path = find_late_fusion(models_dir)
    return read_late_config(path) if path else LateFusionConfig()


def model_fingerprint(model_dir: str | os.PathLike) -> str | None:
    """First 16 hex digits of the sha256 of a run folder's ``model.keras``: which model weights were fitted for."""
    path = Path(model_dir) / "model.keras"
    return sha256_of(path)[:16] if path.is_file() else None


@dataclass
class ClipReading:
    """What ``LateFusion.read`` got from one clip."""

    probs: dict[str, np.ndarray | None]  # each model's probabilities ("audio", "face"), None where missing
    info: dict[str, Any]                 # clip_answer's CLIP_FACTS
    audio_error: Exception | None = None  # why the audio was left out, when it was
    times: list[float] = field(default_factory=list)                  # seconds of each sampled frame
    per_frame: list[np.ndarray | None] = field(default_factory=list)  # the face model's answer per frame
    windows: list[tuple[float, float, np.ndarray]] = field(default_factory=list)  # the voice model's speech windows


class LateFusion:
    """Saved SER + FER models applied to one clip: per-modality and fused probabilities.

    Video with sound uses both; a video without an audio track (or without speech) uses the face; an audio
    file or an audio-only mp4 uses the voice; a video where no frame shows a face uses the voice.
    """

    def __init__(self, ser_model_dir: str | os.PathLike | None = None, fer_model_dir: str | os.PathLike | None = None,
                 weights: LateFusionConfig | dict[str, float] | str | os.PathLike | None = None,
                 fps: float = LATE_FPS, detector: str = DEFAULT_DETECTOR, max_seconds: float = MAX_CLIP_SECONDS,
                 rule: str | None = None, max_frames: int = MAX_CLIP_FRAMES):
        from fer.predict import FERPredictor
        from ser.predict import SERPredictor

        # Checked before the models load: fps 0 would sample no frame at all, and a bad weights spec is a usage error.
        if not fps > 0 or not max_seconds > 0 or not max_frames >= 1:
            raise ValueError(f"fps and max_seconds must be > 0 and max_frames >= 1, got fps {fps}, "
                             f"max_seconds {max_seconds}, max_frames {max_frames}")
        config = LateFusionConfig(_checked_weights(weights, "weights")) if isinstance(weights, dict) \
            else read_late_config(weights)
        if rule is not None:
            config = replace(config, rule=rule)
        if config.rule not in RULES:
            raise ValueError(f"late-fusion rule must be one of {RULES}, got {config.rule!r}")
        self.config = config
        self.ser = SERPredictor(ser_model_dir)
        self.fer = FERPredictor(fer_model_dir, detector=detector)
        self.fps, self.max_seconds, self.max_frames, self.detector = fps, max_seconds, int(max_frames), detector
        self.class_names = list(EMOTIONS)
        self._warn_if_fitted_for_other_models()

    @property
    def weights(self) -> dict[str, float]:
        return self.config.weights

    def _warn_if_fitted_for_other_models(self) -> None:
        fitted = self.config.meta.get("models") or {}
        for name, folder in (("ser", self.ser.model_dir), ("fer", self.fer.model_dir)):
            expected = (fitted.get(name) or {}).get("sha256")
            if expected and expected != model_fingerprint(folder):
                log.warning("%s was fitted for another %s model than %s; the weights still apply, but re-fit them "
                            "(python bench/bench_fusion.py --ship)", self.config.source, name, folder)

    def face_crops(self, frames_rgb: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """The largest face of each frame, cropped the way the FER model was trained ((n, s, s) uint8), and the
        index of the frame each came from."""
        import cv2

        from fer.faces import align_face, detect_faces_with_landmarks

        crops, found = [], []
        for k, rgb in enumerate(frames_rgb):
            bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
            faces = detect_faces_with_landmarks(bgr, method=self.detector)
            if faces:
                crops.append(align_face(bgr, faces[0], size=self.fer.face_size, margin=self.fer.margin))
                found.append(k)
        size = self.fer.face_size
        return (np.stack(crops) if crops else np.zeros((0, size, size), np.uint8)), found

    def decode(self, path: str | os.PathLike) -> tuple[Clip, dict[str, Any]]:
        return decode_for_prediction(path, self.fps, self.max_seconds, self.max_frames)

    def modality_probs(self, path: str | os.PathLike) -> tuple[dict[str, np.ndarray | None], dict[str, Any]]:
        """(probabilities per modality or None when unavailable, facts such as why one is missing)."""
        reading = self.read(path)
        return reading.probs, reading.info

    def read(self, path: str | os.PathLike) -> ClipReading:
        """Both models on one clip: ``modality_probs`` plus the error that left the audio out and the per-frame and
        per-window answers a timeline (``clip_segments``) is made of."""
        from ser.audio import AudioError
        from ser.frontend import no_speech_reason

        clip, info = self.decode(path)
        info = {"seconds": round(clip.seconds, 3), "frames_sampled": int(len(clip.frames)),
                **clip.span(self.max_seconds), **info}
        reading = ClipReading({"audio": None, "face": None}, info, per_frame=[None] * len(clip.frames),
                              times=[k / clip.fps for k in range(len(clip.frames))])
        if clip.audio.size == 0:
            info["audio_missing"] = "no audio track"
        else:
            try:
                reading.windows = [(float(a), float(b), np.asarray(p, np.float64))
                                   for a, b, p in self.ser.predict_segments(clip.audio, clip.sample_rate)]
                reading.probs["audio"] = np.mean([p for _, _, p in reading.windows], axis=0)  # as predict_waveform
            except AudioError as exc:  # silent track, or no speech in it (NoSpeechError)
                info["audio_missing"], reading.audio_error, reason = str(exc), exc, no_speech_reason(exc)
                if reason:
                    info["no_speech"] = reason
        crops, found = self.face_crops(clip.frames) if len(clip.frames) else (np.zeros((0, 1, 1), np.uint8), [])
        info["frames_with_face"] = int(len(crops))
        if len(crops):
            faces = self.fer.predict_crops(crops).astype(np.float64)
            for k, p in zip(found, faces):
                reading.per_frame[k] = p
            reading.probs["face"] = faces.mean(axis=0)
        elif "face_missing" not in info:
            info["face_missing"] = NO_FACE_FOUND
        return reading

    def result(self, path: str | os.PathLike, probs: dict[str, np.ndarray | None], info: dict[str, Any]) -> dict:
        return clip_answer(path, probs, info, self.config, class_names=self.class_names)

    def predict_clip(self, path: str | os.PathLike, segments: bool = False,
                     segment_seconds: float = SEGMENT_SECONDS) -> dict:
        """The clip's answer (``clip_answer``): fused label and probabilities plus each model's own; with
        ``segments`` also ``clip_segments``' timeline. Raises MediaError / ValueError.

        A clip with neither a face nor speech gets ``"label": None`` (and ``no_speech`` where its sound is not
        speech), as the server's video endpoint answers it; only a file with no pictures and no usable sound
        (none, silent, unreadable) is an error."""
        from ser.frontend import NoSpeechError

        reading = self.read(path)
        if reading.probs["audio"] is None and reading.probs["face"] is None:
            if not reading.info["frames_sampled"] and not isinstance(reading.audio_error, NoSpeechError):
                raise ValueError(f"{path}: nothing to predict from ({reading.info.get('audio_missing')}; "
                                 f"{reading.info.get('face_missing')})")
        answer = self.result(path, reading.probs, reading.info)
        if segments:
            answer["segments"] = clip_segments(reading.per_frame, reading.times, reading.windows,
                                               reading.info["duration_seconds"], self.max_seconds, self.config,
                                               segment_seconds, self.class_names)
        return answer


def decode_for_prediction(path: str | os.PathLike, fps: float = LATE_FPS, max_seconds: float = MAX_CLIP_SECONDS,
                          max_frames: int = MAX_CLIP_FRAMES) -> tuple[Clip, dict[str, Any]]:
    """A clip's frames and audio as every predictor reads them: ``fusion.predict`` and the server's video endpoint
    call this, so both see the same frames and hear the same samples. An audio file (or a video file without a
    video track) gives no frames and ``face_missing``."""
    try:
        return decode_clip(path, fps=fps, max_seconds=max_seconds, require_audio=False, max_frames=max_frames), {}
    except NoVideoError:
        return sound_only(path, fps, max_seconds), {"face_missing": "no video track"}


def sound_only(path: str | os.PathLike, fps: float = LATE_FPS, max_seconds: float | None = MAX_CLIP_SECONDS) -> Clip:
    """A file without pictures, read as ``ser.predict`` and the server's audio upload read it (``ser.audio``, at the
    file's own rate): all three hear the same samples, so they give the same voice answer. Only the first
    ``max_seconds`` are decoded."""
    from ser.audio import AudioError, decode_head

    try:
        samples, rate, duration = decode_head(path, max_seconds)
    except AudioError as exc:  # no audio stream, or none FFmpeg can decode
        raise NoAudioError(str(exc)) from exc
    if not samples.size:  # a header and nothing after it: worded as ser.predict words it
        raise NoAudioError(f"{path}: no audio could be decoded (the file is truncated or damaged, or holds no sound)")
    return Clip(frames=np.zeros((0, 0, 0, 3), np.uint8), audio=samples, fps=fps, sample_rate=rate, duration=duration)


def as_result(probs: np.ndarray, class_names: Sequence[str] = EMOTIONS) -> dict:
    return {"label": class_names[int(np.argmax(probs))],
            "probabilities": {name: round(float(p), 6) for name, p in zip(class_names, probs)}}


CLIP_FACTS = ("frames_sampled", "frames_with_face", "seconds", "duration_seconds", "truncated", "no_speech",
              "audio_missing", "face_missing")


def clip_answer(path: str | os.PathLike, probs: Mapping[str, np.ndarray | None], info: Mapping[str, Any],
                config: LateFusionConfig | None, fused: np.ndarray | None = None,
                class_names: Sequence[str] = EMOTIONS) -> dict[str, Any]:
    """One clip's answer: the object ``python -m fusion.predict --json`` prints and the server's
    ``POST /api/predict/video`` returns, built here for both so that they cannot drift apart.

    ``probs``: the voice (``"audio"``) and face models' own probabilities, None where missing. ``fused``: the joint
    model's answer (``mode: "joint"``, ``config`` None); by default the two are fused late by ``config``. ``info``:
    the facts in CLIP_FACTS (a reason absent from it is null). Fields: ``path``, ``mode``, ``label`` and
    ``probabilities`` (null when neither a face nor speech was found), ``voice`` and ``face`` (each model's own
    label and probabilities, or null), then, in late mode, ``used`` (the ones that decided: never one of weight 0
    while the other is there), ``weights`` and ``rule`` (null for the joint model), then CLIP_FACTS.
    """
    present = {m: p for m, p in probs.items() if p is not None}
    late = config is not None and fused is None
    used = list(fusion_shares(probs, config.weights)) if late and present else []
    if late and present:
        fused = config.fuse(dict(probs))
    answer: dict[str, Any] = {"path": str(path), "mode": "late" if late else "joint", "label": None,
                              "probabilities": None}
    if fused is not None:
        answer.update(as_result(fused, class_names))
    answer.update({ANSWER_NAMES[m]: as_result(present[m], class_names) if m in present else None
                   for m in LATE_MODALITIES})
    answer["used"] = [ANSWER_NAMES[m] for m in LATE_MODALITIES if m in used] if late else None
    answer["weights"] = {ANSWER_NAMES[m]: float(config.weights.get(m, 0.0)) for m in LATE_MODALITIES} if late else None
    answer["rule"] = config.rule if late else None
    answer.update({k: info.get(k) for k in CLIP_FACTS})
    return answer


def clip_segments(per_frame: Sequence[np.ndarray | None], times: Sequence[float],
                  windows: Sequence[tuple[float, float, np.ndarray]], duration: float, max_seconds: float,
                  config: LateFusionConfig, segment_seconds: float = SEGMENT_SECONDS,
                  class_names: Sequence[str] = EMOTIONS) -> list[dict[str, Any]]:
    """A clip's timeline, for ``fusion.predict --segments`` and the server's ``?segments=true`` alike: one row per
    ``segment_seconds`` of the part analysed (longer rows for a long clip: at most MAX_SEGMENTS), each with the
    face model's mean over the frames sampled in it (by their time), the voice model's mean over the speech windows
    whose centre falls in it, their late fusion by ``config``, ``null`` where there is no face or no speech."""
    span = min(duration, max_seconds) if duration > 0 else max(times, default=0.0) + 1e-3
    length = max(segment_seconds, span / MAX_SEGMENTS)
    count = max(1, math.ceil(span / length - 1e-6))
    rows = []
    for k in range(count):
        start, end = k * length, min(span, (k + 1) * length)
        last = k == count - 1  # the last row also takes what sits exactly at (or rounds past) the end
        inside = lambda t: start <= t < end or (last and t >= start)  # noqa: E731
        frames = [p for p, t in zip(per_frame, times) if inside(t)]
        seen = [p for p in frames if p is not None]
        heard = [p for a, b, p in windows if inside((a + b) / 2)]
        probs = {"audio": np.mean(heard, axis=0) if heard else None, "face": np.mean(seen, axis=0) if seen else None}
        fused = config.fuse(probs) if heard or seen else None
        rows.append({"start": round(start, 3), "end": round(end, 3),
                     **{ANSWER_NAMES[m]: None if probs[m] is None else as_result(probs[m], class_names)
                        for m in LATE_MODALITIES},
                     "fused": None if fused is None else as_result(fused, class_names),
                     "frames_sampled": len(frames), "frames_with_face": len(seen)})
    return rows


def _scores(probs: Sequence[dict[str, np.ndarray | None]], y_true: np.ndarray, weights: dict[str, float],
            rule: str) -> tuple[float, float]:
    """(macro-F1, mean negative log-likelihood) of one weighting."""
    fused = np.stack([fuse(p, weights, rule) for p in probs])
    nll = float(-np.mean(np.log(np.clip(fused[np.arange(len(y_true)), y_true], 1e-7, 1.0))))
    return compute_metrics(y_true, fused.argmax(1))["f1_macro"], nll


def fit_weights(probs: Sequence[dict[str, np.ndarray | None]], y_true: Sequence[int],
                steps: int = GRID_STEPS, rule: str = "mean") -> tuple[dict[str, float], float, list[tuple[float, float]]]:
    """Grid-search the audio weight (face = 1 - audio) maximising macro-F1; ties go to the more even split."""
    y_true = np.asarray(y_true, int)
    grid = np.linspace(0.0, 1.0, steps)
    scores = [_scores(probs, y_true, {"audio": float(w), "face": float(1.0 - w)}, rule)[0] for w in grid]
    scores_arr = np.asarray(scores)
    best = np.flatnonzero(np.isclose(scores_arr, scores_arr.max()))
    w = float(grid[best[np.argmin(np.abs(grid[best] - 0.5))]])
    return {"audio": round(w, 4), "face": round(1.0 - w, 4)}, float(scores_arr.max()), list(zip(grid.tolist(), scores))


def alone_where_present(probs: Sequence[dict[str, np.ndarray | None]], y_true: Sequence[int]) -> dict[str, Any]:
    """Each modality scored on the clips that have it, by itself: ``fit_late_fusion``'s single-modality scores
    let the other modality answer where one is missing (the fallback policy), so on clips without a face the
    "face" score is the voice's."""
    y_true = np.asarray(y_true, int)
    out: dict[str, Any] = {}
    for m in LATE_MODALITIES:
        have = [i for i, p in enumerate(probs) if p.get(m) is not None]
        pred = np.asarray([int(np.argmax(probs[i][m])) for i in have], int)
        out[m] = {"clips": len(have),
                  "f1_macro": float(compute_metrics(y_true[have], pred)["f1_macro"]) if have else None}
    return out


def fit_late_fusion(probs: Sequence[dict[str, np.ndarray | None]], y_true: Sequence[int], steps: int = GRID_STEPS,
                    rules: Sequence[str] = RULES, min_gain: float = 0.0) -> dict[str, Any]:
    """Weights and rule maximising validation macro-F1, never below the better single modality.

    ``f1_macro_single_modality`` scores each modality at weight 1, the other filling in where it is missing (what
    a fallback deploys); ``alone_where_present`` scores each by itself on the clips that have it.

    Every rule's audio weight is searched on a grid (ties broken by the lower log-loss, then the more even
    split). A mix is kept only if it beats the better modality alone by more than ``min_gain`` on these clips;
    otherwise the better modality gets weight 1 (``fallback`` says so): on validation the fused prediction is
    then exactly that modality's, and a clip missing it still gets the other one.
    """
    y_true = np.asarray(y_true, int)
    if len(probs) != len(y_true) or not len(y_true):
        raise ValueError(f"need one label per clip and at least one clip, got {len(probs)} clips, {len(y_true)} labels")
    grid = np.linspace(0.0, 1.0, steps)
    single = {m: _scores(probs, y_true, {m: 1.0}, "mean") for m in LATE_MODALITIES}
    best_single = max(LATE_MODALITIES, key=lambda m: (single[m][0], -single[m][1]))
    candidates, curves = [], {}
    for rule in rules:
        curve = []
        for w in grid[1:-1]:  # the ends are the single modalities, scored above
            weights = {"audio": round(float(w), 4), "face": round(float(1.0 - w), 4)}
            f1, nll = _scores(probs, y_true, weights, rule)
            curve.append((float(w), f1, nll))
            candidates.append((f1, -nll, -abs(float(w) - 0.5), rule, weights))
        curves[rule] = curve
    top = max(candidates, key=lambda c: c[:3]) if candidates else None
    fallback = top is None or top[0] <= single[best_single][0] + min_gain
    if fallback:
        weights, rule, score = {m: float(m == best_single) for m in LATE_MODALITIES}, "mean", single[best_single][0]
    else:
        score, _, _, rule, weights = top
    return {"weights": weights, "rule": rule, "f1_macro": float(score), "fallback": bool(fallback),
            "fallback_to": best_single if fallback else None, "min_gain": min_gain,
            "f1_macro_single_modality": {m: float(s[0]) for m, s in single.items()},
            "alone_where_present": alone_where_present(probs, y_true),
            "best_mix": None if top is None else {"f1_macro": float(top[0]), "rule": top[3], "weights": top[4]},
            "grid": {rule: [[round(w, 4), round(f, 4), round(n, 4)] for w, f, n in c] for rule, c in curves.items()},
            "clips": int(len(y_true))}


def _validation_clips(args: argparse.Namespace) -> tuple[list[str], np.ndarray]:
    import pandas as pd

    if args.split_csv:
        if not Path(args.split_csv).is_file():
            raise FileNotFoundError(f"--split-csv {args.split_csv}: no such file (the split.csv of a fusion.train run)")
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
    parser = CLIParser(prog=module_prog(__name__),
                       description="Fit late-fusion weights of saved SER and FER models on "
                                   "validation videos (grid search maximising macro-F1).")
    parser.add_argument("--ser-model-dir", default=None, help="SER run folder (default: saved_models/ser)")
    parser.add_argument("--fer-model-dir", default=None, help="FER run folder (default: saved_models/fer)")
    parser.add_argument("--split-csv", default=None, help="split.csv of a fusion.train run (path,label,split)")
    parser.add_argument("--corpus", default="ravdess", help="meld | ravdess (when no --split-csv)")
    parser.add_argument("--data-dir", default=None, help="folder holding the corpus (when no --split-csv); "
                        "default $EMOTION_DATA_DIR, else a kagglehub download")
    parser.add_argument("--split", default="val", choices=("train", "val", "test"),
                        help="which split to fit on (default: val; fitting on test leaks it into the score)")
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
    parser.add_argument("--rules", default=",".join(RULES),
                        help="fusion rules searched, comma-separated: mean (weighted mean of probabilities), "
                             "product (weighted geometric mean) (default: %(default)s)")
    parser.add_argument("--min-gain", type=float, default=0.0,
                        help="keep a mix only if its macro-F1 beats the better single modality by more than this "
                             "on the fitting clips; otherwise that modality alone (default: %(default)s)")
    parser.add_argument("--output", default="runs/fusion_late", help="writes late_fusion.json and metrics here")
    add_verbose_flag(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    refuse_file_output(parser, args.output)  # before any clip is processed
    if not args.min_gain >= 0:  # also NaN
        parser.error(f"--min-gain must be >= 0, got {args.min_gain}")
    bad_rules = [r for r in args.rules.split(",") if r not in RULES]
    if bad_rules or not args.rules:
        print(f"error: --rules takes a comma-separated subset of {RULES}, got {args.rules!r}", file=sys.stderr)
        return 2
    try:  # the clips first: a wrong split or corpus is reported before the models take their seconds to load
        paths, labels = _validation_clips(args)
        late = LateFusion(args.ser_model_dir, args.fer_model_dir, fps=args.fps, detector=args.detector)
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
    fit = fit_late_fusion(probs, kept, rules=args.rules.split(","), min_gain=args.min_gain)
    out = Path(args.output)
    chosen = LateFusionConfig(fit["weights"], fit["rule"])
    metrics = write_report(out, kept, [int(np.argmax(chosen.fuse(p))) for p in probs], prefix="late_", extra={
        "split": args.split, "weights": fit["weights"], "rule": fit["rule"], "fallback": fit["fallback"],
        "f1_macro_single_modality": fit["f1_macro_single_modality"], "alone_where_present": fit["alone_where_present"],
        "skipped": len(skipped)})
    path = write_late_fusion(out, fit, fitted_on=f"{args.split} clips ({args.split_csv or args.corpus})",
                             ser_model_dir=late.ser.model_dir, fer_model_dir=late.fer.model_dir,
                             extra={"skipped": skipped, "fps": args.fps, "detector": args.detector})
    note = f" (fallback to {fit['fallback_to']} alone: no mix beat it on {args.split})" if fit["fallback"] else ""
    alone = ", ".join(f"{m} {a['f1_macro']:.3f} on {a['clips']}" if a["clips"] else f"{m}: no clip"
                      for m, a in fit["alone_where_present"].items())
    single = ", ".join(f"{m} {f:.3f}" for m, f in fit["f1_macro_single_modality"].items())
    print(f"weights {fit['weights']}, rule {fit['rule']}{note}; {args.split}: {format_summary(metrics)}; "
          f"single modality macro-F1 {single} (the other modality answering where one is missing); by itself on "
          f"the clips that have it: {alone}; wrote {path}")
    return 0


def write_late_fusion(out: str | os.PathLike, fit: dict[str, Any], fitted_on: str,
                      ser_model_dir: str | os.PathLike, fer_model_dir: str | os.PathLike,
                      extra: dict[str, Any] | None = None) -> Path:
    """Write ``late_fusion.json`` (atomically) from a ``fit_late_fusion`` result, naming the models it fits."""
    models = {name: {"dir": _display_path(folder), "sha256": model_fingerprint(folder)}
              for name, folder in (("ser", ser_model_dir), ("fer", fer_model_dir))}
    data = {"weights": fit["weights"], "rule": fit["rule"], "fitted_on": fitted_on, "models": models,
            **{k: v for k, v in fit.items() if k not in ("weights", "rule")}, **(extra or {})}
    return write_json(Path(out) / WEIGHTS_FILE, data)


def _display_path(folder: str | os.PathLike) -> str:
    """Repository-relative when inside the repository, so a shipped file names no machine's paths."""
    path = Path(folder).resolve()
    try:
        return path.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(path)


if __name__ == "__main__":
    quiet_tensorflow()
    sys.exit(main())
