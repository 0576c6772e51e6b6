"""JAFFE: 213 TIFFs of 10 Japanese female subjects, ``KA.AN1.39.tiff`` = subject KA, label AN, take 1, index 39.

The photos are 256x256 head-and-shoulders shots, so the face is found and cropped like a user's photo
(FER2013 faces are tight crops). Some files are palette-mode TIFFs: they are converted to grayscale.
"""
from __future__ import annotations

import os
import re

from core.cli import progress
from core.datasets import resolve_corpus_dir
from core.labels import UnknownLabelError, map_label
from core.media_types import files_below
from fer.data import FaceSet, SkipLog, build_faceset, cap_per_class, read_gray
from fer.faces import DEFAULT_DETECTOR, FACE_MARGIN, crop_face, detect_and_align

CORPUS = "jaffe"
NAME_PATTERN = re.compile(r"^(?P<subject>[A-Za-z]{2,3})\.(?P<label>[A-Za-z]{2})\d*\.(?P<index>\d+)\.tiff?$", re.I)
# Where JAFFE's face sits when the detector finds none: the centre of the 256x256 frame.
CENTRE_BOX_FRACTION = 0.55


def parse_name(name: str) -> tuple[str, str] | None:
    """(subject, raw label) from a JAFFE file name, or None when the name does not follow the scheme."""
    match = NAME_PATTERN.match(name)
    return (match["subject"].upper(), match["label"].upper()) if match else None


def load_jaffe(data_dir: str | os.PathLike | None = None, size: int = 48, detector: str = DEFAULT_DETECTOR,
               slug: str | None = None, max_per_class: int = 0, seed: int = 42) -> FaceSet:
    """``detector``: a ``fer.faces`` detector crops the face (aligned, as at inference: ``detect_and_align``);
    'none' keeps the whole frame (resized). ``max_per_class``: at most this many photos per emotion (seeded
    random; 0 keeps all), chosen before any face is searched."""
    root = resolve_corpus_dir(CORPUS, data_dir, slug)
    skips = SkipLog(CORPUS)
    items = []
    fallbacks = 0
    labelled = []
    for path in files_below(root, (".tif", ".tiff")):
        parsed = parse_name(path.name)
        if parsed is None:
            skips.skip("file name not SUBJECT.LABELn.INDEX.tiff", str(path))
            continue
        subject, raw = parsed
        try:
            label = map_label(CORPUS, raw)
        except UnknownLabelError:
            skips.skip("unknown label code", str(path))
            continue
        if label is None:
            skips.drop(raw)
            continue
        labelled.append((path, subject, label))
    labelled = cap_per_class(labelled, lambda item: item[2], max_per_class, seed)
    for path, subject, label in progress(labelled, desc="jaffe faces", unit="image"):
        image = read_gray(path)
        if image is None:
            skips.skip("unreadable image", str(path))
            continue
        if detector != "none":
            faces, crops = detect_and_align(image, method=detector, size=size, margin=FACE_MARGIN)
            if faces:
                image = crops[0]
            else:
                fallbacks += 1
                image = crop_face(image, _centre_box(image.shape), size=size, margin=0.0)
        items.append((image, label, str(path), subject, None))
    data = build_faceset(CORPUS, items, skips, root, size)
    if detector != "none":
        data.notes.append(f"faces cropped with the {detector} detector; {fallbacks} image(s) without a detected "
                          "face use a centre crop")
    return data


def _centre_box(shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    height, width = shape[:2]
    side = int(min(height, width) * CENTRE_BOX_FRACTION)
    return (width - side) // 2, (height - side) // 2, side, side
