"""TFLite export round trip: shared converter on a recurrent model, and the ser.export CLI."""
import json

import keras
import numpy as np
import pytest

from core.export import TFLiteModel, has_recurrent_layers, to_tflite
from ser.models import build_model


@pytest.mark.parametrize("mode", ["float16", "int8"])
def test_recurrent_model_exports_and_matches_keras(mode, tmp_path):
    keras.utils.set_random_seed(0)
    model = build_model("bilstm", (24, 10))
    assert has_recurrent_layers(model)
    x = np.random.default_rng(0).standard_normal((3, 24, 10)).astype("float32")
    path = tmp_path / f"m_{mode}.tflite"
    path.write_bytes(to_tflite(model, mode, representative=x))
    probs = TFLiteModel(path)(x)
    assert probs.shape == (3, 7)
    assert np.allclose(probs, model.predict_on_batch(x), atol=0.05)


@pytest.mark.parametrize("module", ["ser.export", "fer.export"])
def test_export_clis_refuse_a_missing_model_and_unknown_modes_clearly(module, tmp_path, capsys):
    import importlib

    from core.export import parse_modes

    export = importlib.import_module(module)
    assert export.main(["--model-dir", str(tmp_path)]) == 2  # no model: one line, no traceback
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and str(tmp_path) in err
    for bad in ("float8", "int8,fp32", ""):
        with pytest.raises(SystemExit) as exit_:  # refused while parsing, before the model loads
            export.main(["--model-dir", str(tmp_path), "--modes", bad])
        assert exit_.value.code == 2 and "choose one or more of float16, int8" in capsys.readouterr().err
    assert parse_modes(" int8 , float16,") == ["int8", "float16"]


def test_ser_export_cli_writes_files_report_and_predicts(tmp_path, capfd):
    from ser import export, predict, train
    from tests import synth_audio as synth

    synth.make_ravdess(tmp_path / "data", actors=5)
    run = tmp_path / "run"
    assert train.main(["--model", "cnn", "--corpora", "ravdess", "--data-dir", str(tmp_path / "data"),
                       "--epochs", "1", "--augment", "0", "--max-seconds", "1.0", "--output", str(run),
                       "--cache-dir", "", "--n-jobs", "1", "--val-fraction", "0.2", "--test-fraction", "0.2"]) == 0
    capfd.readouterr()
    assert export.main(["--model-dir", str(run), "--data-dir", str(tmp_path / "data")]) == 0
    exported = capfd.readouterr()  # one line per export, not the converter's temporary SavedModel signature
    assert [line.split(":")[0] for line in exported.out.splitlines()] == ["float16", "int8"], exported.out
    assert "fully_quantize" not in exported.err  # nor the int8 calibrator's settings
    report = json.loads((run / "export.json").read_text())
    assert set(report["exports"]) == {"float16", "int8"}
    for entry in report["exports"].values():
        assert (run / entry["file"]).stat().st_size > 10_000
        assert 0.0 <= entry["accuracy"] <= 1.0 and entry["agreement_with_keras"] >= 0.5
    assert report["split"] == f"the run's test split ({report['test_n']} clips found)"  # every number names its split

    # A data folder with the test actors only: int8 is calibrated on stand-in features, accuracy still measured
    # (this combination used to end in an UnboundLocalError).
    import shutil

    import pandas as pd

    split = pd.read_csv(run / "split.csv")
    test_only = tmp_path / "test_only" / "ravdess"
    for actor in {f.split("/")[1] for f in split.loc[split["split"] == "test", "file"]}:
        shutil.copytree(tmp_path / "data" / "ravdess" / actor, test_only / actor)
    assert export.main(["--model-dir", str(run), "--data-dir", str(test_only.parent)]) == 0
    err = capfd.readouterr().err
    assert "training clips were not found" in err and "accuracy is not measured" not in err
    assert json.loads((run / "export.json").read_text())["test_n"] == report["test_n"]
    clip = next((tmp_path / "data" / "ravdess" / "Actor_01").iterdir())
    assert predict.main(["--model-dir", str(run), "--tflite", "float16", "--json", str(clip)]) == 0
    tflite = capfd.readouterr()
    assert "XNNPACK" not in tflite.err  # the TFLite runtime's note is filtered from stderr
    tflite_out = json.loads(tflite.out)
    assert predict.main(["--model-dir", str(run), "--json", str(clip)]) == 0
    keras_out = json.loads(capfd.readouterr().out)
    assert tflite_out["label"] == keras_out["label"]
    assert tflite_out["probabilities"]["happy"] == pytest.approx(keras_out["probabilities"]["happy"], abs=0.02)

    # A --data-dir without the model's clips is a mistake: refused, and the measured exports stay as they were.
    (run / "model_int8.tflite").unlink()
    (tmp_path / "empty").mkdir()
    measured = (run / "export.json").read_bytes(), (run / "model_float16.tflite").read_bytes()
    assert export.main(["--model-dir", str(run), "--data-dir", str(tmp_path / "empty"), "--modes", "float16"]) == 2
    err = capfd.readouterr().err
    assert err.startswith("error: none of the model's clips were found") and "nothing was exported" in err
    # Leaving --data-dir out would replace exports measured on data with unmeasured ones: refused too.
    assert export.main(["--model-dir", str(run), "--modes", "float16"]) == 2
    assert "holds exports measured on the run's test split" in capfd.readouterr().err
    assert ((run / "export.json").read_bytes(), (run / "model_float16.tflite").read_bytes()) == measured
    # Once that report is gone, exporting without data works: the warnings say what is missing, no int8 mentioned.
    (run / "export.json").unlink()
    assert export.main(["--model-dir", str(run), "--modes", "float16"]) == 0
    err = capfd.readouterr().err
    assert "--data-dir" in err and "accuracy is not measured" in err and "int8" not in err
    assert "split" not in json.loads((run / "export.json").read_text())
    assert predict.main(["--model-dir", str(run), "--tflite", "int8", str(clip)]) == 2
    assert f"python -m ser.export --model-dir {run}" in capfd.readouterr().err


