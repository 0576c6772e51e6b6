"""Synthetic audio-visual clips for the fusion tests: short H.264 + AAC mp4 files written with PyAV.

Each clip shows the astronaut's face (``skimage.data.astronaut()``, so the Haar detector finds it) on a
coloured background, and carries a voice-like sound whose pitch depends on the emotion, so tiny models can learn
something. Layouts:
- MELD: ``{split folder}/dia{D}_utt{U}.mp4`` plus ``{split}_sent_emo.csv`` with the real columns.
- RAVDESS: ``Actor_{AA}/01-01-{EE}-01-01-01-{AA}.mp4``.
Bad clips on request: a clip without an audio track, a truncated (corrupt) clip, and a CSV row whose
clip is missing.
"""
from __future__ import annotations

import csv
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

MELD_EMOTIONS = ("neutral", "joy", "sadness", "anger", "fear", "disgust", "surprise")
MELD_FOLDERS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}
MELD_COLUMNS = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID",
                "Season", "Episode", "StartTime", "EndTime"]
RAVDESS_CODES = ("01", "03", "04", "05", "06", "07", "08")  # neutral happy sad angry fear disgust surprise
FACE_BOX = (20, 130, 200, 320)  # rows 20:200, cols 130:320 of astronaut(): the face with some margin


@lru_cache(maxsize=1)
def _face_rgb() -> np.ndarray:
    from skimage.data import astronaut

    top, left, bottom, right = FACE_BOX
    return astronaut()[top:bottom, left:right]


def render_frames(n: int, size: tuple[int, int], emotion: int, face: bool = True, seed: int = 0) -> np.ndarray:
    """(n, H, W, 3) uint8 RGB: a background tinted by the emotion with a slightly moving face."""
    import cv2

    width, height = size
    rng = np.random.default_rng(seed)
    hue = np.array([40 + 30 * emotion, 200 - 25 * emotion, 90 + 20 * (emotion % 3)], dtype=np.float32)
    out = np.empty((n, height, width, 3), np.uint8)
    face_h = int(min(height, width) * 0.8)
    face_w = int(face_h * _face_rgb().shape[1] / _face_rgb().shape[0])
    face_img = cv2.resize(_face_rgb(), (face_w, face_h), interpolation=cv2.INTER_AREA) if face else None
    for i in range(n):
        frame = np.clip(hue + rng.normal(0, 6, (height, width, 3)), 0, 255).astype(np.uint8)
        if face_img is not None:
            dx = int((width - face_w) / 2 + 3 * np.sin(i / 3.0))
            dy = int((height - face_h) / 2)
            x0, y0 = max(0, dx), max(0, dy)
            x1, y1 = min(width, dx + face_w), min(height, dy + face_h)
            frame[y0:y1, x0:x1] = face_img[y0 - dy:y1 - dy, x0 - dx:x1 - dx]
        out[i] = frame
    return out


def render_audio(seconds: float, sample_rate: int, emotion: int, seed: int = 0) -> np.ndarray:
    """A voice-like sound at an emotion-specific pitch, float32 mono: four harmonics with a slight
    vibrato, syllables at 4 Hz that fade to the noise floor between them, a little noise.

    Speech-like enough for ``ser.frontend.speech_check`` (a steady tone is "no speech" to every voice
    model); the fundamental stays the strongest spectral line.
    """
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    rng = np.random.default_rng(seed)
    pitch = 220.0 * 2 ** (emotion / 4.0)
    phase = 2 * np.pi * np.cumsum(pitch * (1 + 0.01 * np.sin(2 * np.pi * 6 * t))) / sample_rate
    syllables = (0.5 + 0.5 * np.cos(2 * np.pi * 4 * t)) ** 2
    y = sum(np.sin(k * phase) / k for k in range(1, 5))
    y = 0.3 * y / np.abs(y).max() * syllables * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    return (y + 0.01 * rng.normal(size=t.size)).astype(np.float32)


def write_clip(path: str | Path, frames: np.ndarray | None = None, audio: np.ndarray | None = None,
               fps: float = 25.0, sample_rate: int = 16_000, *, seconds: float = 1.0, emotion: int = 0,
               size: tuple[int, int] = (96, 96), face: bool = True, with_audio: bool = True,
               seed: int = 0) -> Path:
    """Write an H.264 (+ AAC) mp4. Frames/audio are rendered from ``emotion`` unless given."""
    from fusion.media import encode_clip

    if frames is None:
        frames = render_frames(max(1, int(round(seconds * fps))), size, emotion, face, seed)
    if audio is None and with_audio:
        audio = render_audio(len(frames) / fps, sample_rate, emotion, seed)
    return encode_clip(path, frames, fps, audio if with_audio else None, sample_rate)


def write_audio_only_mp4(path: str | Path, y: np.ndarray, sample_rate: int = 16_000) -> Path:
    """An mp4 with an AAC track and no video stream (what a phone's voice memo can be)."""
    import av

    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=sample_rate, layout="mono")
        for start in range(0, len(y), 1024):
            frame = av.AudioFrame.from_ndarray(y[start:start + 1024].reshape(1, -1).astype(np.float32),
                                               format="fltp", layout="mono")
            frame.sample_rate, frame.pts = sample_rate, start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return Path(path)


