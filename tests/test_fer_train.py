"""fer.train end to end on tiny synthetic corpora: every run artifact, resume, subject splits, evaluation."""
from __future__ import annotations

import json

import keras
import numpy as np
import pandas as pd
import pytest

from core.io import read_json
from fer import evaluate as fer_evaluate
from fer import train as fer_train
from synth_faces import write_ckplus, write_fer2013_csv, write_fer2013_folders

TINY = ["--filters", "4,8", "--dense-units", "16", "--batch-size", "16", "--patience", "5"]
ARTIFACTS = ("model.keras", "config.json", "metrics.json", "val_metrics.json", "confusion_matrix.png",
             "val_confusion_matrix.png", "curve_loss.png", "curve_accuracy.png", "history.csv", "split.csv",
             "data_report.json")


@pytest.fixture(scope="module")
def fer_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("fer_data")
    write_fer2013_csv(root / "fer2013" / "fer2013.csv", per_class=8)
    write_ckplus(root / "ckplus48")
    return root


@pytest.fixture(scope="module")
def cnn_run(fer_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "cnn"
    rc = fer_train.main(["--model", "cnn", "--dataset", "fer2013", "--data-dir", str(fer_data), "--epochs", "2",
                         "--output", str(run), *TINY])
    assert rc == 0
    return run


def test_train_writes_every_artifact(cnn_run):
    for name in ARTIFACTS:
        assert (cnn_run / name).is_file(), name
        assert (cnn_run / name).stat().st_size > 0, name
    assert not (cnn_run / "checkpoints").exists()  # backups are removed once a run finishes
    metrics = read_json(cnn_run / "metrics.json")
    for key in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "f1_weighted", "f1_micro", "per_class",
                "confusion_matrix"):
        assert key in metrics
    assert metrics["split"] == "test" and metrics["n"] == 14  # the PrivateTest rows
    assert np.sum(metrics["confusion_matrix"]) == 14
    assert read_json(cnn_run / "val_metrics.json")["split"] == "val"
    config = read_json(cnn_run / "config.json")
    assert config["model"] == "cnn" and config["epochs"] == 2 and config["class_names"][0] == "neutral"
    report = read_json(cnn_run / "data_report.json")
    assert report["skipped_total"] == 2 and report["loaded"] == 56
    assert report["split_counts"] == {"train": 28, "val": 14, "test": 14}
    split = pd.read_csv(cnn_run / "split.csv")
    assert list(split.columns) == ["file", "subject", "label", "split"] and len(split) == 56
    assert len(pd.read_csv(cnn_run / "history.csv")) == 2
    model = keras.models.load_model(cnn_run / "model.keras")
    assert model.output_shape == (None, 7)


