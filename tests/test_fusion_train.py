"""fusion.train end to end on synthetic RAVDESS-layout clips, then fusion.predict (joint and late), fusion.late,
the notebook, and the real RAVDESS clip. One tiny staged run (frozen backbone, then fine-tuned) is shared."""
from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from core.io import read_json
from core.labels import EMOTIONS
from tests.synth_video import make_ravdess, make_tiny_fer, make_tiny_ser

TINY_ARGS = ["--corpus", "ravdess", "--workers", "1", "--fps", "5", "--image-size", "32", "--face-size", "32",
             "--n-mels", "16", "--alpha", "0.35", "--lstm-units", "8", "--audio-filters", "4",
             "--audio-lstm-units", "8", "--dense-units", "8", "--batch-size", "4", "--max-seconds", "2",
             "--val-actors", "3", "--test-actors", "4", "--patience", "0", "--epochs", "2", "--frozen-epochs", "1"]
RUN_FILES = ("model.keras", "config.json", "metrics.json", "val_metrics.json", "confusion_matrix.png",
             "val_confusion_matrix.png", "curve_loss.png", "curve_accuracy.png", "history.csv", "split.csv",
             "data_report.json")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("ravdess_video")
    make_ravdess(root, actors=(1, 2, 3, 4), seconds=0.6, size=(64, 64), no_audio=1, corrupt=1)
    return root


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    """A 2-epoch staged run with a local MobileNetV2 weights file (the --weights PATH route)."""
    import keras

    from fusion.train import main

    base = tmp_path_factory.mktemp("fusion_run")
    weights = base / "mobilenet_v2_0.35_32.weights.h5"
    keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None,
                                   pooling="avg").save_weights(weights)
    out = base / "run"
    args = TINY_ARGS + ["--data-dir", str(corpus), "--cache-dir", str(base / "cache"), "--output", str(out),
                        "--weights", str(weights)]
    assert main(args) == 0
    return out


def test_run_writes_every_artifact_and_counts_bad_clips(trained):
    for name in RUN_FILES:
        assert (trained / name).is_file(), name
    config = read_json(trained / "config.json")
    assert config["task"] == "fusion" and config["modalities"] == ["frame", "face", "audio"]
    assert config["strategy"] == "MirroredStrategy" and config["replicas"] == 1
    # Staged: one frozen epoch, one fine-tuning epoch (14 training clips, batch 4 -> 4 steps each).
    assert config["optimizer_steps"] == {"frozen": 4, "tune": 4}
    history = pd.read_csv(trained / "history.csv")
    assert history["epoch"].tolist() == [0, 1] and np.isfinite(history["loss"]).all()
    assert history["learning_rate"].iloc[1] < history["learning_rate"].iloc[0]
    report = read_json(trained / "data_report.json")
    assert report["skipped"]["no_audio"] == 1 and report["skipped"]["corrupt"] == 1
    assert report["split"] == "speaker-independent by RAVDESS actor"
    assert report["groups"]["test"] == ["actor_04"] and report["cache_mb_per_1000_clips"] > 0
    metrics = read_json(trained / "metrics.json")
    for key in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "f1_weighted", "f1_micro", "per_class"):
        assert key in metrics
    assert metrics["n"] == 7 and set(metrics["f1_macro_per_modality_head"]) == {"frame", "face", "audio"}
    split = pd.read_csv(trained / "split.csv")
    assert split.groupby("group")["split"].nunique().max() == 1


@pytest.fixture(scope="module")
def predictor(trained):
    from fusion.predict import FusionPredictor

    return FusionPredictor(trained, speech_model=False)  # the synthetic voices are tones to Whisper


def test_saved_model_reproduces_the_test_metrics(trained, predictor):
    """Load model.keras through the predictor and re-predict the test clips from the video files."""
    split = pd.read_csv(trained / "split.csv")
    test = split[(split["split"] == "test") & split["status"].isin(["ok", "cached"])]
    predicted = [EMOTIONS.index(predictor.predict_clip(p)["label"]) for p in test["path"]]
    accuracy = float(np.mean(np.array(predicted) == test["label"].to_numpy()))
    assert accuracy == pytest.approx(read_json(trained / "metrics.json")["accuracy"])


