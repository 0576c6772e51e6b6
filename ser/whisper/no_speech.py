"""Whisper's own "is anyone speaking?": the probability of its ``<|nospeech|>`` token right after
``<|startoftranscript|>``, read from the encoder states the emotion head already gets.

Whisper was trained to answer ``<|nospeech|>`` on stretches without speech (music, sounds of all kinds), and
OpenAI's transcriber uses this probability to skip them. ``ser.frontend.speech_check`` refuses silence, hum,
tones and noise by signal measures, but instrumental music moves its pitch and spectrum like a voice and passes
it; Whisper tells them apart (docs/speech_frontend.md#music-and-other-sounds: about 4,000 real clips at or below
0.5, music windows mostly above 0.7).

Only the decoder's first step is needed: one token, so its self-attention is the token's own value, and its
cross-attention reads the encoder's output over the whole 30 s window. A clip's own steps (and the padding
encoded with it, ``ser.whisper.silence``) come from its encoding; past them, the window holds the encoder's
output for pure silence, whose keys and values are computed once. That is what makes it cheap (~33 ms a window
on one core, against ~100 ms for CTranslate2's ``generate`` over the 1500 steps); ``ctranslate2``'s own
``return_no_speech_prob`` checks it (tests/test_ser_whisper_no_speech.py).
"""
from __future__ import annotations

import json
import math
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

# At or above this, a window is not speech. The smallest of 0.5 / 0.6 / 0.7 / 0.8 that refuses no clean RAVDESS
# 01-20 / TESS clip and <= 2 % of them with white noise 10 dB below the speech's level; Wesnoth's orchestral music
# got an emotion in 2 % of its windows at it (59 % before). Sets that chose nothing: bench/results/ser_music.md.
NO_SPEECH_THRESHOLD = 0.6
START_TOKEN = "<|startoftranscript|>"
NO_SPEECH_TOKENS = ("<|nospeech|>", "<|nocaptions|>")  # its two names in Whisper vocabularies (older: the second)


@lru_cache(maxsize=1)
def _blas_controller():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()  # finding the BLAS libraries once, not on every call


class NoSpeechUnavailable(ValueError):
    """The Whisper folder has no decoder or no vocabulary (an encoder-only file): the probability cannot be read."""


def _layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + 1e-5) * gamma + beta


