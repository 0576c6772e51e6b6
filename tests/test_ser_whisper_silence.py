"""The 30 s padding taken from a reference (ser.whisper.silence): exact when the reference is the clip's own
padding, checked options and cache keys, the shipped reference file, and (real weights) closeness to the
full window on a real clip."""
from __future__ import annotations

import math

import numpy as np
import pytest

from ser.whisper import silence
from ser.whisper import weights as whisper_weights
from ser.whisper.ct2 import write_model_bin
from ser.whisper.encoder import WhisperEncoder, WhisperFeatureConfig
from ser.whisper.preprocessor import log_mel
from tests import synth_audio as synth
from tests.test_ser_whisper import DIM, LAYERS, POSITIONS, tiny_variables


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_whisper_silence")
    write_model_bin(folder / "model.bin", tiny_variables())
    return WhisperEncoder(folder)


def full_window(encoder, y: np.ndarray) -> np.ndarray:
    """(states, clip steps, dim): the clip encoded with its padding, keeping its own steps."""
    mel = log_mel(y, pad_to_seconds=silence.window_seconds(encoder))
    return encoder.hidden_states(mel[None])[0, :, : silence.clip_steps(y.size)]


def test_a_reference_made_of_the_clips_own_padding_reproduces_the_full_window(tiny_encoder):
    y = WhisperFeatureConfig(max_seconds=1.0).prepare(synth.tone("angry", seconds=1.0))
    exact = full_window(tiny_encoder, y)
    assert exact.shape == (LAYERS + 1, 50, DIM) and 50 < POSITIONS  # the tiny window: 64 steps, 14 of padding
    own = silence.build_reference(tiny_encoder, [y], rank=DIM)  # full rank: only float16 storage is lost
    ours = silence.SilenceReference(tiny_encoder, own, near_steps=0).hidden_states(y)  # all 14 from the reference
    assert ours.shape == exact.shape
    np.testing.assert_allclose(ours, exact, atol=1e-3)  # measured 9e-5
    # Pure silence (no reference) is a different padding: the attention layers move, the embeddings do not.
    pure = silence.SilenceReference(tiny_encoder, None, near_steps=0).hidden_states(y)
    np.testing.assert_allclose(pure[0], exact[0], atol=1e-4)
    assert np.abs(pure[1:] - exact[1:]).max() > 10 * np.abs(ours[1:] - exact[1:]).max()
    # Padding steps encoded with the clip replace the reference's: the whole window encoded is the full window.
    whole = silence.SilenceReference(tiny_encoder, None, near_steps=POSITIONS).hidden_states(y)
    np.testing.assert_allclose(whole, exact, atol=1e-4)
    some = silence.SilenceReference(tiny_encoder, None, near_steps=7).hidden_states(y)
    assert np.abs(some - exact).max() < np.abs(pure - exact).max()


def test_clips_encoded_together_get_what_each_gets_alone(tiny_encoder):
    prepare = WhisperFeatureConfig(max_seconds=1.0).prepare
    clips = [prepare(synth.tone(e, seconds=s)) for e, s in (("happy", 0.9), ("sad", 0.3), ("fear", 0.6))]
    ref = silence.build_reference(tiny_encoder, clips[:1], rank=4)
    reference = silence.SilenceReference(tiny_encoder, ref, near_steps=7)
    alone = [reference.hidden_states(y) for y in clips]
    together = reference.hidden_states_batch(clips)
    for a, b in zip(alone, together):
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, atol=1e-4)
    # What the shorter clips would get if the longest clip's encoded padding stood in for the reference.
    longer = silence.SilenceReference(tiny_encoder, ref, near_steps=7 + 30).hidden_states(clips[1])
    assert np.abs(longer - alone[1]).max() > 1e-3
    # The feature config sorts clips by length into batches and hands them back in the order given.
    cfg = WhisperFeatureConfig(encoder=str(tiny_encoder.folder), encoder_sha256="tiny", num_states=LAYERS + 1,
                               hidden_dim=DIM, max_seconds=1.0, pad_seconds=30.0, pad_states="reference")
    waveforms = [synth.tone(e, seconds=s) for e, s in (("angry", 0.8), ("neutral", 0.4), ("happy", 1.0))]
    for one, batched in zip([cfg.frames(y) for y in waveforms], cfg.frames_batch(waveforms)):
        np.testing.assert_allclose(batched.astype(np.float32), one.astype(np.float32), atol=2e-2)  # float16


