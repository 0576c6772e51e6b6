"""Tiny synthetic speech corpora in the real naming conventions, with the real corpora's defects.

Each emotion gets its own pitch contour so a model can learn something in two epochs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from core.labels import EMOTIONS

BASE_HZ = {"neutral": 140, "happy": 260, "sad": 110, "angry": 320, "fear": 380, "disgust": 180, "surprise": 440}
RAVDESS_CODES = {"01": "neutral", "02": "neutral", "03": "happy", "04": "sad", "05": "angry",
                 "06": "fear", "07": "disgust", "08": "surprise"}
CREMA_CODES = {"NEU": "neutral", "HAP": "happy", "SAD": "sad", "ANG": "angry", "FEA": "fear", "DIS": "disgust"}
SAVEE_CODES = {"n": "neutral", "h": "happy", "sa": "sad", "a": "angry", "f": "fear", "d": "disgust", "su": "surprise"}
SYLLABLE_HZ = 4.0  # syllables per second of the synthetic voice


def tone(emotion: str, sr: int = 16_000, seconds: float = 1.0, seed: int = 0) -> np.ndarray:
    """A voice-like signal: harmonics of an emotion-specific pitch (with vibrato and a slow glide), a formant
    that moves between vowels and a hiss between them at a syllable rate, plus a bit of noise.

    Speech-like enough for ``ser.frontend.speech_check`` (voiced, moving pitch, changing spectrum): a
    steady harmonic tone would be refused as "no speech" by every predictor.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    index = EMOTIONS.index(emotion)
    f0 = BASE_HZ[emotion] * (1 + 0.05 * rng.standard_normal())
    vibrato = 1 + 0.03 * np.sin(2 * np.pi * (3 + index) * t)
    glide = 1 + 0.06 * np.sin(2 * np.pi * 1.1 * t + 2 * np.pi * rng.random())  # intonation, about +-1 semitone
    phase = 2 * np.pi * np.cumsum(f0 * vibrato * glide) / sr
    syllable = 2 * np.pi * SYLLABLE_HZ * t
    formant = 1100 + 600 * np.cos(syllable)  # Hz: moves like F2 from one vowel to the next
    y = sum(np.sin(k * phase) * (1 / k + np.exp(-((k * f0 - formant) / 250) ** 2))
            for k in range(1, int(3500 // f0) + 1))
    envelope = np.minimum(1, np.minimum(t, t[-1] - t) * 20) * (0.55 + 0.45 * np.cos(syllable))
    y = y * envelope / np.abs(y).max()
    y = y + 0.2 * np.diff(rng.standard_normal(t.size + 1)) * (0.5 - 0.5 * np.cos(syllable)) ** 4  # consonants
    y = 0.35 * y / np.abs(y).max() * (0.5 + 0.1 * index)
    return (y + 0.005 * rng.standard_normal(t.size)).astype(np.float32)


def piano_melody(seed: int, sr: int = 16_000) -> np.ndarray:
    """Plucked notes with harmonics, a bass and a fifth under each: moves its pitch and spectrum like a voice."""
    rng = np.random.default_rng(seed)
    scale = 220 * 2 ** (np.array([0, 2, 4, 5, 7, 9, 11, 12]) / 12)
    t = np.arange(int(0.25 * sr)) / sr
    envelope = np.exp(-3 * t) * np.minimum(1, t / 0.01)

    def note(f, amp):
        return amp * envelope * sum(np.sin(2 * np.pi * f * k * t) / k ** 1.5 for k in range(1, 8))

    notes = [note(f, 0.3) + note(f / 2, 0.2) + note(f * 1.5, 0.15) for f in rng.choice(scale, 12)]
    return np.concatenate(notes).astype(np.float32)


def write(path: Path, y: np.ndarray, sr: int = 16_000, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), y, sr, **kwargs)
    return path


def make_ravdess(root: Path, actors: int = 6, per_code: int = 1, sr: int = 16_000, ext: str = ".wav") -> Path:
    """``ravdess/Actor_NN/03-01-EE-II-SS-RR-NN.wav`` for each emotion code (calm included)."""
    for actor in range(1, actors + 1):
        for code, emotion in RAVDESS_CODES.items():
            for rep in range(1, per_code + 1):
                name = f"03-01-{code}-01-01-{rep:02d}-{actor:02d}{ext}"
                write(root / "ravdess" / f"Actor_{actor:02d}" / name, tone(emotion, sr, seed=actor * 100 + rep), sr)
    return root / "ravdess"


def make_tess(root: Path, words: tuple[str, ...] = ("bar", "base"), sr: int = 24_414) -> Path:
    """``tess/OAF_angry/OAF_bar_angry.wav`` and ``YAF_pleasant_surprise/YAF_bar_ps.wav`` (24.4 kHz like the real set)."""
    for speaker in ("OAF", "YAF"):
        for emotion in EMOTIONS:
            folder = "pleasant_surprise" if emotion == "surprise" else emotion
            suffix = "ps" if emotion == "surprise" else emotion
            for i, word in enumerate(words):
                write(root / "tess" / f"{speaker}_{folder}" / f"{speaker}_{word}_{suffix}.wav",
                      tone(emotion, sr, seed=i + (7 if speaker == "YAF" else 0)), sr)
    return root / "tess"


def make_crema_d(root: Path, speakers: tuple[str, ...] = ("1001", "1002", "1003")) -> Path:
    for speaker in speakers:
        for code, emotion in CREMA_CODES.items():
            write(root / "crema_d" / f"{speaker}_DFA_{code}_XX.wav", tone(emotion, seed=int(speaker)))
    return root / "crema_d"


def make_savee(root: Path, speakers: tuple[str, ...] = ("DC", "JE", "JK")) -> Path:
    for speaker in speakers:
        for code, emotion in SAVEE_CODES.items():
            write(root / "savee" / f"{speaker}_{code}01.wav", tone(emotion, seed=len(code)))
    return root / "savee"


def add_defects(corpus_dir: Path, prefix: str = "03-01-03-01-02") -> dict[str, Path]:
    """The real corpora's awkward files: corrupt, empty, silent, stereo, AIFF behind .wav, 96 kHz."""
    actor = corpus_dir / "Actor_01"
    files = {
        "corrupt": actor / f"{prefix}-01-01.wav",
        "empty": actor / f"{prefix}-02-01.wav",
        "silent": actor / f"{prefix}-03-01.wav",
        "stereo": actor / f"{prefix}-04-01.wav",
        "aiff_as_wav": actor / f"{prefix}-05-01.wav",
        "hi_rate": actor / f"{prefix}-06-01.wav",
    }
    files["corrupt"].write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage that is not audio")
    files["empty"].write_bytes(b"")
    write(files["silent"], np.zeros(16_000, np.float32))
    happy = tone("happy")
    write(files["stereo"], np.stack([happy, 0.5 * happy], axis=1))
    write(files["aiff_as_wav"], happy, format="AIFF")
    write(files["hi_rate"], tone("happy", sr=96_000), sr=96_000)
    return files
