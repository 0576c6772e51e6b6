"""MFCC + zero-crossing rate + RMS energy frame sequences (or log-mel spectrograms), cached on disk and
extracted in parallel.

Shapes: a clip of ``max_seconds`` at ``sample_rate`` gives ``max_frames = 1 + max_seconds *
sample_rate // hop_length`` frames (3 s at 16 kHz, hop 256 -> 188 frames) of
``n_mfcc + 2`` features (40 MFCC, ZCR, RMS -> 42), ``+ 2`` with pitch (F0 in semitones, absolute and
relative to the clip's median), times 3 with deltas; with
``kind="logmel"``, ``n_mels`` log-mel bands (64) instead.
Leading/trailing silence is trimmed first; longer clips are cut to the first
``max_seconds``, shorter ones zero-padded at the end (after normalisation, so padding
equals the training mean).
"""
from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ser.audio import AudioError, load_audio

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path(os.environ.get("EMOTION_CACHE_DIR", Path.home() / ".cache" / "emotion-toolkit")) / "ser-features"


FEATURE_KINDS = ("mfcc", "logmel")


@dataclass(frozen=True)
class FeatureConfig:
    sample_rate: int = 16_000
    n_mfcc: int = 40
    n_fft: int = 1024        # 64 ms window
    hop_length: int = 256    # 16 ms hop
    max_seconds: float = 3.0
    trim_db: float = 30.0    # librosa.effects.trim threshold; 0 disables trimming
    deltas: bool = False     # append first and second derivatives
    utterance_norm: bool = False  # per-clip mean/variance normalisation: removes speaker and channel offsets
    kind: str = "mfcc"       # mfcc (MFCC + ZCR + RMS) | logmel (log-mel spectrogram, for 2-D CNNs)
    n_mels: int = 64
    pitch: bool = False      # mfcc kind: append F0 (YIN) as absolute and clip-relative semitones
    level_norm: bool = True  # remove DC and scale the active part to ser.frontend.LEVEL_TARGET_DBFS

    @property
    def max_frames(self) -> int:
        return 1 + int(self.max_seconds * self.sample_rate) // self.hop_length

    @property
    def n_features(self) -> int:
        base = self.n_mels if self.kind == "logmel" else self.n_mfcc + 2 + (2 if self.pitch else 0)
        return base * (3 if self.deltas else 1)

    def __post_init__(self) -> None:
        if self.kind not in FEATURE_KINDS:
            raise ValueError(f"unknown feature kind {self.kind!r}; choose one of {FEATURE_KINDS}")
        if self.pitch and self.kind != "mfcc":
            raise ValueError("pitch features go with kind='mfcc' only")

    def key(self) -> str:
        fields = asdict(self)
        if self.kind == "mfcc":  # MFCC caches written before log-mel existed stay valid
            del fields["kind"], fields["n_mels"]
        if not self.pitch:  # nor those written before pitch existed
            del fields["pitch"]
        if self.level_norm:  # the target level is part of what the features are
            from ser.frontend import LEVEL_TARGET_DBFS

            fields["level_target_dbfs"] = LEVEL_TARGET_DBFS
        else:  # nor those written before level normalisation existed
            del fields["level_norm"]
        return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]


