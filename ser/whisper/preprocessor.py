"""Whisper's front end: 80-band log-mel of 16 kHz audio, 25 ms window (n_fft 400), 10 ms hop (160).

Same recipe as openai/whisper ``log_mel_spectrogram``: centred STFT with reflect padding and a periodic
Hann window, power spectrum without the last frame, Slaney mel filters (librosa's, which whisper's
``mel_filters.npz`` was made from), log10 floored at 1e-10, dynamic range cut at 8 (80 dB) below the
clip's maximum, then ``(x + 4) / 4``.

Whisper itself always pads to 30 s; here a clip is encoded at its own length (3 s costs a tenth of
30 s). docs/whisper.md gives the measured effect on the hidden states.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

SAMPLE_RATE = 16_000
N_FFT = 400
HOP_LENGTH = 160


@lru_cache(maxsize=4)
def mel_filters(n_mels: int = 80) -> np.ndarray:
    import librosa

    return librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=n_mels).astype(np.float32)


def log_mel(y: np.ndarray, n_mels: int = 80, pad_to_seconds: float = 0.0) -> np.ndarray:
    """(frames, n_mels) float32 for a mono float waveform at 16 kHz; ``len(y) // 160`` frames.

    ``pad_to_seconds`` > 0 zero-pads the waveform first, as Whisper does with 30.
    """
    import librosa

    y = np.asarray(y, np.float32)
    if pad_to_seconds > 0:
        y = np.pad(y, (0, max(0, int(pad_to_seconds * SAMPLE_RATE) - y.size)))
    spec = librosa.stft(y, n_fft=N_FFT, hop_length=HOP_LENGTH, window="hann", center=True, pad_mode="reflect")
    power = np.abs(spec[:, :-1]) ** 2
    mel = np.log10(np.maximum(mel_filters(n_mels) @ power, 1e-10))
    mel = np.maximum(mel, mel.max() - 8.0)
    return ((mel + 4.0) / 4.0).T.astype(np.float32)
