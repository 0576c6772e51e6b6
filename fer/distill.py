"""Knowledge distillation targets for `fer.train --teacher`.

Three ways to teach:
- fixed targets (`distill_targets`): the teacher answers once per training face; the student then sees a new
  random augmentation of that face every epoch but is always asked for the clean face's answer.
- consistent targets (`view_bank`, `--teacher-views V`): the teacher answers for V fixed views of every face
  (the face itself and V-1 augmentations, some mixed with another face when `--view-mixup` is set), and the
  student, each epoch, sees one of those views, possibly mirrored, with the answer for exactly that view
  (Beyer et al. 2022, "Knowledge distillation: a good teacher is patient and consistent"). A flip-averaged
  teacher gives a face and its mirror image the same answer, so mirroring keeps the targets exact.
- fresh targets (`fer.data.make_dataset(teacher=...)`, `--teacher-fresh`): the teacher answers for every augmented
  batch as it is drawn, so every epoch brings new views, each with its own answer ("function matching" in the
  same paper); the teacher's forward pass is paid every epoch instead of once.

The bank is computed once (the teacher costs 9-20 ms per face on one core, by machine and load: 25-55 minutes for
8 views of FER2013's training faces) and saved in the run folder, so a resumed run does not pay for it again; an
interrupted bank continues at its first missing view.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from core.io import atomic_write
from core.labels import NUM_CLASSES

log = logging.getLogger("fer.distill")

BANK_FILE = "teacher_views.npz"
BANK_BATCH = 512  # faces augmented and answered per step: bounded memory, progress in the log


def load_teacher(teacher_path: str, image_shape: tuple[int, int]):
    """The teacher, flip-averaged (a teacher that already averages flips is not wrapped a second time)."""
    import keras

    from fer.models import is_flip_averaged, with_flip_average

    teacher = keras.models.load_model(teacher_path, compile=False)
    want = (*image_shape, 1)
    if tuple(teacher.input_shape[1:]) != want:
        raise ValueError(f"--teacher {teacher_path} takes {teacher.input_shape[1:]}, the faces here are {want}")
    return teacher if is_flip_averaged(teacher) else with_flip_average(teacher)


def smoothed_one_hot(labels: np.ndarray, label_smoothing: float) -> np.ndarray:
    one_hot = np.eye(NUM_CLASSES, dtype=np.float32)[labels]
    return one_hot * (1.0 - label_smoothing) + label_smoothing / NUM_CLASSES


def distill_targets(teacher_path: str, images: np.ndarray, labels: np.ndarray, weight: float,
                    label_smoothing: float = 0.0, loaded: Any = None) -> np.ndarray:
    """``weight`` x the teacher's flip-averaged probabilities + the rest x the (smoothed) one-hot labels.
    ``loaded``: ``load_teacher(teacher_path, ...)`` where the caller has it already."""
    teacher = loaded if loaded is not None else load_teacher(teacher_path, images.shape[1:3])
    log.info("teacher %s: probabilities of %d training faces", teacher_path, len(images))
    probs = teacher.predict(images[..., None].astype(np.float32), batch_size=256, verbose=0)
    return (weight * probs + (1.0 - weight) * smoothed_one_hot(labels, label_smoothing)).astype(np.float32)


def view_bank(teacher_path: str, images: np.ndarray, labels: np.ndarray, views: int, weight: float,
              label_smoothing: float, augmenters: Callable[[int], Any] | None, mixup: float = 0.0, seed: int = 42,
              cache: Path | None = None, loaded: Any = None,
              augmentation: Any = ()) -> tuple[np.ndarray, np.ndarray]:
    """``views`` versions of every face, uint8 (views, n, h, w), and their targets (views, n, classes).

    View 0 is the face itself; view v >= 1 is ``augmenters(v)``'s random version of it, mixed with the same view of
    another random face with probability ``mixup`` (weight uniform in [0, 1], labels mixed alike). The teacher
    answers for the stored uint8 image, exactly what the student will see.

    With ``cache``, a bank saved there for the same faces, teacher and settings is reused, and a new one is saved
    there. While it is built, each finished view is kept beside it (``<cache stem>.parts/``): a view's randomness
    depends on its index alone, so an interrupted bank continues at its first missing view and ends as it would
    have without the interruption. ``loaded``: ``load_teacher(teacher_path, ...)`` where the caller has it already
    (the cache key names ``teacher_path``). ``augmentation``: the settings ``augmenters`` draws with (any
    printable value): the cache key cannot see inside the callable, so a bank made with other settings is made
    again only when they are named here."""
    if views < 1:
        raise ValueError(f"--teacher-views must be >= 1, got {views}")
    key = _bank_key(teacher_path, images, labels, views, weight, label_smoothing, mixup, seed, augmentation)
    if cache is not None and cache.exists():
        with np.load(cache) as saved:
            if str(saved["key"]) == key:
                log.info("teacher views: reusing %s", cache)
                return saved["images"], saved["targets"]
        log.info("teacher views: %s was made for other faces or settings; computing again", cache)
    parts = cache.with_name(cache.stem + ".parts") if cache is not None else None
    one_hot = smoothed_one_hot(labels, label_smoothing)
    bank = np.empty((views, *images.shape), np.uint8)
    targets = np.empty((views, len(images), NUM_CLASSES), np.float32)
    teacher = loaded
    for v in range(views):
        part = parts / f"view{v}.npz" if parts is not None else None
        if part is not None and part.exists():
            with np.load(part) as saved:
                if str(saved["key"]) == key:
                    bank[v], targets[v] = saved["images"], saved["targets"]
                    log.info("teacher views: view %d of %d reused from %s", v + 1, views, parts)
                    continue
        if teacher is None:
            teacher = load_teacher(teacher_path, images.shape[1:3])
        augmenter = augmenters(v) if augmenters is not None and v > 0 else None
        bank[v], targets[v] = _one_view(teacher, images, one_hot, weight, augmenter, mixup,
                                        np.random.default_rng([seed, v]) if v > 0 else None)
        if part is not None:
            parts.mkdir(exist_ok=True)
            atomic_write(part, lambda tmp: np.savez(tmp, key=key, images=bank[v], targets=targets[v]),
                         suffix=".npz")
        log.info("teacher views: %d of %d done (%d faces each)", v + 1, views, len(images))
    if cache is not None:
        atomic_write(cache, lambda tmp: np.savez(tmp, key=key, images=bank, targets=targets), suffix=".npz")
        shutil.rmtree(parts, ignore_errors=True)
    return bank, targets


def _one_view(teacher, images: np.ndarray, one_hot: np.ndarray, weight: float, augmenter, mixup: float,
              rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
    """One view of every face (the faces themselves without ``rng``) and the teacher's targets for it."""
    faces = np.empty_like(images)
    targets = np.empty((len(images), NUM_CLASSES), np.float32)
    for start in range(0, len(images), BANK_BATCH):
        part = slice(start, start + BANK_BATCH)
        x, y = images[part].astype(np.float32), one_hot[part]
        if rng is not None:
            x = _augment(augmenter, x)
            if mixup > 0:
                partner = rng.integers(0, len(images), len(x))
                other = _augment(augmenter, images[partner].astype(np.float32))
                lam = np.where(rng.random(len(x)) < mixup, rng.random(len(x)), 1.0).astype(np.float32)
                x = lam[:, None, None] * x + (1.0 - lam[:, None, None]) * other
                y = lam[:, None] * y + (1.0 - lam[:, None]) * one_hot[partner]
        faces[part] = np.clip(np.rint(x), 0, 255).astype(np.uint8)
        probs = teacher.predict_on_batch(faces[part][..., None].astype(np.float32))
        targets[part] = weight * np.asarray(probs) + (1.0 - weight) * y
    return faces, targets


