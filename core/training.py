"""Training helpers shared by ser/, fer/ and fusion/: seeds, splits, class weights, callbacks."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow in one call."""
    import keras

    keras.utils.set_random_seed(seed)


def class_weights(y: Sequence[int], num_classes: int) -> dict[int, float]:
    """Balanced weights ``n / (k * count)`` for the classes present; absent classes get 1.0."""
    y = np.asarray(y, dtype=int)
    counts = np.bincount(y, minlength=num_classes).astype(float)
    present = counts > 0
    weights = np.ones(num_classes)
    weights[present] = len(y) / (present.sum() * counts[present])
    return {i: float(w) for i, w in enumerate(weights)}


def group_split(groups: Sequence[str], val_fraction: float, test_fraction: float, seed: int,
                val_groups: Sequence[str] = (), test_groups: Sequence[str] = ()) -> np.ndarray:
    """Assign whole groups (speakers, subjects) to ``train`` / ``val`` / ``test``.

    Groups named in ``val_groups`` / ``test_groups`` go there; the rest are shuffled
    with ``seed`` and the first fractions of them become test, then validation.
    """
    groups = np.asarray(groups)
    unique = sorted(set(groups.tolist()))
    unknown = (set(val_groups) | set(test_groups)) - set(unique)
    if unknown:
        raise ValueError(f"unknown speakers/subjects in the split: {sorted(unknown)}; known: {unique}")
    both = set(val_groups) & set(test_groups)
    if both:  # one of the two would silently lose them
        raise ValueError(f"speakers/subjects named for both validation and test: {sorted(both)}")
    for name, fraction in (("validation", val_fraction), ("test", test_fraction)):
        if not 0 <= fraction < 1:
            raise ValueError(f"the {name} fraction must be in [0, 1), got {fraction}")
    assigned = {g: "test" for g in test_groups} | {g: "val" for g in val_groups}
    free = [g for g in unique if g not in assigned]
    np.random.default_rng(seed).shuffle(free)
    if not test_groups:
        n_test = max(1, round(test_fraction * len(unique))) if test_fraction > 0 else 0
        assigned |= {g: "test" for g in free[:n_test]}
        free = free[n_test:]
    if not val_groups:
        n_val = max(1, round(val_fraction * len(unique))) if val_fraction > 0 else 0
        assigned |= {g: "val" for g in free[:n_val]}
        free = free[n_val:]
    assigned |= {g: "train" for g in free}
    return np.array([assigned[g] for g in groups])


def random_split(labels: Sequence[int], val_fraction: float, test_fraction: float, seed: int) -> np.ndarray:
    """Stratified random split of items (leaks speakers: report it as such)."""
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    idx = np.arange(len(labels))
    strat = labels if np.bincount(labels).min() >= 3 else None
    rest, test = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=strat)
    rel_val = val_fraction / (1.0 - test_fraction)
    strat_rest = labels[rest] if strat is not None else None
    train, val = train_test_split(rest, test_size=rel_val, random_state=seed, stratify=strat_rest)
    out = np.empty(len(labels), dtype=object)
    out[train], out[val], out[test] = "train", "val", "test"
    return out.astype(str)


SCHEDULES = ("plateau", "cosine")


def check_refit(refit: bool, schedule: str) -> None:
    """A refit has no validation data to stop early on or lower the rate by, so only a fixed schedule fits."""
    if refit and schedule != "cosine":
        raise ValueError("--refit has no validation split to stop on or lower the rate by: use --schedule cosine")


def learning_rate(schedule: str, base: float, total_steps: int):
    """``base`` as a float for ``plateau`` (ReduceLROnPlateau owns the rate), else a cosine decay to zero over
    ``total_steps`` optimizer steps."""
    import keras

    if schedule == "plateau":
        return base
    if schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(base, max(1, total_steps))
    raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")


def resume_backup(backup_dir: str | os.PathLike):
    """Keras' BackupAndRestore that survives a damaged checkpoint (a run killed while writing it, a full disk).

    Two generations are kept (``latest.weights.h5`` and the one before, ``.bkp``). On resume an unreadable
    latest checkpoint falls back to the previous one, and when that is unreadable too the run starts clean
    from epoch 0; either way a warning names the file and what happened.
    """
    import keras

    class ResumeBackup(keras.callbacks.BackupAndRestore):
        def on_train_begin(self, logs=None):
            initial = [v.numpy() for v in self.model.weights]  # a half-read file may have overwritten some
            try:
                self._load_model()
                return
            except Exception as exc:  # h5py, OSError, ValueError (shape mismatch), JSONDecodeError
                problem = f"{exc}".strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                log.warning("resume checkpoint %s is unreadable (%s)", self._weights_path, problem[:160])
            prev_w, prev_m = Path(self._prev_weights_path), Path(self._prev_training_metadata_path)
            latest_w, latest_m = Path(self._weights_path), Path(self._training_metadata_path)
            if prev_w.is_file() and prev_m.is_file():
                prev_w.replace(latest_w)  # Keras reads weights only from a *.weights.h5 name
                prev_m.replace(latest_m)
                try:
                    self._load_model()
                except Exception as exc:
                    log.warning("the previous checkpoint is unreadable too (%s)", type(exc).__name__)
                else:
                    log.warning("resuming from the previous good checkpoint instead (after epoch %d)",
                                self.model._initial_epoch)
                    return
            for var, value in zip(self.model.weights, initial):
                var.assign(value)
            self.model._initial_epoch = 0
            for path in (latest_w, latest_m, prev_w, prev_m):
                path.unlink(missing_ok=True)
            log.warning("starting this run clean from epoch 0 (the damaged checkpoint was removed)")

    return ResumeBackup(str(backup_dir), delete_checkpoint=True, double_checkpoint=True)


def make_callbacks(run_dir: str | os.PathLike, patience: int = 10, lr_patience: int = 4,
                   monitor: str = "val_accuracy", reduce_lr: bool = True, validation: bool = True) -> list:
    """Checkpoint best model, back up every epoch for resume, stop early, lower LR on plateau, log CSV.
    Without ``validation`` (a final fit on all the data) only the resume backup and the CSV log remain."""
    import keras

    run_dir = Path(run_dir)
    if not validation:
        return [resume_backup(run_dir / "checkpoints"),
                keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True)]
    mode = "max" if "acc" in monitor else "min"
    callbacks = [
        resume_backup(run_dir / "checkpoints"),
        keras.callbacks.ModelCheckpoint(str(run_dir / "best.keras"), monitor=monitor, mode=mode,
                                        save_best_only=True),
        keras.callbacks.EarlyStopping(monitor=monitor, mode=mode, patience=patience, restore_best_weights=True),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
    ]
    if reduce_lr:  # not with a learning-rate schedule, which owns the rate
        callbacks.insert(3, keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5,
                                                              patience=lr_patience, min_lr=1e-6))
    return callbacks


def read_history(run_dir: str | os.PathLike) -> dict[str, list[float]]:
    """The full history from ``history.csv`` (covers resumed runs, unlike ``fit``'s return value)."""
    import pandas as pd

    path = Path(run_dir) / "history.csv"
    if not path.exists():
        return {}
    frame = pd.read_csv(path)
    frame = frame.drop_duplicates("epoch", keep="last") if "epoch" in frame else frame
    return {c: frame[c].astype(float).tolist() for c in frame.columns if c != "epoch"}