def test_reference_is_stored_at_low_rank_with_its_padding_value(tiny_encoder):
    clips = [WhisperFeatureConfig(max_seconds=1.0).prepare(synth.tone(e, seconds=s))
             for e, s in (("sad", 0.6), ("happy", 0.9))]
    ref = silence.build_reference(tiny_encoder, clips, rank=4)
    assert ref["left"].shape == (LAYERS, POSITIONS, 4) and ref["right"].shape == (LAYERS, 4, DIM)
    assert ref["left"].dtype == ref["right"].dtype == np.float16 and int(ref["clips"]) == 2
    values = [log_mel(y, pad_to_seconds=silence.window_seconds(tiny_encoder))[-1, 0] for y in clips]
    assert float(ref["value"]) == pytest.approx(float(np.median(values)), abs=1e-6)
    states = silence.padding_states(tiny_encoder, ref)
    pure = silence.pure_silence_states(tiny_encoder, float(ref["value"]))
    # Inside the shortest clip no reference clip had padding: those positions stay pure silence.
    np.testing.assert_allclose(states[:, : silence.clip_steps(clips[0].size)], pure[:, : silence.clip_steps(clips[0].size)],
                               atol=1e-6)


def test_feature_config_with_reference_padding_keeps_shapes_and_its_own_cache_key(tiny_encoder):
    base = dict(encoder=str(tiny_encoder.folder), encoder_sha256="tiny", num_states=LAYERS + 1, hidden_dim=DIM,
                max_seconds=1.0, pad_seconds=30.0)
    encoded, reference = WhisperFeatureConfig(**base), WhisperFeatureConfig(**base, pad_states="reference")
    y = synth.tone("fear", seconds=1.0)
    a, b = encoded.frames(y).astype(np.float32), reference.frames(y).astype(np.float32)
    assert a.shape == b.shape == (math.ceil(50 / 4), LAYERS + 1, DIM)
    np.testing.assert_allclose(b[:-1, 0], a[:-1, 0], atol=1e-2)  # same embeddings; the padding differs
    assert reference.key() != encoded.key()
    # Runs saved before the option keep their cache key: "encoded" is not written into it.
    assert WhisperFeatureConfig(pad_seconds=30).key() == WhisperFeatureConfig(pad_seconds=30, pad_states="encoded").key()


@pytest.mark.parametrize("fields, match", [({"pad_seconds": 10.0, "pad_states": "reference"}, "30 s"),
                                           ({"pad_seconds": 0.0, "pad_states": "reference"}, "30 s"),
                                           ({"pad_seconds": 30.0, "pad_states": "cached"}, "unknown pad_states")])
def test_reference_padding_needs_whispers_full_window(fields, match):
    with pytest.raises(ValueError, match=match):
        WhisperFeatureConfig(**fields)


def test_train_refuses_a_reference_with_a_shorter_padding_before_reading_audio(tmp_path, capsys):
    from ser import train as ser_train

    argv = ["--model", "whisper", "--pad-seconds", "10", "--pad-states", "reference",
            "--data-dir", str(tmp_path / "nowhere"), "--output", str(tmp_path / "r")]
    with pytest.raises(SystemExit) as exit_:
        ser_train.main(argv)
    assert exit_.value.code == 2
    assert "--pad-states reference" in capsys.readouterr().err


