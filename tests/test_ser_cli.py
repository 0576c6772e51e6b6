"""End-to-end: ser.train (2 epochs, every artifact, resume), ser.predict and ser.evaluate on synthetic corpora."""
import json
import logging

import keras
import numpy as np
import pandas as pd
import pytest

from core.io import read_json
from ser import predict as ser_predict
from ser import train as ser_train
from ser.evaluate import main as evaluate_main
from ser.features import FeatureConfig
from tests import synth_audio as synth

ARTIFACTS = ["model.keras", "config.json", "normalization.npz", "metrics.json", "val_metrics.json",
             "confusion_matrix.png", "curve_loss.png", "curve_accuracy.png", "history.csv", "split.csv",
             "data_report.json"]


def _argv(root, out, cache, *extra):
    return ["--model", "cnn", "--corpora", "ravdess,tess", "--data-dir", str(root), "--epochs", "2",
            "--batch-size", "16", "--max-seconds", "1.0", "--augment", "1", "--output", str(out),
            "--cache-dir", str(cache), "--n-jobs", "1", "--val-fraction", "0.2", "--test-fraction", "0.2", *extra]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    synth.make_ravdess(root, actors=5)
    synth.make_tess(root)
    defects = synth.add_defects(root / "ravdess")
    out = tmp_path_factory.mktemp("run")
    assert ser_train.main(_argv(root, out, tmp_path_factory.mktemp("cache"))) == 0
    return root, out, defects


def test_train_writes_every_artifact(trained):
    _, out, _ = trained
    for name in ARTIFACTS:
        assert (out / name).is_file(), name
    metrics = read_json(out / "metrics.json")
    for key in ("accuracy", "precision_macro", "recall_weighted", "f1_macro", "f1_weighted", "f1_micro"):
        assert 0.0 <= metrics[key] <= 1.0
    assert set(metrics["per_class"]) >= {"neutral", "surprise", "macro avg"}
    config = read_json(out / "config.json")
    assert config["class_names"][0] == "neutral" and config["train"]["model"] == "cnn"
    assert config["features"]["max_seconds"] == 1.0
    assert len(pd.read_csv(out / "history.csv")) == 2


def test_bad_files_are_skipped_and_counted(trained):
    _, out, defects = trained
    report = read_json(out / "data_report.json")
    assert report["unreadable"] == 3
    assert set(report["unreadable_files"]) == {str(defects[k]) for k in ("corrupt", "empty", "silent")}
    split = pd.read_csv(out / "split.csv")
    assert "ravdess/Actor_01/" + defects["stereo"].name in set(split["file"])


def test_split_holds_out_whole_speakers(trained):
    _, out, _ = trained
    split = pd.read_csv(out / "split.csv")
    assert (split.groupby("speaker")["split"].nunique() == 1).all()
    assert set(split["split"]) == {"train", "val", "test"}
    assert set(split.loc[split["corpus"] == "tess", "split"]) == {"train"}


def test_interrupted_run_resumes_from_its_last_epoch(tmp_path, monkeypatch, capsys):
    from fer.train import main as fer_train_main

    synth.make_ravdess(tmp_path / "data", actors=5)
    out = tmp_path / "run"

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt("simulated power cut")

    real = ser_train.make_callbacks
    monkeypatch.setattr(ser_train, "make_callbacks", lambda *a, **k: real(*a, **k) + [Crash()])
    argv = _argv(tmp_path / "data", out, tmp_path / "cache", "--epochs", "3", "--corpora", "ravdess", "--augment", "0")
    with pytest.raises(KeyboardInterrupt):
        ser_train.main(argv)
    assert (out / "checkpoints").is_dir() and not (out / "model.keras").exists()
    monkeypatch.setattr(ser_train, "make_callbacks", real)
    # Other settings on the interrupted run are refused before any data loads (it used to resume with them, its
    # config.json naming a learning rate its epochs never had), and its checkpoints stay.
    assert ser_train.main(argv + ["--learning-rate", "0.01"]) == 2
    assert "holds a run started with other settings (--learning-rate" in capsys.readouterr().err
    assert fer_train_main(["--output", str(out), "--epochs", "1"]) == 2
    assert "holds a run of ser.train, not of fer.train" in capsys.readouterr().err
    assert (out / "checkpoints").is_dir()
    assert ser_train.main(argv) == 0
    assert pd.read_csv(out / "history.csv")["epoch"].tolist() == [0, 1, 2]


