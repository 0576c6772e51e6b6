"""tf.data input pipeline over the preprocessing cache, padded per batch.

Each element is cut to at most ``max_seconds`` (a random window while training, the start otherwise;
frames and spectrogram are cut at the same time offset so they stay aligned), then ``padded_batch``
pads every array only to the longest clip *in its batch*. Masks (1 = real step, 0 = padding) travel
with the arrays. Frames stay uint8 until the model, so a batch costs a quarter of the float memory.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import tensorflow as tf

from fusion.models import parse_modalities
from fusion.preprocess import PreprocessConfig, load_cached

AUTOTUNE = tf.data.AUTOTUNE


def input_keys(modalities: Sequence[str], pretrained: bool = False) -> list[str]:
    """Model input names for the given modalities, in a fixed order (``pretrained``: encoder outputs)."""
    mods = parse_modalities(modalities)
    if pretrained:
        if "frame" in mods:
            raise ValueError("the pretrained-encoder model has face and audio branches only, not 'frame'")
        return (["face_emb", "face_mask", "frame_mask"] if "face" in mods else []) + \
            (["audio_states", "audio_mask"] if "audio" in mods else [])
    keys = []
    if "frame" in mods:
        keys.append("frames")
    if "face" in mods:
        keys += ["faces", "face_mask"]
    if "frame" in mods or "face" in mods:
        keys.append("frame_mask")
    if "audio" in mods:
        keys += ["mel", "mel_mask"]
    return keys


def window(arrays: dict[str, np.ndarray], cfg: PreprocessConfig, max_seconds: float | None,
           start_s: float = 0.0) -> dict[str, np.ndarray]:
    """The aligned ``[start_s, start_s + max_seconds)`` span of frames, faces and spectrogram."""
    out = dict(arrays)
    if not max_seconds:
        return out
    f0, f_len = int(round(start_s * cfg.fps)), max(1, int(round(max_seconds * cfg.fps)))
    m0, m_len = int(round(start_s * cfg.audio_rate)), max(1, int(round(max_seconds * cfg.audio_rate)))
    for key in ("frames", "faces", "face_mask", "face_emb"):
        if key in out:
            out[key] = out[key][f0:f0 + f_len]
    for key in ("mel", "audio_states"):
        if key in out:
            out[key] = out[key][m0:m0 + m_len]
    return out


def _frame_steps(arrays: dict[str, np.ndarray]) -> int:
    for key in ("frames", "faces", "face_emb", "face_mask"):
        if key in arrays:
            return len(arrays[key])
    return 0


def clip_seconds(arrays: dict[str, np.ndarray], cfg: PreprocessConfig) -> float:
    audio = arrays.get("mel", arrays.get("audio_states", []))
    return max(_frame_steps(arrays) / cfg.fps, len(audio) / cfg.audio_rate)


def to_model_inputs(arrays: dict[str, np.ndarray], modalities: Sequence[str]) -> dict[str, np.ndarray]:
    """One clip's cached arrays -> unbatched model inputs (with masks, channel axes added)."""
    if "face_emb" in arrays or "audio_states" in arrays:
        return _embedding_inputs(arrays, modalities)
    keys = input_keys(modalities)
    out: dict[str, np.ndarray] = {}
    n_steps = _frame_steps(arrays)
    if "frames" in keys:
        out["frames"] = np.asarray(arrays["frames"], np.uint8)
    if "faces" in keys:
        out["faces"] = np.asarray(arrays["faces"], np.uint8)[..., None]
        out["face_mask"] = np.asarray(arrays["face_mask"], np.float32)
    if "frame_mask" in keys:
        out["frame_mask"] = np.ones(n_steps, np.float32)
    if "mel" in keys:
        out["mel"] = np.asarray(arrays["mel"], np.float32)[..., None]
        out["mel_mask"] = np.ones(len(arrays["mel"]), np.float32)
    return out


