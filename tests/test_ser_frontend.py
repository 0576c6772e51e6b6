"""ser.frontend: level normalisation and the speech check, and how every speech front end uses them
(features, ser.predict CLI, HTTP API, live stream, video upload)."""
import json
import re
from pathlib import Path

import numpy as np
import pytest

import synth_media as sm
from core.io import read_json, write_json
from core.labels import EMOTIONS
from ser import predict as ser_predict
from ser import train as ser_train
from ser.audio import CorruptAudioError
from ser.features import FeatureConfig, augment_waveform, frames_from_waveform
from ser.frontend import (LEVEL_TARGET_DBFS, REASONS, NoSpeechError, active_rms, normalize_level,
                          require_speech, speech_check)
from tests import synth_audio as synth

SR = 16_000


def _t(seconds: float = 3.0, sr: int = SR) -> np.ndarray:
    return np.arange(int(seconds * sr)) / sr


def _pink(n: int, seed: int = 0) -> np.ndarray:
    spectrum = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    return np.fft.irfft(spectrum / np.sqrt(np.maximum(np.arange(spectrum.size), 1)), n)


def hum(seconds: float = 3.0, hz: float = 50.0) -> np.ndarray:
    """Mains hum: a fundamental and four harmonics, falling off as 1/k."""
    t = _t(seconds)
    return 0.1 * sum(np.sin(2 * np.pi * hz * k * t) / k for k in range(1, 6))


NOT_SPEECH = {
    "silence": (np.zeros(3 * SR), "silence"),
    "dc": (np.full(3 * SR, 0.25), "constant (DC)"),
    "hum_50": (hum(), "hum"),
    "hum_60": (hum(hz=60.0), "hum"),
    "tone_440": (0.3 * np.sin(2 * np.pi * 440 * _t()), "steady tone"),
    "tone_1k": (0.3 * np.sin(2 * np.pi * 1000 * _t()), "steady tone"),
    "tone_with_dc": (0.5 + 0.1 * np.sin(2 * np.pi * 440 * _t()), "steady tone"),
    "beeps": (0.3 * np.sin(2 * np.pi * 880 * _t()) * (np.sin(2 * np.pi * 2 * _t()) > 0), "steady tone"),
    "white_noise": (0.1 * np.random.default_rng(0).standard_normal(3 * SR), "noise"),
    "pink_noise": (0.1 * _pink(3 * SR), "noise"),
    "50_ms_of_speech": (synth.tone("happy", seconds=0.05), "too short"),
}


# ---- level normalisation ----------------------------------------------------------------------

@pytest.mark.parametrize("gain", [1e-3, 1e-2, 0.1, 0.3, 3.0, 10.0, 1e3, 32768.0, 1e30])
def test_features_do_not_depend_on_the_level(gain):
    y = synth.tone("happy", seconds=2.0, seed=1)
    cfg = FeatureConfig(max_seconds=3.0)
    reference = frames_from_waveform(y, cfg)
    scaled = frames_from_waveform((y.astype(np.float64) * gain).astype(np.float32), cfg)
    assert scaled.shape == reference.shape and np.isfinite(scaled).all()
    assert np.abs(scaled - reference).max() < 1e-3  # MFCCs span hundreds of dB-ish units


def test_without_level_norm_the_features_follow_the_level():
    y = synth.tone("happy", seconds=2.0, seed=1)
    cfg = FeatureConfig(max_seconds=3.0, level_norm=False)
    assert np.abs(frames_from_waveform(0.1 * y, cfg) - frames_from_waveform(y, cfg)).max() > 10


def test_normalize_level_removes_dc_and_hits_the_target():
    y = synth.tone("sad", seconds=2.0).astype(np.float64)
    for x in (y, y + 0.4, 1e30 * y, np.round(32767 * y)):
        out = normalize_level(x)
        assert out.dtype == np.float32 and np.isfinite(out).all()
        assert abs(float(out.mean())) < 1e-4
        assert 20 * np.log10(active_rms(out.astype(np.float64))) == pytest.approx(LEVEL_TARGET_DBFS, abs=0.01)
    assert np.array_equal(normalize_level(np.full(1000, 0.3)), np.zeros(1000, np.float32))  # nothing to scale
    assert not normalize_level(np.zeros(10)).any() and normalize_level(np.zeros(0)).size == 0
    with pytest.raises(CorruptAudioError, match="NaN"):
        normalize_level(np.array([0.1, np.nan, 0.2]))


def test_dc_offset_does_not_change_the_features():
    y = synth.tone("angry", seconds=2.0)
    cfg = FeatureConfig(max_seconds=3.0)
    assert np.abs(frames_from_waveform(y + 0.3, cfg) - frames_from_waveform(y, cfg)).max() < 1e-3


