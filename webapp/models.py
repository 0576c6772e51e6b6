"""The server's view of the trained models: load what exists in the models folder, once.

``<models>/ser/``, ``<models>/fer/`` and ``<models>/fusion/`` each hold ``model.keras`` +
``config.json``; a missing or broken one is reported by ``/api/health`` and the server runs
with the rest. The predictors come from the packages' public APIs (``ser.predict``,
``fer.predict``, ``fusion.predict``); tests inject fakes with the same methods.

Loading takes 20-50 s (TensorFlow's import, the Whisper encoder, warm-up), so ``ModelLoader``
does it in a background thread while the server already answers: ``Models.loading`` and
``Models.progress`` say how far it got.

The live stream batches: ``classify_faces`` runs the crops of many frames (from many streams) in
one model call, ``predict_voice_batch`` the windows of many streams in one encoder call.
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
LIVE_FACE = "fer_live"  # the live stream's face model when it is not the uploads' one (see ModelLoader)
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


def face_box(face: Any) -> list[int]:
    """``[x, y, w, h]`` of a ``fer.faces.Face`` or of a plain box."""
    return [int(v) for v in (face.box if hasattr(face, "box") else face)]


class Models:
    """Loaded predictors plus thread-safe calls into them.

    While a ``ModelLoader`` fills the slots, ``loading`` is True and ``progress`` (0..1) and ``step``
    say how far it got; every slot then reports ``error="loading"``.
    """

    def __init__(self, ser: Any = None, fer: Any = None, fusion: Any = None,
                 errors: dict[str, str] | None = None, fer_live: Any = None) -> None:
        errors = errors or {}
        self.slots = {
            name: ModelSlot(name, predictor, _classes_of(predictor) if predictor is not None else [],
                            None if predictor is not None else errors.get(name, "not loaded"))
            for name, predictor in (("ser", ser), ("fer", fer), ("fusion", fusion), (LIVE_FACE, fer_live))
        }
        self.loading = False
        self.progress = 1.0
        self.step = ""

    @property
    def voice(self) -> ModelSlot:
        return self.slots["ser"]

    @property
    def face(self) -> ModelSlot:
        return self.slots["fer"]

    @property
    def fusion(self) -> ModelSlot:
        return self.slots["fusion"]

    @property
    def live_face(self) -> ModelSlot:
        """The live stream's face model: its own small one when loaded, else the uploads' one."""
        live = self.slots[LIVE_FACE]
        return live if live.loaded else self.face

    def info(self) -> dict[str, dict[str, Any]]:
        """Every modality; the live face model only when one is configured apart from the uploads' one. The
        ``fusion`` entry is ``fusion_info()``: late fusion counts as a loaded fusion."""
        out = {name: slot.info() for name, slot in self.slots.items()
               if name != LIVE_FACE or slot.loaded or slot.error not in (None, "not loaded")}
        out["fusion"] = self.fusion_info()
        return out

    def fusion_info(self) -> dict[str, Any]:
        """The fusion the server uses, with its ``kind``: ``joint`` (a fusion.train model in ``fusion/``), else
        ``late`` (the voice and face models' probabilities fused with the late-fusion weights and rule, as
        ``python -m fusion.predict`` does without a joint model: the shipped ``fusion/late_fusion.json``). An
        error only when neither is usable: no joint model and the voice or face model missing."""
        joint = self.fusion
        if joint.loaded:
            return joint.info() | {"kind": "joint"}
        missing = [slot.name for slot in (self.voice, self.face) if not slot.loaded]
        if self.loading and (missing or joint.error == "loading"):  # which fusion is not known yet
            return {"loaded": False, "classes": [], "error": "loading"}
        if not missing:
            return {"loaded": True, "classes": list(EMOTIONS), "error": None, "kind": "late"}
        return {"loaded": False, "classes": [], "error": f"no joint model ({joint.error}), and late fusion needs "
                                                         f"the ser and fer models ({' and '.join(missing)} not loaded)"}

    def set_predictor(self, name: str, predictor: Any = None, error: str | None = None) -> None:
        """Fill one slot (the loader does, while the server already runs)."""
        slot = self.slots[name]
        with slot.lock:
            slot.classes = _classes_of(predictor) if predictor is not None else []
            slot.error = None if predictor is not None else (error or "not loaded")
            slot.predictor = predictor

    # ---- voice ---------------------------------------------------------------------------
    def predict_voice(self, y: np.ndarray, sr: int) -> dict[str, float]:
        slot = self._require(self.voice, "voice")
        with slot.lock:
            scores = slot.predictor.predict_waveform(y, sr)
        return to_probabilities(scores, slot.classes)

    def predict_voice_batch(self, windows: Sequence[np.ndarray], sr: int) -> list[dict[str, float] | Exception]:
        """``predict_voice`` of several live windows, their model inputs in one call where the predictor
        allows it (``speech_segments`` + ``window_results``, as SERPredictor has).

        Each item is the probabilities or the exception that window raised (NoSpeechError for hum, noise or
        music), so one bad window never costs the others their answer.
        """
        slot = self._require(self.voice, "voice")
        predictor = slot.predictor
        if not (hasattr(predictor, "speech_segments") and hasattr(predictor, "window_results")):
            out: list[dict[str, float] | Exception] = []
            for y in windows:
                try:
                    out.append(self.predict_voice(y, sr))
                except Exception as exc:  # handed back per window, see above
                    out.append(exc)
            return out
        from ser.predict import strongest_refusal

        results: list[Any] = [None] * len(windows)
        parts: list[tuple[int, np.ndarray]] = []
        for i, y in enumerate(windows):
            try:  # the speech check and level normalisation of ser.predict, window by window
                parts.extend((i, w) for _, _, w in predictor.speech_segments(y, sr))
            except Exception as exc:
                results[i] = exc
        if parts:
            try:
                with slot.lock:
                    heard = predictor.window_results([w for _, w in parts])
            except Exception as exc:  # the model itself failed: every window that reached it says so
                for i, _ in parts:
                    results[i] = exc
            else:
                for i in {i for i, _ in parts}:
                    mine = [p for (j, _), p in zip(parts, heard) if j == i]
                    speech = [p for p in mine if not isinstance(p, Exception)]
                    # as SERPredictor.predict_segments: the window's parts with speech, or why none had any
                    results[i] = (to_probabilities(np.mean(speech, axis=0), slot.classes) if speech
                                  else strongest_refusal(mine))
        return results

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

    # ---- faces ---------------------------------------------------------------------------
    def predict_faces(self, image_bgr: np.ndarray, live: bool = False) -> list[dict]:
        """FERPredictor.predict_image faces, probabilities in EMOTIONS order, largest face first (``live``: by
        the live stream's face model)."""
        slot = self._require(self.live_face if live else self.face, "face")
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

    @property
    def face_batchable(self) -> bool:
        """Whether faces can be found and classified separately (FERPredictor can), so the crops of many
        frames share one model call. Other predictors get ``predict_faces`` frame by frame."""
        p = self.live_face.predictor
        return p is not None and all(hasattr(p, a) for a in ("predict_crops", "detector", "face_size", "margin"))

    def find_faces(self, image_bgr: np.ndarray, near: Sequence[int] | None = None, pad: float = 0.5,
                   min_size: int | None = None) -> list[Any]:
        """Faces found by the predictor's own detector, largest first, as ``fer.faces`` gives them (``Face``
        objects with landmarks, or boxes from a detector without): ``classify_faces`` cuts them as
        ``FERPredictor.predict_image`` does. ``face_box`` reads the box of either.

        ``near``: search only around this box, grown by ``pad`` box sizes each side, for faces at least
        half its size; a live face moves little between frames, and with haar this costs a tenth of a
        full search.
        """
        import fer.faces

        predictor = self._require(self.live_face, "face").predictor
        # detect_faces_with_landmarks where fer.faces has it (landmarks give aligned crops), else plain boxes
        detect = getattr(fer.faces, "detect_faces_with_landmarks", fer.faces.detect_faces)
        if near is None:
            return list(detect(image_bgr, method=predictor.detector, min_size=min_size))
        height, width = image_bgr.shape[:2]
        x, y, w, h = near
        x0, y0 = max(0, int(x - pad * w)), max(0, int(y - pad * h))
        x1, y1 = min(width, int(x + w + pad * w)), min(height, int(y + h + pad * h))
        if x1 - x0 < 24 or y1 - y0 < 24:
            return []
        region = np.ascontiguousarray(image_bgr[y0:y1, x0:x1])
        found = detect(region, method=predictor.detector, min_size=max(20, int(0.5 * min(w, h))))
        return [f.scaled(1.0, x0, y0) if hasattr(f, "scaled") else (f[0] + x0, f[1] + y0, f[2], f[3]) for f in found]

    def classify_faces(self, frames: Sequence[tuple[np.ndarray, Sequence[Any]]]) -> list[list[dict]]:
        """Faces (``box``, ``label``, ``probabilities``) for several ``(image, faces from find_faces)``: the
        crops of all of them go through the model in one call. Crops are cut as ``FERPredictor.predict_image``
        cuts them (``fer.faces.crop_face`` with the predictor's size and margin: aligned when the face has
        landmarks), so a face gets the same answer either way."""
        from fer.faces import crop_face

        slot = self._require(self.live_face, "face")
        predictor = slot.predictor
        crops = [crop_face(image, face, size=predictor.face_size, margin=predictor.margin)
                 for image, faces in frames for face in faces]
        if crops:
            with slot.lock:
                scores = np.asarray(predictor.predict_crops(np.stack(crops)))
        out, k = [], 0
        for _, faces in frames:
            found = []
            for face in faces:
                probs = to_probabilities(scores[k], slot.classes)
                probs = {e: probs[e] for e in EMOTIONS}
                found.append({"box": face_box(face), "label": top_label(probs), "probabilities": probs})
                k += 1
            out.append(sorted(found, key=lambda f: f["box"][2] * f["box"][3], reverse=True))
        return out

    def predict_fusion_file(self, path: str) -> dict[str, float]:
        """The fusion model's probabilities for a video file (``FusionPredictor.predict_clip``)."""
        slot = self._require(self.fusion, "fusion")
        with slot.lock:
            answer = slot.predictor.predict_clip(path)
        probs = answer["probabilities"]
        return {e: round(float(probs.get(e, 0.0)), PRECISION) for e in EMOTIONS}

    def _require(self, slot: ModelSlot, what: str) -> ModelSlot:
        if not slot.loaded:
            if self.loading:
                raise ModelUnavailable(f"the {what} model is still loading ({round(100 * self.progress)} %); "
                                       "retry in a few seconds")
            raise ModelUnavailable(f"no {what} model is loaded ({slot.name}: {slot.error})")
        return slot

    def warmup(self, names: Sequence[str] = ("ser", "fer", LIVE_FACE)) -> None:
        """One call per model so the first live request does not pay graph tracing / numba compilation."""
        def voice() -> None:
            answer = self.predict_voice_batch([warmup_voice(WARMUP_SECONDS)], 16000)[0]
            if isinstance(answer, Exception):
                raise answer

        def live_face() -> None:
            self.predict_faces(np.full((240, 320, 3), 128, np.uint8), live=True)
            if self.face_batchable:
                self.classify_faces([(np.full((96, 96, 3), 128, np.uint8), [[24, 24, 48, 48]])])

        calls = {"ser": voice, "fer": lambda: self.predict_faces(np.full((240, 320, 3), 128, np.uint8)),
                 LIVE_FACE: live_face}
        for name in names:
            if name in calls and self.slots[name].loaded:
                start = time.perf_counter()
                try:
                    calls[name]()
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
    # "": the face package's own default detector, so the page follows fer.predict when that changes
    module = importlib.import_module("fer.predict")
    return module.FERPredictor(model_dir, detector=detector) if detector else module.FERPredictor(model_dir)


def _fusion_factory(model_dir: Path, detector: str) -> Any:
    # speech_model=False: the server asks the joint model only about clips its own voice model heard speech in
    return importlib.import_module("fusion.predict").FusionPredictor(model_dir, speech_model=False)


def _fer_live_factory(model_dir: Path, detector: str, tflite: str = "") -> Any:
    """The live stream's face model; its exported TFLite file when asked for and present: 8 faces cost 3.9 ms
    there against 13.3 ms through the Keras graph (fer_tiny, one thread), probabilities within 1e-4."""
    module = importlib.import_module("fer.predict")
    options: dict[str, Any] = {"detector": detector} if detector else {}
    if tflite and (model_dir / f"model_{tflite}.tflite").is_file():
        options["tflite"] = tflite
    elif tflite:
        log.info("%s has no model_%s.tflite; the live stream uses its Keras model", model_dir, tflite)
    return module.FERPredictor(model_dir, **options)


FACTORIES: dict[str, Callable[..., Any]] = {
    "ser": _ser_factory, "fer": _fer_factory, "fusion": _fusion_factory, LIVE_FACE: _fer_live_factory,
}


def configure_threads(threads: int) -> None:
    """TensorFlow threads (within an op and across a graph's ops); must run before TensorFlow starts.

    One lets the face and the voice work each use one core side by side: with TensorFlow's default (all
    cores) they fight over the same cores; a 48x48 face batch took 8.7 ms instead of 3.6 ms on the 2-core
    machine, and with two inter-op threads a Whisper call spread over both cores and made the face ticks
    that ran meanwhile 8x slower (63 ms against 8 ms at the median). 0 keeps TensorFlow's default.
    """
    if threads <= 0:
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # already initialised (tests, or a second app in one process): keep what is set
        log.debug("TensorFlow threads already fixed; --model-threads has no effect in this process")


class ModelLoader:
    """Fills a ``Models`` from the models folder, in a background thread or in the caller's.

    ``live_face``: a folder in the models folder (``fer_tiny``) whose face model the live stream uses
    instead of ``fer``: frames come many per second, and the uploads' model may be one that is more
    accurate but several times slower per face. Missing, the stream uses ``fer`` too.
    """

    def __init__(self, models_dir: str | Path | None, detector: str = "", warmup: bool = True,
                 threads: int = 0, live_face: str = "", live_tflite: str = "") -> None:
        self.root = Path(models_dir) if models_dir is not None else None
        self.detector, self.warmup, self.threads = detector, warmup, threads
        self.live_face = live_face if live_face not in ("", "fer") else ""
        self.live_tflite = live_tflite
        slots = MODALITIES + ((LIVE_FACE,) if self.live_face else ())
        self.models = Models(errors={name: "loading" for name in slots})
        self.models.loading, self.models.progress, self.models.step = True, 0.0, "starting"
        self.thread: threading.Thread | None = None

    def start(self) -> Models:
        """Start loading in a daemon thread (once); the Models says ``loading`` until it is done."""
        if self.thread is None:
            self.thread = threading.Thread(target=self.run, name="model-loader", daemon=True)
            self.thread.start()
        return self.models

    def run(self) -> Models:
        models = self.models
        models.loading, models.progress = True, 0.0
        started = time.perf_counter()
        try:
            found = {name: self._missing(name) for name in MODALITIES}
            if self.live_face:
                found[LIVE_FACE] = self._missing(self.live_face)
                if found[LIVE_FACE] is not None:
                    found[LIVE_FACE] += "; the live stream uses fer"
            todo = [name for name, missing in found.items() if missing is None]
            warm = [name for name in todo if name in ("ser", "fer", LIVE_FACE)] if self.warmup else []
            # TensorFlow's import is a large share of the start-up: it counts as a step of its own.
            steps = max(1, len(todo) + len(warm) + (1 if todo else 0))
            done = 0
            for name, missing in found.items():
                if missing is not None:
                    models.set_predictor(name, error=missing)
            if todo:
                models.step = "starting TensorFlow"
                configure_threads(self.threads)
                done += 1
                models.progress = done / steps
            for name in todo:
                models.step = f"loading the {name} model"
                predictor, error = self._load(name)
                models.set_predictor(name, predictor, error)
                done += 1
                models.progress = done / steps
            for name in warm:
                models.step = f"warming up the {name} model"
                models.warmup([name])
                done += 1
                models.progress = done / steps
        finally:
            models.step, models.progress, models.loading = "", 1.0, False
        loaded = [name for name, slot in models.slots.items() if slot.loaded]
        log.info("models ready in %.1f s: %s", time.perf_counter() - started, ", ".join(loaded) or "none")
        return models

    def _missing(self, name: str) -> str | None:
        if self.root is None:
            return "no models folder given"
        missing = [f for f in MODEL_FILES if not (self.root / name / f).is_file()]
        return f"{name}/{' and '.join(missing)} not found in the models folder" if missing else None

    def _load(self, name: str) -> tuple[Any, str | None]:
        model_dir = self.root / (self.live_face if name == LIVE_FACE else name)
        try:
            if name == LIVE_FACE:
                predictor = FACTORIES[name](model_dir, self.detector, self.live_tflite)
            else:
                predictor = FACTORIES[name](model_dir, self.detector)
        except Exception as exc:  # a broken model must not stop the server: report it in /api/health
            # /api/health is public: name files relative to the models folder, not by server path.
            reason = str(exc).replace(str(model_dir.resolve()), name).replace(str(model_dir), name)
            log.warning("could not load %s model from %s: %s", name, model_dir, exc)
            return None, f"{type(exc).__name__}: {reason}"
        log.info("loaded %s model from %s", name, model_dir)
        return predictor, None


def load_models(models_dir: str | Path | None, detector: str = "", warmup: bool = True,
                threads: int = 0, live_face: str = "", live_tflite: str = "") -> Models:
    """Load every modality found under ``models_dir`` now; record why the others are missing."""
    return ModelLoader(models_dir, detector, warmup, threads, live_face, live_tflite).run()
