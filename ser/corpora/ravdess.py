"""RAVDESS: ``Actor_NN/MM-VV-EE-II-SS-RR-AA.wav``.

Fields: modality, vocal channel, emotion (01 neutral, 02 calm, 03 happy, 04 sad, 05 angry,
06 fearful, 07 disgust, 08 surprised), intensity, statement, repetition, actor (odd male,
even female). Calm is mapped to neutral.
"""
from __future__ import annotations

import re
from pathlib import Path

from core.labels import map_label
from ser.corpora import Clip, ParseReport, audio_files, dedupe_by_name

NAME = re.compile(r"^(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})$")


def parse_name(stem: str) -> tuple[str, str] | None:
    """(raw emotion code, actor) from a RAVDESS file stem, or None if it does not follow the convention."""
    match = NAME.match(stem)
    return (match.group(3), match.group(7)) if match else None


def parse(root: Path) -> tuple[list[Clip], ParseReport]:
    report = ParseReport()
    clips = []
    for path in dedupe_by_name(audio_files(root)):
        fields = parse_name(path.stem)
        if fields is None:
            report.skip("name does not follow MM-VV-EE-II-SS-RR-AA", str(path))
            continue
        code, actor = fields
        label = map_label("ravdess", code) if code in ("01", "02", "03", "04", "05", "06", "07", "08") else None
        if label is None:
            report.skip(f"unknown emotion code {code}", str(path))
            continue
        clips.append(Clip(str(path), label, f"ravdess_{actor}", "ravdess"))
    report.kept = len(clips)
    return clips, report