def test_the_sample_trim_keeps_the_same_speech_wherever_the_recording_starts():
    import librosa

    from ser.frontend import trim_silence

    y = np.concatenate([np.zeros(5000, np.float32), synth.tone("sad", seconds=1.0), np.zeros(7000, np.float32)])
    kept, (start, end) = trim_silence(y, 30.0)
    _, (frame_start, frame_end) = librosa.effects.trim(y, top_db=30.0)
    assert abs(start - frame_start) <= 1024 and abs(end - frame_end) <= 1024  # librosa's rule, finer grid
    for before in (1, 64, 300):
        moved, (s2, e2) = trim_silence(np.concatenate([np.zeros(before, np.float32), y, np.zeros(9, np.float32)]), 30.0)
        np.testing.assert_array_equal(moved, kept)
        assert (s2, e2) == (start + before, end + before)
    assert trim_silence(np.zeros(100, np.float32), 30.0)[0].size == 0


def test_cache_keys_of_configs_without_level_norm_are_unchanged():
    # the key FeatureConfig() had before level_norm existed: old feature caches stay valid
    assert FeatureConfig(level_norm=False).key() == "3e83c063cba1"
    assert FeatureConfig().key() != FeatureConfig(level_norm=False).key()


def test_augmented_copies_vary_the_level():
    y = synth.tone("fear", seconds=1.0)
    levels = [20 * np.log10(np.sqrt(np.mean(augment_waveform(y, SR, np.random.default_rng(s)) ** 2)))
              for s in range(40)]
    assert max(levels) - min(levels) > 20


# ---- speech check -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(NOT_SPEECH))
def test_non_speech_is_refused_with_its_reason(name):
    y, reason = NOT_SPEECH[name]
    check = speech_check(y.astype(np.float32), SR)
    assert (check.is_speech, check.reason) == (False, reason), check
    with pytest.raises(NoSpeechError, match=re.escape(f"clip.wav: no speech: {reason}")) as caught:
        require_speech(y, SR, "clip.wav")
    assert caught.value.reason == reason in REASONS


@pytest.mark.parametrize("gain", [0.05, 0.1, 0.3, 1.0, 3.0])
def test_synthetic_speech_at_any_level_is_speech(gain):
    for i, emotion in enumerate(EMOTIONS):
        y = gain * synth.tone(emotion, seconds=1.0 + 0.5 * (i % 3), seed=i)
        check = require_speech(y, SR)
        assert check.is_speech and check.reason == "speech" and check.voiced_share > 0.3
    assert speech_check(gain * sm.voice(2.0), SR).is_speech
    assert speech_check(gain * synth.tone("sad", sr=24_414, seed=3), 24_414).is_speech  # any sample rate


def test_speech_over_hum_or_noise_is_still_speech():
    y = synth.tone("neutral", seconds=2.0, seed=2).astype(np.float64)
    level = active_rms(y)
    background = hum(2.0) / active_rms(hum(2.0)) * level * 10 ** (-15 / 20)
    assert speech_check(y + background, SR).is_speech
    noise = np.random.default_rng(1).standard_normal(y.size) * level * 10 ** (-15 / 20)
    assert speech_check(y + noise, SR).is_speech


def test_the_api_schema_names_every_reason():
    from typing import get_args

    from webapp.schemas import NoSpeechReason

    assert set(get_args(NoSpeechReason)) == set(REASONS) - {"speech"}


def test_speech_check_reports_its_measurements():
    check = speech_check(synth.tone("happy", seconds=2.0), SR)
    assert check.seconds == pytest.approx(2.0) and 1.5 < check.active_seconds <= 2.0
    assert 230 < check.f0_hz < 300 and check.f0_spread_st > 0.05 and check.spectral_change_db > 3.5
    assert set(check.as_dict()) >= {"is_speech", "reason", "voiced_share", "f0_hz", "spectral_change_db"}
    with pytest.raises(CorruptAudioError):
        speech_check(np.array([0.0, np.inf] * 4000), SR)


# ---- a model trained with the new front end ---------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-epoch cnn on synthetic RAVDESS + TESS (1 s clips), trained with level normalisation."""
    root = tmp_path_factory.mktemp("data")
    synth.make_ravdess(root, actors=5)
    synth.make_tess(root)
    out = tmp_path_factory.mktemp("run")
    argv = ["--model", "cnn", "--corpora", "ravdess,tess", "--data-dir", str(root), "--epochs", "2",
            "--batch-size", "16", "--max-seconds", "1.0", "--augment", "0", "--output", str(out),
            "--cache-dir", str(tmp_path_factory.mktemp("cache")), "--n-jobs", "1", "--val-fraction", "0.2",
            "--test-fraction", "0.2"]
    assert ser_train.main(argv) == 0
    return out