def _embedding_inputs(arrays: dict[str, np.ndarray], modalities: Sequence[str]) -> dict[str, np.ndarray]:
    keys = input_keys(modalities, pretrained=True)
    out: dict[str, np.ndarray] = {}
    if "face_emb" in keys:
        out["face_emb"] = np.asarray(arrays["face_emb"], np.float32)
        out["face_mask"] = np.asarray(arrays["face_mask"], np.float32)
        out["frame_mask"] = np.ones(len(arrays["face_emb"]), np.float32)
    if "audio_states" in keys:
        out["audio_states"] = np.asarray(arrays["audio_states"], np.float32)
        out["audio_mask"] = np.ones(len(arrays["audio_states"]), np.float32)
    return out


def batch_inputs(items: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """NumPy twin of ``padded_batch`` for inference: zero-pad every key to the longest item."""
    out = {}
    for key in items[0]:
        arrays = [item[key] for item in items]
        longest = max(len(a) for a in arrays)
        batch = np.zeros((len(arrays), longest, *arrays[0].shape[1:]), arrays[0].dtype)
        for i, a in enumerate(arrays):
            batch[i, : len(a)] = a
        out[key] = batch
    return out


def _signature(cfg: PreprocessConfig, keys: Sequence[str]) -> dict[str, tf.TensorSpec]:
    specs = {
        "face_emb": tf.TensorSpec((None, cfg.face_dim), tf.float32),
        "audio_states": tf.TensorSpec((None, cfg.audio_states, cfg.audio_dim), tf.float32),
        "audio_mask": tf.TensorSpec((None,), tf.float32),
        "frames": tf.TensorSpec((None, cfg.image_size, cfg.image_size, 3), tf.uint8),
        "faces": tf.TensorSpec((None, cfg.face_size, cfg.face_size, 1), tf.uint8),
        "face_mask": tf.TensorSpec((None,), tf.float32),
        "frame_mask": tf.TensorSpec((None,), tf.float32),
        "mel": tf.TensorSpec((None, cfg.n_mels, 1), tf.float32),
        "mel_mask": tf.TensorSpec((None,), tf.float32),
    }
    return {k: specs[k] for k in keys}


def make_dataset(files: Sequence[str | os.PathLike], labels: Sequence[int], cfg: PreprocessConfig,
                 batch_size: int, modalities: Sequence[str] | str, max_seconds: float | None = 4.0,
                 training: bool = False, repeat: bool = False, seed: int = 0,
                 input_context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
    """Batches of ``(inputs dict, label)`` padded to the longest clip in each batch.

    ``input_context`` (from ``strategy.distribute_datasets_from_function``) shards the file list per worker;
    ``batch_size`` is then the per-replica batch size.
    """
    keys = input_keys(modalities, cfg.pretrained)
    spec = _signature(cfg, keys)
    files = [str(f) for f in files]
    labels = np.asarray(labels, np.int32)
    if len(files) == 0:
        raise ValueError("no clips to build a dataset from")
    rng = np.random.default_rng(seed)
    keys_modalities = parse_modalities(modalities)

    def load(path: bytes) -> list[np.ndarray]:
        arrays = load_cached(path.decode())
        start = 0.0
        if training and max_seconds:
            spare = clip_seconds(arrays, cfg) - max_seconds
            start = float(rng.uniform(0.0, spare)) if spare > 0 else 0.0
        inputs = to_model_inputs(window(arrays, cfg, max_seconds, start), keys_modalities)
        return [inputs[k] for k in keys]

    def load_tf(path, label):
        values = tf.numpy_function(load, [path], [spec[k].dtype for k in keys], stateful=training)
        inputs = {}
        for k, v in zip(keys, values):
            v.set_shape(spec[k].shape)
            inputs[k] = v
        return inputs, label

    ds = tf.data.Dataset.from_tensor_slices((files, labels))
    if input_context is not None and input_context.num_input_pipelines > 1:
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if training:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.map(load_tf, num_parallel_calls=AUTOTUNE, deterministic=not training)
    ds = ds.padded_batch(batch_size, padded_shapes=({k: spec[k].shape for k in keys}, ()))
    options = tf.data.Options()
    # Sharding is done above by file; tell tf.distribute not to shard again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options).prefetch(AUTOTUNE)
