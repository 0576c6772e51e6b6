"""RAVDESS audio-visual clips: ``Actor_AA/MM-VV-EE-II-SS-RR-AA.mp4``.

MM is the modality (01 full audio-video, 02 video only, 03 audio only), VV the vocal channel
(01 speech, 02 song), EE the emotion (01 neutral, 02 calm, 03 happy, 04 sad, 05 angry, 06 fearful,
07 disgust, 08 surprised; calm maps to neutral), AA the actor. Video-only clips (MM=02) have no
audio track and are skipped and counted. Splits are made later by actor (speaker-independent).
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from core.labels import EMOTION_INDEX, UnknownLabelError, map_label
from core.media_types import VIDEO_EXTENSIONS, files_below

NAME = re.compile(r"^(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})$")


def parse_name(stem: str) -> dict[str, str] | None:
    match = NAME.match(stem)
    if not match:
        return None
    keys = ("modality", "vocal_channel", "emotion", "intensity", "statement", "repetition", "actor")
    return dict(zip(keys, match.groups()))


def load_ravdess_av(root: str | Path, include_song: bool = True) -> tuple[pd.DataFrame, dict]:
    """One row per full audio-video clip: path, relpath, emotion, label, split ('' = assign later), group."""
    root = Path(root)
    report = {"files": 0, "bad_name": 0, "video_only": 0, "audio_only": 0, "song_skipped": 0, "unknown_label": 0}
    rows = []
    for path in files_below(root, VIDEO_EXTENSIONS):  # hidden files (macOS "._" resource forks) left out
        report["files"] += 1
        fields = parse_name(path.stem)
        if fields is None:
            report["bad_name"] += 1
            continue
        if fields["modality"] == "02":
            report["video_only"] += 1
            continue
        if fields["modality"] == "03":
            report["audio_only"] += 1
            continue
        if fields["vocal_channel"] == "02" and not include_song:
            report["song_skipped"] += 1
            continue
        try:
            emotion = map_label("ravdess", fields["emotion"])
        except UnknownLabelError:
            report["unknown_label"] += 1
            continue
        rows.append({"path": str(path), "relpath": path.relative_to(root).as_posix(), "emotion": emotion,
                     "label": EMOTION_INDEX[emotion], "split": "", "group": f"actor_{fields['actor']}",
                     "speaker": f"actor_{fields['actor']}"})
    columns = ["path", "relpath", "emotion", "label", "split", "group", "speaker"]
    return pd.DataFrame(rows, columns=columns), report