def test_trained_model_gives_the_same_labels_at_any_level(trained):
    assert read_json(trained / "config.json")["features"]["level_norm"] is True
    predictor = ser_predict.SERPredictor(trained)
    clips = [synth.tone(e, seconds=1.0, seed=500 + i) for i, e in enumerate(EMOTIONS * 2)]
    labels = {g: [int(np.argmax(predictor.predict_waveform(g * y, SR))) for y in clips] for g in (1.0, 0.1, 0.3, 3.0)}
    assert labels[0.1] == labels[1.0] and labels[0.3] == labels[1.0] and labels[3.0] == labels[1.0]


def test_runs_saved_before_level_norm_load_without_it(trained, tmp_path):
    import shutil

    old = tmp_path / "old_run"
    shutil.copytree(trained, old)
    config = read_json(old / "config.json")
    del config["features"]["level_norm"]
    write_json(old / "config.json", config)
    assert ser_predict.SERPredictor(old).features.level_norm is False
    assert ser_predict.SERPredictor(trained).features.level_norm is True


def test_predict_cli_reports_no_speech(trained, tmp_path, capsys):
    hum_file = synth.write(tmp_path / "hum.wav", hum(2.0).astype(np.float32))
    speech_file = synth.write(tmp_path / "speech.wav", synth.tone("happy", seed=9))
    code = ser_predict.main(["--model-dir", str(trained), "--json", str(hum_file), str(speech_file)])
    captured = capsys.readouterr()
    first, second = (json.loads(line) for line in captured.out.splitlines())
    assert code == 1  # some file held no speech
    assert first == {"path": str(hum_file), "label": None, "probabilities": None, "no_speech": "hum"}
    assert second["label"] in EMOTIONS and "no_speech" not in second
    assert f"warning: {hum_file}: no speech: hum" in captured.err
    assert ser_predict.main(["--model-dir", str(trained), str(speech_file)]) == 0


def test_segments_without_speech_are_dropped(trained, tmp_path, capsys):
    predictor = ser_predict.SERPredictor(trained)
    speech = synth.tone("angry", seconds=2.0, seed=4)
    gap = hum(3.0).astype(np.float32)
    parts = predictor.predict_segments(np.concatenate([speech, gap, speech]), SR, hop_seconds=0.5)
    starts = [start for start, _, _ in parts]
    assert starts and not any(2.1 <= s and s + 1.0 <= 4.9 for s in starts)  # no window inside the hum
    assert any(s < 2.0 for s in starts) and any(s > 5.0 for s in starts)
    long_hum = synth.write(tmp_path / "long_hum.wav", hum(6.0).astype(np.float32))
    code = ser_predict.main(["--model-dir", str(trained), "--json", "--segments", str(long_hum)])
    assert code == 1 and json.loads(capsys.readouterr().out)["no_speech"] == "hum"


# ---- web app: upload, stream, video ------------------------------------------------------------

@pytest.fixture()
def app_client(trained):
    from fastapi.testclient import TestClient

    from webapp.app import Settings, create_app
    from webapp.models import Models

    models = Models(ser=ser_predict.SERPredictor(trained), fer=sm.FakeFace(), fusion=sm.FakeFusion())
    settings = Settings(warmup=False, min_audio_seconds=0.25, voice_interval_seconds=0.0)
    with TestClient(create_app(settings=settings, models=models), raise_server_exceptions=False) as client:
        yield client


def test_api_answers_label_null_for_a_hum_upload(app_client):
    from webapp.schemas import AudioPrediction

    for query in ("", "?segments=true"):
        response = app_client.post(f"/api/predict/audio{query}", files={"file": ("hum.wav", sm.wav_bytes(
            hum(2.0).astype(np.float32)), "audio/wav")})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["label"] is None and body["probabilities"] is None and body["no_speech"] == "hum"
        assert body.get("segments", []) == []
        AudioPrediction.model_validate(body)
    speech = app_client.post("/api/predict/audio", files={"file": ("v.wav", sm.wav_bytes(
        synth.tone("sad", seed=2)), "audio/wav")}).json()
    assert speech["label"] in EMOTIONS and "no_speech" not in speech and "segments" not in speech


def test_cli_and_api_agree_on_a_file(app_client, trained, tmp_path, capsys):
    path = synth.write(tmp_path / "quiet.wav", 0.05 * synth.tone("fear", seed=6))
    assert ser_predict.main(["--model-dir", str(trained), "--json", str(path)]) == 0
    cli = json.loads(capsys.readouterr().out)
    api = app_client.post("/api/predict/audio", files={"file": ("quiet.wav", path.read_bytes(), "audio/wav")}).json()
    assert api["label"] == cli["label"]
    assert api["probabilities"] == pytest.approx(cli["probabilities"], abs=1e-5)