def test_predict_cli_joint_json_and_bad_clips(trained, corpus, ser_fer, capsys):
    from fusion.predict import main

    good = sorted((corpus / "Actor_01").glob("*.mp4"))[:2]
    bad = sorted((corpus / "Actor_04").glob("01-01-01-02-*.mp4"))  # the no-audio and the corrupt clip
    # --ser-model-dir names the speech model that checks each clip holds speech (an MFCC one: the signal check)
    rc = main([*map(str, good), *map(str, bad), str(corpus / "missing.mp4"), "--json", "--model-dir", str(trained),
               "--mode", "joint", "--ser-model-dir", str(ser_fer[0])])
    out, err = capsys.readouterr()
    assert rc == 1
    lines = [json.loads(line) for line in out.splitlines()]
    assert [r["path"] for r in lines] == [str(p) for p in good]
    for result in lines:
        assert result["mode"] == "joint" and result["label"] in EMOTIONS
        assert list(result["probabilities"]) == list(EMOTIONS)
        assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert set(result["heads"]) == {"frame", "face", "audio"} and result["voice"] is None
    assert "no audio track" in err and "cannot decode" in err and "missing.mp4" in err


def test_predict_errors_for_single_bad_clips(trained, corpus, predictor):
    from fusion.media import CorruptMediaError, NoAudioError
    from fusion.predict import FusionPredictor

    no_audio, corrupt = sorted((corpus / "Actor_04").glob("01-01-01-02-*.mp4"))
    with pytest.raises(NoAudioError, match="--mode late"):
        predictor.predict_clip(no_audio)
    with pytest.raises(CorruptMediaError, match="cannot decode"):
        predictor.predict_clip(corrupt)
    with pytest.raises(FileNotFoundError, match="fusion.train"):
        FusionPredictor(trained.parent / "nowhere")


def test_the_joint_model_refuses_a_clip_whose_sound_is_not_speech(predictor, tmp_path):
    """Hum under a face used to get a confident joint answer; late fusion and the server already refused it."""
    from fusion.media import NoAudioError
    from tests.synth_video import write_clip

    t = np.arange(32_000) / 16_000
    hum = sum(0.1 / k * np.sin(2 * np.pi * 50 * k * t) for k in range(1, 6)).astype(np.float32)
    clip = write_clip(tmp_path / "hum.mp4", audio=hum, seconds=2.0)
    with pytest.raises(NoAudioError, match=r"no speech: hum.*the joint model needs speech: use --mode late"):
        predictor.predict_clip(clip)


class _HearsNoSpeech:
    """A speech model whose Whisper check refuses every clip, as the shipped one refuses music."""

    def predict_segments(self, y, sr, hop_seconds=None, source="audio"):
        from ser.frontend import NoSpeechError

        raise NoSpeechError(f"{source}: no speech: Whisper hears no speech in it (no-speech probability 0.93; "
                            "speech < 0.6): music or another sound", "other sound", no_speech_probability=0.93)


def test_the_joint_model_asks_the_speech_model_and_auto_mode_falls_back_to_late(trained, corpus, ser_fer):
    """A clip that passes the signal check but not the speech model's Whisper check (music) is no speech to the
    joint model too; auto mode then reads the clip with late fusion, which uses the face alone."""
    from fusion.media import NoAudioError
    from fusion.predict import AutoPredictor, FusionPredictor

    clip = sorted((corpus / "Actor_01").glob("*.mp4"))[0]
    joint = FusionPredictor(trained, speech_model=ser_fer[0])  # an MFCC model: the signal check, which passes it
    assert joint.speech_model.model_dir == ser_fer[0] and joint.predict_clip(clip)["mode"] == "joint"
    joint.speech_model = _HearsNoSpeech()
    with pytest.raises(NoAudioError, match=r"Whisper hears no speech.*the joint model needs speech: use --mode late"):
        joint.predict_clip(clip)
    auto = AutoPredictor(trained, *ser_fer, late_weights="audio=0.5,face=0.5")
    assert auto.joint.speech_model.model_dir == ser_fer[0]  # --ser-model-dir checks the joint model's clips too
    auto.joint.speech_model = _HearsNoSpeech()
    result = auto.predict_clip(clip)
    assert result["mode"] == "late" and result["face"] is not None


