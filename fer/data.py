"""What every face corpus loader returns, skip counting, splits and the tf.data input pipeline.

Corpus-specific parsing lives in ``fer/fer2013.py``, ``fer/jaffe.py`` and ``fer/ckplus.py``; they all
return a ``FaceSet`` of 48x48 uint8 gray faces with labels in ``core.labels.EMOTIONS`` order.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from core.labels import EMOTIONS, EMOTION_INDEX, UnknownLabelError, map_label
from core.media_types import files_below

log = logging.getLogger(__name__)

CORPORA = ("fer2013", "jaffe", "ckplus")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".pgm", ".webp", ".gif")
SPLITS = ("train", "val", "test")
MAX_EXAMPLES = 5  # offending file names kept per skip reason in data_report.json


class FaceDataError(ValueError):
    """A corpus folder or file that cannot be used at all (as opposed to single bad items, which are skipped)."""


@dataclass
class SkipLog:
    """Counts skipped / dropped items by reason, keeps a few examples, warns once per reason."""

    corpus: str
    skipped: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, source: str) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < MAX_EXAMPLES:
            self.examples[reason].append(source)

    def drop(self, raw_label: str) -> None:
        self.dropped[raw_label] += 1

    def warn(self) -> None:
        for reason, count in self.skipped.items():
            log.warning("%s: skipped %d item(s): %s (e.g. %s)", self.corpus, count, reason,
                        ", ".join(self.examples.get(reason, [])[:3]))
        for raw, count in self.dropped.items():
            log.info("%s: dropped %d item(s) of class %r (not in the 7-class schema)", self.corpus, count, raw)


@dataclass
class FaceSet:
    """Faces of one corpus. ``splits`` holds the corpus' own split per item, or None when it has none."""

    corpus: str
    images: np.ndarray  # (n, size, size) uint8
    labels: np.ndarray  # (n,) int, index into EMOTIONS
    sources: list[str]  # file path, or "fer2013.csv:ROW"
    subjects: list[str]  # subject id where the corpus has one, else ""
    splits: np.ndarray | None
    skips: SkipLog
    root: str = ""
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def report(self) -> dict[str, Any]:
        counts = np.bincount(self.labels, minlength=len(EMOTIONS)) if len(self) else np.zeros(len(EMOTIONS), int)
        return {
            "corpus": self.corpus,
            "root": self.root,
            "loaded": len(self),
            "per_class": {name: int(c) for name, c in zip(EMOTIONS, counts)},
            "skipped": dict(self.skips.skipped),
            "skipped_total": int(sum(self.skips.skipped.values())),
            "dropped": dict(self.skips.dropped),
            "dropped_total": int(sum(self.skips.dropped.values())),
            "skipped_examples": self.skips.examples,
            "subjects": len(set(self.subjects) - {""}),
            "notes": self.notes,
        }

    def subset(self, mask: np.ndarray) -> "FaceSet":
        idx = np.flatnonzero(mask)
        return FaceSet(self.corpus, self.images[idx], self.labels[idx], [self.sources[i] for i in idx],
                       [self.subjects[i] for i in idx], None if self.splits is None else self.splits[idx],
                       self.skips, self.root, self.notes)


def build_faceset(corpus: str, items: Sequence[tuple[np.ndarray, str, str, str, str | None]], skips: SkipLog,
                  root: str | os.PathLike, size: int) -> FaceSet:
    """``items`` = (image, label, source, subject, split); images are resized to ``size`` here."""
    skips.warn()
    if not items:
        raise FaceDataError(f"{corpus}: no usable images found in {root} "
                            f"(skipped: {dict(skips.skipped) or 'none'}, dropped: {dict(skips.dropped) or 'none'})")
    images = np.stack([resize_face(img, size) for img, *_ in items])
    labels = np.array([EMOTION_INDEX[label] for _, label, *_ in items], dtype=np.int64)
    splits = [split for *_, split in items]
    split_arr = None if any(s is None for s in splits) else np.array(splits)
    return FaceSet(corpus, images, labels, [it[2] for it in items], [it[3] for it in items], split_arr, skips,
                   str(root))


