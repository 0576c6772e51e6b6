"""Load any common audio file as 16 kHz mono float32, with a specific error for each way it can fail."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from core.media_types import (cut_short, cut_short_words, declared_sndfile_seconds, declared_track_seconds,
                              ffmpeg_words, mp3_declares_length)

SAMPLE_RATE = 16_000
SILENCE_PEAK = 1e-4  # peak amplitude below which a clip carries no usable signal
MIN_SAMPLES = 160     # 10 ms: shorter decodes are treated as empty


class AudioError(ValueError):
    """An audio file that cannot be used; the message says why."""


class CorruptAudioError(AudioError):
    """Not decodable as audio (corrupt, truncated or not an audio file)."""


class EmptyAudioError(AudioError):
    """Decodes, but holds (almost) no samples."""


class SilentAudioError(AudioError):
    """Decodes, but is digital silence."""


def _read_soundfile(path: Path, max_seconds: float | None = None) -> tuple[np.ndarray, int, float]:
    import soundfile as sf

    # libsndfile detects the container from the header, so AIFF data behind a .wav name still reads.
    with sf.SoundFile(str(path)) as f:
        seconds = f.frames / f.samplerate
        declared = declared_sndfile_seconds(f.extra_info, f.samplerate, f.frames)
        if cut_short(seconds, declared):
            raise CorruptAudioError(f"{path}: not readable as audio ({cut_short_words(seconds, declared)})")
        frames = int(round(max_seconds * f.samplerate)) if max_seconds else -1
        data = f.read(frames, dtype="float32", always_2d=True)
        # An MP3's length comes from its Xing header (when it has one), so a cut file reads fewer frames than that.
        if f.format == "MP3" and len(data) < (frames if frames > 0 else f.frames) and mp3_declares_length(path):
            if cut_short(len(data) / f.samplerate, seconds):
                raise CorruptAudioError(f"{path}: not readable as audio "
                                        f"({cut_short_words(len(data) / f.samplerate, seconds)})")
        return data.mean(axis=1), f.samplerate, seconds


def _read_pyav(path: Path, max_seconds: float | None = None) -> tuple[np.ndarray, int, float]:
    import av

    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise CorruptAudioError(f"{path}: no audio stream")
        stream = container.streams.audio[0]
        if stream.codec_context is None:  # FFmpeg parsed the header but has no decoder (36-bit PCM, ...)
            raise CorruptAudioError(f"{path}: not readable as audio (no decoder for its audio encoding)")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=stream.rate or SAMPLE_RATE)
        limit = int(round(max_seconds * resampler.rate)) if max_seconds else None
        chunks, count = [], 0
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
                    count += chunks[-1].size
                if limit is not None and count >= limit:
                    break  # a long recording: only its head is wanted
            else:
                for out in resampler.resample(None):
                    chunks.append(out.to_ndarray().reshape(-1))
                declared = declared_track_seconds(container, stream)
                if cut_short(count / resampler.rate, declared):
                    raise CorruptAudioError(f"{path}: not readable as audio "
                                            f"({cut_short_words(count / resampler.rate, declared)})")
        except av.error.FFmpegError as exc:
            if not count:
                raise
            raise CorruptAudioError(f"{path}: not readable as audio (truncated or damaged, after "
                                    f"{count / resampler.rate:.2f} s: {ffmpeg_words(exc)})") from exc
        sr = resampler.rate
        samples = np.concatenate(chunks)[:limit] if chunks else np.zeros(0, np.float32)
        duration = container.duration / av.time_base if container.duration else samples.size / sr
    return samples, sr, duration


def decode(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Decode to mono float32 at the file's own rate: libsndfile first, FFmpeg (PyAV) for the rest."""
    samples, rate, _ = decode_head(path)
    return samples, rate


def decode_head(path: str | os.PathLike, max_seconds: float | None = None) -> tuple[np.ndarray, int, float]:
    """``decode``, stopped after ``max_seconds`` (all when None), plus the whole file's length in seconds: the
    same samples as ``decode`` gives for that stretch, without decoding the rest of a long recording."""
    path = Path(path)
    if path.exists() and not path.is_file():  # a folder, /dev/null, a pipe
        raise CorruptAudioError(f"{path}: not a regular file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise EmptyAudioError(f"{path}: file is empty (0 bytes)")
    try:
        return _read_soundfile(path, max_seconds)
    except AudioError:  # libsndfile read the header and found the file cut short: FFmpeg would read the same
        raise
    except Exception as sf_error:  # libsndfile cannot read mp3/m4a/mp4: try FFmpeg
        try:
            return _read_pyav(path, max_seconds)
        except AudioError:
            raise
        except Exception as av_error:
            raise CorruptAudioError(f"{path}: not readable as audio (not a valid audio/video file: "
                                    f"{ffmpeg_words(av_error)})") from av_error


def check_signal(y: np.ndarray, source: str = "audio") -> np.ndarray:
    """Raise EmptyAudioError / SilentAudioError for unusable signals; return ``y`` otherwise."""
    if y.size == 0:  # a non-empty file that decodes to nothing: cut short, or a container without sound
        raise EmptyAudioError(f"{source}: no audio could be decoded (the file is truncated or damaged, or holds "
                              "no sound)")
    if y.size < MIN_SAMPLES:
        raise EmptyAudioError(f"{source}: only {y.size} samples (at least {MIN_SAMPLES}, 10 ms, are needed)")
    if not np.all(np.isfinite(y)):
        raise CorruptAudioError(f"{source}: contains NaN or infinite samples")
    if float(np.max(np.abs(y))) < SILENCE_PEAK:
        raise SilentAudioError(f"{source}: silent (peak amplitude below {SILENCE_PEAK})")
    return y


def resample(y: np.ndarray, sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    import librosa

    if sr == target_sr:
        return y.astype(np.float32, copy=False)
    return librosa.resample(y, orig_sr=sr, target_sr=target_sr).astype(np.float32)


def load_audio(path: str | os.PathLike, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Any common audio file -> float32 mono at ``sr``; raises AudioError subclasses with the reason."""
    y, file_sr = decode(path)
    check_signal(y, str(path))
    return resample(y, file_sr, sr)
