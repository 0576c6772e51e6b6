"""Atomic file writes, so an interrupted run never leaves a half-written artifact."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_write(path: str | os.PathLike, writer: Callable[[str], None], suffix: str = "") -> Path:
    """Call ``writer(tmp_path)`` then rename over ``path`` (same folder, so the rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=suffix or path.suffix)
    os.close(fd)
    try:
        writer(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; artifacts are meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    def _write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, default=_json_default)
            f.write("\n")

    return atomic_write(path, _write)


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def save_model(model: Any, path: str | os.PathLike, include_optimizer: bool = False) -> Path:
    """Save a Keras model atomically (Keras needs the ``.keras`` suffix on the temp file too).

    Without the optimizer by default: a deployed model needs no Adam moments, and they
    triple the file size (resuming uses the separate BackupAndRestore checkpoints).
    """
    if not include_optimizer and getattr(model, "optimizer", None) is not None:
        import keras

        try:
            stripped = keras.models.clone_model(model)
            stripped.set_weights(model.get_weights())
            model = stripped
        except Exception:  # subclassed models cannot be cloned: keep the optimizer rather than fail
            pass
    return atomic_write(path, model.save, suffix=".keras")
