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


def test_score_counts_a_refusal_as_a_disagreement(bench):
    row = bench.score(["happy", None, "sad", "sad"], ["happy", "sad", "sad", "angry"], ["happy", "sad", "sad", "sad"])
    assert row == {"no_speech": 1, "no_speech_rate": 0.25, "agreement": 0.5, "accuracy": 0.75}
    assert "agreement" not in bench.score(["happy"], None, [None])
