"""From clips to model-ready arrays: split by speaker (or randomly), extract, augment, pad, normalise."""
from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from core.labels import EMOTION_INDEX
from core.training import group_split, random_split
from ser.corpora import Clip
from ser.features import FeatureConfig, Normalizer, Variant, extract_many, pad

log = logging.getLogger(__name__)

MIN_SPEAKERS_TO_HOLD_OUT = 3


def split_clips(clips: Sequence[Clip], how: str, val_fraction: float, test_fraction: float, seed: int,
                val_speakers: Sequence[str] = (), test_speakers: Sequence[str] = ()) -> np.ndarray:
    """'train' / 'val' / 'test' per clip.

    ``speaker``: whole speakers are held out, corpus by corpus, so every corpus with
    enough speakers is represented in validation and test. A corpus with fewer than
    three speakers (TESS has two) goes to training unless its speakers are named.
    ``random``: stratified by label; speakers and sentences leak across the split.
    """
    if how == "random":
        return random_split([EMOTION_INDEX[c.label] for c in clips], val_fraction, test_fraction, seed)
    if how != "speaker":
        raise ValueError(f"unknown split {how!r}; choose speaker or random")
    out = np.empty(len(clips), dtype=object)
    by_corpus: dict[str, list[int]] = defaultdict(list)
    for i, clip in enumerate(clips):
        by_corpus[clip.corpus].append(i)
    for corpus, idx in by_corpus.items():
        speakers = [clips[i].speaker for i in idx]
        named_val = [s for s in val_speakers if s in set(speakers)]
        named_test = [s for s in test_speakers if s in set(speakers)]
        if named_val or named_test or len(set(speakers)) >= MIN_SPEAKERS_TO_HOLD_OUT:
            vf = val_fraction if not (named_val or named_test) else 0.0
            tf = test_fraction if not (named_val or named_test) else 0.0
            out[idx] = group_split(speakers, vf, tf, seed, named_val, named_test)
        else:
            log.warning("%s has only %d speakers: all go to training", corpus, len(set(speakers)))
            out[idx] = "train"
    unknown = (set(val_speakers) | set(test_speakers)) - {c.speaker for c in clips}
    if unknown:
        raise ValueError(f"unknown speakers {sorted(unknown)}")
    return out.astype(str)


def extract_clips(clips: Sequence[Clip], cfg: FeatureConfig, cache_dir: Path | None, n_jobs: int,
                  variant: Variant = 0, seed: int = 0) -> tuple[list[Clip], list[np.ndarray], dict[str, str]]:
    """Features of every readable clip (or of its augmented / noise / phone-band copy ``variant``, see
    ``ser.features``);
    unreadable / empty / silent ones are left out and returned as errors."""
    copy = "" if not variant else f" ({variant})" if isinstance(variant, str) else f" (augmented {variant})"
    feats, errors = extract_many([c.path for c in clips], cfg, cache_dir, variant, seed, n_jobs,
                                 desc=f"features{copy}")
    kept = [(c, f) for c, f in zip(clips, feats) if f is not None]
    return [c for c, _ in kept], [f for _, f in kept], errors


def to_arrays(feats: Sequence[np.ndarray], clips: Sequence[Clip], cfg: FeatureConfig,
              normalizer: Normalizer | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, y, lengths); ``x`` normalised when a normaliser is given."""
    x, lengths = pad(feats, cfg.max_frames)
    if normalizer is not None:
        x = normalizer.transform(x, lengths)
    y = np.array([EMOTION_INDEX[c.label] for c in clips], dtype=np.int32)
    return x, y, lengths