class EpochClock:
    """The epoch ``fit`` is in (a Keras callback's ``on_epoch_begin`` sets it; absolute, so also after a resume)."""

    def __init__(self) -> None:
        self.epoch: int | None = None

    def callback(self):
        import keras

        clock = self

        class Tick(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                clock.epoch = epoch

        return Tick()


def view_dataset(bank: np.ndarray, targets: np.ndarray, batch_size: int, seed: int = 42,
                 clock: EpochClock | None = None):
    """tf.data over one epoch: every face once, in a new order, as one of its views drawn at random and mirrored
    half of the time (float32 0..255 (n, h, w, 1), target vector). Each pass over the dataset is a new epoch.

    Epoch e's order, views and mirrors come from ``(seed, e)`` alone, e counting passes or, with ``clock`` (add
    ``clock.callback()`` to ``fit``), read from it: a resumed run sees exactly the batches an uninterrupted one
    would have seen."""
    import itertools

    import tensorflow as tf

    views, n = targets.shape[:2]
    passes = itertools.count()

    def epoch():
        count = next(passes)
        rng = np.random.default_rng([seed, clock.epoch if clock is not None and clock.epoch is not None else count])
        order = rng.permutation(n)
        picks = rng.integers(0, views, n)
        flips = rng.random(n) < 0.5
        for start in range(0, n, batch_size):
            part = slice(start, start + batch_size)
            idx, pick, flip = order[part], picks[part], flips[part]
            x = bank[pick, idx].astype(np.float32)
            x[flip] = x[flip, :, ::-1]
            yield x[..., None], targets[pick, idx]

    h, w = bank.shape[2:4]
    ds = tf.data.Dataset.from_generator(epoch, output_signature=(
        tf.TensorSpec((None, h, w, 1), tf.float32), tf.TensorSpec((None, NUM_CLASSES), tf.float32)))
    return ds.apply(tf.data.experimental.assert_cardinality(-(-n // batch_size))).prefetch(2)


def _augment(augmenter, x: np.ndarray) -> np.ndarray:
    if augmenter is None:
        return x
    return np.asarray(augmenter(x[..., None], training=True))[..., 0]


def _bank_key(teacher_path: str, images: np.ndarray, labels: np.ndarray, *settings) -> str:
    import hashlib

    digest = hashlib.sha256(images.tobytes())
    digest.update(labels.astype(np.int64).tobytes())
    stat = Path(teacher_path).stat()
    return f"{digest.hexdigest()[:32]}|{Path(teacher_path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{settings}"

