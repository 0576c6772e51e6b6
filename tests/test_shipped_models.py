"""The models shipped in saved_models/ load, declare the schema and answer deterministically."""
import json

import numpy as np
import pytest

from core.labels import EMOTIONS
from tests import synth_audio as synth

pytestmark = pytest.mark.filterwarnings("ignore")


SER_MODELS = ("ser", "ser_compact")  # the default (Whisper encoder + head) and the compact MFCC CNN


@pytest.mark.parametrize("name", SER_MODELS)
def test_shipped_ser_model_loads_and_is_deterministic(name, repo_root, synthetic_voices_pass):
    from ser.predict import DEFAULT_MODEL_DIR, SERPredictor

    assert DEFAULT_MODEL_DIR == repo_root / "saved_models" / "ser"
    predictor = SERPredictor(repo_root / "saved_models" / name)
    assert tuple(predictor.class_names) == EMOTIONS
    assert list(predictor.model.input_shape[1:]) == predictor.config["input_shape"]
    y = synth.tone("angry", seconds=2.0, seed=11)
    first = predictor.predict_waveform(y, 16_000)
    assert first.shape == (7,) and abs(first.sum() - 1) < 1e-4
    assert np.array_equal(predictor.predict_waveform(y, 16_000), first)
    # The level front end: the same voice 20 dB quieter or 10 dB louder gets the same answer.
    for gain in (0.1, 3.0):
        assert np.abs(predictor.predict_waveform(gain * y, 16_000) - first).max() < 1e-3
    card = (repo_root / "saved_models" / name / "MODEL_CARD.md").read_text()
    assert "speaker-independent" in card and "licence" in card


def test_shipped_default_names_its_encoder_weights(repo_root):
    from ser.predict import SERPredictor
    from ser.whisper.weights import SHA256

    predictor = SERPredictor()
    assert predictor.features.kind == "whisper" and predictor.features.encoder_sha256 == SHA256
    card = (repo_root / "saved_models" / "ser" / "MODEL_CARD.md").read_text()
    assert SHA256 in card and "MIT" in card


def test_shipped_compact_ser_tflite_agrees_with_keras(repo_root):
    from ser.predict import SERPredictor

    folder = repo_root / "saved_models" / "ser_compact"
    keras_p = SERPredictor(folder)
    tflite_p = SERPredictor(folder, tflite="float16")
    report = json.loads((folder / "export.json").read_text())
    assert abs(report["exports"]["float16"]["accuracy_change"]) < 0.05
    assert report["split"] == f"the run's test split ({report['test_n']} clips found)"
    for emotion in ("happy", "sad"):
        y = synth.tone(emotion, seconds=2.0, seed=5)
        a, b = keras_p.predict_waveform(y, 16_000), tflite_p.predict_waveform(y, 16_000)
        assert np.abs(a - b).max() < 0.05


FER_MODELS = ("fer", "fer_tiny", "fer_cnn")  # the default (faceres at 160 px, flip-averaged), the < 1 MB one, the CNN


@pytest.mark.parametrize("name", FER_MODELS)
def test_shipped_fer_model_loads_and_is_deterministic(name, repo_root):
    from fer.predict import DEFAULT_MODEL_DIR, FERPredictor

    assert DEFAULT_MODEL_DIR == repo_root / "saved_models" / "fer"
    predictor = FERPredictor(repo_root / "saved_models" / name)
    assert tuple(predictor.class_names) == EMOTIONS
    assert predictor.model.input_shape[1:] == (48, 48, 1)
    face = np.random.default_rng(3).integers(0, 256, (2, 48, 48), dtype=np.uint8)
    first = predictor.predict_crops(face)
    assert first.shape == (2, 7) and np.allclose(first.sum(axis=1), 1, atol=1e-4)
    assert np.array_equal(predictor.predict_crops(face), first)
    assert "FER2013" in (repo_root / "saved_models" / name / "MODEL_CARD.md").read_text()


def test_shipped_fer_models_fit_their_size_budgets(repo_root):
    default, tiny = repo_root / "saved_models" / "fer", repo_root / "saved_models" / "fer_tiny"
    assert (default / "model.keras").stat().st_size <= 16 * 1024 * 1024
    assert (default / "model_float16.tflite").stat().st_size <= 10 * 1024 * 1024
    model_files = [tiny / "model.keras", *tiny.glob("*.tflite")]
    assert len(model_files) == 3 and sum(f.stat().st_size for f in model_files) <= 1024 * 1024


@pytest.mark.parametrize("name", FER_MODELS)
@pytest.mark.parametrize("mode", ["float16", "int8"])
def test_shipped_fer_tflite_agrees_with_keras(mode, name, repo_root):
    from fer.predict import FERPredictor
    from fer.train import refit_on_every_face

    faces = np.random.default_rng(4).integers(0, 256, (3, 48, 48), dtype=np.uint8)
    a = FERPredictor(repo_root / "saved_models" / name).predict_crops(faces)
    b = FERPredictor(repo_root / "saved_models" / name, tflite=mode).predict_crops(faces)
    assert b.shape == (3, 7) and np.abs(a - b).max() < 0.1
    report = json.loads((repo_root / "saved_models" / name / "export.json").read_text())
    config = json.loads((repo_root / "saved_models" / name / "config.json").read_text())
    if refit_on_every_face(config):  # trained on every FER2013 Training face: no
        # labelled faces left, so the export is checked by its agreement with the Keras model (fer.export)
        assert report["exports"][mode]["agreement_with_keras"] >= 0.95 and "accuracy" not in report["exports"][mode]
        assert "training faces of fer2013 not used for calibration" in report["split"]
    else:
        assert abs(report["exports"][mode]["accuracy_change"]) < 0.05
        assert report["split"].startswith("the run's test split of fer2013 (2000 of")  # every number names its split


def test_fer_export_cli_round_trip_without_data(tmp_path, repo_root):
    import shutil

    from fer import export

    for name in ("model.keras", "config.json"):  # the tiny shipped model: the default's takes 40 s to convert
        shutil.copy(repo_root / "saved_models" / "fer_tiny" / name, tmp_path / name)
    (tmp_path / "no_corpus").mkdir()  # a data folder without FER2013 is a mistake: refused, nothing written
    assert export.main(["--model-dir", str(tmp_path), "--data-dir", str(tmp_path / "no_corpus"), "--modes", "int8"]) == 2
    assert not (tmp_path / "model_int8.tflite").exists() and not (tmp_path / "export.json").exists()
    assert export.main(["--model-dir", str(tmp_path), "--modes", "int8"]) == 0  # no --data-dir: calibrated without data
    assert (tmp_path / "model_int8.tflite").stat().st_size > 100_000
    assert "exports" in json.loads((tmp_path / "export.json").read_text())
