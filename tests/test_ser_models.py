import numpy as np
import pytest

import keras

from ser.models import MODELS, build_model

INPUT_SHAPE = (32, 12)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_builder_shape_step_and_save_load_round_trip(name, tmp_path):
    keras.utils.set_random_seed(0)
    model = build_model(name, INPUT_SHAPE)
    assert model.output_shape == (None, 7)
    assert all(layer.name and not layer.name.startswith(("dense_", "conv1d_")) for layer in model.layers)
    x = np.random.default_rng(0).normal(size=(4, *INPUT_SHAPE)).astype("float32")
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
