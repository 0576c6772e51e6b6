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
        resumed_epoch = 0  # epochs restored by the last on_train_begin (0: a fresh start)

        def on_train_begin(self, logs=None):
            self.resumed_epoch = 0
            self.model._initial_epoch = None  # a resume in an earlier fit() of this model must not carry over
            try:
                self._restore()
            finally:
                self.resumed_epoch = int(self.model._initial_epoch or 0)

        def _restore(self):
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


def resume_state(run_dir: str | os.PathLike, backup, callbacks: Sequence, first_epoch: int = 0):
    """A callback that, on a resumed fit, gives ``callbacks`` (ModelCheckpoint, EarlyStopping, ReduceLROnPlateau)
    the state they had when the run was interrupted: the best monitored value so far, the wait counters and
    EarlyStopping's best weights (from ``best.keras``), replayed from ``history.csv``'s epochs ``first_epoch`` ..
    the restored one. Without it a resumed run starts with a fresh "best" and may keep a worse epoch.
    Put it after those callbacks (their own ``on_train_begin`` resets them)."""
    import keras

    run_dir = Path(run_dir)

    class ResumeState(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            start = getattr(backup, "resumed_epoch", 0)
            if start <= first_epoch:
                return
            rows = _history_rows(run_dir, first_epoch, start)
            for cb in callbacks:
                _replay(cb, rows, run_dir)
            best = {}  # checkpoint and early stopping watch the same value: named once
            for cb in callbacks:
                if getattr(cb, "best", None) is not None:
                    best.setdefault(cb.monitor, cb.best)
            log.info("resumed at epoch %d: best %s so far restored from %s", start,
                     ", ".join(f"{k} {v:.4f}" for k, v in best.items()), run_dir / "history.csv")

    return ResumeState()


def _history_rows(run_dir: Path, first: int, stop: int) -> list[dict[str, float]]:
    """``history.csv``'s rows of epochs ``first`` .. ``stop - 1`` (the last row of an epoch written twice)."""
    frame = _history_frame(run_dir)
    if frame is None or "epoch" not in frame:
        return []
    frame = frame[(frame["epoch"] >= first) & (frame["epoch"] < stop)].sort_values("epoch")
    return frame.to_dict("records")


def _replay(cb, rows: list[dict[str, float]], run_dir: Path) -> None:
    """Run ``cb``'s bookkeeping over the logged epochs, as its ``on_epoch_end`` did in the interrupted run."""
    import keras

    kinds = (keras.callbacks.ModelCheckpoint, keras.callbacks.EarlyStopping, keras.callbacks.ReduceLROnPlateau)
    if not isinstance(cb, kinds):
        return
    if cb.monitor_op is None:
        cb._set_monitor_op()
    seen = False
    for row in rows:
        current = row.get(cb.monitor)
        if current is None or current != current:  # not logged (NaN in the CSV)
            continue
        current = float(current)
        if isinstance(cb, keras.callbacks.ModelCheckpoint):
            if cb._is_improvement(current, cb.best):
                cb.best = current
        elif isinstance(cb, keras.callbacks.EarlyStopping):
            if row["epoch"] < cb.start_from_epoch:
                continue
            seen = True
            cb.wait += 1
            if cb._is_improvement(current, cb.best):
                cb.best, cb.best_epoch = current, int(row["epoch"])
                if cb.baseline is None or cb._is_improvement(current, cb.baseline):
                    cb.wait = 0
        else:  # ReduceLROnPlateau; the lowered rate itself comes back with the optimizer's state
            if cb.in_cooldown():
                cb.cooldown_counter -= 1
                cb.wait = 0
            if cb._is_improvement(current, cb.best):
                cb.best, cb.wait = current, 0
            elif not cb.in_cooldown():
                cb.wait += 1
                rate = row.get("learning_rate")
                if cb.wait >= cb.patience and (rate is None or rate != rate or rate > np.float32(cb.min_lr)):
                    cb.cooldown_counter, cb.wait = cb.cooldown, 0
    best = run_dir / "best.keras"
    if isinstance(cb, keras.callbacks.EarlyStopping) and cb.restore_best_weights and seen and best.is_file():
        try:  # the best epoch's weights, else the first resumed epoch's would count as the best
            cb.best_weights = keras.saving.load_model(best, compile=False).get_weights()
        except Exception as exc:
            log.warning("%s is unreadable (%s): early stopping may restore a later epoch", best, type(exc).__name__)


# Options that say where the data is read from or how fast, not what is trained: a finished run with other
# values of these is the same run.
RUN_INDEPENDENT = frozenset({"output", "data_dir", "slug", "slugs", "threads", "n_jobs", "cache_dir", "verbose"})


def finished_run(run_dir: str | os.PathLike, settings: dict, saved_settings) -> dict | None:
    """The metrics of the finished run in ``run_dir`` (model.keras, metrics.json and config.json) when it was
    trained with ``settings``; None when ``run_dir`` holds no finished run (nothing yet, or an interrupted run
    to resume). ``saved_settings(config)`` gives the training settings in the run's config.json (None: not a
    run of this command). ValueError naming the differing settings when they differ (before any data is
    loaded: retraining would append to its curves and replace its model)."""
    from core.io import read_json

    run_dir = Path(run_dir)
    if not all((run_dir / name).is_file() for name in ("model.keras", "metrics.json", "config.json")):
        return None
    fix = "pass another --output or delete the folder to train again"
    try:
        saved = saved_settings(read_json(run_dir / "config.json"))
    except (ValueError, TypeError, AttributeError):  # damaged or foreign config.json
        saved = None
    if saved is None:
        raise ValueError(f"{run_dir} holds a finished run that this command did not write; {fix}")
    shown = _differences(saved, settings)
    if shown:
        raise ValueError(f"{run_dir} already holds a finished run with other settings ({shown}); {fix}")
    return read_json(run_dir / "metrics.json")


def _differences(saved: dict, settings: dict) -> str:
    """The settings that differ, as options (``--epochs 40 there, 12 now``); empty when none do."""
    differ = [k for k in settings if k not in RUN_INDEPENDENT and k in saved and saved[k] != settings[k]]
    return ", ".join(f"--{k.replace('_', '-')} {saved[k]!r} there, {settings[k]!r} now" for k in differ)


# Written into a run folder when training starts, so an interrupted run resumes only under the settings its
# checkpoints were trained with (config.json is written at the end, or may describe a finished run only).
RUN_SETTINGS = "run_settings.json"


def check_resume(run_dir: str | os.PathLike, tool: str, settings: dict) -> None:
    """Refuse to continue the run in ``run_dir`` with ``settings`` when it was started by another tool or with
    other settings (it used to resume anyway: the new learning rate in config.json, the old one in history.csv;
    another architecture's checkpoints were deleted as 'unreadable'). Before any data is loaded."""
    from core.io import read_json

    path = Path(run_dir) / RUN_SETTINGS
    if not path.is_file():
        return
    fix = "run the command that started it to resume it, or pass another --output"
    try:
        saved = read_json(path)
    except ValueError:
        raise ValueError(f"{path} is damaged, so the run there cannot be resumed safely; {fix}") from None
    if saved.get("tool") != tool:
        raise ValueError(f"{run_dir} holds a run of {saved.get('tool')}, not of {tool}; {fix}")
    shown = _differences(saved.get("settings", {}), _as_json(settings))
    if shown:
        raise ValueError(f"{run_dir} holds a run started with other settings ({shown}); {fix}")


def record_run_settings(run_dir: str | os.PathLike, tool: str, settings: dict) -> None:
    from core.io import write_json

    write_json(Path(run_dir) / RUN_SETTINGS, {"tool": tool, "settings": _as_json(settings)})


def _as_json(settings: dict) -> dict:
    """``settings`` as they read back from JSON (tuples as lists), so a comparison sees only real differences."""
    import json

    return json.loads(json.dumps(settings, default=str))


def make_callbacks(run_dir: str | os.PathLike, patience: int = 10, lr_patience: int = 4,
                   monitor: str = "val_accuracy", reduce_lr: bool = True, validation: bool = True,
                   first_epoch: int = 0) -> list:
    """Checkpoint best model, back up every epoch for resume, stop early, lower LR on plateau, log CSV.
    Without ``validation`` (a final fit on all the data) only the resume backup and the CSV log remain.
    ``first_epoch``: the epoch this fit starts at (a second stage), so a resume restores only its own epochs'
    best value and wait counters."""
    import keras

    run_dir = Path(run_dir)
    if not validation:
        return [resume_backup(run_dir / "checkpoints"),
                keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True)]
    mode = "max" if "acc" in monitor else "min"
    backup = resume_backup(run_dir / "checkpoints")
    stateful = [
        keras.callbacks.ModelCheckpoint(str(run_dir / "best.keras"), monitor=monitor, mode=mode,
                                        save_best_only=True),
        keras.callbacks.EarlyStopping(monitor=monitor, mode=mode, patience=patience, restore_best_weights=True),
    ]
    if reduce_lr:  # not with a learning-rate schedule, which owns the rate
        stateful.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5,
                                                          patience=lr_patience, min_lr=1e-6))
    return [backup, *stateful, resume_state(run_dir, backup, stateful, first_epoch),
            keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True)]


def read_history(run_dir: str | os.PathLike) -> dict[str, list[float]]:
    """The full history from ``history.csv`` (covers resumed runs, unlike ``fit``'s return value)."""
    frame = _history_frame(run_dir)
    if frame is None:
        return {}
    return {c: frame[c].astype(float).tolist() for c in frame.columns if c != "epoch"}


def _history_frame(run_dir: str | os.PathLike):
    """``history.csv`` as a DataFrame, one row per epoch (the last of an epoch logged twice), or None."""
    import pandas as pd

    path = Path(run_dir) / "history.csv"
    if not path.is_file():
        return None
    frame = pd.read_csv(path)
    return frame.drop_duplicates("epoch", keep="last") if "epoch" in frame else frame
