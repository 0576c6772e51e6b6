"""Shared pytest setup: quiet TensorFlow, the optional real-data folder, the repo root on sys.path."""
from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EMOTION_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

# Both `from tests import synth_x` and `import synth_x` work in test modules.
for _path in (REPO_ROOT, REPO_ROOT / "tests"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


def load_bench_script(name: str):
    """A script of bench/ (not a package) as a module, e.g. ``load_bench_script("ship")``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def synthetic_voices_pass(monkeypatch):
    """The synthetic voices of tests.synth_audio / tests.synth_video are tones, not speech, and Whisper's no-speech
    check (ser.whisper.no_speech) refuses them as it should. Tests of what happens around the shipped speech model
    (fusion, routing, determinism) turn that check off; tests/test_ser_whisper_no_speech.py tests the check."""
    monkeypatch.setattr("ser.predict.NO_SPEECH_THRESHOLD", float("inf"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real corpora in ../shared/data; tests that need them skip cleanly without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _no_ambient_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    # A user's EMOTION_DATA_DIR must not change what the tests read.
    monkeypatch.delenv("EMOTION_DATA_DIR", raising=False)
