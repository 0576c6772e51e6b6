"""The models shipped in saved_models/ load, declare the schema and answer deterministically."""
import json

import numpy as np
import pytest

from core.labels import EMOTIONS
from tests import synth_audio as synth

pytestmark = pytest.mark.filterwarnings("ignore")


def test_shipped_ser_model_loads_and_is_deterministic(repo_root):
    from ser.predict import DEFAULT_MODEL_DIR, SERPredictor

    assert DEFAULT_MODEL_DIR == repo_root / "saved_models" / "ser"
    predictor = SERPredictor()
    assert tuple(predictor.class_names) == EMOTIONS
    assert predictor.model.input_shape[1:] == (predictor.features.max_frames, predictor.features.n_features)
    y = synth.tone("angry", seconds=2.0, seed=11)
    first = predictor.predict_waveform(y, 16_000)
    assert first.shape == (7,) and abs(first.sum() - 1) < 1e-4
    assert np.array_equal(predictor.predict_waveform(y, 16_000), first)
    card = (repo_root / "saved_models" / "ser" / "MODEL_CARD.md").read_text()
    assert "speaker-independent" in card and "licence" in card


@pytest.mark.parametrize("mode", ["float16", "int8"])
def test_shipped_ser_tflite_agrees_with_keras(mode, repo_root):
    from ser.predict import SERPredictor

    keras_p = SERPredictor()
    tflite_p = SERPredictor(tflite=mode)
    report = json.loads((repo_root / "saved_models" / "ser" / "export.json").read_text())
    assert abs(report["exports"][mode]["accuracy_change"]) < 0.05
    for emotion in ("happy", "sad"):
        y = synth.tone(emotion, seconds=2.0, seed=5)
        a, b = keras_p.predict_waveform(y, 16_000), tflite_p.predict_waveform(y, 16_000)
        assert np.abs(a - b).max() < 0.05
