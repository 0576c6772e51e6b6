"""bench/bench_fer_robustness.py: its image changes do what their names say, reproducibly, on uint8 crops."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import load_bench_script


@pytest.fixture(scope="module")
def bench():
    return load_bench_script("bench_fer_robustness")


@pytest.fixture(scope="module")
def faces():
    rng = np.random.default_rng(0)
    smooth = np.stack([np.add.outer(np.arange(48), np.arange(48)) * 2 + 30 for _ in range(3)]).astype(np.float32)
    return np.clip(smooth + rng.normal(0, 8, smooth.shape), 0, 255).astype(np.uint8)


def test_each_change_is_what_its_name_says(bench, faces):
    def changed(name):
        out = bench.changed(faces, name)
        assert out.dtype == np.uint8 and out.shape == faces.shape
        np.testing.assert_array_equal(bench.changed(faces, name), out)  # seeded: the same change every run
        return out.astype(np.float32)

    x = faces.astype(np.float32)
    np.testing.assert_array_equal(changed("clean"), x)
    assert changed("dark (x0.3, sensor noise)").mean() == pytest.approx(0.3 * x.mean(), abs=1.0)
    assert changed("overexposed (x1.6 + 30)").mean() > x.mean() + 40
    flat = changed("low contrast (x0.4 around the mean)")
    assert flat.std() == pytest.approx(0.4 * x.std(), rel=0.05) and flat.mean() == pytest.approx(x.mean(), abs=1.0)
    side = changed("side light (0.3 to 1.0)")
    assert side[..., :4].mean() < 0.4 * x[..., :4].mean() and side[..., -4:].mean() == pytest.approx(x[..., -4:].mean(), rel=0.05)
    for name in ("blur (sigma 1.2 px)", "small face (16 px)"):  # detail lost, brightness kept
        out = changed(name)
        assert np.abs(np.diff(out, axis=2)).mean() < 0.6 * np.abs(np.diff(x, axis=2)).mean()
        assert out.mean() == pytest.approx(x.mean(), abs=2.0)
    assert 0 < np.abs(changed("JPEG quality 10") - x).mean() < 20
    assert (changed("noise (sigma 12)") - x).std() == pytest.approx(12.0, rel=0.15)


def test_without_the_corpora_it_says_so_and_exits_0(bench, tmp_path, capsys):
    assert bench.main(["--data-root", str(tmp_path / "none")]) == 0
    assert "not found" in capsys.readouterr().out
