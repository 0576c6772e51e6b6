"""Both face model builders: output shape, one training step, save/load round trip, weights handling."""
from __future__ import annotations

import re
import time

import keras
import numpy as np
import pytest

from fer.models import (SmoothedSparseCrossentropy, WeightsUnavailableError, build_cnn, build_model, build_resnet50,
                        build_tiny, compile_model, is_flip_averaged, unfreeze_top, with_flip_average,
                        with_tta, Shift)

AUTO_NAME = re.compile(r"^(conv2d|dense|dropout|batch_normalization|activation|max_pooling2d|flatten|"
                       r"rescaling|resizing|concatenate|normalization|global_average_pooling2d|functional|separable_conv2d|add)(_\d+)?$")
RESNET_SIZE = 32  # the smallest input ResNet50 accepts: keeps the tests fast


def _batch(n: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (n, 48, 48, 1)).astype(np.float32), rng.integers(0, 7, n)


def _assert_named(model: keras.Model) -> None:
    unnamed = [layer.name for layer in model.layers if AUTO_NAME.match(layer.name)]
    assert not unnamed, f"layers left with automatic names: {unnamed}"


def _one_step_changes_weights(model: keras.Model) -> None:
    x, y = _batch()
    before = [w.numpy().copy() for w in model.trainable_weights]
    loss = model.train_on_batch(x, y)
    loss = loss[0] if isinstance(loss, (list, tuple)) else loss
    assert np.isfinite(loss)
    assert any(not np.allclose(b, w.numpy()) for b, w in zip(before, model.trainable_weights))


def _round_trip(model: keras.Model, path) -> None:
    x, _ = _batch(3, seed=1)
    expected = model.predict_on_batch(x)
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict_on_batch(x), expected, rtol=1e-4, atol=1e-5)


def test_cnn_shape_step_and_round_trip(tmp_path):
    model = compile_model(build_cnn((48, 48, 1), 7, filters=(8, 16, 32), dense_units=32), 1e-3)
    x, _ = _batch()
    probs = model.predict_on_batch(x)
    assert probs.shape == (4, 7)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert [model.get_layer(f"block{i}_conv1").filters for i in (1, 2, 3)] == [8, 16, 32]
    _assert_named(model)
    _one_step_changes_weights(model)
    _round_trip(model, tmp_path / "cnn.keras")


def test_tiny_is_under_one_megabyte_trains_and_round_trips(tmp_path):
    model = build_tiny()
    assert model.output_shape == (None, 7)
    assert model.count_params() * 4 < 1_000_000  # float32 weights under 1 MB
    assert [model.get_layer(f"block{i}_sepconv2").filters for i in (1, 2, 3, 4)] == [16, 32, 64, 128]
    _assert_named(model)
    compile_model(model, 1e-3, label_smoothing=0.1)
    _one_step_changes_weights(model)
    _round_trip(model, tmp_path / "tiny.keras")
    assert (tmp_path / "tiny.keras").stat().st_size < 1_000_000
    assert build_model("tiny", filters=(8, 16)).get_layer("block2_sepconv1").filters == 16


def test_tiny_resized_inside_keeps_its_parameters_and_sees_more_pixels():
    plain, larger = build_tiny(), build_tiny(image_size=64)
    assert larger.count_params() == plain.count_params()  # fully convolutional: same weights, same file size
    assert larger.get_layer("resize").output.shape[1:3] == (64, 64)
    assert larger.get_layer("block4_add").output.shape[1:3] == (4, 4)  # 48 px ends at 3 x 3
    assert plain.get_layer("block4_add").output.shape[1:3] == (3, 3)
    assert "resize" not in [layer.name for layer in build_tiny(image_size=48).layers]
    faces = np.random.default_rng(0).uniform(0, 255, (2, 48, 48, 1)).astype("float32")
    probs = larger.predict_on_batch(faces)
    assert probs.shape == (2, 7) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    compile_model(larger, 1e-3, label_smoothing=0.1)
    _one_step_changes_weights(larger)  # with a strided 1x1 shortcut this step corrupted the heap (oneDNN) at 64 px