def test_the_joint_model_refuses_music_through_the_shipped_speech_model(trained, tmp_path):
    """By default the joint model's clips pass the shipped speech model's check: a melody under a face, which the
    signal check lets through, is no speech (real Whisper weights; the test of the check itself is in
    tests/test_ser_whisper_no_speech.py)."""
    from fusion.media import NoAudioError
    from fusion.predict import FusionPredictor
    from ser.predict import DEFAULT_MODEL_DIR
    from tests.synth_audio import piano_melody
    from tests.synth_video import write_clip

    if not (DEFAULT_MODEL_DIR / "model.keras").is_file():
        pytest.skip("saved_models/ser is not in this checkout")
    melody = piano_melody(0)
    clip = write_clip(tmp_path / "melody.mp4", audio=melody, seconds=len(melody) / 16_000)
    joint = FusionPredictor(trained)
    assert joint.speech_model.model_dir == DEFAULT_MODEL_DIR
    with pytest.raises(NoAudioError, match=r"Whisper hears no speech.*the joint model needs speech"):
        joint.predict_clip(clip)


@pytest.fixture(scope="module")
def ser_fer(tmp_path_factory):
    base = tmp_path_factory.mktemp("late_models")
    return make_tiny_ser(base / "ser"), make_tiny_fer(base / "fer")


def test_late_fusion_predicts_and_falls_back_to_one_modality(ser_fer, corpus):
    from fusion.late import LateFusion
    from fusion.media import CorruptMediaError

    late = LateFusion(*ser_fer, weights="audio=0.7,face=0.3")
    clip = sorted((corpus / "Actor_01").glob("*.mp4"))[0]
    result = late.predict_clip(clip)
    audio, face = (np.array(list(result[m]["probabilities"].values())) for m in ("voice", "face"))
    fused = np.array(list(result["probabilities"].values()))
    np.testing.assert_allclose(fused, 0.7 * audio + 0.3 * face, atol=1e-5)
    assert result["frames_with_face"] > 0 and result["label"] == EMOTIONS[int(np.argmax(fused))]
    no_audio, corrupt = sorted((corpus / "Actor_04").glob("01-01-01-02-*.mp4"))
    alone = late.predict_clip(no_audio)
    assert alone["audio_missing"] == "no audio track" and alone["voice"] is None and alone["used"] == ["face"]
    with pytest.raises(CorruptMediaError):
        late.predict_clip(corrupt)


def test_fit_weights_finds_the_informative_modality():
    from fusion.late import fit_weights, fuse, load_weights

    rng = np.random.default_rng(0)
    y = np.arange(28) % 7
    probs = []
    for label in y:
        audio = np.full(7, 0.1)
        audio[label] = 0.4  # audio is right (and confident)
        face = rng.dirichlet(np.ones(7))  # face is noise
        probs.append({"audio": audio / audio.sum(), "face": face})
    weights, score, curve = fit_weights(probs, y)
    assert weights["audio"] > weights["face"] and score == pytest.approx(1.0)
    assert len(curve) == 21
    assert np.allclose(fuse({"audio": None, "face": probs[0]["face"]}, weights), probs[0]["face"])
    with pytest.raises(ValueError):
        load_weights("audio=x")


