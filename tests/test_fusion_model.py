"""fusion.pipeline (batch-wise dynamic padding, masks, cap) and fusion.models (shapes, masking, weights)."""
from __future__ import annotations

import numpy as np
import pytest

from fusion.preprocess import PreprocessConfig

CFG = PreprocessConfig(fps=10.0, image_size=32, face_size=32, n_mels=16)
TINY = dict(image_size=32, face_size=32, n_mels=16, alpha=0.35, weights="none", lstm_units=8, audio_filters=4,
            audio_lstm_units=8, dense_units=8)


def _write_cache(folder, seconds: list[float]) -> list[str]:
    """Fake cached clips of the given lengths (frames at 10/s, spectrogram at 100/s)."""
    files = []
    rng = np.random.default_rng(0)
    for i, s in enumerate(seconds):
        t, m = int(round(s * CFG.fps)), int(round(s * CFG.mel_rate))
        path = folder / f"clip{i}.npz"
        np.savez_compressed(path, frames=rng.integers(1, 255, (t, 32, 32, 3), dtype=np.uint8),
                            faces=rng.integers(1, 255, (t, 32, 32), dtype=np.uint8),
                            face_mask=np.ones(t, np.uint8), mel=rng.normal(size=(m, 16)).astype(np.float16))
        files.append(str(path))
    return files


def test_batches_are_padded_to_their_own_longest_clip_and_capped(tmp_path):
    from fusion.pipeline import make_dataset

    files = _write_cache(tmp_path, [0.5, 1.0, 3.0, 2.0, 6.0])
    ds = make_dataset(files, [0, 1, 2, 3, 4], CFG, batch_size=2, modalities="frame,face,audio", max_seconds=4.0)
    batches = list(ds)
    frames_t = [b[0]["frames"].shape[1] for b in batches]
    mel_t = [b[0]["mel"].shape[1] for b in batches]
    assert frames_t == [10, 30, 40]  # 1.0 s, 3.0 s, and the 6 s clip cut to the 4 s cap
    assert mel_t == [100, 300, 400]
    first = batches[0][0]
    assert first["frames"].shape == (2, 10, 32, 32, 3) and first["frames"].dtype.name == "uint8"
    assert first["faces"].shape == (2, 10, 32, 32, 1) and first["mel"].shape == (2, 100, 16, 1)
    assert first["frame_mask"].numpy().sum(axis=1).tolist() == [5, 10]
    assert first["mel_mask"].numpy().sum(axis=1).tolist() == [50, 100]
    assert (first["frames"].numpy()[0, 5:] == 0).all()  # padding is zeros
    assert batches[0][1].numpy().tolist() == [0, 1]
    audio_only = next(iter(make_dataset(files, [0] * 5, CFG, 2, "audio")))[0]
    assert sorted(audio_only) == ["mel", "mel_mask"]


def test_training_windows_stay_aligned(tmp_path):
    from fusion.pipeline import make_dataset

    files = _write_cache(tmp_path, [6.0])
    ds = make_dataset(files, [0], CFG, 1, "frame,audio", max_seconds=2.0, training=True, repeat=True, seed=3)
    for inputs, _ in ds.take(3):
        assert inputs["frames"].shape[1] == 20 and inputs["mel"].shape[1] == 200


def test_model_outputs_and_padding_invariance():
    from fusion.models import ModelConfig, build_model
    from fusion.pipeline import batch_inputs, to_model_inputs

    model = build_model(ModelConfig(**TINY))
    rng = np.random.default_rng(1)
    clips = [{"frames": rng.integers(0, 255, (t, 32, 32, 3), dtype=np.uint8),
              "faces": rng.integers(0, 255, (t, 32, 32), dtype=np.uint8),
              "face_mask": np.array([1, 0, 1, 1, 1, 1][:t], np.uint8),
              "mel": rng.normal(size=(10 * t, 16)).astype(np.float16)} for t in (3, 6)]
    batch = batch_inputs([to_model_inputs(c, ["frame", "face", "audio"]) for c in clips])
    out = model(batch, training=False)
    assert sorted(out) == ["audio", "emotion", "face", "frame"]
    for value in out.values():
        assert value.shape == (2, 7)
        np.testing.assert_allclose(np.asarray(value).sum(axis=1), 1.0, rtol=1e-5)
    alone = model(batch_inputs([to_model_inputs(clips[0], ["frame", "face", "audio"])]), training=False)
    # The short clip gives the same prediction alone and padded in a batch: masks hide the padding.
    np.testing.assert_allclose(np.asarray(alone["emotion"])[0], np.asarray(out["emotion"])[0], atol=1e-5)
    single = build_model(ModelConfig(**{**TINY, "modalities": "audio"}))
    assert list(single.output) == ["emotion"] and sorted(single.input) == ["mel", "mel_mask"]
    assert all(layer.name for layer in model.layers)


def test_backbones_freeze_and_unfreeze():
    import keras

    from fusion.models import ModelConfig, backbones, build_model, set_backbones_trainable

    model = build_model(ModelConfig(**{**TINY, "modalities": "frame,face"}))
    assert sorted(b.name for b in backbones(model)) == ["face_backbone", "frame_backbone"]
    set_backbones_trainable(model, False)
    frozen = len(model.trainable_variables)
    set_backbones_trainable(model, True)
    assert len(model.trainable_variables) > frozen
    norms = [layer for b in backbones(model) for layer in b.layers
             if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms and not any(layer.trainable for layer in norms)  # BatchNorm stays frozen while fine-tuning


def test_weights_errors_name_the_local_alternative(tmp_path, monkeypatch):
    import fusion.models as models

    monkeypatch.setattr("core.datasets.network_reachable", lambda *a, **k: False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(models.WeightsUnavailableError, match="--weights PATH"):
        models.resolve_weights("imagenet", 0.35, 112)
    with pytest.raises(models.WeightsUnavailableError, match="does not exist"):
        models.resolve_weights(tmp_path / "missing.h5", 0.35, 112)
    assert models.resolve_weights("none", 0.35, 112) is None
    with pytest.raises(ValueError, match="modalities"):
        models.parse_modalities("audio,smell")


def test_local_weights_file_is_loaded(tmp_path):
    import keras

    from fusion.models import build_backbone

    source = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None,
                                            pooling="avg")
    path = tmp_path / "mobilenet.weights.h5"
    source.save_weights(path)
    loaded = build_backbone(32, 0.35, str(path), "frame_backbone")
    np.testing.assert_array_equal(loaded.get_weights()[0], source.get_weights()[0])
