import numpy as np
import pytest

import keras

from ser.models import ENCODER_MODELS, MODELS, build_model

INPUT_SHAPE = (32, 12)
ENCODER_INPUT_SHAPE = (8, 3, 12)  # (steps, hidden states, dim) of cached encoder states


@pytest.mark.parametrize("name", sorted(MODELS))
def test_builder_shape_step_and_save_load_round_trip(name, tmp_path):
    keras.utils.set_random_seed(0)
    shape = ENCODER_INPUT_SHAPE if name in ENCODER_MODELS else INPUT_SHAPE
    model = build_model(name, shape)
    assert model.output_shape == (None, 7)
    assert all(layer.name and not layer.name.startswith(("dense_", "conv1d_")) for layer in model.layers)
    x = np.random.default_rng(0).normal(size=(4, *shape)).astype("float32")
    y = keras.utils.to_categorical([0, 1, 2, 3], 7)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    before = [w.copy() for w in model.get_weights()]
    loss = model.train_on_batch(x, y)
    assert np.isfinite(loss)
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    probs = model.predict_on_batch(x)
    assert np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert np.allclose(loaded.predict_on_batch(x), probs, atol=1e-6)


def test_unknown_model_name_lists_choices():
    with pytest.raises(ValueError, match="bilstm"):
        build_model("transformer-xl", INPUT_SHAPE)


def test_feature_masking_only_masks_in_training_and_serialises(tmp_path):
    from ser.layers import FeatureMasking

    layer = FeatureMasking(time_masks=2, time_width=8, feature_masks=1, feature_width=4, seed=1)
    x = np.ones((3, 40, 12), "float32")
    assert np.array_equal(np.asarray(layer(x, training=False)), x)
    masked = np.asarray(layer(x, training=True))
    assert masked.shape == x.shape and masked.min() == 0.0 and 0.5 < masked.mean() < 1.0
    clone = FeatureMasking.from_config(layer.get_config())
    assert clone.time_width == 8 and clone.feature_width == 4
    model = build_model("cnn", INPUT_SHAPE, spec_augment=True)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert loaded.get_layer("spec_augment").time_masks == 2
