"""Corpus dispatch for fusion training: find a corpus, list its clips, and assign train / val / test."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from core.datasets import resolve_corpus_dir
from core.training import group_split

log = logging.getLogger(__name__)

CORPORA = ("meld", "ravdess")
# The folder / Kaggle key of each fusion corpus in core.datasets.
DATASET_KEYS = {"meld": "meld", "ravdess": "ravdess_video"}


def corpus_root(corpus: str, data_dir: str | os.PathLike | None = None, slug: str | None = None) -> Path:
    if corpus not in CORPORA:
        raise ValueError(f"unknown fusion corpus {corpus!r}; choose one of {CORPORA}")
    return resolve_corpus_dir(DATASET_KEYS[corpus], data_dir, slug)


def load_index(corpus: str, root: str | os.PathLike, meld_folders: dict[str, str] | None = None,
               include_song: bool = True) -> tuple[pd.DataFrame, dict]:
    """The clip table (path, relpath, emotion, label, split, group, speaker) and the loader's skip counts."""
    if corpus == "meld":
        from fusion.meld import load_meld

        frame, report = load_meld(root, meld_folders)
    elif corpus == "ravdess":
        from fusion.ravdess_av import load_ravdess_av

        frame, report = load_ravdess_av(root, include_song)
    else:
        raise ValueError(f"unknown fusion corpus {corpus!r}; choose one of {CORPORA}")
    if frame.empty:
        raise FileNotFoundError(f"{corpus}: no usable clips found below {root} ({report})")
    return frame, report


def assign_splits(frame: pd.DataFrame, val_fraction: float, test_fraction: float, seed: int,
                  val_groups: Sequence[str] = (), test_groups: Sequence[str] = ()) -> pd.DataFrame:
    """Fill empty ``split`` cells by whole groups (RAVDESS actors); corpora with official splits keep theirs."""
    frame = frame.copy()
    todo = frame["split"] == ""
    if todo.any():
        frame.loc[todo, "split"] = group_split(frame.loc[todo, "group"].tolist(), val_fraction, test_fraction, seed,
                                               val_groups, test_groups)
    return frame


def limit_per_split(frame: pd.DataFrame, limit: int, seed: int) -> pd.DataFrame:
    """At most ``limit`` clips per split (stratified-ish random subset) for quick experiments."""
    if limit <= 0:
        return frame
    parts = []
    for _, part in frame.groupby("split", sort=False):
        parts.append(part.sample(n=min(limit, len(part)), random_state=seed) if len(part) > limit else part)
    return pd.concat(parts).sort_index()


def parse_groups(text: str, prefix: str = "") -> list[str]:
    """``"1,2"`` -> ``["actor_01", "actor_02"]`` for RAVDESS-style numeric actor ids; names pass through."""
    out = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        out.append(f"{prefix}{int(item):02d}" if prefix and item.isdigit() else item)
    return out


def class_counts(frame: pd.DataFrame) -> dict[str, dict[str, int]]:
    return {split: part["emotion"].value_counts().to_dict() for split, part in frame.groupby("split")}


def labels_of(frame: pd.DataFrame) -> np.ndarray:
    return frame["label"].to_numpy(dtype=np.int32)
