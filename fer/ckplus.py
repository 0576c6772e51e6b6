"""CK+48: ``<emotion>/S010_004_00000017.png`` (48x48 gray faces, last frames of posed sequences).

Folders: anger contempt disgust fear happy sadness surprise. Contempt is outside the 7-class schema and is
dropped and counted. The subject is the ``S010`` prefix, so splits keep each person in one split.
"""
from __future__ import annotations

import os
from pathlib import Path

from core.cli import progress
from core.datasets import resolve_corpus_dir
from core.labels import UnknownLabelError, map_label
from fer.data import FaceSet, SkipLog, build_faceset, cap_per_class, images_by_emotion_folder, read_gray

CORPUS = "ckplus"


def subject_of(name: str) -> str:
    """``S010`` from ``S010_004_00000017.png``; the whole stem when there is no underscore."""
    return Path(name).stem.split("_")[0]


def load_ckplus(data_dir: str | os.PathLike | None = None, size: int = 48, max_per_class: int = 0, seed: int = 42,
                slug: str | None = None) -> FaceSet:
    root = Path(resolve_corpus_dir(CORPUS, data_dir, slug))
    # Some Kaggle unpacks nest the folders one level deeper (CK+48/CK+48/anger).
    if not any(_is_label_dir(d) for d in root.iterdir() if d.is_dir()):
        nested = [d for d in root.iterdir() if d.is_dir() and any(_is_label_dir(c) for c in d.iterdir() if c.is_dir())]
        root = nested[0] if nested else root
    skips = SkipLog(CORPUS)
    files = images_by_emotion_folder(CORPUS, root, skips)
    files = cap_per_class(files, lambda f: f[1], max_per_class, seed)
    items = []
    for path, label in progress(files, desc="ckplus images", unit="image"):
        image = read_gray(path)
        if image is None:
            skips.skip("unreadable image", str(path))
            continue
        items.append((image, label, str(path), subject_of(path.name), None))
    return build_faceset(CORPUS, items, skips, root, size)


def _is_label_dir(path: Path) -> bool:
    try:
        return map_label(CORPUS, path.name) is not None or path.name.lower() == "contempt"
    except UnknownLabelError:
        return False
