"""Frozen pretrained encoders for the joint model: per-frame face embeddings and Whisper hidden states.

The joint model on pretrained branches never runs these encoders inside its graph: ``fusion.preprocess``
runs them once per clip and caches their outputs (compact: a 4 s clip is ~40 KB of face embeddings and
~350 KB of speech states), so training only reads small arrays.

Face encoders (``--face-encoder``), each mapping gray crops (n, s, s) uint8 to (n, dim) float32:

- ``fer``: the backbone inside the face model of ``saved_models/fer`` (or a fer run folder given as a path)
  when that model is ``faceres`` (MobileNetV1, face-pretrained, then tuned on FER2013): its 1024-d pooled
  features, the face model's own view of the face.
- ``faceres``: the pinned face-identity MobileNetV1 of ``fer.backbones`` (no emotion training), 1024-d.
- ``auto`` (default): ``fer`` when the shipped face model has that backbone, else ``faceres``.
- ``tiny``: a seeded random 16-d conv net, a stand-in for tests (no downloads, milliseconds).

Audio encoders (``--audio-encoder``), each mapping a 16 kHz waveform to (steps, states, dim) float16:

- ``whisper``: every hidden state of the pinned Whisper-base encoder (7 x 512), as ``ser``'s Whisper model reads
  them (silence trimmed, level normalised, 20 ms steps averaged in fours: 12.5 steps per second); the model
  learns one weight per state (layer weighting).
- ``tiny``: a seeded random projection of a 16-band log-mel into 3 states of 8, same step rate (tests).
"""
from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
SHIPPED_FER = REPO_ROOT / "saved_models" / "fer"
FACE_ENCODERS = ("auto", "fer", "faceres", "tiny")
AUDIO_ENCODERS = ("whisper", "tiny")
FACERES_LAYER = "faceres_backbone"
AUDIO_STEP_RATE = 12.5      # states per second: 100 mel frames/s, Whisper's stride 2, pooled by 4
TINY_FACE_SIZE, TINY_FACE_DIM = 48, 16
TINY_AUDIO_STATES, TINY_AUDIO_DIM, TINY_N_MELS = 3, 8, 16
BATCH = 64

_CACHE: dict[tuple[str, str], Any] = {}
_LOCK = threading.Lock()


class EncoderUnavailableError(RuntimeError):
    """The encoder asked for cannot be built here (weights missing, a face model without the backbone)."""


@dataclass
class FaceEncoder:
    """Gray face crops (n, input_size, input_size) uint8 -> (n, dim) float32 embeddings."""

    name: str
    fingerprint: str    # part of the cache key: embeddings of another encoder never mix
    input_size: int
    dim: int
    embed: Callable[[np.ndarray], np.ndarray]

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        crops = np.asarray(crops)
        if crops.ndim != 3 or crops.shape[1:] != (self.input_size, self.input_size):
            raise ValueError(f"face encoder {self.name} takes (n, {self.input_size}, {self.input_size}) crops, "
                             f"got {crops.shape}")
        if len(crops) == 0:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate([np.asarray(self.embed(crops[i:i + BATCH].astype(np.float32)[..., None]), np.float32)
                               for i in range(0, len(crops), BATCH)])


@dataclass
class AudioEncoder:
    """Mono waveform at 16 kHz -> (steps, states, dim) float16, ``AUDIO_STEP_RATE`` steps per second."""

    name: str
    fingerprint: str
    states: int
    dim: int
    encode: Callable[[np.ndarray], np.ndarray]

    def __call__(self, y: np.ndarray) -> np.ndarray:
        out = np.asarray(self.encode(np.asarray(y, np.float32)), np.float16)
        if out.ndim != 3 or out.shape[1:] != (self.states, self.dim):
            raise ValueError(f"audio encoder {self.name} returned {out.shape}, expected (steps, {self.states}, "
                             f"{self.dim})")
        return out


def _short_hash(*parts: Any) -> str:
    return hashlib.sha1("|".join(map(str, parts)).encode()).hexdigest()[:12]


def _find_faceres(model) -> Any | None:
    """The functional (sub)model that holds the faceres backbone, searched through wrappers (flip averaging)."""
    import keras

    if any(layer.name == FACERES_LAYER for layer in model.layers):
        return model
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found = _find_faceres(layer)
            if found is not None:
                return found
    return None


def _backbone_output(model) -> Any:
    """The backbone's output tensor *in ``model``'s graph* (``layer.output`` of a nested model is its own graph's)."""
    layer = model.get_layer(FACERES_LAYER)
    nodes = [n for n in layer._inbound_nodes if not n.is_input]
    return nodes[-1].outputs[0]


def fer_has_backbone(fer_dir: str | os.PathLike | None = None) -> bool:
    """Whether a fer run folder's model is a ``faceres`` model (read from its config, no model loading)."""
    from core.io import read_json

    config = Path(fer_dir or SHIPPED_FER) / "config.json"
    if not config.is_file():
        return False
    text = str(read_json(config).get("model", ""))
    return "faceres" in text


def _fer_backbone_encoder(fer_dir: str | os.PathLike | None) -> FaceEncoder:
    import keras
    import tensorflow as tf

    import fer.models  # noqa: F401  registers the face models' custom layers
    from core.io import load_keras_model
    from core.weights import sha256_of

    folder = Path(fer_dir or SHIPPED_FER)
    path = folder / "model.keras"
    if not path.is_file():
        raise EncoderUnavailableError(f"no face model at {path}")
    model = load_keras_model(path)
    inner = _find_faceres(model)
    if inner is None:
        raise EncoderUnavailableError(f"{path} has no {FACERES_LAYER} layer (it is not a faceres model); use "
                                      "--face-encoder faceres for the pinned face backbone")
    net = keras.Model(inner.input, _backbone_output(inner), name="fer_face_embedding")
    size = int(net.input_shape[1])
    fn = tf.function(lambda x: net(x, training=False),
                     input_signature=[tf.TensorSpec([None, size, size, 1], tf.float32)])
    return FaceEncoder("fer", "fer-" + sha256_of(path)[:16], size, int(net.output_shape[-1]),
                       lambda x: fn(x).numpy())