def test_tiny_shortcut_subsampled_then_1x1_equals_the_strided_1x1_of_shipped_models():
    # Shipped tiny models (saved_models/fer_tiny) use a strided 1x1 conv on the shortcut; the builder now
    # subsamples first (oneDNN crashes training the strided form at e.g. 64 px). Same weights, same outputs.
    from fer.train import copy_weights

    inputs = keras.Input((48, 48, 1))
    strided = keras.layers.Conv2D(16, 1, strides=2, padding="same", use_bias=False, name="block1_shortcut")
    old = keras.Model(inputs, strided(inputs))
    sub = keras.layers.MaxPooling2D(1, strides=2, padding="same")(inputs)
    new = keras.Model(inputs, keras.layers.Conv2D(16, 1, use_bias=False, name="block1_shortcut")(sub))
    copy_weights(old, new)
    x = np.random.default_rng(1).normal(size=(3, 48, 48, 1)).astype("float32")
    np.testing.assert_allclose(new.predict_on_batch(x), old.predict_on_batch(x), atol=1e-6)
    assert new.get_layer("block1_shortcut").get_weights()[0].shape == (1, 1, 1, 16)
    tiny = build_tiny()
    assert tiny.get_layer("block1_subsample").output.shape[1:3] == tiny.get_layer("block1_pool").output.shape[1:3]


def test_label_smoothing_matches_keras_on_one_hot_labels():
    y_true = np.array([0, 3, 6])
    y_pred = np.full((3, 7), 0.02, np.float32)
    y_pred[np.arange(3), [0, 1, 6]] = 0.88
    ours = SmoothedSparseCrossentropy(0.1)(y_true, y_pred)
    reference = keras.losses.CategoricalCrossentropy(label_smoothing=0.1)(np.eye(7)[y_true], y_pred)
    np.testing.assert_allclose(float(ours), float(reference), rtol=1e-5)
    plain = keras.losses.SparseCategoricalCrossentropy()(y_true, y_pred)
    assert float(ours) != pytest.approx(float(plain))  # smoothing changes the loss
    restored = SmoothedSparseCrossentropy.from_config(SmoothedSparseCrossentropy(0.2).get_config())
    assert restored.label_smoothing == 0.2


def test_cnn_default_is_the_seed_architecture():
    model = build_cnn()
    assert [model.get_layer(f"block{i}_conv2").filters for i in (1, 2, 3)] == [64, 128, 256]
    assert model.get_layer("fc").units == 512
    assert model.output_shape == (None, 7)


def test_resnet50_random_init_and_local_weights_file(tmp_path):
    # One test for both weight sources: every ResNet50 build, train-step compile and 100 MB save costs seconds.
    random_init = build_resnet50((48, 48, 1), 7, weights=None, image_size=RESNET_SIZE)
    assert random_init.output_shape == (None, 7)
    assert random_init.get_layer("resnet50").trainable  # frozen random features would be useless
    assert random_init.get_layer("resize").output.shape[1:3] == (RESNET_SIZE, RESNET_SIZE)
    assert random_init.get_layer("gray_to_rgb").output.shape[-1] == 3
    _assert_named(random_init)
    # A local weights file, written here from the random-init base, loads without any network.
    weights_file = tmp_path / "resnet50_notop.weights.h5"
    random_init.get_layer("resnet50").save_weights(weights_file)
    model = compile_model(build_model("resnet50", weights=str(weights_file), image_size=RESNET_SIZE), 1e-3)
    base = model.get_layer("resnet50")
    for expected, got in zip(random_init.get_layer("resnet50").get_weights(), base.get_weights()):
        np.testing.assert_array_equal(expected, got)
    assert not base.trainable
    assert len(model.trainable_weights) == 4  # dense + classifier kernels and biases
    frozen = [w.copy() for w in base.get_weights()]
    _one_step_changes_weights(model)
    assert all(np.array_equal(a, b) for a, b in zip(frozen, base.get_weights()))
    _round_trip(model, tmp_path / "resnet.keras")
    unfrozen = unfreeze_top(model, 10)
    assert 0 < unfrozen <= 10
    assert len(model.trainable_weights) > 4
    assert not any(layer.trainable for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization))