def write_voice_note(path: str | Path, y: np.ndarray, sample_rate: int = 16_000) -> Path:
    """``y`` encoded the way phones send voice notes: Opus in Ogg for ``.opus``, raw AAC (ADTS) for ``.aac``."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    codec, container_format, rate = {".opus": ("libopus", "ogg", 48_000), ".aac": ("aac", "adts", sample_rate)}[
        path.suffix.lower()]
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=rate)
        frame = av.AudioFrame.from_ndarray(np.asarray(y, np.float32).reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = sample_rate
        for chunk in [*resampler.resample(frame), *resampler.resample(None)]:
            container.mux(stream.encode(chunk))
        container.mux(stream.encode(None))
    return path


def corrupt_clip(path: str | Path, keep_fraction: float = 0.3) -> Path:
    """Truncate a clip in place (like an interrupted download)."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: max(16, int(len(data) * keep_fraction))])
    return path


def make_meld(root: str | Path, per_split: dict[str, int] | None = None, seconds: float = 0.8,
              size: tuple[int, int] = (96, 96), fps: float = 25.0, no_audio: int = 0, corrupt: int = 0,
              missing: int = 0, seed: int = 0) -> Path:
    """A MELD-layout corpus; bad clips (no audio, corrupt, missing) go into the train split."""
    root = Path(root)
    per_split = per_split or {"train": 14, "dev": 7, "test": 7}
    for split, count in per_split.items():
        folder = root / MELD_FOLDERS[split]
        rows = []
        for i in range(count):
            emotion = i % len(MELD_EMOTIONS)
            dia, utt = i // 3, i % 3
            rows.append({"Sr No.": i + 1, "Utterance": f"line {i}", "Speaker": f"S{i % 4}",
                         "Emotion": MELD_EMOTIONS[emotion], "Sentiment": "neutral", "Dialogue_ID": dia,
                         "Utterance_ID": utt, "Season": 1, "Episode": 1, "StartTime": "00:00:00,000",
                         "EndTime": "00:00:01,000"})
            clip = folder / f"dia{dia}_utt{utt}.mp4"
            bad = split == "train" and i >= count - (no_audio + corrupt + missing)
            kind = None
            if bad:
                j = i - (count - (no_audio + corrupt + missing))
                kind = "no_audio" if j < no_audio else "corrupt" if j < no_audio + corrupt else "missing"
            if kind == "missing":
                continue
            write_clip(clip, seconds=seconds, emotion=emotion, size=size, fps=fps,
                       with_audio=kind != "no_audio", seed=seed + i)
            if kind == "corrupt":
                corrupt_clip(clip)
        with open(root / f"{split}_sent_emo.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=MELD_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
    return root


def make_ravdess(root: str | Path, actors: Sequence[int] = (1, 2, 3, 4), emotions: Sequence[int] = range(7),
                 seconds: float = 0.8, size: tuple[int, int] = (96, 96), fps: float = 25.0,
                 no_audio: int = 0, corrupt: int = 0, seed: int = 0) -> list[Path]:
    """RAVDESS audio-visual names ``01-01-EE-01-01-01-AA.mp4``; the last actor holds the bad clips."""
    root = Path(root)
    paths = []
    for a in actors:
        for e in emotions:
            name = f"01-01-{RAVDESS_CODES[e]}-01-01-01-{a:02d}.mp4"
            paths.append(write_clip(root / f"Actor_{a:02d}" / name, seconds=seconds, emotion=e, size=size,
                                    fps=fps, seed=seed + 100 * a + e))
    for k in range(no_audio):
        e = k % len(RAVDESS_CODES)
        write_clip(root / f"Actor_{actors[-1]:02d}" / f"01-01-{RAVDESS_CODES[e]}-02-01-01-{actors[-1]:02d}.mp4",
                   seconds=seconds, emotion=e, size=size, fps=fps, with_audio=False, seed=seed + k)
    for k in range(corrupt):
        e = k % len(RAVDESS_CODES)
        clip = write_clip(root / f"Actor_{actors[-1]:02d}" / f"01-01-{RAVDESS_CODES[e]}-02-02-01-{actors[-1]:02d}.mp4",
                          seconds=seconds, emotion=e, size=size, fps=fps, seed=seed + k)
        corrupt_clip(clip)
    return paths


# ---------------------------------------------------------------- tiny saved SER / FER models for late fusion


def make_tiny_ser(model_dir: str | Path, max_seconds: float = 1.0, seed: int = 0) -> Path:
    """An untrained SER run folder in ``ser.train``'s layout, built with ``ser``'s own builders."""
    from dataclasses import asdict

    import keras

    from core.io import save_model, write_json
    from core.labels import EMOTIONS
    from ser.features import FeatureConfig, Normalizer
    from ser.models import build_model

    keras.utils.set_random_seed(seed)
    model_dir = Path(model_dir)
    fcfg = FeatureConfig(max_seconds=max_seconds)
    model = build_model("cnn", (fcfg.max_frames, fcfg.n_features))
    save_model(model, model_dir / "model.keras")
    Normalizer(np.zeros(fcfg.n_features, np.float32), np.ones(fcfg.n_features, np.float32)).save(
        model_dir / "normalization.npz")
    write_json(model_dir / "config.json", {"task": "ser", "class_names": list(EMOTIONS), "model": "cnn",
                                           "input_shape": [fcfg.max_frames, fcfg.n_features],
                                           "features": asdict(fcfg)})
    return model_dir


def make_tiny_fer(model_dir: str | Path, seed: int = 0) -> Path:
    """An untrained FER run folder (48x48 gray input) built with ``fer``'s own builder."""
    import keras

    from core.io import save_model, write_json
    from core.labels import EMOTIONS
    from fer.models import build_cnn

    keras.utils.set_random_seed(seed)
    model_dir = Path(model_dir)
    save_model(build_cnn((48, 48, 1), filters=(8,), dense_units=16), model_dir / "model.keras")
    write_json(model_dir / "config.json", {"task": "fer", "class_names": list(EMOTIONS), "face_margin": 0.2})
    return model_dir