def resize_face(gray: np.ndarray, size: int) -> np.ndarray:
    if gray.shape == (size, size):
        return gray
    interpolation = cv2.INTER_AREA if min(gray.shape) >= size else cv2.INTER_LINEAR
    return cv2.resize(gray, (size, size), interpolation=interpolation)


def read_gray(path: str | os.PathLike) -> np.ndarray | None:
    """uint8 gray image, or None when the file cannot be decoded. Palette / RGBA / 16-bit are converted."""
    path = str(path)
    image = cv2.imread(path, cv2.IMREAD_GRAYSCALE)
    if image is not None and image.size:
        return image
    # OpenCV cannot read some TIFF / GIF variants; Pillow can (and converts palette mode properly).
    try:
        from PIL import Image

        with Image.open(path) as img:
            return np.asarray(img.convert("L"), dtype=np.uint8)
    except Exception:  # Pillow raises many types for corrupt files
        return None


def list_images(folder: Path) -> list[Path]:
    return files_below(folder, IMAGE_EXTENSIONS)


def images_by_emotion_folder(corpus: str, folder: Path, skips: "SkipLog") -> list[tuple[Path, str]]:
    """(image, schema label) below ``folder/<emotion>/``; unknown folders skipped, dropped classes counted."""
    files = []
    for class_dir in sorted(d for d in folder.iterdir() if d.is_dir()):
        try:
            label = map_label(corpus, class_dir.name)
        except UnknownLabelError:
            skips.skip("unknown emotion folder", str(class_dir))
            continue
        for path in list_images(class_dir):
            if label is None:
                skips.drop(class_dir.name)
            else:
                files.append((path, label))
    return files


def check_dataset(name: str) -> None:
    """A ``--dataset`` (fer.train, fer.evaluate): one of ``CORPORA``; ValueError naming the choices."""
    if name not in CORPORA:
        raise ValueError(f"unknown --dataset {name!r}; choose one of {', '.join(CORPORA)}")


def cap_per_class(items: list, label_of, max_per_class: int, seed: int) -> list:
    """Keep at most ``max_per_class`` items of each label (random, seeded); 0 keeps all."""
    if not max_per_class:
        return items
    rng = np.random.default_rng(seed)
    by_label: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        by_label.setdefault(label_of(item), []).append(i)
    keep: list[int] = []
    for idx in by_label.values():
        keep.extend(rng.permutation(idx)[:max_per_class].tolist() if len(idx) > max_per_class else idx)
    return [items[i] for i in sorted(keep)]


def load_corpus(corpus: str, data_dir: str | os.PathLike | None = None, size: int = 48, max_per_class: int = 0,
                seed: int = 42, detector: str = "blazeface", slug: str | None = None) -> FaceSet:
    """Load one corpus by name: ``fer2013``, ``jaffe`` or ``ckplus``."""
    if corpus == "fer2013":
        from fer.fer2013 import load_fer2013

        return load_fer2013(data_dir, size=size, max_per_class=max_per_class, seed=seed, slug=slug)
    if corpus == "jaffe":
        from fer.jaffe import load_jaffe

        return load_jaffe(data_dir, size=size, detector=detector, slug=slug, max_per_class=max_per_class, seed=seed)
    if corpus == "ckplus":
        from fer.ckplus import load_ckplus

        return load_ckplus(data_dir, size=size, max_per_class=max_per_class, seed=seed, slug=slug)
    raise FaceDataError(f"unknown dataset {corpus!r}; choose one of {CORPORA}")


