"""Atomic file writes, so an interrupted run never leaves a half-written artifact."""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
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


class ModelFolderError(ValueError):
    """A model folder that exists but cannot be used (damaged file, wrong kind of model); one line: the file and
    the fix."""


# What each kind of run folder is, and the command that writes one.
MODEL_KINDS = {"ser": ("a speech (ser) model", "python -m ser.train --output DIR"),
               "fer": ("a face (fer) model", "python -m fer.train --output DIR"),
               "fusion": ("a joint face+voice (fusion) model", "python -m fusion.train --output DIR")}


def config_kind(config: dict) -> str | None:
    """``ser`` / ``fer`` / ``fusion`` for a run's config.json, None when it cannot tell."""
    task = config.get("task")
    if task in MODEL_KINDS:
        return task
    if "dataset" in config and "model" in config:  # fer.train writes its TrainConfig as the config
        return "fer"
    if "modalities" in config or "modalities" in config.get("train", {}):
        return "fusion"
    if "features" in config and "class_names" in config:
        return "ser"
    return None


def read_model_config(path: str | os.PathLike, kind: str | None = None, required: tuple[str, ...] = ()) -> dict:
    """A run folder's config.json; ModelFolderError naming the file and the fix when it is damaged, of another
    kind of model (``kind``: ``ser``, ``fer`` or ``fusion``) or lacks a ``required`` key."""
    path = Path(path)
    try:
        config = read_json(path)
    except json.JSONDecodeError as exc:
        raise ModelFolderError(f"{path}: damaged (not valid JSON: {exc.msg} at line {exc.lineno}); copy the run "
                               "folder again or retrain it") from None
    except UnicodeDecodeError:
        raise ModelFolderError(f"{path}: damaged (not text); copy the run folder again or retrain it") from None
    if not isinstance(config, dict):
        raise ModelFolderError(f"{path}: not a run configuration (a JSON object is expected); copy the run folder "
                               "again or retrain it")
    found = config_kind(config)
    if kind is not None and found is not None and found != kind:
        what, command = MODEL_KINDS[kind]
        raise ModelFolderError(f"{path.parent}: holds {MODEL_KINDS[found][0]}, not {what}; pass a folder written "
                               f"by `{command}`")
    missing = [key for key in required if key not in config]
    if missing:
        what, command = MODEL_KINDS.get(kind or "", ("a run folder", "the matching train command"))
        raise ModelFolderError(f"{path}: lacks {', '.join(map(repr, missing))}, so it is not {what}; pass a folder "
                               f"written by `{command}`")
    return config


def load_keras_model(path: str | os.PathLike, **kwargs: Any) -> Any:
    """``keras.saving.load_model(path, compile=False)``; ModelFolderError naming the file and the fix when it is
    missing, truncated or not a Keras model."""
    import keras

    path = Path(path)
    if not path.is_file():
        raise ModelFolderError(f"{path}: missing; copy the run folder again or retrain it")
    if path.stat().st_size == 0:
        raise ModelFolderError(f"{path}: empty (0 bytes); copy the run folder again or retrain it")
    if path.suffix == ".keras" and not zipfile.is_zipfile(path):  # Keras would say "File not found"
        raise ModelFolderError(f"{path}: damaged or not a Keras model (not a .keras zip archive: cut short, or "
                               "another kind of file); copy the run folder again or retrain it")
    try:
        return keras.saving.load_model(path, compile=False, **kwargs)
    except Exception as exc:  # zipfile, h5py, JSON and Keras each raise their own types for a damaged file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelFolderError(f"{path}: damaged or not a Keras model ({reason[:160]}); copy the run folder again "
                               "or retrain it") from None
