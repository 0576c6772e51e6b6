"""Small synthetic face corpora in the real on-disk layouts (FER2013 CSV and folders, JAFFE, CK+48).

Faces are drawn cartoons whose mouth / brows / eyes depend on the emotion, so a tiny model can learn
something in a few epochs, and every file layout quirk the loaders handle is present: a malformed CSV
row, a wrong pixel count, an unreadable JPEG, a palette-mode TIFF, a badly named TIFF and CK+ contempt.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from core.labels import EMOTIONS

FER_CODES = {"angry": 0, "disgust": 1, "fear": 2, "happy": 3, "sad": 4, "surprise": 5, "neutral": 6}
JAFFE_CODES = {"neutral": "NE", "happy": "HA", "sad": "SA", "angry": "AN", "fear": "FE", "disgust": "DI",
               "surprise": "SU"}
CKPLUS_FOLDERS = {"happy": "happy", "sad": "sadness", "angry": "anger", "fear": "fear", "disgust": "disgust",
                  "surprise": "surprise"}


def face(emotion: str, size: int = 48, seed: int = 0) -> np.ndarray:
    """A uint8 gray cartoon face filling most of a ``size`` x ``size`` image."""
    rng = np.random.default_rng(seed)
    s = size / 48.0
    img = np.full((size, size), int(rng.integers(40, 90)), np.uint8)
    c = (int(24 * s + rng.integers(-1, 2)), int(25 * s + rng.integers(-1, 2)))
    cv2.ellipse(img, c, (int(17 * s), int(21 * s)), 0, 0, 360, int(rng.integers(170, 220)), -1)
    eye_h = {"surprise": 4, "fear": 4, "angry": 1, "disgust": 1}.get(emotion, 2)
    for dx in (-7, 7):
        cv2.ellipse(img, (c[0] + int(dx * s), c[1] - int(5 * s)), (int(3 * s), max(1, int(eye_h * s))), 0, 0, 360,
                    30, -1)
    brow = {"angry": 3, "disgust": 2, "sad": -3, "fear": -2, "surprise": -1}.get(emotion, 0)
    for dx, sign in ((-7, 1), (7, -1)):
        x0, x1 = c[0] + int((dx - 4) * s), c[0] + int((dx + 4) * s)
        y = c[1] - int(11 * s)
        cv2.line(img, (x0, y - sign * int(brow * s / 2)), (x1, y + sign * int(brow * s / 2)), 20, max(1, int(s)))
    mouth_y = c[1] + int(9 * s)
    if emotion in ("surprise", "fear"):
        cv2.ellipse(img, (c[0], mouth_y), (int((4 if emotion == "surprise" else 6) * s), int(5 * s)), 0, 0, 360, 20, -1)
    elif emotion in ("happy", "sad"):
        start, end = (0, 180) if emotion == "happy" else (180, 360)
        cy = mouth_y - int(3 * s) if emotion == "happy" else mouth_y + int(3 * s)
        cv2.ellipse(img, (c[0], cy), (int(8 * s), int(5 * s)), 0, start, end, 20, max(1, int(2 * s)))
    elif emotion == "disgust":
        cv2.line(img, (c[0] - int(7 * s), mouth_y + int(2 * s)), (c[0] + int(7 * s), mouth_y - int(2 * s)), 20,
                 max(1, int(2 * s)))
    else:  # neutral, angry: straight mouth (angry is told apart by the brows)
        cv2.line(img, (c[0] - int(7 * s), mouth_y), (c[0] + int(7 * s), mouth_y), 20, max(1, int(2 * s)))
    noise = rng.normal(0, 6, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def write_fer2013_csv(path: Path, per_class: int = 4, usage: bool = True, seed: int = 0) -> dict:
    """fer2013.csv with ``per_class`` faces per emotion and usage, plus one malformed row and one row with a
    wrong pixel count. Returns what a correct loader should find."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    usages = ["Training", "Training", "PublicTest", "PrivateTest"] if usage else ["Training"]
    lines = ["emotion,pixels,Usage" if usage else "emotion,pixels"]
    n = 0
    for emotion, code in FER_CODES.items():
        for i in range(per_class):
            pixels = " ".join(map(str, face(emotion, 48, seed + 100 * code + i).ravel()))
            u = usages[i % len(usages)]
            lines.append(f"{code},{pixels},{u}" if usage else f"{code},{pixels}")
            n += 1
    lines.insert(3, "3,1 2 3,Training" if usage else "3,1 2 3")  # wrong pixel count
    lines.insert(5, "3,this,row,has,too,many,fields")  # malformed
    path.write_text("\n".join(lines) + "\n")
    return {"loaded": n, "wrong_pixels": 1, "malformed": 1}


def write_fer2013_folders(root: Path, per_class: int = 3, splits: tuple[str, ...] = ("train", "test"),
                          seed: int = 0) -> dict:
    """``root/train|test/<emotion>/*.jpg`` plus one unreadable JPEG. Returns the expected counts."""
    root = Path(root)
    n = 0
    for split in splits:
        for emotion, code in FER_CODES.items():
            folder = root / split / emotion
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                cv2.imwrite(str(folder / f"{split}_{emotion}_{i}.jpg"), face(emotion, 48, seed + 100 * code + i))
                n += 1
    (root / splits[0] / "happy" / "broken.jpg").write_bytes(b"not a jpeg at all")
    return {"loaded": n, "unreadable": 1}


def write_jaffe(root: Path, subjects: tuple[str, ...] = ("KA", "KL", "KM", "KR", "MK"), size: int = 96,
                takes: int = 1, seed: int = 0) -> dict:
    """JAFFE-style ``KA.AN1.39.tiff`` files (one palette-mode), a README and a badly named TIFF."""
    from PIL import Image

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    index, n = 1, 0
    for s_i, subject in enumerate(subjects):
        for emotion, code in JAFFE_CODES.items():
            for take in range(1, takes + 1):
                img = Image.fromarray(face(emotion, size, seed + 1000 * s_i + index))
                if index == 1:
                    img = img.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE)
                img.save(root / f"{subject}.{code}{take}.{index}.tiff")
                index += 1
                n += 1
    (root / "README_JAFFE.txt").write_text("labels in the file names\n")
    Image.fromarray(face("happy", size)).save(root / "not-a-jaffe-name.tiff")
    return {"loaded": n, "bad_name": 1, "subjects": len(subjects)}


def write_ckplus(root: Path, subjects: tuple[str, ...] = ("S005", "S010", "S011", "S022", "S026", "S032"),
                 frames: int = 2, contempt: int = 3, seed: int = 0) -> dict:
    """``root/<ck folder>/S010_004_00000017.png`` incl. a contempt folder (dropped by the loader)."""
    root = Path(root)
    n = 0
    for emotion, folder in CKPLUS_FOLDERS.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for s_i, subject in enumerate(subjects):
            for f in range(frames):
                name = f"{subject}_{s_i + 1:03d}_{f + 10:08d}.png"
                cv2.imwrite(str(root / folder / name), face(emotion, 48, seed + 37 * s_i + f))
                n += 1
    (root / "contempt").mkdir(exist_ok=True)
    for i in range(contempt):
        cv2.imwrite(str(root / "contempt" / f"{subjects[0]}_009_{i:08d}.png"), face("neutral", 48, i))
    return {"loaded": n, "contempt": contempt, "subjects": len(subjects)}


def sample_grid(per_class: int = 3) -> np.ndarray:
    """One row per emotion, for eyeballing the cartoons."""
    return np.vstack([np.hstack([face(e, 48, i) for i in range(per_class)]) for e in EMOTIONS])