@pytest.mark.parametrize("pad, given, expected", [(30.0, "auto", "reference"), (5.0, "auto", "encoded"),
                                                   (0.0, "auto", "encoded"), (30.0, "encoded", "encoded")])
def test_train_takes_the_reference_only_for_whispers_full_window(tiny_encoder, pad, given, expected):
    from ser.train import TrainConfig

    cfg = TrainConfig(model="whisper", encoder_dir=str(tiny_encoder.folder), max_seconds=1.0, pad_seconds=pad,
                      pad_states=given)
    cfg.validate()  # --pad-seconds 5 alone is fine: the default follows the padding
    assert cfg.feature_config().pad_states == expected


def test_train_passes_the_trim_to_the_features_and_samples_ignore_where_the_recording_starts(tiny_encoder):
    from ser.train import TrainConfig

    cfg = TrainConfig(model="whisper", encoder_dir=str(tiny_encoder.folder), max_seconds=1.0, trim="samples")
    cfg.validate()
    features = cfg.feature_config()
    assert features.trim == "samples" and TrainConfig(model="whisper").trim == "frames"  # the shipped default
    y = np.concatenate([np.zeros(3000, np.float32), synth.tone("happy", seconds=0.8), np.zeros(3000, np.float32)])
    later = np.concatenate([np.zeros(100, np.float32), y])
    np.testing.assert_allclose(features.prepare(later), features.prepare(y), atol=1e-6)
    with pytest.raises(ValueError, match="--trim"):
        TrainConfig(model="whisper", trim="edges").validate()


def test_the_cache_key_names_the_reference_whatever_the_trim(monkeypatch):
    from ser.whisper.encoder import WhisperFeatureConfig

    keys = {}
    for fingerprint in ("a", "b"):
        monkeypatch.setattr(silence, "reference_fingerprint", lambda sha, f=fingerprint: f)
        for trim in ("frames", "samples"):
            keys[fingerprint, trim] = WhisperFeatureConfig(pad_seconds=30.0, pad_states="reference", trim=trim).key()
    assert keys["a", "frames"] != keys["b", "frames"] and keys["a", "samples"] != keys["b", "samples"]
    assert keys["a", "frames"] != keys["a", "samples"]


def test_shipped_reference_matches_the_pinned_encoder():
    ref = silence.load_reference(whisper_weights.SHA256)
    assert ref is not None, f"{silence.reference_path(whisper_weights.SHA256)} is missing"
    assert ref["left"].shape == (6, 1500, silence.RANK) and ref["right"].shape == (6, silence.RANK, 512)
    assert -0.9 < float(ref["value"]) < -0.6 and int(ref["clips"]) >= 100
    assert np.isfinite(ref["left"].astype(np.float32)).all() and np.isfinite(ref["right"].astype(np.float32)).all()
    assert silence.reference_fingerprint(whisper_weights.SHA256) != silence.reference_fingerprint("0" * 64)


@pytest.mark.realdata
def test_reference_padding_is_close_to_the_full_window_on_a_real_clip(shared_data):
    try:
        whisper_weights.whisper_base_dir()
    except whisper_weights.EncoderWeightsError as exc:
        pytest.skip(str(exc))
    from ser.audio import load_audio

    clip = sorted((shared_data / "ravdess").rglob("03-01-04-*.flac"))[0]
    y = load_audio(clip)
    encoded = WhisperFeatureConfig(pad_seconds=30).frames(y).astype(np.float32)
    reference = WhisperFeatureConfig(pad_seconds=30, pad_states="reference").frames(y).astype(np.float32)
    alone = WhisperFeatureConfig().frames(y).astype(np.float32)

    def cosine(a, b):  # per state, of the mean and std over the clip (what the head reads)
        a, b = (np.concatenate([f.mean(0), f.std(0)], -1) for f in (a, b))
        return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)

    assert cosine(reference, encoded).min() > 0.98  # measured >= 0.991 on 24 RAVDESS clips
    assert cosine(reference, encoded).min() > cosine(alone, encoded).min()
