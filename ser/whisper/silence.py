"""Whisper's 30 s window at the cost of the clip alone: the padding's keys and values come from a reference.

Whisper saw every training input followed by silence up to 30 s, and a clip encoded inside that window gives
better emotion features than the clip alone (docs/whisper.md#padding-pays). But a 3 s clip is 150 of the
window's 1500 steps, so encoding the window costs ~27 times the clip. The padding's hidden states barely depend
on which speech came before them: they are "silence after speech" at each position. So they are computed once
per encoder, as the inputs of every layer over the padding averaged over reference clips each encoded in the
full window, and turned into each attention layer's keys and values. A clip then runs through the transformer on
its own steps and the first second of padding only (``NEAR_STEPS``), attending to those and to the reference's
keys and values for the rest of the window. On real clips this matches the full window to cosine >= 0.99 per
state and 20 ms step (mean >= 0.998; docs/whisper.md), at ~1/14 of its cost.

The reference for the pinned Whisper-base ships as ``assets/silence-<sha256[:16]>.npz``, built from TESS clips
(no RAVDESS speaker, so no cross-validation fold of the benchmark sees its own voices) with
``python -m ser.whisper.silence --data-dir ../shared/data``. It stores the mean padding states minus those of
pure silence (the window with no speech, computed from the encoder on load) at rank 16, 0.4 MB instead of 18 MB.
Another encoder (``--encoder-dir``) without a reference file uses pure silence: close (cosine >= 0.98 for
Whisper-base), not as close.
"""
from __future__ import annotations

import argparse
import hashlib
import math
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np

ASSET_DIR = Path(__file__).parent / "assets"
RANK = 16
# The padding's log-mel value is the clip's peak minus 2 (log_mel's 80 dB floor); after level normalisation it
# sits at -0.79 (median of RAVDESS, range -0.83 to -0.70, which changes the states by < 1e-4 in cosine).
PURE_SILENCE_VALUE = -0.79
# The first second of padding is encoded with the clip (its states follow the clip's own); the rest comes from
# the reference. Chosen without labels, on closeness to the full window (1 - cosine, mean over states and 30
# RAVDESS clips: 0.0013 with 0 steps, 0.0007 with 25, 0.0006 with 50, 0.0005 with 100) against cost (+33 % steps).
NEAR_STEPS = 50


def reference_path(encoder_sha256: str) -> Path:
    return ASSET_DIR / f"silence-{encoder_sha256[:16]}.npz"


@lru_cache(maxsize=8)
def reference_fingerprint(encoder_sha256: str) -> str:
    """Part of the feature cache key: features made with another reference (or pure silence) never mix.
    Hashed once per process: the key is computed for every cached clip."""
    path = reference_path(encoder_sha256)
    source = hashlib.sha1(path.read_bytes()).hexdigest()[:12] if path.is_file() else "pure-silence"
    return f"{source}:near{NEAR_STEPS}"


