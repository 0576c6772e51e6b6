"""The joint model on frozen pretrained encoders (fusion.encoders), with tiny stand-in encoders: shapes, padding
invariance, a staged-loop run through fusion.train that predict reloads, and one MirroredStrategy step on two
logical CPUs (a subprocess, so its device setup cannot clash with other tests)."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from core.io import read_json
from core.labels import EMOTIONS
from tests.synth_video import make_ravdess

TINY_ARGS = ["--corpus", "ravdess", "--workers", "1", "--fps", "5", "--face-encoder", "tiny", "--audio-encoder", "tiny",
             "--modalities", "face,audio", "--lstm-units", "8", "--audio-lstm-units", "8", "--dense-units", "8",
             "--batch-size", "4", "--max-seconds", "2", "--val-actors", "3", "--test-actors", "4", "--patience", "0"]


def _clip_arrays(rng: np.random.Generator, frames: int, steps: int) -> dict[str, np.ndarray]:
    return {"face_emb": rng.normal(size=(frames, 16)).astype(np.float16),
            "face_mask": (rng.random(frames) > 0.2).astype(np.uint8),
            "audio_states": rng.normal(size=(steps, 3, 8)).astype(np.float16)}


def test_tiny_encoders_give_fixed_shapes_and_refuse_wrong_input():
    from fusion.encoders import TINY_FACE_SIZE, get_audio_encoder, get_face_encoder
    from tests.synth_video import render_audio

    face, audio = get_face_encoder("tiny"), get_audio_encoder("tiny")
    crops = np.random.default_rng(0).integers(0, 255, (5, TINY_FACE_SIZE, TINY_FACE_SIZE), dtype=np.uint8)
    emb = face(crops)
    assert emb.shape == (5, face.dim) and emb.dtype == np.float32
    np.testing.assert_array_equal(face(crops), emb)  # a fixed function: cached embeddings stay valid
    states = audio(render_audio(2.0, 16_000, emotion=2))
    assert states.shape == (25, audio.states, audio.dim) and states.dtype == np.float16  # 12.5 steps per second
    with pytest.raises(ValueError, match="takes"):
        face(crops[:, :20])
    with pytest.raises(ValueError, match="face encoder"):
        get_face_encoder("resnet")


def test_face_encoder_reads_the_backbone_inside_a_saved_face_model(tmp_path):
    """A fer run folder holding a flip-averaged faceres model (random weights, narrow): its backbone's features."""
    from core.io import save_model, write_json
    from fer.models import build_faceres, with_flip_average
    from fusion.encoders import fer_has_backbone, get_face_encoder

    save_model(with_flip_average(build_faceres(weights=None, alpha=0.25, image_size=64)), tmp_path / "model.keras")
    write_json(tmp_path / "config.json", {"task": "fer", "model": "faceres", "class_names": list(EMOTIONS)})
    assert fer_has_backbone(tmp_path)
    encoder = get_face_encoder(str(tmp_path))
    assert encoder.input_size == 48 and encoder.dim == 256 and encoder.fingerprint.startswith("fer-")
    crops = np.random.default_rng(0).integers(0, 255, (3, 48, 48), dtype=np.uint8)
    emb = encoder(crops)
    assert emb.shape == (3, 256) and np.isfinite(emb).all() and emb.std() > 0