def test_imagenet_offline_is_a_fast_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # no cached weights
    monkeypatch.setattr("core.datasets.network_reachable", lambda *a, **k: False)
    start = time.perf_counter()
    with pytest.raises(WeightsUnavailableError, match="--weights PATH"):
        build_resnet50(weights="imagenet")
    assert time.perf_counter() - start < 5


def test_failed_download_is_wrapped(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr("core.datasets.network_reachable", lambda *a, **k: True)

    def refuse(*args, **kwargs):
        raise OSError("URL fetch failure: connection refused")

    monkeypatch.setattr("keras.src.applications.resnet.file_utils.get_file", refuse)
    with pytest.raises(WeightsUnavailableError, match="connection refused.*--weights PATH"):
        build_resnet50(weights="imagenet", image_size=RESNET_SIZE)


def test_bad_weights_path_and_size(tmp_path):
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        build_resnet50(weights=tmp_path / "missing.h5")
    with pytest.raises(ValueError, match="at least 32"):
        build_resnet50(weights=None, image_size=16)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vgg")


def test_flip_average_is_the_mean_of_both_views_and_round_trips(tmp_path):
    model = build_cnn((48, 48, 1), 7, filters=(4, 8), dense_units=8)
    x, _ = _batch(3, seed=2)
    tta = with_flip_average(model)
    expected = (model.predict_on_batch(x) + model.predict_on_batch(x[:, :, ::-1])) / 2
    np.testing.assert_allclose(tta.predict_on_batch(x), expected, rtol=1e-5, atol=1e-6)
    # a mirrored face gets exactly the same answer
    np.testing.assert_allclose(tta.predict_on_batch(x[:, :, ::-1]), tta.predict_on_batch(x), rtol=1e-5, atol=1e-6)
    assert is_flip_averaged(tta) and not is_flip_averaged(model)
    _round_trip(tta, tmp_path / "tta.keras")


def test_shift_moves_the_face_and_mirrors_the_border():
    x = np.arange(2 * 6 * 6, dtype=np.float32).reshape(2, 6, 6, 1)
    right = keras.ops.convert_to_numpy(Shift(2, 0)(x))
    np.testing.assert_array_equal(right[:, :, 2:], x[:, :, :4])      # content moved 2 pixels right
    np.testing.assert_array_equal(right[:, :, :2], x[:, :, 1::-1])   # gap filled with the mirrored border
    up = keras.ops.convert_to_numpy(Shift(0, -1)(x))
    np.testing.assert_array_equal(up[:, :5], x[:, 1:])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(Shift(0, 0)(x)), x)
    assert Shift.from_config(Shift(1, -2).get_config()).dy == -2


def test_crop_tta_averages_ten_views_and_round_trips(tmp_path):
    model = build_cnn((48, 48, 1), 7, filters=(4, 8), dense_units=8)
    x, _ = _batch(3, seed=4)
    tta = with_tta(model, shift=2)
    views = []
    for dx, dy in [(0, 0), (2, 0), (-2, 0), (0, 2), (0, -2)]:
        for image in (x, x[:, :, ::-1]):
            views.append(model.predict_on_batch(keras.ops.convert_to_numpy(Shift(dx, dy)(image))))
    np.testing.assert_allclose(tta.predict_on_batch(x), np.mean(views, axis=0), rtol=1e-5, atol=1e-6)
    assert is_flip_averaged(tta)
    _round_trip(tta, tmp_path / "tta.keras")
    from core.export import TFLiteModel, to_tflite

    (tmp_path / "tta.tflite").write_bytes(to_tflite(tta, "float16"))  # the mirrored padding converts too
    np.testing.assert_allclose(TFLiteModel(tmp_path / "tta.tflite")(x), tta.predict_on_batch(x), atol=5e-3)
    with pytest.raises(ValueError, match=">= 0"):
        with_tta(model, shift=-1)