def test_late_cli_fit_and_predict(trained, ser_fer, capsys):
    from fusion.late import main as fit_main
    from fusion.predict import main as predict_main

    out = trained.parent / "late"
    assert fit_main(["--ser-model-dir", str(ser_fer[0]), "--fer-model-dir", str(ser_fer[1]),
                     "--split-csv", str(trained / "split.csv"), "--split", "val", "--output", str(out)]) == 0
    fitted = read_json(out / "late_fusion.json")
    assert fitted["weights"]["audio"] + fitted["weights"]["face"] == pytest.approx(1.0) and fitted["clips"] == 7
    assert (out / "late_metrics.json").is_file() and (out / "late_confusion_matrix.png").is_file()
    capsys.readouterr()
    clip = pd.read_csv(trained / "split.csv")["path"].iloc[0]
    rc = predict_main([clip, "--mode", "late", "--json", "--ser-model-dir", str(ser_fer[0]),
                       "--fer-model-dir", str(ser_fer[1]), "--late-weights", str(out)])
    result = json.loads(capsys.readouterr().out.splitlines()[0])
    assert rc == 0 and result["mode"] == "late" and result["weights"] == {"voice": fitted["weights"]["audio"], "face": fitted["weights"]["face"]}


def test_a_clip_longer_than_max_seconds_is_reported_as_truncated(trained, ser_fer, tmp_path, capsys):
    from fusion.predict import FusionPredictor
    from fusion.predict import main as predict_main
    from tests.synth_video import write_clip

    clip = str(write_clip(tmp_path / "long.mp4", seconds=3.0, emotion=2))
    late = ["--mode", "late", "--json", "--ser-model-dir", str(ser_fer[0]), "--fer-model-dir", str(ser_fer[1]),
            "--late-weights", "audio=0.5,face=0.5"]
    assert predict_main([clip, *late]) == 0
    whole = capsys.readouterr()
    assert predict_main([clip, *late, "--max-seconds", "1.5"]) == 0
    cut = capsys.readouterr()
    whole_result, cut_result = json.loads(whole.out), json.loads(cut.out)
    assert not whole_result["truncated"] and "warning" not in whole.err
    assert cut_result["truncated"] and cut_result["seconds"] == pytest.approx(1.5, abs=0.2)  # + one frame at 5/s
    assert cut_result["duration_seconds"] == pytest.approx(3.0, abs=0.1)
    assert cut_result["frames_sampled"] < whole_result["frames_sampled"]
    assert "3.0 s long; only its first 1.5 s were used (--max-seconds)" in cut.err
    joint = FusionPredictor(trained, max_seconds=1.5, speech_model=False).predict_clip(clip)  # the same span
    assert joint["truncated"] and joint["duration_seconds"] == pytest.approx(3.0, abs=0.1)
    missing = str(tmp_path / "no_model")  # refused before any model loads
    for bad in ("0", "-1", "nan"):
        with pytest.raises(SystemExit):
            predict_main([clip, "--max-seconds", bad, "--ser-model-dir", missing])
        assert "--max-seconds must be a number of seconds > 0" in capsys.readouterr().err


def test_late_cli_checks_its_clips_and_frame_rate_before_loading_models(trained, tmp_path, capsys):
    from fusion.late import main as fit_main

    missing = str(tmp_path / "no_model")  # would fail to load: each error below must come before that
    base = ["--ser-model-dir", missing, "--fer-model-dir", missing, "--output", str(tmp_path / "out")]
    assert fit_main(base + ["--split-csv", str(tmp_path / "split.csv")]) == 2
    assert "--split-csv" in capsys.readouterr().err
    assert fit_main(base + ["--split-csv", str(trained / "split.csv"), "--fps", "0"]) == 2
    assert "fps" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        fit_main(base + ["--split-csv", str(trained / "split.csv"), "--split", "valid"])
    assert "invalid choice" in capsys.readouterr().err