def frames_from_waveform(y: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """(n_frames, n_features) float32 for a mono waveform at ``cfg.sample_rate``; not padded."""
    import librosa

    if cfg.level_norm:
        from ser.frontend import normalize_level

        # Before the trim, not after: librosa squares float32 samples, which overflows for absurd levels
        # (1e30) and sees a DC offset as sound. The trim and the level's gates are both relative to the
        # loudest part, so normalising first keeps the same samples and gives the trimmed clip the target
        # level (up to a block at the edges).
        y = normalize_level(y)
    if cfg.trim_db > 0:
        trimmed, _ = librosa.effects.trim(y, top_db=cfg.trim_db)
        y = trimmed if trimmed.size >= cfg.n_fft else y
    y = y[: int(cfg.max_seconds * cfg.sample_rate)]
    if y.size < cfg.n_fft:
        y = np.pad(y, (0, cfg.n_fft - y.size))
    if cfg.kind == "logmel":
        mel = librosa.feature.melspectrogram(y=y, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
                                             n_mels=cfg.n_mels)
        feats = librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=80.0)
    else:
        mfcc = librosa.feature.mfcc(y=y, sr=cfg.sample_rate, n_mfcc=cfg.n_mfcc, n_fft=cfg.n_fft,
                                    hop_length=cfg.hop_length)
        zcr = librosa.feature.zero_crossing_rate(y, frame_length=cfg.n_fft, hop_length=cfg.hop_length)
        rms = librosa.feature.rms(y=y, frame_length=cfg.n_fft, hop_length=cfg.hop_length)
        feats = np.vstack([mfcc, zcr, rms] + (pitch_features(y, rms[0], cfg) if cfg.pitch else []))
    if cfg.deltas:
        width = min(9, feats.shape[1] - (1 - feats.shape[1] % 2))
        if width >= 3:
            feats = np.vstack([feats, librosa.feature.delta(feats, width=width),
                               librosa.feature.delta(feats, order=2, width=width)])
        else:
            feats = np.vstack([feats, np.zeros_like(feats), np.zeros_like(feats)])
    feats = feats.T[: cfg.max_frames]
    if cfg.utterance_norm:
        feats = (feats - feats.mean(axis=0)) / (feats.std(axis=0) + 1e-5)
    return feats.astype(np.float32)


PITCH_RANGE_HZ = (60.0, 500.0)  # covers male speech to high-pitched emotional female speech


def pitch_features(y: np.ndarray, rms: np.ndarray, cfg: FeatureConfig) -> list[np.ndarray]:
    """Two rows per frame: F0 in semitones re 100 Hz, and the same minus the clip's median F0 over its
    louder half of frames. The relative row carries intonation free of the speaker's register, which
    MFCCs blur; YIN (not pYIN) because it costs ~10 ms per 3 s clip instead of seconds."""
    import librosa

    f0 = librosa.yin(y, fmin=PITCH_RANGE_HZ[0], fmax=PITCH_RANGE_HZ[1], sr=cfg.sample_rate,
                     frame_length=cfg.n_fft, hop_length=cfg.hop_length)[: rms.size]
    semitones = 12.0 * np.log2(f0 / 100.0)
    reference = np.median(semitones[rms >= np.median(rms)])  # never empty: the median frame itself qualifies
    return [semitones[None, :], (semitones - reference)[None, :]]


# ---------------------------------------------------------------- augmentation (training split only)
AUGMENTATIONS = ("noise", "pitch", "stretch", "gain")
AUGMENT_GAIN_DB = 20.0  # +- random level change of an augmented copy


