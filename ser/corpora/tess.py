"""TESS: ``OAF_angry/OAF_bar_angry.wav``; two speakers (OAF older, YAF younger female).

The label is the file-name suffix (``ps`` = pleasant surprise), else the folder name.
The speaker comes from the folder (``OAF_*`` / ``YAF_*``), else the file prefix; the
original archive has one ``OA_bite_neutral`` typo, which still belongs to OAF.
"""
from __future__ import annotations

import re
from pathlib import Path

from core.labels import CORPUS_LABELS, map_label
from ser.corpora import Clip, ParseReport, audio_files, dedupe_by_name

SPEAKER = re.compile(r"^(OAF|YAF|OA|YA)_", re.IGNORECASE)
TABLE = CORPUS_LABELS["tess"]


def _label(path: Path) -> str | None:
    stem = path.stem.lower()
    for raw in sorted(TABLE, key=len, reverse=True):  # longest first: "pleasant_surprise" before "ps"
        if stem.endswith("_" + raw):
            return map_label("tess", raw)
    folder = SPEAKER.sub("", path.parent.name).lower()
    return map_label("tess", folder) if folder in TABLE else None


def _speaker(path: Path) -> str | None:
    for text in (path.parent.name, path.name):
        match = SPEAKER.match(text)
        if match:
            return match.group(1).upper()[0] + "AF"
    return None


def parse(root: Path) -> tuple[list[Clip], ParseReport]:
    report = ParseReport()
    clips = []
    for path in dedupe_by_name(audio_files(root)):
        label, speaker = _label(path), _speaker(path)
        if label is None or speaker is None:
            report.skip("no TESS speaker or emotion in the name", str(path))
            continue
        clips.append(Clip(str(path), label, f"tess_{speaker}", "tess"))
    report.kept = len(clips)
    return clips, report