def test_pretrained_model_shapes_layer_weights_and_padding_invariance():
    from fusion.models import LayerWeights, ModelConfig, build_model
    from fusion.pipeline import batch_inputs, to_model_inputs

    cfg = ModelConfig(pretrained=True, face_dim=16, audio_states=3, audio_dim=8, modalities="face,audio",
                      lstm_units=8, audio_lstm_units=8, dense_units=8)
    model = build_model(cfg)
    assert sorted(model.input) == ["audio_mask", "audio_states", "face_emb", "face_mask", "frame_mask"]
    rng = np.random.default_rng(1)
    short = to_model_inputs(_clip_arrays(rng, 5, 7), ["face", "audio"])
    long = to_model_inputs(_clip_arrays(rng, 12, 20), ["face", "audio"])
    alone = model(batch_inputs([short]), training=False)
    padded = model(batch_inputs([short, long]), training=False)
    assert set(alone) == {"emotion", "face", "audio"}
    for key in alone:
        assert padded[key].shape == (2, len(EMOTIONS))
        np.testing.assert_allclose(np.asarray(alone[key])[0], np.asarray(padded[key])[0], atol=1e-5)
    layer = next(l for l in model.layers if isinstance(l, LayerWeights))
    assert layer.logits.shape == (3,)
    stats = build_model(ModelConfig(**{**cfg.__dict__, "temporal": "stats"}))  # mean + std over the real steps
    alone, padded = stats(batch_inputs([short]), training=False), stats(batch_inputs([short, long]), training=False)
    for key in alone:
        np.testing.assert_allclose(np.asarray(alone[key])[0], np.asarray(padded[key])[0], atol=1e-5)
    with pytest.raises(ValueError, match="face and audio branches only"):
        build_model(ModelConfig(pretrained=True, face_dim=16, audio_states=3, audio_dim=8))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("ravdess_pretrained")
    make_ravdess(root, actors=(1, 2, 3, 4), seconds=0.6, size=(64, 64), no_audio=1)
    return root


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    from fusion.train import main

    base = tmp_path_factory.mktemp("pretrained_run")
    out = base / "run"
    assert main(TINY_ARGS + ["--data-dir", str(corpus), "--cache-dir", str(base / "cache"), "--output", str(out),
                             "--epochs", "2"]) == 0
    return out


def test_train_on_cached_encoder_outputs_and_predict(trained, corpus, tmp_path):
    import pandas as pd

    from fusion.predict import FusionPredictor, main as predict_main

    config = read_json(trained / "config.json")
    assert config["model"]["pretrained"] and config["preprocess"]["encoder_key"] == "tiny-0+tiny-0"
    assert config["optimizer_steps"] == {"frozen": 0, "tune": 8}  # one stage: the encoders are outside the graph
    cached = np.load(pd.read_csv(trained / "split.csv").query("status in ['ok', 'cached']")["cache"].iloc[0])
    assert sorted(cached.files) == ["audio_states", "face_emb", "face_mask"] and cached["face_emb"].dtype == np.float16
    predictor = FusionPredictor(trained, speech_model=False)  # the synthetic voices are tones to Whisper
    split = pd.read_csv(trained / "split.csv")
    test = split[(split["split"] == "test") & split["status"].isin(["ok", "cached"])]
    predicted = [EMOTIONS.index(predictor.predict_clip(p)["label"]) for p in test["path"]]
    accuracy = float(np.mean(np.array(predicted) == test["label"].to_numpy()))
    assert accuracy == pytest.approx(read_json(trained / "metrics.json")["accuracy"])
    result = predictor.predict_clip(test["path"].iloc[0])
    assert result["mode"] == "joint" and set(result["heads"]) == {"face", "audio"} and result["frames_with_face"] > 0


def test_pretrained_encoders_refuse_the_frame_branch(corpus, tmp_path, capsys):
    from fusion.train import main

    args = TINY_ARGS + ["--data-dir", str(corpus), "--cache-dir", str(tmp_path / "c"), "--output", str(tmp_path / "o")]
    assert main(args + ["--modalities", "frame,face,audio"]) == 2
    assert "face and audio branches only" in capsys.readouterr().err
    assert main(args + ["--audio-encoder", ""]) == 2
    assert "--audio-encoder" in capsys.readouterr().err


MIRRORED_SCRIPT = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from fusion.train import main
sys.exit(main(sys.argv[1:] + ["--devices", "/cpu:0,/cpu:1", "--epochs", "1", "--steps-per-epoch", "1"]))
"""


def test_one_mirrored_step_on_two_logical_cpus(trained, corpus, repo_root, tmp_path):
    import os

    cache = trained.parent / "cache"  # filled by the trained fixture: the subprocess only reads it
    env = {**os.environ, "PYTHONPATH": str(repo_root), "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("TF_CONFIG", None)
    out = tmp_path / "mirrored"
    proc = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, *TINY_ARGS, "--data-dir", str(corpus),
                           "--cache-dir", str(cache), "--output", str(out)], cwd=repo_root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    config = read_json(out / "config.json")
    assert config["strategy"] == "MirroredStrategy" and config["replicas"] == 2
    assert config["optimizer_steps"]["tune"] == 1
    assert json.loads((out / "val_metrics.json").read_text())["n"] == 7
