"""bench/bench_ser_robustness.py: its recording changes do what their names say, and scoring counts a "no speech"
refusal as a disagreement."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import load_bench_script


@pytest.fixture(scope="module")
def bench():
    return load_bench_script("bench_ser_robustness")


def test_each_condition_changes_the_recording_as_named(bench):
    y = np.sin(2 * np.pi * 220 * np.arange(16_000) / 16_000)
    c = bench.CONDITIONS
    np.testing.assert_array_equal(c[bench.AS_RECORDED](y), y)
    shifted = c["shift 16 ms"](y)
    assert shifted.size == y.size + 256 and not shifted[:256].any()
    np.testing.assert_array_equal(shifted[256:], y)
    padded = c["silence 1 s"](y)
    assert padded.size == y.size + 32_000 and not padded[:16_000].any() and not padded[-16_000:].any()
    for name, snr in (("noise 30 dB", 30.0), ("noise 20 dB", 20.0)):
        noisy = c[name](y)
        measured = 10 * np.log10(np.mean(y ** 2) / np.mean((noisy - y) ** 2))
        assert measured == pytest.approx(snr, abs=0.3)
        np.testing.assert_array_equal(c[name](y), noisy)  # the same noise for the same clip
    phone = c["telephone"](y)
    assert abs(phone.size - y.size) <= 2
    high = np.sin(2 * np.pi * 6_000 * np.arange(16_000) / 16_000)
    assert np.sqrt(np.mean(c["telephone"](high) ** 2)) < 0.05  # above the 4 kHz band: gone
    sound = np.random.default_rng(0).normal(0, 0.1, 48_000)  # no two stretches alike
    talk = np.concatenate([np.zeros(16_000), sound, np.zeros(16_000)])  # 3 s of sound in 5 s
    for name, seconds in (("speech 1.5 s", 1.5), ("speech 1 s", 1.0)):
        cut = c[name](talk)
        assert cut.size == int(seconds * 16_000)
        heads = np.lib.stride_tricks.sliding_window_view(talk, 64)
        (start,) = np.flatnonzero(np.abs(heads - cut[:64]).max(axis=1) < 1e-6)
        np.testing.assert_allclose(cut, talk[start:start + cut.size], atol=1e-6)
        # the central stretch of the sound (to librosa.effects.trim's 512-sample frames), never the silence around it
        assert abs(start - (talk.size - cut.size) // 2) <= 512


def test_score_counts_a_refusal_as_a_disagreement(bench):
    row = bench.score(["happy", None, "sad", "sad"], ["happy", "sad", "sad", "angry"], ["happy", "sad", "sad", "sad"])
    assert row == {"no_speech": 1, "no_speech_rate": 0.25, "agreement": 0.5, "accuracy": 0.75}
    assert "agreement" not in bench.score(["happy"], None, [None])


def test_music_plays_under_the_clip_at_the_named_level_and_is_the_same_for_the_same_clip(bench):
    from ser.frontend import active_rms

    rng = np.random.default_rng(3)
    tracks = [rng.standard_normal(40_000), np.sin(2 * np.pi * 440 * np.arange(30_000) / 16_000)]
    y = 0.1 * np.sin(2 * np.pi * 200 * np.arange(16_000) / 16_000)
    conditions = bench.conditions_with_music(tracks)
    assert set(conditions) - set(bench.CONDITIONS) == {"music 10 dB", "music 0 dB"}
    for name, snr in (("music 10 dB", 10.0), ("music 0 dB", 0.0)):
        mixed = conditions[name](y)
        assert mixed.shape == y.shape
        assert 20 * np.log10(active_rms(y) / active_rms(mixed - y)) == pytest.approx(snr, abs=0.01)
        np.testing.assert_array_equal(conditions[name](y), mixed)
    assert bench.conditions_with_music([]) == bench.CONDITIONS  # no tracks: no music rows


def test_the_report_lists_the_conditions_that_were_run(bench):
    rows = {"agreement": 1.0, "accuracy": 0.5, "no_speech": 0, "no_speech_rate": 0.0}
    result = {"model_dir": "m", "model": "whisper", "source": "s", "clips": 2,
              "conditions": {bench.AS_RECORDED: {"accuracy": 0.5, "no_speech": 0, "no_speech_rate": 0.0},
                             "telephone": rows, "music 0 dB": rows}}
    header = bench.markdown([result]).splitlines()[2]
    assert header == "| model | clips | telephone | music 0 dB |"
