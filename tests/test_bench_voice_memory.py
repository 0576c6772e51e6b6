"""bench/bench_voice_memory.py: the live-like windows it feeds the voice model, and the growth it reports."""
from __future__ import annotations

import numpy as np

from conftest import load_bench_script

bench = load_bench_script("bench_voice_memory")


def test_windows_are_one_to_three_cuts_of_the_clips_within_the_live_lengths():
    clips = [np.arange(48_000, dtype=np.float32), np.arange(10_000, dtype=np.float32) + 1e6]
    rng = np.random.default_rng(0)
    sizes, counts = [], []
    for _ in range(200):
        windows = bench.live_windows(clips, rng)
        counts.append(len(windows))
        for w in windows:
            sizes.append(w.size)
            # a contiguous cut of one clip: consecutive sample values
            assert np.all(np.diff(w) == 1) and (w[0] < 48_000 or w[0] >= 1e6)
    assert set(counts) == {1, 2, 3}
    assert min(sizes) >= int(bench.MIN_SECONDS * bench.SR) and max(sizes) <= int(bench.MAX_SECONDS * bench.SR)
    assert max(sizes) > 1.5 * bench.SR  # the long clip gives long windows; the short one caps at its length


def test_the_report_gives_growth_and_cpu_per_call_between_checkpoints():
    result = {"model_dir": "saved_models/ser", "speech": "voices", "onednn_opts": "0", "calls": 300,
              "checkpoints": [{"calls": 1, "rss_mb": 1000.0, "cpu_seconds": 0.1},
                              {"calls": 101, "rss_mb": 1250.4, "cpu_seconds": 25.1},
                              {"calls": 301, "rss_mb": 1249.6, "cpu_seconds": 75.1}]}
    rows = [line for line in bench.markdown(result).splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert rows == ["| 1 | 1000 | - | - |", "| 101 | 1250 | +250 | 0.250 |", "| 301 | 1250 | -1 | 0.250 |"]