def augment_waveform(y: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    """One random mix of additive noise (15-30 dB SNR), pitch shift (+-2 semitones), time stretch (0.85-1.15)
    and a level change (+-20 dB: the level-dependent parts, the added noise floor and configs without
    level normalisation, must not depend on how loud the corpus was recorded)."""
    import librosa

    if rng.random() < 0.5:
        y = librosa.effects.pitch_shift(y, sr=sr, n_steps=float(rng.uniform(-2, 2)))
    if rng.random() < 0.5:
        y = librosa.effects.time_stretch(y, rate=float(rng.uniform(0.85, 1.15)))
    snr_db = rng.uniform(15, 30)
    power = float(np.mean(y ** 2)) + 1e-12
    y = y + rng.normal(0, np.sqrt(power / 10 ** (snr_db / 10)), size=y.shape)
    y = y * 10 ** (rng.uniform(-AUGMENT_GAIN_DB, AUGMENT_GAIN_DB) / 20)
    return y.astype(np.float32)


NOISE_SNR_DB = (10.0, 30.0)  # noise copies (ser.train --noise-copies): the range of the choice CV (docs/whisper.md)


def add_white_noise(y: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """``y`` plus white noise ``snr_db`` below the clip's mean power (silence included), float32."""
    power = float(np.mean(np.square(y, dtype=np.float64))) + 1e-12
    return (y + rng.normal(0.0, np.sqrt(power) * 10 ** (-snr_db / 20), size=y.shape)).astype(np.float32)


def add_noise(y: np.ndarray, rng: np.random.Generator, snr_db: tuple[float, float] = NOISE_SNR_DB) -> np.ndarray:
    """``y`` plus white noise at a random SNR in ``snr_db`` (``add_white_noise``).

    Unlike ``augment_waveform`` the voice itself is left alone: only the recording gets noisier."""
    return add_white_noise(y, rng.uniform(*snr_db), rng)


MUSIC_SNR_DB = (0.0, 15.0)  # music copies (ser.train --music-copies): music up to as loud as the speech


def synthetic_music(n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of a random little piece at unit RMS: chords and a melody of harmonic tones (random timbre, key
    and tempo) over a kick and hi-hat beat. Made here, so training on it needs no music licence; it is not meant to
    sound good, only to put sustained harmonic partials and onsets under speech as background music does."""
    t = np.arange(n) / sr
    beat = 60.0 / rng.uniform(70, 150)
    root = 110.0 * 2 ** (rng.integers(0, 12) / 12)
    scale = np.array([0, 2, 4, 5, 7, 9, 11]) if rng.random() < 0.5 else np.array([0, 2, 3, 5, 7, 8, 10])
    partials = rng.uniform(0.3, 0.9) ** np.arange(int(rng.integers(3, 9)))  # brighter or duller instruments
    out = np.zeros(n)

    def note(start: float, length: float, freq: float, level: float) -> None:
        a, b = int(start * sr), min(n, int((start + length) * sr))
        if b <= a:
            return
        u = t[a:b] - start
        envelope = np.minimum(u / 0.01, 1.0) * np.exp(-u / max(length * rng.uniform(0.3, 1.0), 1e-3))
        out[a:b] += level * envelope * sum(p * np.sin(2 * np.pi * freq * (k + 1) * u) for k, p in enumerate(partials))

    for bar in np.arange(0.0, n / sr, 4 * beat):
        degree = int(rng.integers(0, 7))
        for step in (0, 2, 4):  # a triad held over the bar
            semis = scale[(degree + step) % 7] + 12 * ((degree + step) // 7)
            note(bar, 4 * beat, root * 2 ** (semis / 12), 0.3)
        for k in range(8):  # a melody of eighth notes an octave up
            semis = 12 + scale[int(rng.integers(0, 7))]
            note(bar + k * beat / 2, beat / 2, root * 2 ** (semis / 12), 0.25 * (rng.random() < 0.8))
        for k in range(4):  # kick on every beat, hi-hat between
            a = int((bar + k * beat) * sr)
            u = t[a:min(n, a + int(0.15 * sr))] - t[a] if a < n else t[:0]
            out[a:a + u.size] += 0.8 * np.exp(-u / 0.04) * np.sin(2 * np.pi * (50 + 80 * np.exp(-u / 0.02)) * u)
            h = int((bar + (k + 0.5) * beat) * sr)
            if h < n:
                burst = rng.standard_normal(min(n - h, int(0.03 * sr)))
                out[h:h + burst.size] += 0.2 * np.diff(burst, prepend=0.0) * np.exp(-np.arange(burst.size) / (0.01 * sr))
    return (out / (np.sqrt(np.mean(out ** 2)) + 1e-12)).astype(np.float32)


def mix_under(y: np.ndarray, sound: np.ndarray, snr_db: float) -> np.ndarray:
    """``y`` with ``sound`` (same length) under it, ``snr_db`` below ``y``'s active level (pauses left out,
    ``ser.frontend.active_rms``, on both): background music or talk as a listener hears it against the speech."""
    from ser.frontend import active_rms

    sound = np.asarray(sound, np.float64)
    scale = active_rms(np.asarray(y, np.float64)) * 10 ** (-snr_db / 20) / max(active_rms(sound), 1e-12)
    return (y + scale * sound).astype(np.float32)


def add_music(y: np.ndarray, sr: int, rng: np.random.Generator, snr_db: tuple[float, float] = MUSIC_SNR_DB
              ) -> np.ndarray:
    """``y`` with ``synthetic_music`` under it, a random ``snr_db`` below the speech (``mix_under``); the voice
    itself is left alone."""
    music = synthetic_music(y.size, sr, rng)
    return mix_under(y, music, rng.uniform(*snr_db))


CROP_SECONDS = (0.8, 2.0)  # short copies (ser.train --crop-copies): a short reply, a live window's speech


def speech_stretch(y: np.ndarray, sr: int, seconds: float, rng: np.random.Generator | None = None,
                   top_db: float = 30.0) -> np.ndarray:
    """``seconds`` of ``y``'s speech (the part ``librosa.effects.trim`` keeps at ``top_db``, the features' trim): a
    random stretch with ``rng``, else the central one; the whole of it when it is shorter."""
    import librosa

    start, end = librosa.effects.trim(np.asarray(y, np.float32), top_db=top_db)[1]
    n = int(round(seconds * sr))
    if end - start <= n:
        return np.asarray(y[start:end], np.float32)
    first = int(rng.integers(start, end - n + 1)) if rng is not None else start + (end - start - n) // 2
    return np.asarray(y[first:first + n], np.float32)


PHONE_RATE = 8_000  # a phone call's sample rate: what survives is the band below 4 kHz


def phone_band(y: np.ndarray, sr: int, rate: int = PHONE_RATE) -> np.ndarray:
    """``y`` as heard through a phone call's band: resampled to ``rate`` and back to ``sr``."""
    import librosa

    narrow = librosa.resample(np.asarray(y, np.float32), orig_sr=sr, target_sr=rate)
    return librosa.resample(narrow, orig_sr=rate, target_sr=sr)[: len(y)].astype(np.float32)


# 0: the clip; k >= 1: its k-th augmented copy; "noise<k>": its k-th noise copy; "music<k>": its k-th copy with
# synthetic music under it; "crop<k>": its k-th short copy; "phone": its phone-band copy
Variant = int | str
PHONE_VARIANT = "phone"


def music_variant(k: int) -> str:
    """The ``variant`` of a clip's k-th music copy (k >= 1)."""
    return f"music{k}"


def _is_music(variant: Variant) -> bool:
    return isinstance(variant, str) and variant.startswith("music")


def crop_variant(k: int) -> str:
    """The ``variant`` of a clip's k-th short copy (k >= 1): ``speech_stretch`` of CROP_SECONDS."""
    return f"crop{k}"


def _is_crop(variant: Variant) -> bool:
    return isinstance(variant, str) and variant.startswith("crop")


def noise_variant(k: int) -> str:
    """The ``variant`` of a clip's k-th noise copy (k >= 1)."""
    return f"noise{k}"


# ---------------------------------------------------------------- cached, parallel extraction
@functools.cache
def _music_code() -> str:
    """A changed composer never reads old cached music copies (read on first use, not at every import)."""
    import inspect

    source = "".join(inspect.getsource(f) for f in (synthetic_music, add_music, mix_under))
    return hashlib.sha1(source.encode()).hexdigest()[:8]


def _cache_path(cache_dir: Path, cfg: FeatureConfig, path: str, variant: Variant, seed: int) -> Path:
    stat = os.stat(path)
    ident = f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}|{variant}"
    if variant == PHONE_VARIANT:  # no randomness: the band alone makes it
        ident += f"|rate={PHONE_RATE}"
    elif _is_music(variant):  # the seed, the SNR range and the composer
        ident += f"|seed={seed}|snr={MUSIC_SNR_DB[0]:g}-{MUSIC_SNR_DB[1]:g}|{_music_code()}"
    elif _is_crop(variant):  # the seed and the range of lengths
        ident += f"|seed={seed}|seconds={CROP_SECONDS[0]:g}-{CROP_SECONDS[1]:g}"
    elif isinstance(variant, str):  # a noise copy: the seed and the SNR range make it
        ident += f"|seed={seed}|snr={NOISE_SNR_DB[0]:g}-{NOISE_SNR_DB[1]:g}"
    elif variant:  # an augmented copy depends on the seed and the recipe too (plain features keep their old keys)
        ident += f"|seed={seed}|gain={AUGMENT_GAIN_DB}"
    digest = hashlib.sha1(ident.encode()).hexdigest()
    return cache_dir / cfg.key() / digest[:2] / f"{digest}.npy"