def test_stream_says_no_speech_for_hum_and_an_emotion_for_a_quiet_voice(app_client):
    from webapp.stream import BINARY_HEADER

    def send(ws, msg_id: int, y: np.ndarray) -> dict:
        pcm = (np.clip(y, -1, 1) * 32767).astype("<i2").tobytes()
        ws.send_bytes(BINARY_HEADER.pack(2, msg_id, 0.0) + pcm)
        for _ in range(20):  # the audio message is answered at once; the voice estimate follows (kind "voice")
            reply = ws.receive_json()
            if reply.get("id") == msg_id and reply.get("kind") == "voice":
                return reply
        raise AssertionError("no reply")

    with app_client.websocket_connect("/ws/stream") as ws:
        ws.receive_json()
        humming = send(ws, 1, hum(1.0))
        assert (humming["predicted"], humming["voice_state"], humming["no_speech"]) == (True, "no_speech", "hum")
        assert humming["voice"] is None
        quiet = send(ws, 2, 0.05 * synth.tone("happy", seconds=2.0, seed=3))  # about -50 dBFS
        assert quiet["voice_state"] == "voice" and quiet["no_speech"] is None and quiet["voice"]
        tone = send(ws, 3, 0.3 * np.sin(2 * np.pi * 1000 * _t(2.0)))
        assert (tone["voice_state"], tone["no_speech"], tone["voice"]) == ("no_speech", "steady tone", None)


def test_video_with_a_hum_track_is_decided_by_the_face(app_client, tmp_path):
    from tests.synth_video import write_clip

    frames = np.stack([sm.face_image(320, 240)] * 10)[..., ::-1]  # RGB frames for the encoder
    path = write_clip(tmp_path / "hum.mp4", frames, hum(1.0).astype(np.float32), fps=10.0)
    body = app_client.post("/api/predict/video", files={"file": ("hum.mp4", Path(path).read_bytes(),
                                                                  "video/mp4")}).json()
    assert body["no_speech"] == "hum" and body["voice"] is None and body["used"] == ["face"]
    assert body["face"] and body["label"] == body["face"]["label"]


# ---- the shipped compact model ----------------------------------------------------------------

def test_shipped_compact_model_is_small_level_robust_and_matches_its_tflite(repo_root):
    folder = repo_root / "saved_models" / "ser_compact"
    assert sum(p.stat().st_size for p in folder.iterdir()) <= 2 * 1024 * 1024
    model, lite = ser_predict.SERPredictor(folder), ser_predict.SERPredictor(folder, tflite="float16")
    assert model.features.level_norm and "-23 dBFS" in (folder / "MODEL_CARD.md").read_text()
    for i, emotion in enumerate(EMOTIONS):
        y = synth.tone(emotion, seconds=2.0, seed=40 + i)
        reference = model.predict_waveform(y, SR)
        for gain in (0.1, 0.3, 3.0):
            np.testing.assert_allclose(model.predict_waveform(gain * y, SR), reference, atol=1e-3)
        assert np.argmax(lite.predict_waveform(y, SR)) == np.argmax(reference)
    with pytest.raises(NoSpeechError, match="hum"):
        model.predict_waveform(hum(2.0), SR)


# ---- real speech ------------------------------------------------------------------------------

@pytest.mark.realdata
def test_real_ravdess_clips_are_speech_at_any_level(shared_data):
    from ser.audio import load_audio

    # one clip per actor 01-20, spread over the emotion codes
    clips = [sorted((shared_data / "ravdess" / f"Actor_{a:02d}").glob("*"))[(7 * a) % 60] for a in range(1, 21)]
    for path in clips:
        y = load_audio(path)
        for gain in (0.1, 1.0, 3.0):
            check = speech_check(gain * y, SR)
            assert check.is_speech, (path.name, gain, check)


@pytest.mark.realdata
def test_real_ravdess_clips_over_white_noise_at_10_db_snr_are_speech(shared_data):
    # A fan or a noisy room must not turn a speaker into "no speech"; noise at the speech's own level (0 dB) may.
    from ser.audio import load_audio

    rng = np.random.default_rng(0)
    clips = [sorted((shared_data / "ravdess" / f"Actor_{a:02d}").glob("*"))[(11 * a) % 60] for a in range(1, 21)]
    for path in clips:
        y = load_audio(path).astype(np.float64)
        noise = rng.standard_normal(y.size) * active_rms(y) * 10 ** (-10 / 20)
        check = speech_check(y + noise, SR)
        assert check.is_speech, (path.name, check)
