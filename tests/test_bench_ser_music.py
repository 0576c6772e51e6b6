"""bench/bench_ser_music.py: the stage each item is refused by, the rates and thresholds it reports, and the
finished sets an interrupted run keeps."""
from __future__ import annotations

import argparse

import numpy as np
import pytest

from conftest import load_bench_script
from ser.audio import SilentAudioError
from ser.frontend import NoSpeechError
from ser.predict import SERPredictor


@pytest.fixture(scope="module")
def bench():
    return load_bench_script("bench_ser_music")


class _Predictor:
    """Refuses by the signal check when the waveform's first sample says so, else Whisper answers its second."""

    def speech_segments(self, y, sr):
        if y[0] == 1:
            raise NoSpeechError("audio: no speech: hum", "hum")
        if y[0] == 2:
            raise SilentAudioError("audio: silent")
        return [(0.0, 1.0, y)]

    def window_outputs(self, waveforms):
        return np.zeros((len(waveforms), 7)), [float(w[1]) for w in waveforms]

    def sound_seconds(self, waveform):  # its third sample, if any: how much sound the encoder would see
        return float(waveform[2]) if waveform.size > 2 else 3.0

    hears = SERPredictor.hears  # the real rule, on the answers above


def test_verdict_names_the_stage_and_keeps_whispers_probability(bench):
    predictor = _Predictor()
    assert bench.verdict(predictor, np.array([1.0, 0.0])) == ("signal: hum", None)
    assert bench.verdict(predictor, np.array([2.0, 0.0])) == ("signal: silence", None)  # a track's silent end
    assert bench.verdict(predictor, np.array([0.0, 0.9])) == ("whisper", pytest.approx(0.9))
    assert bench.verdict(predictor, np.array([0.0, 0.1])) == ("speech", pytest.approx(0.1))
    # the predictor's own rule: 0.75 refuses a window with 3 s of sound, not one with 1 s (threshold 0.8)
    assert bench.verdict(predictor, np.array([0.0, 0.75, 3.0]))[0] == "whisper"
    assert bench.verdict(predictor, np.array([0.0, 0.75, 1.0]))[0] == "speech"


def test_summary_rates_and_the_other_thresholds(bench):
    outcomes = [("speech", 0.1), ("whisper", 0.9), ("whisper", 0.65), ("signal: hum", None)]
    row = bench.summarise("set", "music", outcomes, unreadable=1)
    assert row["items"] == 4 and row["unreadable"] == 1
    assert (row["emotion_rate"], row["refused_by_signal_rate"], row["refused_by_whisper_rate"]) == (0.25, 0.25, 0.5)
    assert row["items_no_speech"] == [0.1, 0.9, 0.65, None]
    text = bench.markdown([row], None, 0.5, ["/nowhere"])
    other = next(line for line in text.splitlines()
                 if line.startswith("| set | ") and "%" in line and "music" not in line)
    at = dict(zip(bench.OTHER_THRESHOLDS, [cell.strip() for cell in other.strip("| ").split(" | ")[1:]]))
    assert at[0.5] == "25.0 %" and at[0.7] == "50.0 %"  # 0.65 gets an emotion at 0.7
    assert "Not found here, left out: /nowhere" in text


def test_finished_sets_are_kept_for_the_same_options_only(bench, tmp_path):
    args = argparse.Namespace(model_dir="m", windows=10, out=str(tmp_path), verbose=False)
    calls = []

    def measure():
        calls.append(1)
        return [{"set": "a"}]

    assert bench.Sets(tmp_path / "p.json", args).get(tmp_path / "a", measure) == [{"set": "a"}]
    assert bench.Sets(tmp_path / "p.json", args).get(tmp_path / "a", measure) == [{"set": "a"}]
    assert len(calls) == 1
    other = argparse.Namespace(**{**vars(args), "windows": 5})
    bench.Sets(tmp_path / "p.json", other).get(tmp_path / "a", measure)
    assert len(calls) == 2
