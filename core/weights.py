"""Pretrained backbone weights: ``imagenet`` (Keras' download and cache), a local file, or none.

Keras retries a download for minutes without a network, so ``imagenet`` is checked first:
cached, or the weights host reachable; otherwise a clear error in seconds naming the
local-file alternative.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from core import datasets

WEIGHTS_HOST = ("storage.googleapis.com", 443)
# Where pretrained encoders fetched from package registries are joined / converted once.
CACHE_ROOT = Path(os.environ.get("EMOTION_CACHE_DIR", Path.home() / ".cache" / "emotion-toolkit"))


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights cannot be downloaded or found."""


def keras_cache_file(filename: str) -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models" / filename


def resolve_weights(weights: str | os.PathLike | None, cache_filename: str, backbone: str, hint: str) -> str | None:
    """None, ``"imagenet"`` (cached or downloadable) or an existing local file; else WeightsUnavailableError."""
    if weights is None or str(weights).lower() in ("none", "", "null"):
        return None
    if str(weights).lower() == "imagenet":
        cached = keras_cache_file(cache_filename)
        if not cached.is_file() and not datasets.network_reachable(WEIGHTS_HOST):
            raise WeightsUnavailableError(
                f"ImageNet weights for {backbone} are not cached ({cached}) and cannot be downloaded: "
                f"no network connection to {WEIGHTS_HOST[0]}. {hint}")
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file {path} does not exist. {hint}")
    return str(path)


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
