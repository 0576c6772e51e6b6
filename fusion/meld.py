"""MELD (Multimodal EmotionLines Dataset) in its release layout.

``{split}_sent_emo.csv`` (columns ``Utterance, Speaker, Emotion, Dialogue_ID, Utterance_ID, ...``) and one
clip folder per split holding ``dia{Dialogue_ID}_utt{Utterance_ID}.mp4``. The official archive names the
folders ``train_splits/``, ``dev_splits_complete/`` and ``output_repeated_splits_test/``; Kaggle mirrors
nest them a few levels deep, so files are searched below the root when they are not directly in it.
The official train / dev / test split is kept (dev becomes validation).
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from core.labels import EMOTION_INDEX, UnknownLabelError, map_label

log = logging.getLogger(__name__)

CSV_FILES = {"train": "train_sent_emo.csv", "dev": "dev_sent_emo.csv", "test": "test_sent_emo.csv"}
CLIP_FOLDERS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}
SPLIT_NAMES = {"train": "train", "dev": "val", "test": "test"}
REQUIRED_COLUMNS = ("Emotion", "Dialogue_ID", "Utterance_ID")


def _find(root: Path, name: str, want_dir: bool) -> Path | None:
    direct = root / name
    if direct.is_dir() if want_dir else direct.is_file():
        return direct
    found = sorted(p for p in root.rglob(name) if (p.is_dir() if want_dir else p.is_file()))
    return found[0] if found else None


def read_csv(path: Path) -> pd.DataFrame:
    """MELD CSVs are UTF-8, but some redistributions are Windows-1252 (curly quotes in ``Utterance``)."""
    try:
        frame = pd.read_csv(path, encoding="utf-8")
    except UnicodeDecodeError:
        frame = pd.read_csv(path, encoding="cp1252")
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: not a MELD CSV, missing columns {missing}; has {list(frame.columns)}")
    return frame


def load_meld(root: str | Path, folders: dict[str, str] | None = None) -> tuple[pd.DataFrame, dict]:
    """One row per usable utterance clip: path, relpath, emotion, label, split, group, speaker.

    ``folders`` overrides the clip folder per split (``{"train": "my_train_clips", ...}``, relative to
    ``root`` or absolute). Rows whose clip is missing or whose label is unknown are skipped and counted.
    """
    root = Path(root)
    folders = {**CLIP_FOLDERS, **(folders or {})}
    rows, report = [], {"csv_rows": 0, "missing_clip": 0, "unknown_label": 0, "splits_found": []}
    for split, csv_name in CSV_FILES.items():
        csv_path = _find(root, csv_name, want_dir=False)
        if csv_path is None:
            log.warning("MELD: %s not found below %s; split %s skipped", csv_name, root, split)
            continue
        folder = Path(folders[split])
        clip_dir = folder if folder.is_absolute() else _find(root, str(folder), want_dir=True)
        if clip_dir is None or not clip_dir.is_dir():
            log.warning("MELD: clip folder %s for split %s not found below %s", folder, split, root)
            clip_dir = root / folder
        frame = read_csv(csv_path)
        report["splits_found"].append(split)
        report["csv_rows"] += len(frame)
        for rec in frame.itertuples(index=False):
            rec = rec._asdict() if hasattr(rec, "_asdict") else dict(rec)
            try:
                emotion = map_label("meld", str(rec["Emotion"]).strip())
            except UnknownLabelError as exc:
                report["unknown_label"] += 1
                log.warning("MELD %s: %s", split, exc)
                continue
            if emotion is None:
                continue
            dia, utt = int(rec["Dialogue_ID"]), int(rec["Utterance_ID"])
            path = clip_dir / f"dia{dia}_utt{utt}.mp4"
            if not path.is_file():
                report["missing_clip"] += 1
                continue
            rows.append({"path": str(path), "relpath": f"{split}/{path.name}", "emotion": emotion,
                         "label": EMOTION_INDEX[emotion], "split": SPLIT_NAMES[split],
                         "group": f"{split}_dia{dia}", "speaker": str(rec.get("Speaker", ""))})
    if report["missing_clip"]:
        log.warning("MELD: %d CSV rows have no clip file (skipped)", report["missing_clip"])
    columns = ["path", "relpath", "emotion", "label", "split", "group", "speaker"]
    return pd.DataFrame(rows, columns=columns), report
