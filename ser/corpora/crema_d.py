"""CREMA-D: ``1001_DFA_ANG_XX.wav`` = speaker, sentence, emotion (ANG DIS FEA HAP NEU SAD), level."""
from __future__ import annotations

import re
from pathlib import Path

from core.labels import CORPUS_LABELS, map_label
from ser.corpora import Clip, ParseReport, audio_files

NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{1,2}|X{2})$")


def parse(root: Path) -> tuple[list[Clip], ParseReport]:
    report = ParseReport()
    clips = []
    for path in audio_files(root):
        match = NAME.match(path.stem)
        if match is None:
            report.skip("name does not follow SPEAKER_SENTENCE_EMOTION_LEVEL", str(path))
            continue
        speaker, _, code, _ = match.groups()
        if code not in CORPUS_LABELS["crema_d"]:
            report.skip(f"unknown emotion code {code}", str(path))
            continue
        clips.append(Clip(str(path), map_label("crema_d", code), f"crema_d_{speaker}", "crema_d"))
    report.kept = len(clips)
    return clips, report