def test_interrupted_run_resumes(fer_data, tmp_path, monkeypatch, capsys):
    import core.training

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt("simulated crash after epoch 2")

    original = core.training.make_callbacks
    monkeypatch.setattr(core.training, "make_callbacks", lambda *a, **k: original(*a, **k) + [Interrupt()])
    base = ["--dataset", "fer2013", "--data-dir", str(fer_data), "--output", str(tmp_path), *TINY]
    args = [*base, "--epochs", "3"]
    with pytest.raises(KeyboardInterrupt):
        fer_train.main(args)
    assert (tmp_path / "checkpoints").is_dir() and not (tmp_path / "model.keras").exists()
    monkeypatch.setattr(core.training, "make_callbacks", original)
    capsys.readouterr()
    # Other settings on the interrupted run: refused before the data loads, its checkpoints kept (it resumed with
    # them; another --filters deleted the checkpoints as 'unreadable' and restarted).
    for extra, shown in ((["--learning-rate", "0.01"], "--learning-rate"), (["--filters", "8,16,32,64"], "--filters")):
        assert fer_train.main([*args, *extra]) == 2
        assert f"holds a run started with other settings ({shown}" in capsys.readouterr().err
    assert (tmp_path / "checkpoints").is_dir()
    assert fer_train.main(args) == 0
    history = pd.read_csv(tmp_path / "history.csv")
    assert history["epoch"].tolist() == [0, 1, 2]  # the third epoch only, not a restart
    # A finished run is left as it is: the same command trains nothing, other settings are refused.
    model = (tmp_path / "model.keras").read_bytes()
    capsys.readouterr()
    assert fer_train.main([*args, "--data-dir", f"{fer_data}/"]) == 0  # where the data is read from: the same run
    assert "already finished" in capsys.readouterr().out
    assert fer_train.main([*base, "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "--epochs 3 there, 1 now" in err and "another --output" in err
    assert pd.read_csv(tmp_path / "history.csv")["epoch"].tolist() == [0, 1, 2]
    assert (tmp_path / "model.keras").read_bytes() == model


def test_ckplus_run_splits_by_subject(fer_data, tmp_path):
    rc = fer_train.main(["--dataset", "ckplus", "--data-dir", str(fer_data), "--epochs", "1", "--output",
                         str(tmp_path), "--test-subjects", "S005,S010", "--augment", "false", *TINY])
    assert rc == 0
    split = pd.read_csv(tmp_path / "split.csv")
    assert split.groupby("subject")["split"].nunique().max() == 1
    assert set(split.loc[split["split"] == "test", "subject"]) == {"S005", "S010"}
    assert read_json(tmp_path / "data_report.json")["dropped"] == {"contempt": 3}


def _tiny_resnet50(include_top=False, weights=None, input_shape=None, name="resnet50"):
    # Stands in for the 24M-parameter base: this test is about the two-stage orchestration, the real ResNet50
    # builder is covered in test_fer_models.py.
    inputs = keras.Input(shape=input_shape, name="base_input")
    x = keras.layers.Conv2D(4, 3, strides=2, name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="conv1_bn")(x)
    x = keras.layers.Conv2D(8, 3, strides=2, name="conv2")(x)
    model = keras.Model(inputs, x, name=name)
    if weights:
        model.load_weights(weights)
    return model


def test_resnet50_two_stage_from_local_weights_resumes_in_stage_2(fer_data, tmp_path, monkeypatch):
    import core.training

    monkeypatch.setattr(keras.applications, "ResNet50", _tiny_resnet50)
    weights = tmp_path / "notop.weights.h5"
    _tiny_resnet50(input_shape=(32, 32, 3)).save_weights(weights)
    run = tmp_path / "run"
    args = ["--model", "resnet50", "--weights", str(weights), "--base-size", "32", "--dataset", "ckplus",
            "--data-dir", str(fer_data), "--epochs", "2", "--fine-tune-epochs", "2", "--fine-tune-layers", "2",
            "--max-per-class", "6", "--output", str(run), *TINY]

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:  # the first fine-tuning epoch
                raise KeyboardInterrupt("simulated crash in stage 2")

    original = core.training.make_callbacks
    monkeypatch.setattr(core.training, "make_callbacks", lambda *a, **k: original(*a, **k) + [Interrupt()])
    with pytest.raises(KeyboardInterrupt):
        fer_train.main(args)
    assert (run / "stage1.keras").exists()
    monkeypatch.setattr(core.training, "make_callbacks", original)
    assert fer_train.main(args) == 0
    history = pd.read_csv(run / "history.csv")
    assert history["epoch"].tolist() == [0, 1, 2, 3]  # two frozen epochs, then two fine-tuning epochs
    assert history["learning_rate"].iloc[-1] == pytest.approx(1e-5)
    assert not (run / "stage1.keras").exists() and not (run / "stage1.json").exists()
    assert read_json(run / "metrics.json")["model"] == "resnet50"
    model = keras.models.load_model(run / "model.keras")
    assert model.get_layer("resnet50").get_layer("conv2").trainable  # unfrozen top
    assert not model.get_layer("resnet50").get_layer("conv1").trainable


def test_offline_imagenet_fails_before_loading_data(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr("core.datasets.network_reachable", lambda *a, **k: False)
    rc = fer_train.main(["--model", "resnet50", "--weights", "imagenet", "--dataset", "jaffe", "--data-dir",
                         str(tmp_path / "no-data"), "--output", str(tmp_path / "run")])
    assert rc == 2
    assert "--weights PATH" in capsys.readouterr().err


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    rc = fer_train.main(["--dataset", "jaffe", "--data-dir", str(tmp_path / "nowhere"), "--output", str(tmp_path)])
    assert rc == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    run = tmp_path / "run"
    assert fer_train.main(["--dataset", "fer2013", "--data-dir", str(tmp_path / "empty"), "--output", str(run)]) == 2
    assert "no FER2013 data found" in capsys.readouterr().err
    assert not run.exists()  # a run refused for its data leaves no run folder


def test_a_split_without_validation_faces_is_refused_without_leaving_a_run_folder(tmp_path, capsys):
    write_ckplus(tmp_path / "ckplus48")
    run = tmp_path / "run"
    assert fer_train.main(["--dataset", "ckplus", "--data-dir", str(tmp_path), "--val-fraction", "0",
                           "--test-fraction", "0", "--output", str(run)]) == 2
    assert "empty train or validation split" in capsys.readouterr().err
    assert not run.exists()  # it held split.csv and data_report.json, and looked like a run to resume


def test_a_backbone_input_below_32_pixels_is_refused_before_the_data_loads(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        fer_train.main(["--model", "faceres", "--base-size", "8", "--data-dir", str(tmp_path / "nowhere"),
                        "--output", str(tmp_path / "run")])
    assert exit_.value.code == 2 and "--base-size must be 0" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_evaluate_reproduces_the_test_metrics(cnn_run, fer_data, tmp_path):
    out = tmp_path / "eval"
    assert fer_evaluate.main(["--model-dir", str(cnn_run), "--dataset", "fer2013", "--data-dir", str(fer_data),
                              "--split", "test", "--output", str(out)]) == 0
    got, trained = read_json(out / "metrics.json"), read_json(cnn_run / "metrics.json")
    assert got["n"] == trained["n"]
    assert got["confusion_matrix"] == trained["confusion_matrix"]
    for name in ("confusion_matrix.png", "data_report.json", "predictions.csv"):
        assert (out / name).is_file()
    # Cross-dataset: every usable CK+ image.
    out2 = tmp_path / "eval_ck"
    assert fer_evaluate.main(["--model-dir", str(cnn_run), "--dataset", "ckplus", "--data-dir", str(fer_data),
                              "--output", str(out2)]) == 0
    assert read_json(out2 / "metrics.json")["n"] == 72
    assert len(pd.read_csv(out2 / "predictions.csv")) == 72
    assert json.loads((out2 / "metrics.json").read_text())["trained_on"] == "fer2013"


def test_warm_start_continues_from_a_trained_model(cnn_run, fer_data, tmp_path):
    run = tmp_path / "warm"
    start = keras.models.load_model(cnn_run / "model.keras")
    rc = fer_train.main(["--model", "cnn", "--dataset", "fer2013", "--data-dir", str(fer_data), "--epochs", "1",
                         "--output", str(run), "--init-from", str(cnn_run / "model.keras"), "--learning-rate", "0.01",
                         "--label-smoothing", "0.1", "--erasing", "0.5", "--degrade", "0.5", "--dedupe", "true",
                         *TINY])
    assert rc == 0
    warm = keras.models.load_model(run / "model.keras")
    assert [w.shape for w in warm.get_weights()] == [w.shape for w in start.get_weights()]
    assert any(not np.allclose(a, b) for a, b in zip(warm.get_weights(), start.get_weights()))
    assert read_json(run / "config.json")["init_from"] == str(cnn_run / "model.keras")
    assert read_json(run / "config.json")["degrade"] == 0.5
    assert any("duplicates dropped from training" in note for note in read_json(run / "data_report.json")["notes"])


def test_warm_start_from_a_flip_averaged_model(cnn_run, tmp_path):
    # The shipped models average flips (fer.tta); continuing one starts from the network inside.
    from fer.models import with_flip_average

    plain = keras.models.load_model(cnn_run / "model.keras")
    shipped = tmp_path / "flip.keras"
    with_flip_average(plain).save(shipped)
    cfg = fer_train.run_config(read_json(cnn_run / "config.json"))
    cfg.init_from = str(shipped)
    warm = fer_train._new_model(cfg, tuple(plain.input_shape[1:]))
    assert len(warm.get_weights()) == len(plain.get_weights())
    for a, b in zip(warm.get_weights(), plain.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_tiny_model_trains_end_to_end(fer_data, tmp_path):
    run = tmp_path / "tiny"
    rc = fer_train.main(["--model", "tiny", "--dataset", "fer2013", "--data-dir", str(fer_data), "--epochs", "1",
                         "--output", str(run), "--batch-size", "16"])
    assert rc == 0
    model = keras.models.load_model(run / "model.keras")
    assert model.name == "fer_tiny" and model.count_params() < 250_000
    assert read_json(run / "config.json")["built_with"]["filters"] == [16, 32, 64, 128]
    assert read_json(run / "metrics.json")["n"] == 14
    assert "resize" not in [layer.name for layer in model.layers]  # no --base-size: the faces as they are


def test_flip_tta_is_decided_on_validation_and_rewrites_the_run(cnn_run, fer_data, tmp_path):
    import shutil

    from fer import tta
    from fer.models import is_flip_averaged

    run = tmp_path / "run"
    shutil.copytree(cnn_run, run)
    plain = keras.models.load_model(run / "model.keras")
    # a gain no model can reach: the plain model stays
    assert tta.main(["--model-dir", str(run), "--data-dir", str(fer_data), "--min-gain", "1.0"]) == 0
    config = read_json(run / "config.json")
    assert config["flip_tta"] is False and not (run / tta.PLAIN_FILE).exists()
    assert not is_flip_averaged(keras.models.load_model(run / "model.keras"))
    # any result keeps it: model.keras becomes the averaging model, reports are rewritten for it
    shutil.rmtree(run)
    shutil.copytree(cnn_run, run)
    assert tta.main(["--model-dir", str(run), "--data-dir", str(fer_data), "--min-gain", "-1"]) == 0
    averaged = keras.models.load_model(run / "model.keras")
    assert is_flip_averaged(averaged) and (run / tta.PLAIN_FILE).is_file()
    x = np.random.default_rng(0).uniform(0, 255, (2, 48, 48, 1)).astype(np.float32)
    np.testing.assert_allclose(averaged.predict_on_batch(x),
                               (plain.predict_on_batch(x) + plain.predict_on_batch(x[:, :, ::-1])) / 2, atol=1e-5)
    assert read_json(run / "metrics.json")["flip_tta"] is True
    assert read_json(run / "config.json")["flip_tta_validation"]["kept"] is True
    # applying twice: done already (exit 0, as a finished run's command), the averaged model left as it is
    assert tta.main(["--model-dir", str(run), "--data-dir", str(fer_data)]) == 0
    from fer.predict import FERPredictor

    assert FERPredictor(run).predict_crops(x[..., 0]).shape == (2, 7)


def test_cosine_schedule_decays_over_the_run_and_unknown_schedules_fail(fer_data, tmp_path, capsys):
    cfg = fer_train.TrainConfig(schedule="cosine")
    rate = fer_train.learning_rate(cfg, 0.01, steps_per_epoch=10, epochs=3)
    assert float(rate(0)) == pytest.approx(0.01) and float(rate(15)) == pytest.approx(0.005, rel=1e-3)
    assert float(rate(30)) == pytest.approx(0.0, abs=1e-7)
    assert fer_train.learning_rate(fer_train.TrainConfig(), 0.01, 10, 3) == 0.01  # plateau: a plain rate

    run = tmp_path / "cosine"
    rc = fer_train.main(["--model", "cnn", "--dataset", "fer2013", "--data-dir", str(fer_data), "--epochs", "2",
                         "--output", str(run), "--schedule", "cosine", *TINY])
    assert rc == 0 and read_json(run / "config.json")["schedule"] == "cosine"
    assert "learning_rate" not in pd.read_csv(run / "history.csv")  # no ReduceLROnPlateau fighting the schedule
    with pytest.raises(SystemExit) as refused:  # refused while parsing, before any data is loaded
        fer_train.main(["--dataset", "fer2013", "--data-dir", str(fer_data), "--epochs", "1", "--output",
                        str(tmp_path / "bad"), "--schedule", "step", *TINY])
    assert refused.value.code == 2 and "unknown --schedule" in capsys.readouterr().err


def test_crop_tta_candidate_is_scored_on_validation(cnn_run, fer_data, tmp_path, capsys):
    import shutil

    from fer import tta

    run = tmp_path / "run"
    shutil.copytree(cnn_run, run)
    assert tta.main(["--model-dir", str(run), "--data-dir", str(fer_data), "--shift", "2", "--min-gain", "-1"]) == 0
    result = read_json(run / "config.json")["flip_tta_validation"]
    assert {"val_accuracy_plain", "val_accuracy_flip", "val_accuracy_flip_shift2"} <= set(result)
    best = max(result["val_accuracy_flip"], result["val_accuracy_flip_shift2"])
    assert result["kept"] and result[f"val_accuracy_flip{'_shift2' if result['shift'] else ''}"] == best
    layers = {layer.name for layer in keras.models.load_model(run / "model.keras").layers}
    assert ("shift_2_0" in layers) == (result["shift"] == 2)
    shutil.copytree(cnn_run, tmp_path / "negative")
    with pytest.raises(SystemExit) as refused:  # refused while parsing (core.config.validate_config)
        tta.main(["--model-dir", str(tmp_path / "negative"), "--data-dir", str(fer_data), "--shift", "-1"])
    assert refused.value.code == 2
    assert "--shift must be >= 0" in capsys.readouterr().err


def test_ensemble_averages_members_with_flips_and_checks_held_out_images(cnn_run, fer_data, tmp_path, capsys):
    import shutil

    from fer import ensemble
    from fer.models import is_flip_averaged
    from fer.predict import FERPredictor

    twin = tmp_path / "twin"
    shutil.copytree(cnn_run, twin)
    out = tmp_path / "ens"
    assert ensemble.main([str(cnn_run), str(twin), "--output", str(out), "--data-dir", str(fer_data)]) == 0
    model = keras.models.load_model(out / "model.keras")
    plain = keras.models.load_model(cnn_run / "model.keras")
    x = np.random.default_rng(1).uniform(0, 255, (2, 48, 48, 1)).astype(np.float32)
    # two identical members average to the member itself, flip-averaged
    np.testing.assert_allclose(model.predict_on_batch(x),
                               (plain.predict_on_batch(x) + plain.predict_on_batch(x[:, :, ::-1])) / 2, atol=1e-5)
    config = read_json(out / "config.json")
    assert is_flip_averaged(model) and config["model"] == "ensemble(cnn+cnn)" and config["flip_tta"] is True
    assert read_json(out / "metrics.json")["n"] == read_json(cnn_run / "metrics.json")["n"]
    assert FERPredictor(out).predict_crops(x[..., 0]).shape == (2, 7)

    split = pd.read_csv(twin / "split.csv")
    split.loc[split.index[split["split"] == "val"][0], "split"] = "train"
    split.to_csv(twin / "split.csv", index=False)
    assert ensemble.main([str(cnn_run), str(twin), "--output", str(tmp_path / "bad")]) == 2
    assert "validation/test images differ" in capsys.readouterr().err
    assert ensemble.main([str(cnn_run), "--output", str(tmp_path / "one")]) == 2
    assert "at least two runs" in capsys.readouterr().err
    assert ensemble.main([str(cnn_run), str(cnn_run) + "/", "--output", str(tmp_path / "same")]) == 2
    assert "is given twice" in capsys.readouterr().err  # one model averaged with itself is not an ensemble
    (twin / "split.csv").unlink()  # a shipped folder: no split to check the held-out images against
    assert ensemble.main([str(cnn_run), str(twin), "--output", str(tmp_path / "shipped")]) == 2
    assert "has no split.csv" in capsys.readouterr().err


def test_refit_trains_on_validation_images_and_keeps_the_test_images(cnn_run, fer_data, tmp_path, capsys):
    from fer import ensemble

    run = tmp_path / "refit"
    args = ["--model", "cnn", "--dataset", "fer2013", "--data-dir", str(fer_data), "--epochs", "2", *TINY]
    assert fer_train.main([*args, "--output", str(run), "--refit", "true"]) == 2  # plateau needs validation
    assert "use --schedule cosine" in capsys.readouterr().err
    assert fer_train.main([*args, "--output", str(run), "--refit", "true", "--schedule", "cosine"]) == 0

    before, after = pd.read_csv(cnn_run / "split.csv"), pd.read_csv(run / "split.csv")
    assert (after["split"] != "val").all()
    assert after.loc[before["split"] == "val", "split"].eq("train").all()
    assert after["split"].eq("test").equals(before["split"].eq("test"))
    assert len(pd.read_csv(run / "history.csv")) == 2  # every epoch ran: nothing to stop early on
    assert not (run / "val_metrics.json").exists()
    assert read_json(run / "metrics.json")["n"] == read_json(cnn_run / "metrics.json")["n"]

    out = tmp_path / "eval"
    assert fer_evaluate.main(["--model-dir", str(run), "--dataset", "fer2013", "--data-dir", str(fer_data),
                              "--split", "val", "--output", str(out)]) == 2
    assert "refit on its validation images" in capsys.readouterr().err
    from fer import tta

    assert tta.main(["--model-dir", str(run), "--data-dir", str(fer_data)]) == 2
    assert "--decided-by RUN" in capsys.readouterr().err
    twin = tmp_path / "twin"
    assert fer_train.main([*args, "--output", str(twin), "--refit", "true", "--schedule", "cosine",
                           "--erasing", "0.5"]) == 0
    ens = tmp_path / "ens"
    assert ensemble.main([str(run), str(twin), "--output", str(ens), "--data-dir", str(fer_data)]) == 0
    assert read_json(ens / "metrics.json")["n"] == read_json(run / "metrics.json")["n"]
    assert not (ens / "val_metrics.json").exists()


def test_cutmix_trains_on_mixed_labels_and_scores_validation_as_usual(fer_data, tmp_path):
    run = tmp_path / "cutmix"
    assert fer_train.main(["--model", "cnn", "--dataset", "fer2013", "--data-dir", str(fer_data), "--epochs", "1",
                           "--cutmix", "1.0", "--output", str(run), *TINY]) == 0
    assert read_json(run / "config.json")["cutmix"] == 1.0
    history = pd.read_csv(run / "history.csv")  # one-hot validation and mixed training targets: one loss for both
    assert len(history) == 1 and np.isfinite(history[["loss", "val_loss"]].to_numpy()).all()
    val = read_json(run / "val_metrics.json")
    assert val["split"] == "val" and 0.0 <= val["accuracy"] <= 1.0


def test_a_refit_run_takes_flip_averaging_from_the_run_its_recipe_was_chosen_with(cnn_run, fer_data, tmp_path,
                                                                                   capsys):
    import shutil

    from fer import tta
    from fer.models import is_flip_averaged

    chosen = tmp_path / "chosen"
    shutil.copytree(cnn_run, chosen)
    refit = tmp_path / "refit"
    args = ["--model", "cnn", "--dataset", "fer2013", "--data-dir", str(fer_data), "--epochs", "1", *TINY]
    assert fer_train.main([*args, "--output", str(refit), "--refit", "true", "--schedule", "cosine"]) == 0
    plain = keras.models.load_model(refit / "model.keras")
    decide = ["--model-dir", str(refit), "--data-dir", str(fer_data), "--decided-by", str(chosen)]
    assert tta.main(decide) == 2  # fer.tta has not decided on the chosen run yet
    assert "has not decided on that run" in capsys.readouterr().err
    assert tta.main(["--model-dir", str(chosen), "--data-dir", str(fer_data), "--min-gain", "-1"]) == 0
    capsys.readouterr()

    assert tta.main([*decide, "--shift", "2"]) == 2  # the decision fixes the crops too
    assert "leave it out" in capsys.readouterr().err
    assert tta.main(decide) == 0
    assert f"decided on {chosen}: flips kept" in capsys.readouterr().out
    averaged = keras.models.load_model(refit / "model.keras")
    assert is_flip_averaged(averaged) and (refit / tta.PLAIN_FILE).is_file()
    x = np.random.default_rng(1).uniform(0, 255, (2, 48, 48, 1)).astype(np.float32)
    np.testing.assert_allclose(averaged.predict_on_batch(x),
                               (plain.predict_on_batch(x) + plain.predict_on_batch(x[:, :, ::-1])) / 2, atol=1e-5)
    config = read_json(refit / "config.json")
    assert config["flip_tta"] is True and config["flip_tta_validation"]["run"] == str(chosen)
    assert read_json(refit / "metrics.json")["flip_tta"] is True  # the test report is the averaged model's
    assert not (refit / "val_metrics.json").exists()
    before = (refit / "model.keras").read_bytes()
    assert tta.main(decide) == 0  # applying twice: done already, nothing rewritten
    assert "already averages flips: nothing to do" in capsys.readouterr().out
    assert (refit / "model.keras").read_bytes() == before


def test_distill_targets_mix_the_teachers_flip_averaged_probabilities_with_the_labels(cnn_run):
    teacher = keras.models.load_model(cnn_run / "model.keras", compile=False)
    images = np.random.default_rng(0).uniform(0, 255, (5, 48, 48)).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 4])
    targets = fer_train.distill_targets(str(cnn_run / "model.keras"), images, labels, weight=0.6,
                                        label_smoothing=0.1)
    probs = (teacher.predict_on_batch(images[..., None]) + teacher.predict_on_batch(images[:, :, ::-1, None])) / 2
    one_hot = np.eye(7)[labels] * 0.9 + 0.1 / 7
    np.testing.assert_allclose(targets, 0.6 * probs + 0.4 * one_hot, atol=1e-5)
    np.testing.assert_allclose(targets.sum(axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="takes"):
        fer_train.distill_targets(str(cnn_run / "model.keras"), images[:, :32, :32], labels, 0.5)


def test_distillation_trains_a_student_from_a_teacher_run(cnn_run, fer_data, tmp_path):
    run = tmp_path / "student"
    rc = fer_train.main(["--model", "tiny", "--dataset", "fer2013", "--data-dir", str(fer_data), "--epochs", "1",
                         "--output", str(run), "--batch-size", "16", "--teacher", str(cnn_run / "model.keras"),
                         "--distill-weight", "0.8"])
    assert rc == 0
    assert keras.models.load_model(run / "model.keras").name == "fer_tiny"
    assert read_json(run / "config.json")["teacher"] == str(cnn_run / "model.keras")
    assert 0.0 <= read_json(run / "metrics.json")["accuracy"] <= 1.0


def test_a_missing_teacher_or_bad_weight_fails_before_loading_data(tmp_path, capsys):
    missing = ["--model", "tiny", "--data-dir", str(tmp_path / "nowhere"), "--output", str(tmp_path / "r")]
    assert fer_train.main([*missing, "--teacher", str(tmp_path / "absent.keras")]) == 2
    assert "absent.keras: no such file" in capsys.readouterr().err
    teacher = tmp_path / "t.keras"
    teacher.write_bytes(b"")
    with pytest.raises(SystemExit) as exit_:
        fer_train.main([*missing, "--teacher", str(teacher), "--distill-weight", "1.5"])
    assert exit_.value.code == 2 and "--distill-weight must be from 0 to 1, got 1.5" in capsys.readouterr().err


@pytest.mark.parametrize("option, message", [
    (["--filters", "0,-1"], "--filters must be comma-separated positive integers"),
    (["--filters", "8,x"], "--filters must be comma-separated positive integers"),
    (["--erasing", "2"], "--erasing must be from 0 to 1, got 2.0"),
    (["--degrade", "-0.1"], "--degrade must be from 0 to 1, got -0.1"),
    (["--degrade", "0.5", "--degrade-kinds", "noise,blur"], "--degrade-kinds must name some of contrast"),
    (["--shift", "1"], "--shift must be from 0 to below 1"),
    (["--teacher-views", "-1"], "--teacher-views must be >= 0"),
    (["--view-mixup", "0.5"], "--view-mixup needs --teacher-views"),
    (["--cutmix", "1.5"], "--cutmix must be from 0 to 1, got 1.5"),
    (["--cutmix", "0.5", "--teacher", "T", "--teacher-views", "2"], "--cutmix does not apply to --teacher-views"),
])
def test_unusable_augmentation_or_architecture_options_name_the_flag_before_the_data_loads(option, message,
                                                                                            tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:  # was a raw Keras error after the data loaded and config.json was written
        fer_train.main(["--model", "tiny", "--data-dir", str(tmp_path / "nowhere"), "--output", str(tmp_path / "r"),
                        *option])
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_teacher_or_warm_start_this_model_cannot_use_is_refused_without_leaving_a_run_folder(fer_data, tmp_path,
                                                                                               capsys):
    from fer.models import build_tiny

    other_size = tmp_path / "teacher32.keras"
    build_tiny(input_shape=(32, 32, 1), filters=(4, 8)).save(other_size)
    run = tmp_path / "run"
    base = ["--model", "tiny", "--dataset", "fer2013", "--data-dir", str(fer_data), "--epochs", "1",
            "--output", str(run), "--filters", "4,8"]
    assert fer_train.main([*base, "--teacher", str(other_size)]) == 2
    assert "the faces here are (48, 48, 1)" in capsys.readouterr().err
    assert not run.exists()  # it used to hold config.json, split.csv and data_report.json
    assert fer_train.main([*base, "--model", "cnn", "--init-from", str(other_size)]) == 2
    assert "--init-from" in capsys.readouterr().err
    assert not run.exists()


def test_warm_start_carries_weights_across_input_sizes_and_refuses_other_architectures():
    from fer.models import build_faceres, build_tiny

    small = build_faceres(weights=None, image_size=32, alpha=0.25)
    large = build_faceres(weights=None, image_size=40, alpha=0.25)
    fer_train.copy_weights(small, large)
    for a, b in zip(small.get_weights(), large.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="has no layer"):
        fer_train.copy_weights(build_tiny(), large)
    with pytest.raises(ValueError, match="this model needs"):
        fer_train.copy_weights(build_faceres(weights=None, image_size=32, alpha=0.5), large)


def test_a_refit_on_every_face_says_it_has_no_score_and_is_finished(tmp_path, capsys):
    # --refit true --test-fraction 0 (how the shipped FER2013 models end): nothing held out, so metrics.json says
    # n = 0, and the same command again trains nothing (it would rebuild a teacher bank and retrain).
    write_fer2013_folders(tmp_path / "data" / "fer2013", per_class=4, splits=("train",))  # the Kaggle layout we have
    run = tmp_path / "all"
    args = ["--model", "cnn", "--dataset", "fer2013", "--data-dir", str(tmp_path / "data"), "--epochs", "1",
            "--refit", "true", "--schedule", "cosine", "--test-fraction", "0", "--output", str(run), *TINY]
    assert fer_train.main(args) == 0
    metrics = read_json(run / "metrics.json")
    assert metrics["n"] == 0 and metrics["split"] == "none"
    split = pd.read_csv(run / "split.csv")["split"]
    assert set(split) == {"train"}
    model = (run / "model.keras").read_bytes()
    capsys.readouterr()
    assert fer_train.main(args) == 0
    out = capsys.readouterr().out
    assert "already finished" in out and "no held-out items" in out
    assert (run / "model.keras").read_bytes() == model
    # Scoring its own corpus's test split names why it is empty and what to score instead.
    assert fer_evaluate.main(["--model-dir", str(run), "--dataset", "fer2013", "--data-dir", str(tmp_path / "data"),
                              "--split", "test", "--output", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err
    assert "trained on every fer2013 face" in err and "--dataset ckplus" in err
    assert not (tmp_path / "eval").exists()
