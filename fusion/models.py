"""The audio-visual network: per-frame MobileNetV2 on the full frame and the face crop, each followed by a
2-layer LSTM; a shallow CNN + LSTM over the log-mel spectrogram; the three embeddings concatenated,
dense layers and a 7-way softmax.

With pretrained encoders (``ModelConfig.pretrained``, see ``fusion.encoders``) the inputs are the cached
encoder outputs instead: ``face_emb`` (B, T, D) per-frame face embeddings with ``face_mask`` / ``frame_mask``
going through the same 2-layer LSTM, and ``audio_states`` (B, S, L, H), every hidden state of the speech
encoder, mixed by learned softmax weights per state (``LayerWeights``), projected and read by an LSTM
(``audio_mask`` marks real steps).

Inputs (a dict, only the enabled modalities): ``frames`` (B, T, S, S, 3) uint8, ``faces`` (B, T, F, F, 1)
uint8, ``face_mask`` (B, T) 1 where a face was found, ``frame_mask`` (B, T) 1 on real (unpadded) frames,
``mel`` (B, M, n_mels, 1) float, ``mel_mask`` (B, M). Padding is masked in every LSTM, so a batch is padded
only to its own longest clip. Outputs: ``emotion`` (the fused prediction) and, with more than one
modality, one auxiliary head per modality (``audio``, ``frame``, ``face``): trained with a small loss
weight, they keep every branch informative and give each modality's own prediction at inference.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import keras
from keras import layers, ops

from core import weights as core_weights
from core.labels import NUM_CLASSES
from core.weights import WeightsUnavailableError

MODALITIES = ("frame", "face", "audio")
BACKBONES = {"frame": "frame_backbone", "face": "face_backbone"}
IMAGENET_SIZES = (96, 128, 160, 192, 224)
IMAGENET_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)




@dataclass
class ModelConfig:
    image_size: int = 112
    face_size: int = 112
    n_mels: int = 64
    alpha: float = 0.35          # MobileNetV2 width; 0.35 keeps 2 x 10 frames/s real-time on one CPU core
    weights: str = "imagenet"    # imagenet | none | PATH to a MobileNetV2 no-top weights file
    lstm_units: int = 128
    audio_filters: int = 32
    audio_lstm_units: int = 128
    dense_units: int = 128
    dropout: float = 0.3
    modalities: str = "frame,face,audio"
    # pretrained encoders: inputs are cached embeddings of these sizes (fusion.preprocess.resolve_encoders)
    pretrained: bool = False
    temporal: str = "lstm"       # pretrained branches: lstm, or stats (masked mean + std over time, then dense)
    face_dim: int = 0
    audio_states: int = 0
    audio_dim: int = 0

    @property
    def modality_list(self) -> list[str]:
        return parse_modalities(self.modalities)


def parse_modalities(text: str | Sequence[str]) -> list[str]:
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    unknown = [m for m in items if m not in MODALITIES]
    if not items or unknown:
        raise ValueError(f"modalities must be a non-empty subset of {MODALITIES}, got {text!r}")
    return [m for m in MODALITIES if m in items]


@keras.saving.register_keras_serializable(package="fusion")
class MaskToBool(layers.Layer):
    """A 0/1 float mask -> the boolean mask Keras RNNs take."""

    def call(self, weights):  # not named ``mask``: Keras treats a ``mask`` argument as the implicit mask
        return ops.greater(weights, 0.5)

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="fusion")
class DownsampleMask(layers.Layer):
    """Keep every ``factor``-th step of a (B, T) mask, matching ``padding="same"`` pooling by ``factor``."""

    def __init__(self, factor: int, **kwargs):
        super().__init__(**kwargs)
        self.factor = int(factor)

    def call(self, weights):
        return weights[:, :: self.factor]

    def compute_output_shape(self, input_shape):
        steps = None if input_shape[1] is None else -(-input_shape[1] // self.factor)
        return (input_shape[0], steps)

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


@keras.saving.register_keras_serializable(package="fusion")
class TimeMask(layers.Layer):
    """Zero a (B, T, ...) tensor at padded steps, so convolutions and pooling never see padding values."""

    def call(self, features, weights):
        weights = ops.cast(weights, features.dtype)
        return features * ops.reshape(weights, (*ops.shape(weights), *([1] * (len(features.shape) - 2))))

    def compute_output_shape(self, features_shape, weights_shape):
        return features_shape


@keras.saving.register_keras_serializable(package="fusion")
class GateByMask(layers.Layer):
    """Zero the features of frames without a face and append the mask, so the LSTM knows they are missing."""

    def call(self, features, found):
        found = ops.expand_dims(ops.cast(found, features.dtype), -1)
        return ops.concatenate([features * found, found], axis=-1)

    def compute_output_shape(self, features_shape, found_shape):
        return (*features_shape[:-1], features_shape[-1] + 1)


@keras.saving.register_keras_serializable(package="fusion")
class PerFrame(layers.TimeDistributed):
    """``TimeDistributed`` that folds time into the batch axis: one backbone call per batch.

    Keras 3.15's ``TimeDistributed`` maps over ``range(batch size)`` instead of ``range(time steps)``
    when the time axis is dynamic, so it fails or drops frames for variable-length clips.
    """

    def call(self, inputs, training=None, mask=None):
        shape = ops.shape(inputs)
        flat = ops.reshape(inputs, (-1, *inputs.shape[2:]))
        out = self.layer(flat, training=training)
        return ops.reshape(out, (shape[0], shape[1], *out.shape[1:]))


@keras.saving.register_keras_serializable(package="fusion")
class LayerWeights(layers.Layer):
    """A learned softmax-weighted sum over an encoder's hidden states: (B, S, L, H) -> (B, S, H).

    Which layers carry emotion is learned (SUPERB-style layer weighting); the weights start equal.
    """

    def build(self, input_shape):
        self.logits = self.add_weight(shape=(int(input_shape[-2]),), initializer="zeros", name="logits")

    def call(self, states):
        return ops.einsum("bslh,l->bsh", states, ops.softmax(self.logits))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-2], input_shape[-1])


def imagenet_file(alpha: float, size: int) -> str:
    rows = size if size in IMAGENET_SIZES else 224  # Keras loads the 224 file for other sizes
    return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{alpha}_{rows}_no_top.h5"


def resolve_weights(weights: str | os.PathLike | None, alpha: float, size: int) -> str | None:
    """None, "imagenet" (checked to be cached or downloadable) or an existing local weights file."""
    if weights is None or str(weights).lower() in ("none", "", "null"):
        return None
    filename = imagenet_file(alpha, size)
    hint = (f"Pass --weights PATH with a local MobileNetV2 no-top weights file (e.g. {filename}, copied from "
            "~/.keras/models on a machine with internet), or --weights none to train from scratch.")
    if str(weights).lower() == "imagenet":
        if alpha not in IMAGENET_ALPHAS:
            raise WeightsUnavailableError(f"no ImageNet MobileNetV2 weights for alpha={alpha}; "
                                          f"choose one of {IMAGENET_ALPHAS} or --weights none")
    return core_weights.resolve_weights(weights, filename, "MobileNetV2", hint)


def build_backbone(size: int, alpha: float, weights: str | None, name: str) -> keras.Model:
    """MobileNetV2 without its classifier, global-average pooled: one vector per image."""
    resolved = resolve_weights(weights, alpha, size)
    try:
        return keras.applications.MobileNetV2(input_shape=(size, size, 3), alpha=alpha, include_top=False,
                                              weights=resolved, pooling="avg", name=name)
    except (OSError, ValueError, Exception) as exc:  # download / file format errors come in many types
        if resolved is None:
            raise
        raise WeightsUnavailableError(f"could not load MobileNetV2 weights {resolved!r}: {exc}. "
                                      f"Pass --weights PATH (a local {imagenet_file(alpha, size)}) "
                                      "or --weights none.") from exc


def build_visual_branch(images, frame_mask, backbone: keras.Model, units: int, dropout: float, name: str,
                        face_mask=None):
    """Per-frame CNN embedding, then a 2-layer unidirectional LSTM over the real (unpadded) frames."""
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name=f"{name}_scale")(images)  # MobileNetV2 wants [-1, 1]
    if x.shape[-1] == 1:
        x = layers.Concatenate(axis=-1, name=f"{name}_rgb")([x, x, x])
    x = PerFrame(backbone, name=f"{name}_cnn")(x)
    if face_mask is not None:
        x = GateByMask(name=f"{name}_gate")(x, face_mask)
    x = layers.Dropout(dropout, name=f"{name}_dropout")(x)
    mask = MaskToBool(name=f"{name}_steps")(frame_mask)
    x = layers.LSTM(units, return_sequences=True, name=f"{name}_lstm1")(x, mask=mask)
    return layers.LSTM(units, name=f"{name}_lstm2")(x, mask=mask)


def build_audio_branch(mel, mel_mask, filters: int, units: int, n_mels: int, dropout: float):
    """Two conv blocks over (time, mel) then an LSTM over the downsampled time axis.

    Activations at padded steps are zeroed before each pooling: after a ReLU every real value is >= 0, so
    max-pooling a real step with a zeroed padded one returns the real value and padding changes nothing.
    """
    x, steps = mel, mel_mask
    for i, f in enumerate((filters, 2 * filters), start=1):
        x = layers.Conv2D(f, 3, padding="same", use_bias=False, name=f"audio_conv{i}")(x)
        # synchronized: under tf.distribute the batch statistics are all-reduced, so every replica keeps
        # the same moving averages (a no-op on one device).
        x = layers.BatchNormalization(synchronized=True, name=f"audio_bn{i}")(x)
        x = layers.ReLU(name=f"audio_relu{i}")(x)
        x = TimeMask(name=f"audio_zero_pad{i}")(x, steps)
        x = layers.MaxPooling2D(2, padding="same", name=f"audio_pool{i}")(x)
        steps = DownsampleMask(2, name=f"audio_mask_pool{i}")(steps)
    freq = -(-(-(-n_mels // 2)) // 2)
    x = layers.Reshape((-1, freq * 2 * filters), name="audio_frames")(x)
    x = layers.Dropout(dropout, name="audio_dropout")(x)
    mask = MaskToBool(name="audio_steps")(steps)
    return layers.LSTM(units, name="audio_lstm")(x, mask=mask)


TEMPORAL = ("lstm", "stats")


@keras.saving.register_keras_serializable(package="fusion")
class MaskedStats(layers.Layer):
    """Mean and standard deviation over the steps where ``weights`` is 1: (B, T, D), (B, T) -> (B, 2 D).

    Padding and masked steps never count, so a clip gets the same statistics alone or padded in a batch.
    """

    def call(self, features, weights):
        w = ops.expand_dims(ops.cast(weights, features.dtype), -1)
        count = ops.maximum(ops.sum(w, axis=1), 1.0)
        mean = ops.sum(features * w, axis=1) / count
        var = ops.sum(ops.square(features - ops.expand_dims(mean, 1)) * w, axis=1) / count
        return ops.concatenate([mean, ops.sqrt(var + 1e-6)], axis=-1)

    def compute_output_shape(self, features_shape, weights_shape):
        return (features_shape[0], 2 * features_shape[-1])


def build_embedding_face_branch(emb, face_mask, frame_mask, units: int, dropout: float, temporal: str = "lstm"):
    """Per-frame face embeddings (frozen encoder, cached) -> the same 2-layer LSTM as the pixel model, or
    (``temporal="stats"``) their mean and spread over the frames with a face, then a dense layer."""
    x = layers.LayerNormalization(name="face_norm")(emb)  # the encoders' feature scales differ widely
    if temporal == "stats":
        x = MaskedStats(name="face_stats")(x, face_mask)
        x = layers.Dropout(dropout, name="face_dropout")(x)
        return layers.Dense(units, activation="relu", name="face_dense")(x)
    x = GateByMask(name="face_gate")(x, face_mask)
    x = layers.Dropout(dropout, name="face_dropout")(x)
    mask = MaskToBool(name="face_steps")(frame_mask)
    x = layers.LSTM(units, return_sequences=True, name="face_lstm1")(x, mask=mask)
    return layers.LSTM(units, name="face_lstm2")(x, mask=mask)


def build_embedding_audio_branch(states, audio_mask, units: int, dropout: float, temporal: str = "lstm"):
    """Every hidden state of the speech encoder -> normalised per state, mixed by learned weights, an LSTM
    (or, ``temporal="stats"``, mean and spread over the real steps, then a dense layer)."""
    # Whisper's deeper states are ~10x larger than the first ones: normalise each before mixing, so the
    # learned weights choose layers instead of compensating scales.
    x = layers.LayerNormalization(name="audio_state_norm")(states)
    x = LayerWeights(name="audio_layer_weights")(x)
    if temporal == "stats":
        x = MaskedStats(name="audio_stats")(x, audio_mask)
        x = layers.Dropout(dropout, name="audio_dropout")(x)
        return layers.Dense(units, activation="relu", name="audio_dense")(x)
    x = layers.Dropout(dropout, name="audio_dropout")(x)
    x = layers.Dense(units, activation="relu", name="audio_project")(x)
    mask = MaskToBool(name="audio_steps")(audio_mask)
    return layers.LSTM(units, name="audio_lstm")(x, mask=mask)


def build_embedding_inputs(cfg: ModelConfig) -> dict:
    mods = cfg.modality_list
    if "frame" in mods:
        raise ValueError("the pretrained-encoder model has face and audio branches only: use --modalities "
                         "face,audio (or one of them)")
    inputs = {}
    if "face" in mods:
        if cfg.face_dim <= 0:
            raise ValueError("face_dim must be the face encoder's embedding size")
        inputs["face_emb"] = keras.Input((None, cfg.face_dim), name="face_emb")
        inputs["face_mask"] = keras.Input((None,), name="face_mask")
        inputs["frame_mask"] = keras.Input((None,), name="frame_mask")
    if "audio" in mods:
        if cfg.audio_states <= 0 or cfg.audio_dim <= 0:
            raise ValueError("audio_states / audio_dim must be the speech encoder's number of states and width")
        inputs["audio_states"] = keras.Input((None, cfg.audio_states, cfg.audio_dim), name="audio_states")
        inputs["audio_mask"] = keras.Input((None,), name="audio_mask")
    return inputs


def build_inputs(cfg: ModelConfig) -> dict:
    if cfg.pretrained:
        return build_embedding_inputs(cfg)
    mods = cfg.modality_list
    inputs = {}
    if "frame" in mods:
        inputs["frames"] = keras.Input((None, cfg.image_size, cfg.image_size, 3), dtype="uint8", name="frames")
    if "face" in mods:
        inputs["faces"] = keras.Input((None, cfg.face_size, cfg.face_size, 1), dtype="uint8", name="faces")
        inputs["face_mask"] = keras.Input((None,), name="face_mask")
    if "frame" in mods or "face" in mods:
        inputs["frame_mask"] = keras.Input((None,), name="frame_mask")
    if "audio" in mods:
        inputs["mel"] = keras.Input((None, cfg.n_mels, 1), name="mel")
        inputs["mel_mask"] = keras.Input((None,), name="mel_mask")
    return inputs


def build_model(cfg: ModelConfig, num_classes: int = NUM_CLASSES) -> keras.Model:
    """The fusion network for ``cfg.modalities``; a single modality gives the uni-modal baseline."""
    mods = cfg.modality_list
    inputs = build_inputs(cfg)
    embeddings = {}
    if cfg.pretrained:
        if cfg.temporal not in TEMPORAL:
            raise ValueError(f"temporal must be one of {TEMPORAL}, got {cfg.temporal!r}")
        if "face" in mods:
            embeddings["face"] = build_embedding_face_branch(inputs["face_emb"], inputs["face_mask"],
                                                             inputs["frame_mask"], cfg.lstm_units, cfg.dropout,
                                                             cfg.temporal)
        if "audio" in mods:
            embeddings["audio"] = build_embedding_audio_branch(inputs["audio_states"], inputs["audio_mask"],
                                                               cfg.audio_lstm_units, cfg.dropout, cfg.temporal)
    if "frame" in mods and not cfg.pretrained:
        backbone = build_backbone(cfg.image_size, cfg.alpha, cfg.weights, BACKBONES["frame"])
        embeddings["frame"] = build_visual_branch(inputs["frames"], inputs["frame_mask"], backbone,
                                                  cfg.lstm_units, cfg.dropout, "frame")
    if "face" in mods and not cfg.pretrained:
        backbone = build_backbone(cfg.face_size, cfg.alpha, cfg.weights, BACKBONES["face"])
        embeddings["face"] = build_visual_branch(inputs["faces"], inputs["frame_mask"], backbone,
                                                 cfg.lstm_units, cfg.dropout, "face", face_mask=inputs["face_mask"])
    if "audio" in mods and not cfg.pretrained:
        embeddings["audio"] = build_audio_branch(inputs["mel"], inputs["mel_mask"], cfg.audio_filters,
                                                 cfg.audio_lstm_units, cfg.n_mels, cfg.dropout)
    parts = [embeddings[m] for m in mods]
    x = layers.Concatenate(name="fusion_concat")(parts) if len(parts) > 1 else parts[0]
    x = layers.Dense(cfg.dense_units, activation="relu", name="fusion_dense")(x)
    x = layers.Dropout(cfg.dropout, name="fusion_dropout")(x)
    outputs = {"emotion": layers.Dense(num_classes, activation="softmax", name="emotion")(x)}
    if len(mods) > 1:
        for m in mods:
            outputs[m] = layers.Dense(num_classes, activation="softmax", name=f"{m}_head")(embeddings[m])
    prefix = "fusion_pretrained_" if cfg.pretrained else "fusion_"
    return keras.Model(inputs, outputs, name=prefix + "_".join(mods))


def backbones(model: keras.Model) -> list[keras.Model]:
    """The MobileNetV2 instances inside a fusion model."""
    found = []
    for layer in model.layers:
        inner = getattr(layer, "layer", None)
        if isinstance(layer, layers.TimeDistributed) and inner is not None and inner.name in BACKBONES.values():
            found.append(inner)
    return found


def set_backbones_trainable(model: keras.Model, trainable: bool) -> None:
    """Freeze / unfreeze the CNN backbones; BatchNorm stays frozen (fine-tuning keeps ImageNet statistics)."""
    for backbone in backbones(model):
        backbone.trainable = trainable
        if trainable:
            for layer in backbone.layers:
                if isinstance(layer, layers.BatchNormalization):
                    layer.trainable = False


def load_model(path: str | os.PathLike) -> keras.Model:
    """Load a saved fusion model (this module registers its custom layers)."""
    return keras.saving.load_model(str(path), compile=False)