def split_faceset(data: FaceSet, val_fraction: float, test_fraction: float, seed: int,
                  val_subjects: Sequence[str] = (), test_subjects: Sequence[str] = ()) -> np.ndarray:
    """'train' / 'val' / 'test' per item.

    Corpora with known subjects (JAFFE, CK+) are split by subject, so no person is in two splits.
    FER2013 keeps its own split (Usage column, or train/ test/ folders) and holds out a stratified
    validation (and, without a test part, test) fraction of its training part.
    """
    from core.training import group_split

    if data.splits is None and all(data.subjects):
        return group_split(data.subjects, val_fraction, test_fraction, seed, val_subjects, test_subjects)
    splits = np.array(data.splits if data.splits is not None else ["train"] * len(data), dtype=object)
    for part, fraction in (("test", test_fraction), ("val", val_fraction)):
        if part in set(splits.tolist()) or fraction <= 0:
            continue
        train_idx = np.flatnonzero(splits == "train")
        # The fraction is of the whole set, as for the subject splits.
        n_hold = int(round(fraction * len(splits)))
        held = _stratified_pick(data.labels[train_idx], n_hold, seed)
        splits[train_idx[held]] = part
        data.notes.append(f"{part} split: stratified {fraction:.0%} held out of the training part (seed {seed})")
    return splits.astype(str)


def image_digests(images: np.ndarray) -> list[str]:
    """SHA-1 of each image's pixels: equal digests mean byte-identical faces."""
    import hashlib

    return [hashlib.sha1(np.ascontiguousarray(img).tobytes()).hexdigest() for img in images]


