"""SAVEE: ``DC_a01.wav`` = speaker (DC JE JK KL), emotion letters (a d f h n sa su), number."""
from __future__ import annotations

import re
from pathlib import Path

from core.labels import map_label
from ser.corpora import Clip, ParseReport, audio_files

NAME = re.compile(r"^([A-Z]{2})_(sa|su|a|d|f|h|n)(\d+)$")


def parse(root: Path) -> tuple[list[Clip], ParseReport]:
    report = ParseReport()
    clips = []
    for path in audio_files(root):
        match = NAME.match(path.stem)
        if match is None:
            report.skip("name does not follow SPEAKER_CODENN", str(path))
            continue
        speaker, code, _ = match.groups()
        clips.append(Clip(str(path), map_label("savee", code), f"savee_{speaker}", "savee"))
    report.kept = len(clips)
    return clips, report