def _load_waveform(path: str, cfg: FeatureConfig, variant: Variant, seed: int) -> np.ndarray:
    y = load_audio(path, cfg.sample_rate)
    if variant == PHONE_VARIANT:
        return phone_band(y, cfg.sample_rate)
    if variant:
        digest = int(hashlib.sha1(f"{path}|{variant}|{seed}".encode()).hexdigest()[:8], 16)
        rng = np.random.default_rng(digest)
        if _is_music(variant):
            return add_music(y, cfg.sample_rate, rng)
        if _is_crop(variant):
            return speech_stretch(y, cfg.sample_rate, rng.uniform(*CROP_SECONDS), rng, cfg.trim_db or 30.0)
        y = add_noise(y, rng) if isinstance(variant, str) else augment_waveform(y, cfg.sample_rate, rng)
    return y


def _save(cached: Path | None, feats: np.ndarray) -> None:
    if cached is None:
        return
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, feats)
    os.replace(tmp, cached)


def extract_file(path: str, cfg: FeatureConfig, cache_dir: Path | None = None, variant: Variant = 0,
                 seed: int = 0) -> np.ndarray:
    """Features of one file (``variant``: an augmented or noise copy, reproducible from ``seed``; 0 the file)."""
    cached = _cache_path(cache_dir, cfg, path, variant, seed) if cache_dir else None
    if cached is not None and cached.exists():
        return np.load(cached)
    # Encoder configs (ser.whisper) bring their own front end; MFCC / log-mel configs use this module's.
    feats = waveform_frames(_load_waveform(path, cfg, variant, seed), cfg)
    _save(cached, feats)
    return feats