def drop_duplicates(images: np.ndarray, labels: np.ndarray, splits: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """Mark exact-duplicate training images 'unused'; returns the new splits and what was dropped.

    FER2013 holds byte-identical faces, some under different labels. A training copy of a validation or
    test image leaks it into training; identical training images with different labels teach nothing but
    noise; further copies with the same label only re-weight. Validation and test are never changed.
    """
    splits = np.array(splits, dtype=object)
    digests = image_digests(images)
    held_out = {d for d, s in zip(digests, splits) if s in ("val", "test")}
    labels_of: dict[str, set[int]] = {}
    for d, label, s in zip(digests, labels, splits):
        if s == "train":
            labels_of.setdefault(d, set()).add(int(label))
    report = {"copy_of_held_out": 0, "conflicting_labels": 0, "repeated": 0}
    seen: set[str] = set()
    for i in np.flatnonzero(splits == "train"):
        d = digests[i]
        reason = ("copy_of_held_out" if d in held_out else "conflicting_labels" if len(labels_of[d]) > 1
                  else "repeated" if d in seen else None)
        seen.add(d)
        if reason:
            splits[i] = "unused"
            report[reason] += 1
    return splits.astype(str), report


def cap_split(labels: np.ndarray, splits: np.ndarray, part: str, max_per_class: int, seed: int) -> np.ndarray:
    """Keep at most ``max_per_class`` items per class in ``part``; the rest become 'unused'.

    Caps the training part only, so validation and test keep the corpus' natural class distribution.
    """
    splits = np.array(splits, dtype=object)
    rng = np.random.default_rng(seed)
    for label in np.unique(labels):
        idx = np.flatnonzero((splits == part) & (labels == label))
        if len(idx) > max_per_class > 0:
            splits[rng.permutation(idx)[max_per_class:]] = "unused"
    return splits.astype(str)


def _stratified_pick(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    from sklearn.model_selection import train_test_split

    n = min(max(n, 1), len(labels) - 1)
    counts = np.unique(labels, return_counts=True)[1]
    # Stratify when every class has 2+ items and the held-out part can hold one of each.
    stratify = labels if counts.min() >= 2 and len(counts) <= n <= len(labels) - len(counts) else None
    try:
        _, picked = train_test_split(np.arange(len(labels)), test_size=n, random_state=seed, stratify=stratify)
    except ValueError:  # a class with a single item cannot be stratified
        _, picked = train_test_split(np.arange(len(labels)), test_size=n, random_state=seed)
    return np.sort(picked)


DEGRADATIONS = ("contrast", "gain", "resolution", "noise")  # camera_degradation's steps, in their order


def check_degradations(kinds) -> tuple[str, ...]:
    """``kinds`` (names or one comma-separated string) as a tuple, refused when empty or unknown."""
    names = tuple(k.strip() for k in (kinds.split(",") if isinstance(kinds, str) else kinds) if k.strip())
    unknown = [k for k in names if k not in DEGRADATIONS]
    if unknown or not names:
        raise ValueError(f"--degrade-kinds must name some of {', '.join(DEGRADATIONS)}, "
                         f"got {','.join(names) or 'none'}")
    return names


def camera_degradation(rate: float, seed: int = 42, kinds=DEGRADATIONS):
    """A Keras layer that gives a share ``rate`` of the faces of each batch what a poor camera in a poor room
    gives: contrast x U(0.4, 1) around the face's mean, gain x U(0.25, 1.6), a lower resolution (the batch's side
    drawn from 12-48 px, then back) and sensor noise of sigma U(0, 12) gray levels, in that order; ``kinds``
    keeps some of them (``DEGRADATIONS``; the default's noise alone, exp59). Chosen in exp52 (docs/results.md).
    Keras ops only, so the same layer runs in fer.train's tf.data pipeline and inside fer.train_gpu's model on
    JAX or PyTorch; the shrinking averages areas where the backend can (TensorFlow, as in exp52) and is an
    antialiased bilinear resize elsewhere."""
    import keras
    from keras import ops

    kinds = check_degradations(kinds)
    smallest, largest = 12, 48
    area = keras.backend.backend() == "tensorflow"

    def shrunk_to(side: int):
        def resize(y):
            small = ops.image.resize(y, (side, side), interpolation="area" if area else "bilinear", antialias=not area)
            return ops.image.resize(small, ops.shape(y)[1:3], interpolation="bilinear")
        return resize

    # One branch per side: JAX needs static shapes, so the drawn side picks a branch instead of sizing a resize.
    branches = [shrunk_to(side) for side in range(smallest, largest + 1)]

    class CameraDegradation(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.seed_generator = keras.random.SeedGenerator(seed)

        def call(self, x, training=True):
            if not training:
                return x
            n = ops.shape(x)[0]

            def uniform(low, high):
                return keras.random.uniform((n, 1, 1, 1), low, high, seed=self.seed_generator)

            y = x
            if "contrast" in kinds:
                mean = ops.mean(y, axis=(1, 2, 3), keepdims=True)
                y = mean + uniform(0.4, 1.0) * (y - mean)
            if "gain" in kinds:
                y = y * uniform(0.25, 1.6)
            if "resolution" in kinds:
                side = keras.random.randint((), smallest, largest + 1, seed=self.seed_generator)
                y = ops.switch(side - smallest, branches, y)
            if "noise" in kinds:
                y = y + keras.random.normal(ops.shape(x), seed=self.seed_generator) * uniform(0.0, 12.0)
            y = ops.clip(y, 0.0, 255.0)
            chosen = ops.cast(uniform(0.0, 1.0) < rate, x.dtype)
            return chosen * y + (1.0 - chosen) * x

        def compute_output_shape(self, input_shape):
            # Said, not traced: on JAX, tracing call() for a model's symbolic build draws from the seed generator
            # outside any state scope and fails (fer.train_gpu's distiller calls the augmenter only in training).
            return input_shape

    return CameraDegradation(name="aug_camera")


def make_augmenter(seed: int = 42, flip: bool = True, rotation: float = 0.05, zoom: float = 0.1,
                   brightness: float = 0.1, shift: float = 0.0, erasing: float = 0.0, degrade: float = 0.0,
                   degrade_kinds=DEGRADATIONS):
    """Random flip / rotation / zoom / brightness (and optionally shift and erasing) as Keras preprocessing
    layers, used in tf.data. ``shift`` is a fraction of the side (a random-crop equivalent); ``erasing`` is
    the probability of blanking one random rectangle (Zhong et al. 2017); ``degrade`` the share of faces given
    a poor camera's contrast, gain, resolution and noise, or the ``degrade_kinds`` of them
    (``camera_degradation``)."""
    import keras
    from keras import layers

    steps = []
    if flip:
        steps.append(layers.RandomFlip("horizontal", seed=seed, name="aug_flip"))
    if rotation:
        steps.append(layers.RandomRotation(rotation, fill_mode="nearest", seed=seed, name="aug_rotation"))
    if zoom:
        steps.append(layers.RandomZoom(zoom, fill_mode="nearest", seed=seed, name="aug_zoom"))
    if brightness:
        steps.append(layers.RandomBrightness(brightness, value_range=(0.0, 255.0), seed=seed, name="aug_brightness"))
    if shift:
        steps.append(layers.RandomTranslation(shift, shift, fill_mode="nearest", seed=seed, name="aug_shift"))
    if erasing:
        # A single float would make Keras draw each image's probability from [0, erasing]: pass a fixed range.
        steps.append(layers.RandomErasing(factor=(erasing, erasing), scale=(0.02, 0.2), value_range=(0.0, 255.0), seed=seed,
                                          name="aug_erasing"))
    if degrade:
        steps.append(camera_degradation(degrade, seed, degrade_kinds))
    return keras.Sequential(steps, name="augment")


def make_dataset(images: np.ndarray, labels: np.ndarray, batch_size: int, training: bool = False,
                 augmenter=None, seed: int = 42, cutmix: float = 0.0, teacher=None, distill_weight: float = 0.7):
    """tf.data of (float32 0..255 (n,h,w,1), int label or probability vector); shuffled and augmented only when
    ``training``. ``cutmix``: the probability that a training batch is CutMix'ed after augmentation (its targets
    are then probability vectors, also in the batches left as they are). ``teacher`` (training only, with
    probability-vector ``labels``): a model whose answer for each face exactly as the student will see it
    (augmented, possibly CutMix'ed) becomes ``distill_weight`` of its target, the (mixed) label the rest."""
    import tensorflow as tf

    if training and teacher is not None and labels.ndim != 2:
        raise ValueError("a teacher mixes its answers with probability-vector labels (e.g. smoothed one-hot)")
    x = images[..., None] if images.ndim == 3 else images
    # Integer labels, or (distillation) one probability vector per face.
    targets = labels.astype(np.float32) if labels.ndim == 2 else labels.astype(np.int64)
    ds = tf.data.Dataset.from_tensor_slices((x, targets))
    if training:
        ds = ds.shuffle(min(len(labels), 20000), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(lambda a, b: (tf.cast(a, tf.float32), b), num_parallel_calls=tf.data.AUTOTUNE)
    if training and augmenter is not None:
        ds = ds.map(lambda a, b: (augmenter(a, training=True), b), num_parallel_calls=tf.data.AUTOTUNE)
    if training and cutmix > 0:
        ds = ds.map(cutmix_batch(cutmix, seed), num_parallel_calls=tf.data.AUTOTUNE)
    if training and teacher is not None:
        ds = ds.map(lambda a, b: (a, distill_weight * teacher(a, training=False) + (1.0 - distill_weight) * b),
                    num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def cutmix_batch(probability: float, seed: int = 42):
    """A tf.data map: with ``probability``, each face of the batch gets a random rectangle of another face of the
    batch and the labels mix by the rectangle's area (keras.layers.CutMix; Yun et al. 2019); integer labels become
    one-hot either way."""
    import keras
    import tensorflow as tf

    from core.labels import NUM_CLASSES

    layer = keras.layers.CutMix(factor=1.0, seed=seed, name="aug_cutmix")

    def mix(images, labels):
        labels = labels if labels.dtype.is_floating else tf.one_hot(labels, NUM_CLASSES)
        mixed = layer({"images": images, "labels": labels}, training=True)
        chosen = tf.random.uniform([], seed=seed) < probability
        return (tf.where(chosen, mixed["images"], images), tf.where(chosen, mixed["labels"], labels))

    return mix
