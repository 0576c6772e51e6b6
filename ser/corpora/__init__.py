"""One data-preparation module per speech corpus; each turns a folder into a list of ``Clip``s.

All parsers take labels and speakers from file and folder names exactly as the
corpora ship them (see each module's docstring for the convention).
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from core.datasets import resolve_corpus_dir
from core.media_types import AUDIO_EXTENSIONS as _AUDIO, VIDEO_EXTENSIONS as _VIDEO, files_below

log = logging.getLogger(__name__)

# Speech comes from sound files and from the sound track of video files (RAVDESS ships .mp4 too).
AUDIO_EXTENSIONS = set(_AUDIO) | set(_VIDEO)


@dataclass(frozen=True)
class Clip:
    path: str
    label: str      # schema label (core.labels.EMOTIONS)
    speaker: str    # corpus-qualified, e.g. "ravdess_03", so ids never collide across corpora
    corpus: str


@dataclass
class ParseReport:
    """What a parser kept, and what it left out and why (goes into the run's data_report.json)."""
    kept: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, path: str) -> None:
        self.skipped[reason] += 1
        self.examples.setdefault(reason, [])
        if len(self.examples[reason]) < 5:
            self.examples[reason].append(path)

    def as_dict(self) -> dict:
        return {"kept": self.kept, "skipped": dict(self.skipped), "examples": self.examples}


def clip_key(clip: Clip, roots: dict[str, dict]) -> str:
    """``corpus/path-inside-the-corpus``: names a clip the same way on every machine."""
    root = roots.get(clip.corpus, {}).get("root")
    rel = os.path.relpath(clip.path, root) if root else clip.path
    return f"{clip.corpus}/{Path(rel).as_posix()}"


def audio_files(root: Path) -> list[Path]:
    """Audio files below ``root`` in a stable order, hidden files excluded, linked folders followed."""
    return files_below(root, AUDIO_EXTENSIONS)


def dedupe_by_name(files: Iterable[Path]) -> list[Path]:
    # Kaggle archives of RAVDESS and TESS hold the same clips twice in nested copies.
    seen: dict[str, Path] = {}
    for path in files:
        seen.setdefault(path.name.lower(), path)
    return sorted(seen.values())


def _parsers() -> dict[str, Callable[[Path], tuple[list[Clip], ParseReport]]]:
    from ser.corpora import crema_d, ravdess, savee, tess

    return {"ravdess": ravdess.parse, "crema_d": crema_d.parse, "tess": tess.parse, "savee": savee.parse}


CORPORA = ("ravdess", "crema_d", "tess", "savee")
ALIASES = {"crema-d": "crema_d", "cremad": "crema_d", "crema": "crema_d"}


def parse_corpus_list(text: str) -> list[str]:
    """``"RAVDESS, tess"`` -> ``["ravdess", "tess"]``: aliases resolved, each corpus once (a repeat would load its
    clips twice, into training and test alike); ValueError when none or an unknown one is named."""
    names = [ALIASES.get(n.strip().lower(), n.strip().lower()) for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CORPORA]
    if unknown:
        raise ValueError(f"unknown corpora {unknown}; choose from {', '.join(CORPORA)}")
    if not names:
        raise ValueError(f"no corpus named in {text!r}; choose from {', '.join(CORPORA)}")
    return list(dict.fromkeys(names))


def load_clips(corpora: Iterable[str], data_dir: str | os.PathLike | None = None,
               slugs: dict[str, str] | None = None) -> tuple[list[Clip], dict[str, dict]]:
    """Find each corpus (data dir, env var or kagglehub) and parse it; return clips and per-corpus reports."""
    parsers = _parsers()
    clips: list[Clip] = []
    reports: dict[str, dict] = {}
    for name in corpora:
        root = resolve_corpus_dir(name, data_dir, (slugs or {}).get(name))
        found, report = parsers[name](root)
        if not found:
            raise FileNotFoundError(f"{name}: no clips found under {root}; check --data-dir")
        log.info("%s: %d clips from %s (skipped %s)", name, len(found), root, dict(report.skipped))
        clips.extend(found)
        reports[name] = {"root": str(root), **report.as_dict()}
    return clips, reports


def speaker_folds(speakers: Sequence[str], folds: int) -> list[list[str]]:
    """Sorted speakers cut into ``folds`` contiguous groups (RAVDESS alternates male / female actors, so
    neighbours mix both)."""
    unique = sorted(set(speakers))
    if not 2 <= folds <= len(unique):
        raise ValueError(f"--folds must be between 2 and the number of speakers ({len(unique)}), got {folds}")
    return [list(group) for group in np.array_split(np.array(unique, dtype=object), folds)]