def test_notebook_runs_headless_on_a_synthetic_clip(trained, corpus, repo_root):
    import nbclient
    import nbformat

    clip = sorted((corpus / "Actor_02").glob("*.mp4"))[0]
    env = {"FUSION_NB_CLIP": str(clip), "FUSION_NB_MODEL_DIR": str(trained),
           "FUSION_NB_SER_DIR": str(trained / "none"), "FUSION_NB_FER_DIR": str(trained / "none")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        notebook = nbformat.read(repo_root / "notebooks" / "fusion.ipynb", as_version=4)
        nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                resources={"metadata": {"path": str(repo_root / "notebooks")}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    text = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
    assert "face found in" in text and '"mode": "joint"' in text


@pytest.mark.realdata
def test_real_ravdess_clip_decodes_and_predicts(shared_data, predictor):
    from fusion.media import decode_clip

    clip_path = shared_data / "ravdess_video" / "Actor_01" / "01-01-01-01-01-01-01.mp4"
    clip = decode_clip(clip_path, fps=10.0)
    assert len(clip.frames) == pytest.approx(33, abs=1)  # 3.3 s at 10 fps
    assert clip.audio.size / 16_000 == pytest.approx(3.3, abs=0.1)
    result = predictor.predict_clip(clip_path)
    assert result["label"] in EMOTIONS and result["frames_with_face"] >= 0.8 * result["frames_sampled"]


def test_a_run_refused_for_its_data_leaves_no_folder(tmp_path, capsys):
    """docs/reliability.md: a refused run creates no run folder (the folder used to be made before the clips
    were listed, so a wrong --data-dir left an empty one)."""
    from fusion.train import main

    (tmp_path / "no_clips").mkdir()
    out = tmp_path / "runs" / "fusion"
    assert main(TINY_ARGS + ["--data-dir", str(tmp_path / "no_clips"), "--cache-dir", str(tmp_path / "cache"),
                             "--output", str(out), "--weights", "none"]) == 2
    assert "error:" in capsys.readouterr().err
    assert not out.exists() and not out.parent.exists()
    # Clips, but too few actors for a validation one at these fractions: said with the options to change.
    make_ravdess(tmp_path / "two_actors", actors=(1, 2), seconds=0.6, size=(64, 64))
    assert main(TINY_ARGS + ["--data-dir", str(tmp_path / "two_actors"), "--cache-dir", str(tmp_path / "cache"),
                             "--output", str(out), "--weights", "none", "--val-actors", "", "--test-actors", ""]) == 2
    err = capsys.readouterr().err
    assert "empty train or validation split" in err and "--val-fraction / --val-actors" in err
    assert not out.exists()


def test_a_finished_run_is_kept_and_other_settings_are_refused(trained, corpus, capsys):
    """As ser.train and fer.train: the same command again keeps the finished run (it used to resume from its
    checkpoint and rewrite its reports), other settings are refused before any data is read (--epochs 3 used to
    train on, --dense-units a raw shape error after preprocessing); the resume state is gone once it finished."""
    from core.training import RUN_SETTINGS
    from fusion.train import main

    base = trained.parent
    args = TINY_ARGS + ["--data-dir", str(corpus), "--cache-dir", str(base / "cache"), "--output", str(trained),
                        "--weights", str(base / "mobilenet_v2_0.35_32.weights.h5")]
    assert not (trained / "checkpoints").exists() and (trained / RUN_SETTINGS).is_file()
    before = (trained / "metrics.json").read_bytes(), (trained / "history.csv").read_bytes()
    capsys.readouterr()
    assert main(args + ["--workers", "2"]) == 0  # a speed setting: the same run
    assert "already finished with these settings" in capsys.readouterr().out
    for extra, shown in ((["--epochs", "3"], "--epochs 2 there, 3 now"),
                         (["--dense-units", "16"], "--dense-units 8 there, 16 now")):
        assert main(args + extra) == 2
        assert shown in capsys.readouterr().err
    assert ((trained / "metrics.json").read_bytes(), (trained / "history.csv").read_bytes()) == before