def test_resumed_run_keeps_the_best_epoch_and_patience_of_the_interrupted_one(tmp_path, monkeypatch):
    # Scripted validation accuracies: epoch 1 is the best; with --patience 2 an uninterrupted run stops after
    # epoch 3 and keeps epoch 1. The crash after epoch 2 must not reset the best value or the wait counter.
    synth.make_ravdess(tmp_path / "data", actors=5)
    out = tmp_path / "run"
    scripted = [0.2, 0.5, 0.3, 0.4, 0.45, 0.45]
    weights = {}

    class Script(keras.callbacks.Callback):  # runs first: every later callback sees the scripted value
        def on_epoch_end(self, epoch, logs=None):
            logs["val_accuracy"] = scripted[epoch]

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            weights[epoch] = self.model.get_weights()

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:
                raise KeyboardInterrupt("simulated power cut")

    real = ser_train.make_callbacks
    monkeypatch.setattr(ser_train, "make_callbacks", lambda *a, **k: [Script(), *real(*a, **k), Record(), Crash()])
    argv = _argv(tmp_path / "data", out, tmp_path / "cache", "--epochs", "6", "--corpora", "ravdess", "--augment", "0",
                 "--patience", "2", "--schedule", "plateau")
    with pytest.raises(KeyboardInterrupt):
        ser_train.main(argv)
    monkeypatch.setattr(ser_train, "make_callbacks", lambda *a, **k: [Script(), *real(*a, **k), Record()])
    assert ser_train.main(argv) == 0
    assert pd.read_csv(out / "history.csv")["epoch"].tolist() == [0, 1, 2, 3]  # stopped where an uninterrupted run does
    best = keras.models.load_model(out / "best.keras", compile=False).get_weights()
    final = keras.models.load_model(out / "model.keras", compile=False).get_weights()
    for kept in (best, final):
        assert all(np.array_equal(a, b) for a, b in zip(kept, weights[1])), "not the best epoch's weights"