def test_ensemble_of_two_runs_is_a_loadable_run(tmp_path):
    from core.io import read_json
    from ser import ensemble, predict, train
    from tests import synth_audio as synth

    synth.make_ravdess(tmp_path / "data", actors=5)
    runs = []
    for name in ("cnn", "gru"):
        runs.append(tmp_path / name)
        assert train.main(["--model", name, "--corpora", "ravdess", "--data-dir", str(tmp_path / "data"),
                           "--epochs", "1", "--augment", "0", "--max-seconds", "1.0", "--output", str(runs[-1]),
                           "--cache-dir", str(tmp_path / "cache"), "--n-jobs", "1"]) == 0
    out = tmp_path / "ens"
    assert ensemble.main([*map(str, runs), "--output", str(out), "--data-dir", str(tmp_path / "data")]) == 0
    assert read_json(out / "config.json")["model"] == "ensemble(cnn+gru)"
    assert read_json(out / "metrics.json")["n"] == read_json(runs[0] / "metrics.json")["n"]
    p = predict.SERPredictor(out)
    members = [predict.SERPredictor(r) for r in runs]
    y = synth.tone("fear")
    expected = np.mean([m.predict_waveform(y, 16_000) for m in members], axis=0)
    assert np.allclose(p.predict_waveform(y, 16_000), expected, atol=1e-5)
    (tmp_path / "other").mkdir()
    assert train.main(["--model", "cnn", "--corpora", "ravdess", "--data-dir", str(tmp_path / "data"),
                       "--epochs", "1", "--augment", "0", "--max-seconds", "1.0", "--seed", "7",
                       "--output", str(tmp_path / "other"), "--cache-dir", str(tmp_path / "cache"),
                       "--n-jobs", "1"]) == 0
    assert ensemble.main([str(runs[0]), str(tmp_path / "other"), "--output", str(tmp_path / "bad")]) == 2


def test_fer_export_of_a_run_refit_on_every_face_checks_agreement_only(tmp_path, capfd):
    """A final refit on every face keeps no test split: the exports are checked against the Keras model on training
    faces that calibration did not use, and export.json reports agreement, never an accuracy."""
    from fer import export, train
    from synth_faces import write_fer2013_folders

    data = tmp_path / "data"
    write_fer2013_folders(data / "fer2013", per_class=45, splits=("train",))  # 315 faces: 300 calibrate, 15 check
    run = tmp_path / "run"
    assert train.main(["--model", "cnn", "--dataset", "fer2013", "--data-dir", str(data), "--epochs", "1",
                       "--filters", "4,8", "--dense-units", "16", "--batch-size", "64", "--schedule", "cosine",
                       "--refit", "true", "--val-fraction", "0", "--test-fraction", "0", "--output", str(run)]) == 0
    capfd.readouterr()
    assert export.main(["--model-dir", str(run), "--data-dir", str(data), "--modes", "float16"]) == 0
    report = json.loads((run / "export.json").read_text())
    assert report["test_n"] == 15 and "keras_accuracy" not in report
    assert report["split"].startswith("15 training faces of fer2013 not used for calibration")
    entry = report["exports"]["float16"]
    assert "accuracy" not in entry and "accuracy_change" not in entry and entry["agreement_with_keras"] >= 0.9