def clip_steps(num_samples: int) -> int:
    """Encoder steps (20 ms) of a clip of ``num_samples`` at 16 kHz, as in the full window."""
    return math.ceil((num_samples // 160) / 2)


def window_seconds(encoder) -> float:
    return 2 * encoder.config.max_positions * 160 / 16_000


def _silent_window(encoder, value: float) -> np.ndarray:
    """(num_states, positions, dim): every hidden state over a window with no speech at all."""
    cfg = encoder.config
    return encoder.hidden_states(np.full((1, 2 * cfg.max_positions, cfg.n_mels), value, np.float32))[0]


def pure_silence_states(encoder, value: float = PURE_SILENCE_VALUE) -> np.ndarray:
    """(num_layers, positions, dim): each layer's input over a window with no speech at all."""
    return _silent_window(encoder, value)[: encoder.config.num_layers]


def pure_silence_final(encoder, value: float = PURE_SILENCE_VALUE) -> np.ndarray:
    """(positions, dim): the encoder's output (after its final norm) over a window with no speech at all."""
    return _silent_window(encoder, value)[-1]


def build_reference(encoder, waveforms, rank: int = RANK, progress=None) -> dict[str, np.ndarray]:
    """Each layer's input over the padding, averaged over ``waveforms`` (prepared clips, each encoded in the full
    window), stored as its difference from pure silence at ``rank``."""
    from ser.whisper.preprocessor import log_mel

    cfg = encoder.config
    total = np.zeros((cfg.num_layers, cfg.max_positions, cfg.hidden_dim))
    count = np.zeros(cfg.max_positions)
    values = []
    for y in progress(waveforms) if progress else waveforms:
        mel = log_mel(y, cfg.n_mels, pad_to_seconds=window_seconds(encoder))
        steps = clip_steps(y.size)
        values.append(float(mel[-1, 0]))  # the padding's value: the clip's peak minus 2
        states = encoder.hidden_states(mel[None])[0, : cfg.num_layers]
        total[:, steps:] += states[:, steps:]
        count[steps:] += 1
    value = float(np.median(values))
    pure = pure_silence_states(encoder, value)
    # Positions no reference clip reached (inside the shortest clip) keep pure silence.
    mean = np.where(count[None, :, None] > 0, total / np.maximum(count, 1)[None, :, None], pure)
    left, right = [], []
    for delta in mean - pure:
        u, s, vt = np.linalg.svd(delta, full_matrices=False)
        left.append(u[:, :rank] * s[:rank])
        right.append(vt[:rank])
    return {"value": np.float32(value), "left": np.stack(left).astype(np.float16),
            "right": np.stack(right).astype(np.float16), "clips": np.int32(len(values))}


def padding_states(encoder, reference: dict[str, np.ndarray] | None) -> np.ndarray:
    """(num_layers, positions, dim) the layers' inputs over the padding: pure silence plus the reference's part."""
    if reference is None:
        return pure_silence_states(encoder)
    delta = np.einsum("lpr,lrd->lpd", reference["left"].astype(np.float32), reference["right"].astype(np.float32))
    return pure_silence_states(encoder, float(reference["value"])) + delta


class SilenceReference:
    """A loaded encoder's transformer run on a clip and its first ``near_steps`` of padding, attending also to the
    reference's keys and values for the rest of the window."""

    def __init__(self, encoder, reference: dict[str, np.ndarray] | None, near_steps: int = NEAR_STEPS):
        import tensorflow as tf

        cfg = encoder.config
        model = encoder.model
        self.config = cfg
        self.near_steps = near_steps
        # The encoder's own layers and variables, not copies (80 MB for Whisper-base). Only the attention is
        # written out here: its keys and values past the clip come from the reference.
        self.blocks = [{part: model.get_layer(f"layer{i}_{part}") for part in
                        ("attention_norm", "attention", "ffn_norm", "ffn_in", "ffn_out")}
                       for i in range(cfg.num_layers)]
        self.final_norm = model.get_layer("final_norm")
        import keras

        self.front = keras.Model(model.input, model.get_layer("positions").output)  # convolutions + positions
        states = tf.constant(padding_states(encoder, reference), tf.float32)
        keys, values = [], []
        for i, block in enumerate(self.blocks):
            _, _, k_w, k_b, v_w, v_b, _, _ = [v.value for v in block["attention"].weights]  # get_weights() order
            h = block["attention_norm"](states[i])
            keys.append(tf.einsum("td,dhk->thk", h, k_w) + k_b)
            values.append(tf.einsum("td,dhk->thk", h, v_w) + v_b)
        # Stored as the attention's matrix products take them: keys (layers, heads, head_dim, positions),
        # values (layers, heads, positions, head_dim).
        self.keys = tf.transpose(tf.stack(keys), [0, 2, 3, 1])
        self.values = tf.transpose(tf.stack(values), [0, 2, 1, 3])
        spec = [tf.TensorSpec([None, None, cfg.n_mels], tf.float32), tf.TensorSpec([None], tf.int32)]
        self._call = tf.function(self._encode, input_signature=spec)

    def _encode(self, mel, runs):
        import tensorflow as tf

        head_dim = self.config.hidden_dim // self.config.num_heads
        run = tf.reduce_max(runs)
        x = self.front(mel, training=False)[:, :run]  # the steps encoded here; the reference has the rest
        # In a batch, a clip's keys and values past its own run are the reference's, so it gets exactly what
        # it would get alone (its rows there are computed and dropped).
        own = tf.sequence_mask(runs, run)
        own_keys, own_values = own[:, None, None, :], own[:, None, :, None]
        states = [x]
        for i, block in enumerate(self.blocks):
            q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b = [v.value for v in block["attention"].weights]
            h = block["attention_norm"](x)
            q = (tf.einsum("btd,dhk->bhtk", h, q_w) + q_b[:, None, :]) / math.sqrt(head_dim)
            k = tf.where(own_keys, tf.einsum("btd,dhk->bhkt", h, k_w) + k_b[:, :, None], self.keys[i, None, :, :, :run])
            v = tf.where(own_values, tf.einsum("btd,dhk->bhtk", h, v_w) + v_b[:, None, :],
                         self.values[i, None, :, :run])
            # Scores over the batch's own steps and over the shared reference (broadcast over the batch), one
            # softmax over both.
            scores = tf.concat([tf.matmul(q, k), tf.matmul(q, self.keys[i, :, :, run:])], -1)
            attention = tf.nn.softmax(scores, axis=-1)
            mixed = tf.matmul(attention[..., :run], v) + tf.matmul(attention[..., run:], self.values[i, :, run:])
            x = x + tf.einsum("bhtk,hkd->btd", mixed, o_w) + o_b
            x = x + block["ffn_out"](block["ffn_in"](block["ffn_norm"](x)))
            states.append(x)
        states[-1] = self.final_norm(x)
        return tf.stack(states, axis=1)  # (batch, states, run, dim)

    def hidden_states(self, y: np.ndarray) -> np.ndarray:
        """(num_states, clip steps, dim) float32 of a prepared 16 kHz waveform, as if followed by the padding."""
        return self.hidden_states_batch([y])[0]

    def hidden_states_batch(self, waveforms: list[np.ndarray], with_padding: bool = False) -> list[np.ndarray]:
        """``hidden_states`` of several waveforms in one call, each the same as alone (to float rounding).

        The call runs to the longest clip's steps, so clips of similar length batch best. ``with_padding`` keeps the
        steps of padding encoded with each clip (its first ``near_steps``) after its own."""
        from ser.whisper.preprocessor import log_mel

        steps = [clip_steps(y.size) for y in waveforms]
        if max(steps) > self.config.max_positions:
            raise ValueError(f"{max(y.size for y in waveforms) / 16_000:.1f} s: Whisper encodes at most 30 s")
        runs = [min(s + self.near_steps, self.config.max_positions) for s in steps]
        run = max(runs)
        # Enough of the padding for the convolutions at the end of the longest run (a clip's padding frames
        # take its own value; the frames past a shorter clip's run only feed rows that are dropped).
        frames = min(2 * run + 2, 2 * self.config.max_positions)
        mels = [log_mel(y, self.config.n_mels, pad_to_seconds=(max(y.size, run * 320) + 1600) / 16_000)[:frames]
                for y in waveforms]
        out = self._call(np.stack(mels), np.asarray(runs, np.int32)).numpy()
        return [states[:, :r if with_padding else n] for states, n, r in zip(out, steps, runs)]


def load_reference(encoder_sha256: str) -> dict[str, np.ndarray] | None:
    path = reference_path(encoder_sha256)
    if not path.is_file():
        return None
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def build_parser() -> argparse.ArgumentParser:
    from core.cli import CLIParser, add_verbose_flag, module_prog

    parser = CLIParser(prog=module_prog("ser.whisper.silence"),
                       description="Build the padding reference of a Whisper encoder from clips of a "
                                   "corpus (a maintainer's step: the result ships in ser/whisper/assets).")
    parser.add_argument("--data-dir", required=True, help="folder holding the corpus")
    parser.add_argument("--corpus", default="tess", help="corpus whose clips make the reference (default tess: "
                        "no RAVDESS speaker, so no RAVDESS fold sees its own voices)")
    parser.add_argument("--clips", type=int, default=200, help="clips drawn at random from the corpus")
    parser.add_argument("--encoder-dir", default="", help="CTranslate2 Whisper folder; empty = pinned Whisper-base")
    parser.add_argument("--out", default="", help="file to write (default: the packaged asset for the encoder)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the clip draw")
    add_verbose_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.clips < 1:
        parser.error("--clips must be at least 1")
    from tqdm import tqdm

    from core.io import atomic_write
    from ser.audio import load_audio
    from ser.corpora import load_clips
    from ser.whisper.encoder import WhisperFeatureConfig, encoder_fingerprint, get_encoder

    clips, _ = load_clips([args.corpus], args.data_dir)
    rng = np.random.default_rng(args.seed)
    picked = sorted(rng.choice(len(clips), min(args.clips, len(clips)), replace=False))
    prepare = WhisperFeatureConfig().prepare  # the front end every feature config uses: trim, level, first 3 s
    waveforms = [prepare(load_audio(str(clips[i].path))) for i in picked]
    encoder = get_encoder(args.encoder_dir or None)
    reference = build_reference(encoder, waveforms, progress=lambda xs: tqdm(xs, desc="reference clips"))
    out = Path(args.out) if args.out else reference_path(encoder_fingerprint(args.encoder_dir or None))
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: np.savez(tmp, **reference))
    print(f"{out}: {int(reference['clips'])} {args.corpus} clips, padding value {float(reference['value']):.3f}")
    return 0


if __name__ == "__main__":
    from core.cli import quiet_tensorflow

    quiet_tensorflow()
    sys.exit(main())