def _safe_extract(path: str, cfg: FeatureConfig, cache_dir: Path | None, variant: Variant, seed: int):
    try:
        return extract_file(path, cfg, cache_dir, variant, seed), None
    except (AudioError, FileNotFoundError) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # one bad file must never stop a bulk run
        return None, f"{type(exc).__name__}: {exc}"


# Files per encoder call group: the encoder sorts each group by length into its own batches.
ENCODER_CHUNK = 32


def _extract_encoder_chunks(paths: list[str], cfg, cache_dir: Path | None, variant: Variant, seed: int):
    """``_safe_extract`` of every path, in order, with uncached files of a chunk encoded together (an
    encoder's matrix products get more out of the cores with several clips at once)."""
    for start in range(0, len(paths), ENCODER_CHUNK):
        chunk = paths[start:start + ENCODER_CHUNK]
        results: list[tuple[np.ndarray | None, str | None] | None] = [None] * len(chunk)
        todo: list[tuple[int, Path | None, np.ndarray]] = []
        for i, path in enumerate(chunk):
            try:
                cached = _cache_path(cache_dir, cfg, path, variant, seed) if cache_dir else None
                if cached is not None and cached.exists():
                    results[i] = (np.load(cached), None)
                else:
                    todo.append((i, cached, _load_waveform(path, cfg, variant, seed)))
            except Exception as exc:  # unreadable: counted, the chunk goes on
                results[i] = (None, f"{type(exc).__name__}: {exc}")
        if todo:
            try:
                batch = cfg.frames_batch([y for _, _, y in todo])
            except Exception:  # find the file that fails by doing the chunk's files one by one
                batch = None
            for k, (i, cached, y) in enumerate(todo):
                try:
                    feats = batch[k] if batch is not None else cfg.frames(y)
                    _save(cached, feats)
                    results[i] = (feats, None)
                except Exception as exc:
                    results[i] = (None, f"{type(exc).__name__}: {exc}")
        yield from results


LOG_EVERY_SECONDS = 30  # progress in a log file (off a terminal) during a long extraction