def _gelu(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def token_ids(folder: str | os.PathLike) -> tuple[int, int]:
    """(start of transcript, no speech) token ids from a CTranslate2 Whisper folder's vocabulary."""
    path = Path(folder) / "vocabulary.json"
    if not path.is_file():
        raise NoSpeechUnavailable(f"{path}: missing, so Whisper's no-speech token cannot be found")
    vocabulary = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(vocabulary, dict):  # some converters write {token: id}
        index = vocabulary
    else:
        index = {token: i for i, token in enumerate(vocabulary)}
    found = [index[t] for t in NO_SPEECH_TOKENS if t in index]
    if START_TOKEN not in index or not found:
        raise NoSpeechUnavailable(f"{path}: no {START_TOKEN} or {NO_SPEECH_TOKENS[0]} token: not a Whisper "
                                  "vocabulary")
    return index[START_TOKEN], found[0]


class NoSpeechHead:
    """The first decoder step of a CTranslate2 Whisper model, over a window whose tail is ``silence``.

    ``silence``: (positions, dim) the encoder's final output for a window without speech; a clip's own states
    replace its first rows.
    """

    def __init__(self, folder: str | os.PathLike, silence: np.ndarray):
        from ser.whisper.ct2 import read_model_bin

        self.folder = Path(folder)
        _, v = read_model_bin(self.folder / "model.bin", prefix="decoder/")
        if "decoder/embeddings/weight" not in v or "decoder/layer_0/attention/linear_1/weight" not in v:
            raise NoSpeechUnavailable(f"{self.folder / 'model.bin'}: no decoder weights, so Whisper's no-speech "
                                      "probability cannot be read")
        w = {k[len("decoder/"):]: np.asarray(a, np.float32) for k, a in v.items() if a.ndim}
        self.num_heads = int(v["decoder/num_heads"]) if "decoder/num_heads" in v else 8
        start, self.no_speech_id = token_ids(self.folder)
        self.embeddings = w["embeddings/weight"]
        # Whisper's output layer is its token embedding; CTranslate2 stores it as an alias, which read_model_bin
        # does not follow, unless the file holds a projection of its own.
        self.projection = w.get("projection/weight", self.embeddings)
        self.projection_bias = w.get("projection/bias")
        self.dim = self.embeddings.shape[1]
        self.head_dim = self.dim // self.num_heads
        self.first_input = self.embeddings[start] + w["position_encodings/encodings"][0]
        self.final_norm = (w["layer_norm/gamma"], w["layer_norm/beta"])
        silence = np.asarray(silence, np.float32)
        self.positions = silence.shape[0]
        self.layers = []
        for i in range(sum(1 for k in w if k.endswith("/self_attention/linear_1/weight"))):
            p = f"layer_{i}/"
            layer = {name.replace("/", "_"): w[p + name] for name in (
                "self_attention/layer_norm/gamma", "self_attention/layer_norm/beta", "self_attention/linear_1/weight",
                "self_attention/linear_1/bias", "attention/layer_norm/gamma", "attention/layer_norm/beta",
                "attention/linear_0/weight", "attention/linear_0/bias", "attention/linear_1/weight",
                "attention/linear_1/bias", "attention/linear_2/weight", "attention/linear_2/bias",
                "ffn/layer_norm/gamma", "ffn/layer_norm/beta", "ffn/linear_0/weight", "ffn/linear_0/bias",
                "ffn/linear_1/weight", "ffn/linear_1/bias")}
            # One token attends only to itself: its self-attention output is its own value (the last third of the
            # fused query-key-value projection).
            layer["self_value_weight"] = w[p + "self_attention/linear_0/weight"][2 * self.dim:]
            layer["self_value_bias"] = w[p + "self_attention/linear_0/bias"][2 * self.dim:]
            # the window's tail: the same for every clip
            layer["silence_keys"], layer["silence_values"] = self._split(self._keys_values(layer, silence))
            self.layers.append(layer)

    @staticmethod
    def _keys_values(layer: dict, states: np.ndarray) -> np.ndarray:
        return states @ layer["attention_linear_1_weight"].T + layer["attention_linear_1_bias"]  # (positions, 2 dim)

    def probability(self, states: np.ndarray) -> float:
        """P(<|nospeech|>) for a window whose first ``len(states)`` encoder outputs are ``states`` (steps, dim)."""
        return float(self.probabilities([states])[0])

    def probabilities(self, windows: list[np.ndarray]) -> np.ndarray:
        """``probability`` of several windows; the vocabulary's logits (the costly part) in one product.

        On one BLAS thread: the matrix products are small, and spread over every core they slowed the live page's
        face frames, which share those cores (bench/bench_webapp.py)."""
        if not windows:
            return np.zeros(0, np.float32)
        with _blas_controller().limit(limits=1, user_api="blas"):
            return self._probabilities(windows)

    def _probabilities(self, windows: list[np.ndarray]) -> np.ndarray:
        outputs = np.stack([self._last_state(np.asarray(states, np.float32)) for states in windows])
        logits = outputs @ self.projection.T
        if self.projection_bias is not None:
            logits += self.projection_bias
        logits -= logits.max(-1, keepdims=True)
        return (np.exp(logits[:, self.no_speech_id]) / np.exp(logits).sum(-1)).astype(np.float32)

    def _last_state(self, states: np.ndarray) -> np.ndarray:
        run = states.shape[0]
        if run > self.positions:
            raise ValueError(f"{run} encoder steps: Whisper's window holds {self.positions}")
        x = self.first_input
        for layer in self.layers:
            h = _layer_norm(x, layer["self_attention_layer_norm_gamma"], layer["self_attention_layer_norm_beta"])
            value = layer["self_value_weight"] @ h + layer["self_value_bias"]
            x = x + layer["self_attention_linear_1_weight"] @ value + layer["self_attention_linear_1_bias"]
            h = _layer_norm(x, layer["attention_layer_norm_gamma"], layer["attention_layer_norm_beta"])
            q = (layer["attention_linear_0_weight"] @ h + layer["attention_linear_0_bias"]).reshape(self.num_heads, -1)
            keys, values = self._split(self._keys_values(layer, states))
            tail_keys, tail_values = layer["silence_keys"][run:], layer["silence_values"][run:]
            # one softmax over the clip's steps and the silent rest of the window
            scores = np.concatenate([np.einsum("hk,thk->ht", q, keys), np.einsum("hk,thk->ht", q, tail_keys)], -1)
            scores /= math.sqrt(self.head_dim)
            attention = np.exp(scores - scores.max(-1, keepdims=True))
            attention /= attention.sum(-1, keepdims=True)
            mixed = (np.einsum("ht,thk->hk", attention[:, :run], values)
                     + np.einsum("ht,thk->hk", attention[:, run:], tail_values)).reshape(self.dim)
            x = x + layer["attention_linear_2_weight"] @ mixed + layer["attention_linear_2_bias"]
            h = _layer_norm(x, layer["ffn_layer_norm_gamma"], layer["ffn_layer_norm_beta"])
            h = _gelu(layer["ffn_linear_0_weight"] @ h + layer["ffn_linear_0_bias"])
            x = x + layer["ffn_linear_1_weight"] @ h + layer["ffn_linear_1_bias"]
        return _layer_norm(x, *self.final_norm)

    def _split(self, kv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions, 2 dim) -> keys and values, each (positions, heads, head_dim)."""
        return (kv[:, :self.dim].reshape(-1, self.num_heads, self.head_dim),
                kv[:, self.dim:].reshape(-1, self.num_heads, self.head_dim))
