"""Whisper's audio encoder as a Keras model that returns every layer's hidden states.

Architecture (Radford et al. 2022, as in openai/whisper and keras_hub's WhisperEncoder): two GELU
convolutions over the 80-band log-mel (the second halves the frame rate: 10 ms -> 20 ms), fixed
sinusoidal positions, pre-norm transformer layers, a final layer norm. Hidden states follow the
Hugging Face convention: the embeddings, the output of each layer but the last, and the last layer's
output after the final norm (``num_layers + 1`` states). Lower and middle layers carry more of the
voice's prosody than the last one, which is tuned for transcription, so heads weight all of them.

keras_hub has a Whisper backbone, but keras-hub 0.32 pulls in the full ``tensorflow`` wheel beside
``tensorflow-cpu``, tensorflow-text and huggingface_hub; this file is the encoder alone.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import keras
import numpy as np
from keras import layers, ops

N_MELS = 80
MAX_FRAMES = 3000  # 30 s of 10 ms mel frames: the positional table has MAX_FRAMES // 2 rows


@dataclass(frozen=True)
class WhisperEncoderConfig:
    num_layers: int = 6      # whisper-base
    num_heads: int = 8
    hidden_dim: int = 512
    ffn_dim: int = 2048
    n_mels: int = N_MELS
    max_positions: int = MAX_FRAMES // 2

    @property
    def num_states(self) -> int:
        return self.num_layers + 1

    def to_dict(self) -> dict:
        return asdict(self)


@keras.saving.register_keras_serializable(package="emotion_toolkit")
class PositionalEmbedding(layers.Layer):
    """Adds the first T rows of a fixed (max_positions, dim) table; T may vary between calls."""

    def __init__(self, max_positions: int, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.max_positions, self.dim = max_positions, dim

    def build(self, input_shape):
        self.table = self.add_weight(name="table", shape=(self.max_positions, self.dim), trainable=False,
                                     initializer=keras.initializers.Constant(sinusoids(self.max_positions, self.dim)))

    def call(self, x):
        return x + ops.expand_dims(self.table[: ops.shape(x)[1]], 0)

    def compute_output_shape(self, input_shape):  # JAX cannot infer it through the slice of a dynamic length
        return input_shape

    def get_config(self):
        return {**super().get_config(), "max_positions": self.max_positions, "dim": self.dim}


def sinusoids(length: int, channels: int, max_timescale: float = 10_000.0) -> np.ndarray:
    """Whisper's positional table (openai/whisper model.py ``sinusoids``)."""
    log_timescale = np.log(max_timescale) / (channels // 2 - 1)
    inv = np.exp(-log_timescale * np.arange(channels // 2))
    scaled = np.arange(length)[:, None] * inv[None, :]
    return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1).astype(np.float32)


def encoder_layer(x, cfg: WhisperEncoderConfig, name: str):
    """Pre-norm self-attention and GELU feed-forward blocks, each with a residual connection."""
    head_dim = cfg.hidden_dim // cfg.num_heads
    h = layers.LayerNormalization(epsilon=1e-5, name=f"{name}_attention_norm")(x)
    h = layers.MultiHeadAttention(cfg.num_heads, head_dim, name=f"{name}_attention")(h, h)
    x = layers.Add(name=f"{name}_attention_residual")([x, h])
    h = layers.LayerNormalization(epsilon=1e-5, name=f"{name}_ffn_norm")(x)
    h = layers.Dense(cfg.ffn_dim, activation="gelu", name=f"{name}_ffn_in")(h)  # Keras' gelu is the exact (erf) one
    h = layers.Dense(cfg.hidden_dim, name=f"{name}_ffn_out")(h)
    return layers.Add(name=f"{name}_ffn_residual")([x, h])


def build_whisper_encoder(cfg: WhisperEncoderConfig = WhisperEncoderConfig()) -> keras.Model:
    """(batch, frames, n_mels) log-mel -> list of ``cfg.num_states`` tensors (batch, ceil(frames / 2), dim)."""
    mel = keras.Input((None, cfg.n_mels), name="log_mel")
    x = layers.Conv1D(cfg.hidden_dim, 3, padding="same", activation="gelu", name="conv1")(mel)
    x = layers.ZeroPadding1D(1, name="conv2_pad")(x)  # PyTorch padding=1 with stride 2
    x = layers.Conv1D(cfg.hidden_dim, 3, strides=2, activation="gelu", name="conv2")(x)
    x = PositionalEmbedding(cfg.max_positions, cfg.hidden_dim, name="positions")(x)
    states = [x]
    for i in range(cfg.num_layers):
        x = encoder_layer(x, cfg, f"layer{i}")
        states.append(x)
    states[-1] = layers.LayerNormalization(epsilon=1e-5, name="final_norm")(x)
    return keras.Model(mel, states, name="whisper_encoder")


def config_from_variables(variables: dict[str, np.ndarray]) -> WhisperEncoderConfig:
    """The encoder's sizes, read off CTranslate2 variable shapes (any Whisper size: tiny ... large)."""
    num_layers = len({m.group(1) for k in variables if (m := re.match(r"encoder/layer_(\d+)/", k))})
    hidden, n_mels, _ = variables["encoder/conv1/weight"].shape
    return WhisperEncoderConfig(num_layers=num_layers, num_heads=int(variables["encoder/num_heads"]),
                                hidden_dim=hidden, ffn_dim=variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
                                n_mels=n_mels, max_positions=variables["encoder/position_encodings/encodings"].shape[0])


def load_ct2_encoder_weights(model: keras.Model, variables: dict[str, np.ndarray],
                             cfg: WhisperEncoderConfig) -> None:
    """Copy CTranslate2's ``encoder/...`` arrays into ``model`` (PyTorch layouts -> Keras layouts)."""
    v = {k: np.asarray(a, np.float32) for k, a in variables.items() if k != "encoder/num_heads"}
    d, heads = cfg.hidden_dim, cfg.num_heads
    head_dim = d // heads

    def conv(name):  # (out, in, k) -> (k, in, out)
        return [v[f"encoder/{name}/weight"].transpose(2, 1, 0), v[f"encoder/{name}/bias"]]

    def norm(prefix):
        return [v[f"{prefix}/gamma"], v[f"{prefix}/beta"]]

    def dense(prefix):
        return [v[f"{prefix}/weight"].T, v[f"{prefix}/bias"]]

    model.get_layer("conv1").set_weights(conv("conv1"))
    model.get_layer("conv2").set_weights(conv("conv2"))
    model.get_layer("positions").set_weights([v["encoder/position_encodings/encodings"]])
    model.get_layer("final_norm").set_weights(norm("encoder/layer_norm"))
    for i in range(cfg.num_layers):
        ct2, keras_name = f"encoder/layer_{i}", f"layer{i}"
        model.get_layer(f"{keras_name}_attention_norm").set_weights(norm(f"{ct2}/self_attention/layer_norm"))
        model.get_layer(f"{keras_name}_ffn_norm").set_weights(norm(f"{ct2}/ffn/layer_norm"))
        model.get_layer(f"{keras_name}_ffn_in").set_weights(dense(f"{ct2}/ffn/linear_0"))
        model.get_layer(f"{keras_name}_ffn_out").set_weights(dense(f"{ct2}/ffn/linear_1"))
        qkv_w = v[f"{ct2}/self_attention/linear_0/weight"]  # (3d, d): query, key, value rows
        qkv_b = v[f"{ct2}/self_attention/linear_0/bias"]
        out_w = v[f"{ct2}/self_attention/linear_1/weight"]
        weights = []
        for j in range(3):  # Keras kernels: (d, heads, head_dim); biases (heads, head_dim)
            weights += [qkv_w[j * d:(j + 1) * d].T.reshape(d, heads, head_dim),
                        qkv_b[j * d:(j + 1) * d].reshape(heads, head_dim)]
        weights += [out_w.T.reshape(heads, head_dim, d), v[f"{ct2}/self_attention/linear_1/bias"]]
        model.get_layer(f"{keras_name}_attention").set_weights(weights)


def ct2_encoder_variables(model: keras.Model) -> dict[str, np.ndarray]:
    """The inverse of ``load_ct2_encoder_weights``: CTranslate2 ``encoder/...`` arrays (float32) of ``model``,
    so a fine-tuned encoder is written as a folder that ``--encoder-dir`` reads (encoder only: ``ctranslate2``
    itself needs the decoder too)."""
    num_layers = sum(1 for layer in model.layers if layer.name.endswith("_ffn_in"))
    hidden = model.get_layer("conv1").get_weights()[0].shape[-1]
    heads = model.get_layer("layer0_attention").get_weights()[0].shape[1]
    v: dict[str, np.ndarray] = {"encoder/num_heads": np.array(heads, np.int16)}

    def put(prefix, layer, kind):
        w = [np.asarray(a, np.float32) for a in model.get_layer(layer).get_weights()]
        if kind == "conv":  # (k, in, out) -> (out, in, k)
            v[f"{prefix}/weight"], v[f"{prefix}/bias"] = w[0].transpose(2, 1, 0), w[1]
        elif kind == "norm":
            v[f"{prefix}/gamma"], v[f"{prefix}/beta"] = w
        else:
            v[f"{prefix}/weight"], v[f"{prefix}/bias"] = w[0].T, w[1]

    put("encoder/conv1", "conv1", "conv")
    put("encoder/conv2", "conv2", "conv")
    v["encoder/position_encodings/encodings"] = np.asarray(model.get_layer("positions").get_weights()[0], np.float32)
    put("encoder/layer_norm", "final_norm", "norm")
    for i in range(num_layers):
        ct2, name = f"encoder/layer_{i}", f"layer{i}"
        put(f"{ct2}/self_attention/layer_norm", f"{name}_attention_norm", "norm")
        put(f"{ct2}/ffn/layer_norm", f"{name}_ffn_norm", "norm")
        put(f"{ct2}/ffn/linear_0", f"{name}_ffn_in", "dense")
        put(f"{ct2}/ffn/linear_1", f"{name}_ffn_out", "dense")
        q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b = (np.asarray(a, np.float32)
                                                  for a in model.get_layer(f"{name}_attention").get_weights())
        v[f"{ct2}/self_attention/linear_0/weight"] = np.concatenate(
            [w.reshape(hidden, hidden).T for w in (q_w, k_w, v_w)])
        v[f"{ct2}/self_attention/linear_0/bias"] = np.concatenate([b.reshape(hidden) for b in (q_b, k_b, v_b)])
        v[f"{ct2}/self_attention/linear_1/weight"] = o_w.reshape(hidden, hidden).T
        v[f"{ct2}/self_attention/linear_1/bias"] = o_b
    return v
