"""The server's view of the trained models: load what exists in the models folder, once.

``<models>/ser/``, ``<models>/fer/`` and ``<models>/fusion/`` each hold ``model.keras`` +
``config.json``; a missing or broken one is reported by ``/api/health`` and the server runs
with the rest. The predictors come from the packages' public APIs (``ser.predict``,
``fer.predict``, ``fusion.predict``); tests inject fakes with the same methods.
"""
from __future__ import annotations

import importlib
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from core.labels import EMOTIONS

log = logging.getLogger(__name__)

MODALITIES = ("ser", "fer", "fusion")
MODEL_FILES = ("model.keras", "config.json")
WARMUP_SECONDS = 1.0
PRECISION = 6  # decimals of every probability, as the CLIs print them


class VoiceModel(Protocol):
    """Raises ser.frontend.NoSpeechError for audio without speech (ser.predict.SERPredictor does)."""

    def predict_waveform(self, y: np.ndarray, sr: int) -> np.ndarray: ...

    def predict_segments(self, y: np.ndarray, sr: int) -> list[tuple[float, float, np.ndarray]]: ...


class FaceModel(Protocol):
    def predict_image(self, image_bgr: np.ndarray) -> list[dict]: ...


class ModelUnavailable(RuntimeError):
    """The modality a request needs has no loaded model."""


@dataclass
class ModelSlot:
    """One modality: the predictor (or None) and why it is missing."""
    name: str
    predictor: Any = None
    classes: list[str] = field(default_factory=list)
    error: str | None = None
    # Predictors are not documented as thread-safe; one call per model at a time also keeps
    # a 2-core machine from thrashing when live streams and uploads arrive together.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def loaded(self) -> bool:
        return self.predictor is not None

    def info(self) -> dict[str, Any]:
        return {"loaded": self.loaded, "classes": list(self.classes), "error": self.error}


def _classes_of(predictor: Any) -> list[str]:
    names = getattr(predictor, "class_names", None)
    return [str(n) for n in names] if names is not None else list(EMOTIONS)


def to_probabilities(scores: Sequence[float], classes: Sequence[str]) -> dict[str, float]:
    """Model output vector -> {emotion: p} in EMOTIONS order (classes a model lacks get 0)."""
    scores = np.asarray(scores, dtype=float).reshape(-1)
    if scores.size != len(classes):
        raise ValueError(f"model returned {scores.size} scores for {len(classes)} classes")
    by_name = dict(zip(classes, scores.tolist()))
    ordered = {e: round(float(by_name.get(e, 0.0)), PRECISION) for e in EMOTIONS}
    extra = {c: round(float(s), PRECISION) for c, s in by_name.items() if c not in ordered}
    return ordered | extra


def top_label(probabilities: dict[str, float]) -> str:
    return max(probabilities, key=probabilities.get)