def extract_many(paths: Sequence[str], cfg: FeatureConfig, cache_dir: Path | None = DEFAULT_CACHE_DIR,
                 variant: Variant = 0, seed: int = 0, n_jobs: int = -1,
                 desc: str = "features") -> tuple[list[np.ndarray | None], dict[str, str]]:
    """Extract features for many files in parallel; bad files give ``None`` and an entry in the errors dict."""
    from joblib import Parallel, delayed

    from core.cli import progress

    paths = list(paths)
    if hasattr(cfg, "frames_batch"):  # an encoder: one process, its matrix products already use every core
        results = _extract_encoder_chunks(paths, cfg, cache_dir, variant, seed)
    else:
        # The first file runs here so librosa's numba kernels compile (and reach numba's on-disk cache) once,
        # not in every worker at the same time.
        first = [_safe_extract(paths[0], cfg, cache_dir, variant, seed)] if paths else []
        jobs = (delayed(_safe_extract)(p, cfg, cache_dir, variant, seed) for p in paths[1:])
        results = itertools.chain(first, Parallel(n_jobs=n_jobs, return_as="generator", batch_size=8)(jobs))
    feats: list[np.ndarray | None] = []
    errors: dict[str, str] = {}
    for path, (value, error) in zip(paths, progress(results, len(paths), desc, "clip", log_every=LOG_EVERY_SECONDS)):
        feats.append(value)
        if error:
            log.warning("skipping %s", error)
            errors[path] = error
    return feats, errors


# ---------------------------------------------------------------- padding and normalisation
def pad(feats: Sequence[np.ndarray], max_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Stack to (n, max_frames, ...) with zero padding; also return valid lengths.

    MFCC frames are (frames, n_features) float32; encoder frames (steps, states, dim) keep their float16.
    """
    out = np.zeros((len(feats), max_frames) + feats[0].shape[1:], feats[0].dtype)
    lengths = np.zeros(len(feats), np.int32)
    for i, f in enumerate(feats):
        n = min(len(f), max_frames)
        out[i, :n] = f[:n]
        lengths[i] = n
    return out, lengths


@dataclass
class Normalizer:
    """Per-feature mean / std fitted on the valid (unpadded) frames of the training split only."""
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, lengths: np.ndarray) -> "Normalizer":
        mask = np.arange(x.shape[1])[None, :] < lengths[:, None]
        frames = x[mask]
        return cls(frames.mean(axis=0).astype(np.float32), (frames.std(axis=0) + 1e-6).astype(np.float32))

    def transform(self, x: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        mask = np.arange(x.shape[1])[None, :] < lengths[:, None]
        mask = mask.reshape(mask.shape + (1,) * (x.ndim - 2))
        return np.where(mask, (x - self.mean) / self.std, 0.0).astype(np.float32)

    def save(self, path: str | os.PathLike) -> None:
        from core.io import atomic_write

        atomic_write(path, lambda tmp: np.savez(open(tmp, "wb"), mean=self.mean, std=self.std))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Normalizer":
        with np.load(path) as data:
            return cls(data["mean"], data["std"])


def load_feature_config(fields: dict):
    """The feature config a run folder's ``config.json`` describes: MFCC / log-mel, or an encoder's."""
    if fields.get("kind") == "whisper":
        from ser.whisper.encoder import WhisperFeatureConfig

        return WhisperFeatureConfig(**fields)
    # Runs saved before level normalisation existed were trained without it.
    return FeatureConfig(**{"level_norm": False, **fields})


def waveform_frames(y: np.ndarray, cfg) -> np.ndarray:
    """Model frames of one waveform for any feature config (encoder configs bring their own front end)."""
    return cfg.frames(y) if hasattr(cfg, "frames") else frames_from_waveform(y, cfg)


def waveform_frames_batch(waveforms: Sequence[np.ndarray], cfg) -> list[np.ndarray]:
    """``waveform_frames`` of several waveforms (an encoder runs equal-length ones in one call)."""
    if hasattr(cfg, "frames_batch"):
        return cfg.frames_batch(list(waveforms))
    return [frames_from_waveform(y, cfg) for y in waveforms]