def _pinned_faceres_encoder() -> FaceEncoder:
    import keras
    import tensorflow as tf

    from fer import backbones
    from fer.models import INPUT_SHAPE, build_faceres
    from core.weights import WeightsUnavailableError

    try:
        model = build_faceres(INPUT_SHAPE, weights="faceres", dropout=0.0)
    except WeightsUnavailableError as exc:
        raise EncoderUnavailableError(str(exc)) from exc
    net = keras.Model(model.input, _backbone_output(model), name="faceres_face_embedding")
    size = INPUT_SHAPE[0]
    fn = tf.function(lambda x: net(x, training=False),
                     input_signature=[tf.TensorSpec([None, size, size, 1], tf.float32)])
    return FaceEncoder("faceres", "faceres-" + backbones.TARBALL_SHA256[:16], size, int(net.output_shape[-1]),
                       lambda x: fn(x).numpy())


def _tiny_face_encoder(seed: int = 0) -> FaceEncoder:
    """A fixed random conv net in NumPy: 4x4 average pooling, a random projection, tanh."""
    rng = np.random.default_rng(seed)
    cells = (TINY_FACE_SIZE // 4) ** 2
    projection = rng.normal(0, 1 / np.sqrt(cells), (cells, TINY_FACE_DIM)).astype(np.float32)

    def embed(x: np.ndarray) -> np.ndarray:
        pooled = x[..., 0].reshape(len(x), TINY_FACE_SIZE // 4, 4, TINY_FACE_SIZE // 4, 4).mean(axis=(2, 4))
        return np.tanh((pooled.reshape(len(x), -1) / 255.0 - 0.5) @ projection)

    return FaceEncoder("tiny", f"tiny-{seed}", TINY_FACE_SIZE, TINY_FACE_DIM, embed)


def _whisper_encoder(max_seconds: float) -> AudioEncoder:
    from ser.whisper.encoder import whisper_feature_config

    try:
        cfg = whisper_feature_config("", max_seconds=float(min(max_seconds, 30.0)))
    except (FileNotFoundError, OSError, RuntimeError, ValueError) as exc:
        raise EncoderUnavailableError(f"the Whisper encoder is not available: {exc}") from exc
    return AudioEncoder("whisper", cfg.key(), cfg.num_states, cfg.hidden_dim, cfg.frames)


def _tiny_audio_encoder(seed: int = 0) -> AudioEncoder:
    import librosa

    rng = np.random.default_rng(seed)
    projection = rng.normal(0, 0.5, (TINY_N_MELS, TINY_AUDIO_STATES * TINY_AUDIO_DIM)).astype(np.float32)

    def encode(y: np.ndarray) -> np.ndarray:
        if y.size < 512:
            y = np.pad(y, (0, 512 - y.size))
        mel = np.log(librosa.feature.melspectrogram(y=y, sr=16_000, n_fft=512, hop_length=160,
                                                    n_mels=TINY_N_MELS) + 1e-6).T
        mel = (mel - mel.mean(0)) / (mel.std(0) + 1e-3)
        steps = max(1, len(mel) // 8)  # 100 frames/s -> 12.5 steps/s, as Whisper's pooled states
        pooled = mel[: steps * 8].reshape(steps, 8, -1).mean(axis=1) if len(mel) >= 8 else mel.mean(0, keepdims=True)
        return np.tanh(pooled @ projection).reshape(len(pooled), TINY_AUDIO_STATES, TINY_AUDIO_DIM)

    return AudioEncoder("tiny", f"tiny-{seed}", TINY_AUDIO_STATES, TINY_AUDIO_DIM, encode)


def resolve_face_encoder(spec: str) -> str:
    """``auto`` -> ``fer`` or ``faceres``; other names and fer run folders pass through (checked)."""
    if spec == "auto":
        return "fer" if fer_has_backbone() else "faceres"
    if spec in FACE_ENCODERS or Path(spec).is_dir():
        return spec
    raise ValueError(f"face encoder must be one of {FACE_ENCODERS} or a fer run folder, got {spec!r}")


def get_face_encoder(spec: str = "auto") -> FaceEncoder:
    """One encoder per spec and process (loading a face model costs a second and ~50 MB)."""
    name = resolve_face_encoder(spec)
    with _LOCK:
        key = ("face", name)
        if key not in _CACHE:
            if name == "tiny":
                _CACHE[key] = _tiny_face_encoder()
            elif name == "faceres":
                _CACHE[key] = _pinned_faceres_encoder()
            else:
                _CACHE[key] = _fer_backbone_encoder(None if name == "fer" else name)
        return _CACHE[key]


def get_audio_encoder(spec: str = "whisper", max_seconds: float = 10.0) -> AudioEncoder:
    if spec not in AUDIO_ENCODERS:
        raise ValueError(f"audio encoder must be one of {AUDIO_ENCODERS}, got {spec!r}")
    with _LOCK:
        key = ("audio", f"{spec}|{max_seconds}")
        if key not in _CACHE:
            _CACHE[key] = _tiny_audio_encoder() if spec == "tiny" else _whisper_encoder(max_seconds)
        return _CACHE[key]