class Models:
    """Loaded predictors plus thread-safe calls into them."""

    def __init__(self, ser: Any = None, fer: Any = None, fusion: Any = None,
                 errors: dict[str, str] | None = None) -> None:
        errors = errors or {}
        self.slots = {
            name: ModelSlot(name, predictor, _classes_of(predictor) if predictor is not None else [],
                            None if predictor is not None else errors.get(name, "not loaded"))
            for name, predictor in (("ser", ser), ("fer", fer), ("fusion", fusion))
        }

    @property
    def voice(self) -> ModelSlot:
        return self.slots["ser"]

    @property
    def face(self) -> ModelSlot:
        return self.slots["fer"]

    @property
    def fusion(self) -> ModelSlot:
        return self.slots["fusion"]

    def info(self) -> dict[str, dict[str, Any]]:
        return {name: slot.info() for name, slot in self.slots.items()}

    def predict_voice(self, y: np.ndarray, sr: int) -> dict[str, float]:
        slot = self._require(self.voice, "voice")
        with slot.lock:
            scores = slot.predictor.predict_waveform(y, sr)
        return to_probabilities(scores, slot.classes)

    def predict_voice_segments(self, y: np.ndarray, sr: int) -> tuple[dict[str, float], list[dict]]:
        """The recording's probabilities (the mean over its windows, as ``predict_voice``) and each window's
        ``start``, ``end`` (seconds), ``label`` and ``probabilities``."""
        slot = self._require(self.voice, "voice")
        with slot.lock:
            parts = slot.predictor.predict_segments(y, sr)
        segments = []
        for start, end, scores in parts:
            probs = to_probabilities(scores, slot.classes)
            segments.append({"start": round(float(start), 3), "end": round(float(end), 3),
                             "label": top_label(probs), "probabilities": probs})
        return to_probabilities(np.mean([scores for _, _, scores in parts], axis=0), slot.classes), segments

    def predict_faces(self, image_bgr: np.ndarray) -> list[dict]:
        """FERPredictor.predict_image faces, probabilities in EMOTIONS order, largest face first."""
        slot = self._require(self.face, "face")
        with slot.lock:
            faces = slot.predictor.predict_image(image_bgr)
        out = []
        for f in faces:
            probs = f["probabilities"]
            if not isinstance(probs, dict):
                probs = to_probabilities(probs, slot.classes)
            probs = {e: round(float(probs.get(e, 0.0)), PRECISION) for e in EMOTIONS}
            out.append({"box": [int(v) for v in f["box"]], "label": str(f.get("label") or top_label(probs)),
                        "probabilities": probs})
        return sorted(out, key=lambda f: f["box"][2] * f["box"][3], reverse=True)

    def predict_faces_near(self, image_bgr: np.ndarray, box: Sequence[int], pad: float) -> list[dict]:
        """predict_faces on the region around ``box`` (grown by ``pad`` box sizes each side), in image coordinates.

        A live face moves little between frames; searching only near it costs a quarter of a full
        Haar pass on a 320x240 frame.
        """
        height, width = image_bgr.shape[:2]
        x, y, w, h = box
        x0, y0 = max(0, int(x - pad * w)), max(0, int(y - pad * h))
        x1, y1 = min(width, int(x + w + pad * w)), min(height, int(y + h + pad * h))
        if x1 - x0 < 24 or y1 - y0 < 24:
            return []
        faces = self.predict_faces(np.ascontiguousarray(image_bgr[y0:y1, x0:x1]))
        return [f | {"box": [f["box"][0] + x0, f["box"][1] + y0, f["box"][2], f["box"][3]]} for f in faces]

    def predict_fusion_file(self, path: str) -> dict[str, float]:
        """The fusion model's probabilities for a video file (``FusionPredictor.predict_clip``)."""
        slot = self._require(self.fusion, "fusion")
        with slot.lock:
            answer = slot.predictor.predict_clip(path)
        probs = answer["probabilities"]
        return {e: round(float(probs.get(e, 0.0)), PRECISION) for e in EMOTIONS}

    @staticmethod
    def _require(slot: ModelSlot, what: str) -> ModelSlot:
        if not slot.loaded:
            raise ModelUnavailable(f"no {what} model is loaded ({slot.name}: {slot.error})")
        return slot

    def warmup(self) -> None:
        """One call per model so the first live request does not pay graph tracing / numba compilation."""
        for name, call in (("ser", lambda: self.predict_voice(warmup_voice(WARMUP_SECONDS), 16000)),
                           ("fer", lambda: self.predict_faces(np.full((240, 320, 3), 128, np.uint8)))):
            if self.slots[name].loaded:
                start = time.perf_counter()
                try:
                    call()
                except Exception as exc:  # a model that cannot answer is reported, not fatal
                    log.warning("%s warm-up failed: %s", name, exc)
                log.info("%s warm-up took %.1f s", name, time.perf_counter() - start)


def warmup_voice(seconds: float, sr: int = 16_000) -> np.ndarray:
    """Voice-like float32 (harmonics of a gliding pitch, a syllable-rate envelope and timbre): noise
    would warm up nothing, the speech check refuses it before the model runs."""
    t = np.arange(int(seconds * sr)) / sr
    phase = 2 * np.pi * np.cumsum(150.0 * (1 + 0.15 * np.sin(2 * np.pi * 0.7 * t))) / sr
    syllable = np.sin(2 * np.pi * 4.0 * t)
    y = sum(np.sin(k * phase) * (1 + 0.8 * syllable * (-1) ** k) / k for k in range(1, 12))
    return (0.1 * y * (1 + syllable) ** 2 / 4).astype(np.float32)


# ---- loading from the models folder ---------------------------------------------------------

def _ser_factory(model_dir: Path, detector: str) -> Any:
    return importlib.import_module("ser.predict").SERPredictor(model_dir)


def _fer_factory(model_dir: Path, detector: str) -> Any:
    return importlib.import_module("fer.predict").FERPredictor(model_dir, detector=detector)


def _fusion_factory(model_dir: Path, detector: str) -> Any:
    return importlib.import_module("fusion.predict").FusionPredictor(model_dir)


FACTORIES: dict[str, Callable[[Path, str], Any]] = {
    "ser": _ser_factory, "fer": _fer_factory, "fusion": _fusion_factory,
}


def load_models(models_dir: str | Path | None, detector: str = "haar", warmup: bool = True) -> Models:
    """Load every modality found under ``models_dir``; record why the others are missing."""
    predictors: dict[str, Any] = {}
    errors: dict[str, str] = {}
    root = Path(models_dir) if models_dir is not None else None
    for name in MODALITIES:
        if root is None:
            errors[name] = "no models folder given"
            continue
        model_dir = root / name
        missing = [f for f in MODEL_FILES if not (model_dir / f).is_file()]
        if missing:
            errors[name] = f"{name}/{' and '.join(missing)} not found in the models folder"
            continue
        try:
            predictors[name] = FACTORIES[name](model_dir, detector)
            log.info("loaded %s model from %s", name, model_dir)
        except Exception as exc:  # a broken model must not stop the server: report it in /api/health
            # /api/health is public: name files relative to the models folder, not by server path.
            reason = str(exc).replace(str(model_dir.resolve()), name).replace(str(model_dir), name)
            errors[name] = f"{type(exc).__name__}: {reason}"
            log.warning("could not load %s model from %s: %s", name, model_dir, exc)
    models = Models(errors=errors, **predictors)
    if warmup:
        models.warmup()
    return models
