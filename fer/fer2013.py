"""FER2013 in its two real layouts.

1. The original ``fer2013.csv``: columns ``emotion,pixels,Usage``; ``pixels`` is 2304 space-separated
   gray values of a 48x48 face; emotion codes 0 angry 1 disgust 2 fear 3 happy 4 sad 5 surprise 6 neutral;
   Usage Training / PublicTest / PrivateTest become train / val / test.
2. Kaggle's image folders (``msambare/fer2013``): ``train/<emotion>/*.jpg`` and ``test/<emotion>/*.jpg``.

Malformed rows, wrong pixel counts, unknown labels and unreadable images are skipped, counted and warned about.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from core.cli import progress
from core.datasets import resolve_corpus_dir
from core.labels import UnknownLabelError, map_label
from fer.data import (FaceDataError, FaceSet, SkipLog, build_faceset, cap_per_class, images_by_emotion_folder,
                      read_gray)

CORPUS = "fer2013"
PIXELS = 48 * 48
USAGE_SPLITS = {"training": "train", "publictest": "val", "privatetest": "test"}
FOLDER_SPLITS = {"train": "train", "training": "train", "val": "val", "validation": "val", "publictest": "val",
                 "test": "test", "privatetest": "test"}
REQUIRED_COLUMNS = ("emotion", "pixels")


def find_csv(root: Path) -> Path | None:
    """``fer2013.csv`` (or another CSV with emotion + pixels columns) in ``root`` or one level below."""
    candidates = sorted(root.glob("*.csv")) + sorted(root.glob("*/*.csv"))
    candidates.sort(key=lambda p: (p.name.lower() != "fer2013.csv", len(p.parts)))
    for path in candidates:
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            header = [c.strip().lower() for c in next(csv.reader(f), [])]
        if all(c in header for c in REQUIRED_COLUMNS):
            return path
    return None


def load_fer2013(data_dir: str | os.PathLike | None = None, size: int = 48, max_per_class: int = 0,
                 seed: int = 42, slug: str | None = None) -> FaceSet:
    """FER2013 from a CSV file, a folder holding one, or the image-folder layout."""
    if data_dir is not None and Path(data_dir).is_file():
        return load_csv(Path(data_dir), size, max_per_class, seed)
    root = resolve_corpus_dir(CORPUS, data_dir, slug)
    csv_path = find_csv(root)
    if csv_path is not None:
        return load_csv(csv_path, size, max_per_class, seed)
    return load_folders(root, size, max_per_class, seed)


def load_csv(path: Path, size: int = 48, max_per_class: int = 0, seed: int = 42) -> FaceSet:
    skips = SkipLog(CORPUS)
    rows: list[tuple[str, str, str, str | None]] = []  # (label, pixels, source, split)
    has_usage = False
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        reader = csv.reader(f)
        header = [c.strip().lower() for c in next(reader, [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise FaceDataError(f"{path}: not a FER2013 CSV: missing column(s) {missing}; header is {header}")
        col = {name: header.index(name) for name in header}
        has_usage = "usage" in col
        for line_no, row in enumerate(reader, start=2):
            source = f"{path.name}:{line_no}"
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                skips.skip(f"malformed row ({len(header)} fields expected)", source)
                continue
            try:
                label = map_label(CORPUS, row[col["emotion"]].strip())
            except UnknownLabelError:
                skips.skip("unknown emotion code", source)
                continue
            split = None
            if has_usage:
                split = USAGE_SPLITS.get(row[col["usage"]].strip().lower())
                if split is None:
                    skips.skip("unknown Usage value", source)
                    continue
            if label is None:
                skips.drop(row[col["emotion"]].strip())
                continue
            rows.append((label, row[col["pixels"]], source, split))
    rows = cap_per_class(rows, lambda r: r[0], max_per_class, seed)
    items = []
    for label, pixels, source, split in rows:
        face = parse_pixels(pixels)
        if isinstance(face, str):
            skips.skip(face, source)
            continue
        items.append((face, label, source, "", split))
    data = build_faceset(CORPUS, items, skips, path, size)
    if not has_usage:
        data.notes.append("CSV has no Usage column: splits are held out of the whole set")
    return data


def parse_pixels(text: str) -> np.ndarray | str:
    """A 48x48 uint8 face, or the reason the pixel string is unusable."""
    try:
        values = np.array(text.split(), dtype=np.int64)
    except ValueError:
        return "non-numeric pixel values"
    if values.size != PIXELS:
        return f"wrong pixel count (expected {PIXELS})"
    if values.min() < 0 or values.max() > 255:
        return "pixel values outside 0..255"
    return values.astype(np.uint8).reshape(48, 48)


def load_folders(root: Path, size: int = 48, max_per_class: int = 0, seed: int = 42) -> FaceSet:
    """``root/train|test/<emotion>/*``, or ``root/<emotion>/*`` without split folders."""
    skips = SkipLog(CORPUS)
    split_dirs = [d for d in sorted(root.iterdir()) if d.is_dir() and d.name.lower() in FOLDER_SPLITS]
    groups = [(d, FOLDER_SPLITS[d.name.lower()]) for d in split_dirs] or [(root, None)]
    files: list[tuple[Path, str, str | None]] = []
    for folder, split in groups:
        files.extend((path, label, split) for path, label in images_by_emotion_folder(CORPUS, folder, skips))
    if not files and not skips.skipped:
        raise FaceDataError(f"{root}: no FER2013 data found: expected fer2013.csv or train/<emotion>/*.jpg folders")
    # Cap per split and class so a capped run still has a test part.
    files = cap_per_class(files, lambda f: (f[2], f[1]), max_per_class, seed)
    items = []
    for path, label, split in progress(files, desc="fer2013 images", unit="image"):
        image = read_gray(path)
        if image is None:
            skips.skip("unreadable image", str(path))
            continue
        items.append((image, label, str(path), "", split))
    return build_faceset(CORPUS, items, skips, root, size)