def test_rerunning_a_finished_run_trains_nothing_and_other_settings_are_refused(trained, tmp_path, capsys):
    root, out, _ = trained
    files = ("model.keras", "history.csv", "metrics.json")
    before = {name: (out / name).read_bytes() for name in files}
    capsys.readouterr()
    # The same settings (the data read from elsewhere, another cache and another n_jobs are the same run).
    assert ser_train.main(_argv(root, out, tmp_path / "other_cache", "--n-jobs", "2")) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "already finished" in printed[0] and "test: accuracy" in printed[0]
    assert ser_train.main(_argv(root, out, tmp_path / "cache", "--epochs", "3", "--learning-rate", "0.01")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--epochs 2 there, 3 now" in err and "--learning-rate" in err
    assert "another --output" in err and "--batch-size" not in err
    assert not (tmp_path / "cache").exists()  # refused before any audio was read
    assert {name: (out / name).read_bytes() for name in files} == before


def test_train_with_mixup_cosine_masking_utterance_norm_and_pitch(trained, tmp_path):
    root, _, _ = trained
    out = tmp_path / "run"
    argv = _argv(root, out, tmp_path / "cache", "--epochs", "1", "--augment", "0", "--mixup", "0.2",
                 "--schedule", "cosine", "--spec-augment", "true", "--utterance-norm", "true", "--deltas", "true",
                 "--pitch", "true")
    assert ser_train.main(argv) == 0
    config = read_json(out / "config.json")
    assert config["features"]["utterance_norm"] and config["features"]["pitch"]
    assert config["input_shape"][1] == 3 * (40 + 2 + 2)
    assert ser_predict.SERPredictor(out).predict_waveform(synth.tone("sad"), 16_000).shape == (7,)


def test_refit_trains_on_validation_speakers_and_keeps_test_held_out(trained, tmp_path):
    root, first, _ = trained
    out = tmp_path / "refit"
    argv = _argv(root, out, tmp_path / "cache", "--epochs", "2", "--augment", "0", "--schedule", "cosine",
                 "--refit", "true")
    assert ser_train.main(argv) == 0
    split, before = pd.read_csv(out / "split.csv"), pd.read_csv(first / "split.csv")
    assert set(split["split"]) == {"train", "test"}
    was_val = before["split"] == "val"
    assert was_val.any() and (split.loc[was_val, "split"] == "train").all()
    assert split.loc[before["split"] == "test", "split"].eq("test").all()
    assert not (out / "val_metrics.json").exists() and (out / "metrics.json").exists()
    assert pd.read_csv(out / "history.csv")["epoch"].tolist() == [0, 1]  # no early stop: every epoch ran


def test_refit_needs_a_fixed_schedule(trained, tmp_path, capsys):
    root, _, _ = trained
    argv = _argv(root, tmp_path / "r", tmp_path / "cache", "--refit", "true", "--schedule", "plateau")
    assert ser_train.main(argv) == 2
    assert "--schedule cosine" in capsys.readouterr().err


def test_whisper_padding_past_its_window_is_refused_before_any_audio_is_read(tmp_path, capsys):
    argv = ["--model", "whisper", "--pad-seconds", "40", "--data-dir", str(tmp_path / "nowhere"),
            "--output", str(tmp_path / "r")]
    with pytest.raises(SystemExit) as exit_:
        ser_train.main(argv)
    assert exit_.value.code == 2
    assert "--pad-seconds 40" in capsys.readouterr().err  # named before the missing data folder is noticed


def test_model_recipe_fills_only_the_options_not_given():
    cfg = ser_train.with_model_recipe(ser_train.TrainConfig(model="cnn", epochs=2), ["--model", "cnn", "--epochs", "2"])
    assert (cfg.epochs, cfg.augment, cfg.schedule) == (2, 3, "cosine")  # --epochs given; the rest from the recipe
    cfg = ser_train.with_model_recipe(ser_train.TrainConfig(augment=0), ["--augment=0"])
    assert (cfg.model, cfg.augment) == ("whisper", 0)
    assert ser_train.with_model_recipe(ser_train.TrainConfig(), []).augment == ser_train.MODEL_RECIPES["whisper"]["augment"]
    whisper = ser_train.with_model_recipe(ser_train.TrainConfig(), [])
    assert (whisper.noise_copies, whisper.noise_weight, whisper.phone_copy, whisper.phone_weight) == (1, 0.25, True, 0.5)
    cfg = ser_train.with_model_recipe(ser_train.TrainConfig(noise_copies=0), ["--noise-copies", "0"])
    assert (cfg.noise_copies, cfg.noise_weight) == (0, 0.25)


@pytest.mark.parametrize("option", [["--noise-weight", "0"], ["--noise-copies", "-1"], ["--augment", "-2"],
                                    ["--phone-weight", "-1"], ["--crop-copies", "-1"], ["--crop-weight", "0"]])
def test_copy_options_are_checked_before_any_audio_is_read(tmp_path, capsys, option):
    argv = ["--model", "cnn", *option, "--data-dir", str(tmp_path / "nowhere"), "--output", str(tmp_path / "r")]
    with pytest.raises(SystemExit) as exit_:
        ser_train.main(argv)
    assert exit_.value.code == 2
    assert option[0] in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_noise_and_phone_copies_join_the_training_clips(trained, tmp_path, caplog):
    root, _, _ = trained
    out = tmp_path / "noisy"
    argv = _argv(root, out, tmp_path / "cache", "--epochs", "1", "--augment", "0", "--noise-copies", "2",
                 "--noise-weight", "0.5", "--music-copies", "1", "--music-weight", "0.5", "--phone-copy", "true",
                 "--crop-copies", "1", "--crop-weight", "0.5")
    with caplog.at_level(logging.INFO, logger="ser.train"):
        assert ser_train.main(argv) == 0
    clean = int((pd.read_csv(out / "split.csv")["split"] == "train").sum())
    assert f"train {6 * clean} ({clean} clips + {5 * clean} augmented copies)" in caplog.text
    train = read_json(out / "config.json")["train"]
    assert train["noise_copies"] == 2 and train["music_copies"] == 1 and train["music_weight"] == 0.5
    assert train["crop_copies"] == 1 and train["crop_weight"] == 0.5
    with pytest.raises(SystemExit):  # checked before any feature is extracted
        ser_train.main(_argv(root, tmp_path / "bad", tmp_path / "cache", "--music-copies", "-1"))
    assert not (tmp_path / "bad").exists()


def test_keras_batches_weigh_each_copy_on_top_of_its_class():
    y = np.array([0, 0, 1, 1, 1, 1])
    copy = np.array([1.0, 0.25, 1.0, 0.25, 1.0, 0.25])
    cfg = ser_train.TrainConfig(batch_size=6)
    _, _, weight = ser_train.array_batches(np.zeros((6, 2, 3, 4), np.float16), y, cfg, copy)[0]
    assert weight[0] / weight[2] == pytest.approx(2.0)  # class 0 has half the clips of class 1
    np.testing.assert_allclose(weight[1::2] / weight[0::2], 0.25)
    _, _, keras_weight = next(iter(ser_train.training_dataset(np.zeros((6, 5, 3), np.float32), y, cfg, copy)))
    np.testing.assert_allclose(np.sort(keras_weight.numpy()), np.sort(weight), rtol=1e-6)


def test_train_reports_missing_data_folder(tmp_path, capsys):
    assert ser_train.main(["--data-dir", str(tmp_path / "nowhere"), "--output", str(tmp_path / "r")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert ser_train.main(["--data-dir", str(tmp_path / "empty"), "--output", str(tmp_path / "r")]) == 2
    assert "no clips found" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # a run refused for its data leaves no run folder


def test_train_without_a_validation_split_says_why_and_leaves_no_run_folder(tmp_path, capsys):
    synth.make_ravdess(tmp_path / "data", actors=4)
    run = tmp_path / "r"
    assert ser_train.main(["--model", "cnn", "--corpora", "ravdess", "--data-dir", str(tmp_path / "data"),
                           "--val-fraction", "0", "--max-seconds", "1.0", "--cache-dir", "", "--n-jobs", "1",
                           "--output", str(run)]) == 2
    err = capsys.readouterr().err
    assert "empty train or validation split" in err and "--val-fraction is 0" in err
    assert not run.exists()  # it held a split.csv, like a run to resume


def test_train_without_data_offline_names_data_dir(tmp_path, monkeypatch, capsys):
    from core import datasets

    monkeypatch.setattr(datasets, "KAGGLE_HOST", ("kaggle.invalid", 443))
    assert ser_train.main(["--corpora", "ravdess", "--output", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "kagglehub" in err and "--data-dir" in err


def test_predict_json_on_files_and_folder(trained, capsys):
    root, out, defects = trained
    folder = root / "tess" / "OAF_angry"
    files = [str(root / "ravdess" / "Actor_02" / "03-01-05-01-01-01-02.wav"), str(defects["aiff_as_wav"])]
    code = ser_predict.main(["--model-dir", str(out), "--json", *files, str(folder)])
    assert code == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2 + len(list(folder.iterdir()))
    for obj in lines:
        assert set(obj) == {"path", "label", "probabilities"}
        assert list(obj["probabilities"]) == ["neutral", "happy", "sad", "angry", "fear", "disgust", "surprise"]
        assert sum(obj["probabilities"].values()) == pytest.approx(1, abs=1e-4)
        assert obj["label"] == max(obj["probabilities"], key=obj["probabilities"].get)


def test_predict_finds_voice_notes_in_a_folder(trained, tmp_path, capsys):
    """A folder of phone voice notes (.opus, .aac) was "no audio files" although each file, named, was read."""
    from tests.synth_video import write_voice_note

    _, out, _ = trained
    y = synth.tone("happy", seconds=1.5)
    notes = [write_voice_note(tmp_path / "notes" / name, y) for name in ("a.opus", "b.aac")]
    assert ser_predict.main(["--model-dir", str(out), "--json", str(tmp_path / "notes")]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["path"] for line in lines] == [str(p) for p in notes]
    assert all(line["label"] in line["probabilities"] for line in lines)


def test_predict_continues_past_bad_files_and_fails_at_the_end(trained, capsys):
    _, out, defects = trained
    code = ser_predict.main(["--model-dir", str(out), "--json", str(defects["corrupt"]), str(defects["silent"]),
                             str(defects["stereo"])])
    captured = capsys.readouterr()
    assert code == 1
    assert len(captured.out.splitlines()) == 1
    assert "not readable as audio" in captured.err and "silent" in captured.err


def test_predictor_is_deterministic_and_matches_cli(trained):
    root, out, _ = trained
    predictor = ser_predict.SERPredictor(out)
    y = synth.tone("angry", seed=3)
    first = predictor.predict_waveform(y, 16_000)
    assert first.shape == (7,)
    assert (predictor.predict_waveform(y, 16_000) == first).all()


def test_predict_without_model_is_a_clear_error(tmp_path, capsys):
    import soundfile as sf

    sf.write(tmp_path / "x.wav", synth.tone("happy", seconds=1.0), 16_000)  # an input that exists: checked first
    assert ser_predict.main(["--model-dir", str(tmp_path), str(tmp_path / "x.wav")]) == 2
    assert "ser.train" in capsys.readouterr().err


def test_evaluate_writes_metrics_for_test_split(trained, tmp_path):
    root, out, _ = trained
    assert evaluate_main(["--model-dir", str(out), "--data-dir", str(root), "--corpora", "ravdess,tess",
                          "--split", "test", "--output", str(tmp_path), "--n-jobs", "1"]) == 0
    metrics = read_json(tmp_path / "metrics.json")
    train_metrics = read_json(out / "metrics.json")
    assert metrics["n"] == train_metrics["n"]
    assert metrics["accuracy"] == pytest.approx(train_metrics["accuracy"])
    assert (tmp_path / "confusion_matrix.png").is_file() and (tmp_path / "predictions.csv").is_file()


def test_evaluate_scores_the_corpora_the_model_was_trained_on_by_default(trained, tmp_path, capsys):
    """Without --corpora, a model trained on RAVDESS alone is scored on RAVDESS: a data folder without TESS is fine
    (it used to fail with 'tess: no clips found ... check --data-dir')."""
    import shutil

    root, out, _ = trained
    config = read_json(out / "config.json")
    assert config["train"]["corpora"] == "ravdess,tess"
    ravdess_only = tmp_path / "ravdess_model"
    shutil.copytree(out, ravdess_only)
    config["train"]["corpora"] = "ravdess"
    (ravdess_only / "config.json").write_text(json.dumps(config))
    data = tmp_path / "data"
    shutil.copytree(root / "ravdess", data / "ravdess")
    assert evaluate_main(["--model-dir", str(ravdess_only), "--data-dir", str(data), "--split", "test",
                          "--output", str(tmp_path / "eval"), "--n-jobs", "1"]) == 0
    assert read_json(tmp_path / "eval" / "metrics.json")["corpora"] == "ravdess"
    out_text = capsys.readouterr().out
    assert "ravdess (test): accuracy" in out_text  # the printed score names its split
    # --split all holds the model's training clips: said; a test split with a speaker missing: said.
    assert evaluate_main(["--model-dir", str(ravdess_only), "--data-dir", str(data), "--output",
                          str(tmp_path / "eval_all"), "--n-jobs", "1"]) == 0
    assert "warning: --split all: these corpora hold the model's training clips too" in capsys.readouterr().err
    split = pd.read_csv(out / "split.csv")
    test_files = split.loc[split["split"] == "test", "file"]
    gone = next(f for f in test_files if f.startswith("ravdess/"))
    (data / gone).unlink()
    assert evaluate_main(["--model-dir", str(ravdess_only), "--data-dir", str(data), "--split", "test",
                          "--output", str(tmp_path / "eval_part"), "--n-jobs", "1"]) == 0
    assert f"of the model's {(test_files.str.startswith('ravdess/')).sum()} test files are in this data folder" in \
        capsys.readouterr().err
    assert evaluate_main(["--model-dir", str(out), "--data-dir", str(data), "--output", str(tmp_path / "eval2"),
                          "--n-jobs", "1"]) == 2
    assert "(or --corpora: by default the model's own, ravdess,tess)" in capsys.readouterr().err
    assert evaluate_main(["--model-dir", str(out), "--corpora", "ravdes", "--output", str(tmp_path / "eval3")]) == 2
    assert "ravdes" in capsys.readouterr().err and not (tmp_path / "eval3").exists()


def test_evaluate_of_a_split_the_model_does_not_have_says_why(trained, tmp_path, capsys):
    import shutil

    root, out, _ = trained
    refit = tmp_path / "refit"
    shutil.copytree(out, refit)
    split = pd.read_csv(refit / "split.csv")
    split["split"] = split["split"].replace("val", "train")  # what --refit writes
    split.to_csv(refit / "split.csv", index=False)
    args = ["--model-dir", str(refit), "--data-dir", str(root), "--corpora", "ravdess,tess", "--split", "val",
            "--output", str(tmp_path / "eval"), "--n-jobs", "1"]
    assert evaluate_main(args) == 2
    assert "has no val split in its split.csv" in capsys.readouterr().err  # not "not in this data folder"
    config = read_json(refit / "config.json")
    config["train"]["refit"] = True
    (refit / "config.json").write_text(json.dumps(config))
    assert evaluate_main(args) == 2
    assert "was refit on its validation speakers" in capsys.readouterr().err


def _speech_with_pause(pause_seconds: float) -> np.ndarray:
    silence = np.zeros(8_000, np.float32)  # 0.5 s at both ends, trimmed away
    pause = np.zeros(int(pause_seconds * 16_000), np.float32)
    return np.concatenate([silence, synth.tone("happy", seconds=2.0), pause,
                           synth.tone("sad", seconds=2.0, seed=1), silence])


def test_long_recording_is_cut_into_voiced_windows():
    cfg = FeatureConfig(max_seconds=1.0)
    short = synth.tone("angry", seconds=0.9)
    [(start, end, samples)] = ser_predict.speech_windows(short, cfg)
    assert (start, samples is short) == (0.0, True) and end == pytest.approx(0.9)

    windows = ser_predict.speech_windows(_speech_with_pause(3.0), cfg, hop_seconds=0.5)
    starts = [w[0] for w in windows]
    assert all(w[2].size == 16_000 and w[1] - w[0] == pytest.approx(1.0) for w in windows)
    # speech spans 0.5-7.5 s (trimming works on 2048-sample frames, hence the tolerance)
    assert 0.35 <= starts[0] <= 0.6 and 7.4 <= windows[-1][1] <= 7.65
    assert starts == sorted(starts) and np.allclose(np.diff([s for s in starts if s < 2.0]), 0.5)
    assert any(s < 2.0 for s in starts) and any(s > 5.5 for s in starts)
    assert not any(2.6 <= s and s + 1.0 <= 5.4 for s in starts)  # windows inside the 3 s pause are dropped
    with pytest.raises(ValueError, match="hop"):
        ser_predict.speech_windows(short, cfg, hop_seconds=0)


def test_long_recording_averages_its_windows(trained, tmp_path, capsys):
    _, out, _ = trained
    predictor = ser_predict.SERPredictor(out)
    short = synth.tone("angry", seed=3)[:12_000]
    assert np.allclose(predictor.predict_waveform(short, 16_000),
                       predictor._infer(predictor.features_of(short, 16_000))[0])

    y = _speech_with_pause(3.0)
    parts = predictor.predict_segments(y, 16_000, hop_seconds=0.5)
    assert len(parts) >= 6
    assert np.allclose(predictor.predict_waveform(y, 16_000, 0.5), np.mean([p for _, _, p in parts], axis=0))
    path = synth.write(tmp_path / "long.wav", y)
    assert ser_predict.main(["--model-dir", str(out), "--json", "--segments", "--hop", "0.5", str(path)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [(s["start"], s["end"]) for s in result["segments"]] == [(round(a, 3), round(b, 3)) for a, b, _ in parts]
    assert all(set(s) == {"start", "end", "label", "probabilities"} for s in result["segments"])
    with pytest.raises(SystemExit):
        ser_predict.main(["--model-dir", str(out), "--hop", "0", str(path)])


def test_a_window_holding_only_the_edge_of_speech_is_left_out(trained, monkeypatch):
    """A window that catches a sliver of speech between pauses is judged as if the sliver were all of it; with
    fuller windows in the recording it is left out (MIN_WINDOW_SPEECH_SHARE), and a recording of short words
    only keeps them. Speech here is any sound: the speech check is replaced by one that counts sounding samples."""
    from types import SimpleNamespace

    def sounding(w, sr):
        return SimpleNamespace(is_speech=bool(np.any(w)), active_seconds=np.count_nonzero(w) / sr, reason="speech",
                               detail="")
    monkeypatch.setattr(ser_predict, "speech_check", sounding)
    _, out, _ = trained
    predictor = ser_predict.SERPredictor(out)
    window = predictor.features.max_seconds
    burst = synth.tone("sad", seconds=0.2 * window, seed=2)  # under a third of a window
    pause = np.zeros(int(3 * window * 16_000), np.float32)
    y = np.concatenate([synth.tone("happy", seconds=2 * window), pause, burst, pause,
                        synth.tone("happy", seconds=2 * window, seed=1)])
    near_burst = lambda windows: [w for w in windows if 4 * window < w[0] < 5.2 * window]  # noqa: E731
    assert near_burst(ser_predict.speech_windows(y, predictor.features, hop_seconds=window / 4))  # there ...
    kept = predictor.speech_segments(y, 16_000, hop_seconds=window / 4)
    assert not near_burst(kept) and len(kept) >= 4  # ... and left out
    assert all(np.count_nonzero(w) >= window / 3 * 16_000 for _, _, w in kept)
    words = np.concatenate([burst, pause, burst])  # only short words: nothing fuller to prefer
    assert len(predictor.speech_segments(words, 16_000, hop_seconds=window / 4)) >= 2
