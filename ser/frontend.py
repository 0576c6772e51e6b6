"""Loudness-robust speech front end: level normalisation and a cheap "is this speech?" check.

``normalize_level(y)`` removes DC and scales the active (speech) part of a clip to a fixed RMS
(``LEVEL_TARGET_DBFS``), so a model sees the same input whether the microphone was quiet or loud, or
the file holds int16-scale floats.

``speech_check(y, sr)`` decides whether a clip holds speech before a model is asked for an emotion: a
model trained on emotional speech gives a confident label to anything, a DC offset, mains hum, a test
tone or hiss included. The rule, in order (``reason`` in brackets):

1. peak below ``SILENCE_PEAK`` after DC removal (the ``ser.audio`` threshold) [silence], or a large
   offset with no variation around it [constant (DC)];
2. less than ``MIN_ACTIVE_SECONDS`` of frames within ``ACTIVE_DB`` of the loudest frame [too short];
3. a spectrum that does not change (``spectral_change_db`` below ``MIN_SPECTRAL_CHANGE_DB``), or one
   fixed pitch over a mostly periodic signal: [hum] when that pitch is below the voice's range or at
   50/60/100/120 Hz, [steady tone] when periodic otherwise, [noise] when not periodic;
4. fewer than ``MIN_VOICED_SHARE`` of the active frames voiced (periodic, F0 within ``F0_RANGE_HZ``)
   [noise, or hum when the periodicity is below the voice's range];
5. otherwise [speech].

Everything after step 1 is measured on the DC-free signal divided by its peak, so the verdict does
not depend on the level. Cost: about 5 ms per 3 s clip at 16 kHz (two FFTs per 20 ms frame).
Calibration and false-reject rates on real speech: docs/speech_frontend.md.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

from ser.audio import SILENCE_PEAK, AudioError, CorruptAudioError

# ---- level normalisation
LEVEL_TARGET_DBFS = -23.0    # RMS of the active part: EBU R128's programme level, ~14 dB of headroom for peaks
LEVEL_TARGET_RMS = 10 ** (LEVEL_TARGET_DBFS / 20)
LEVEL_FRAME = 512            # samples per block when measuring the level (32 ms at 16 kHz)
LEVEL_ABSOLUTE_GATE_DB = 60  # blocks this far below the loudest one are background, never speech
LEVEL_RELATIVE_GATE_DB = 10  # then, like ITU-R BS.1770 gating: blocks 10 dB below the mean power drop out
FLAT_RELATIVE = 1e-6         # variation this small next to the DC offset is float rounding (float32: 6e-8)

# ---- speech check
FRAME_SECONDS = 0.060        # analysis frame: 3 periods of the lowest F0 searched
HOP_SECONDS = 0.020
ACTIVE_DB = 30.0             # frames within this of the loudest frame are "active" (as the feature trim)
MIN_ACTIVE_SECONDS = 0.25    # less active signal than this is "too short"
F0_RANGE_HZ = (60.0, 500.0)  # male speech to high-pitched emotional female speech (as ser.features)
HUM_SEARCH_HZ = 40.0         # periodicity is searched down to here, so 50 Hz hum is recognised as periodic
VOICING_THRESHOLD = 0.5      # normalised autocorrelation peak of a voiced frame (Praat uses 0.45)
MIN_VOICED_SHARE = 0.10      # of the active frames
MIN_F0_SPREAD_ST = 0.05      # interquartile range of F0 over periodic frames, semitones
STEADY_PERIODIC_SHARE = 0.5  # a signal periodic in at least this share of frames may be a tone or hum
SHAPE_BANDS = 16             # mel-spaced bands for the spectral change ...
SHAPE_RANGE_HZ = (150.0, 4000.0)  # ... over the range where speech's formants move
SHAPE_QUANTILE = 0.9         # the changing part of a clip counts, however much of it is steady
MIN_SPECTRAL_CHANGE_DB = 3.5  # speech: 5-15 dB; tones, hum, steady noise: 0-2.5 dB; a tone with vibrato up to ~3.2
MAINS_HZ = (50.0, 60.0)


# "other sound" is not this module's: a Whisper model's decoder hears no speech (ser.whisper.no_speech).
REASONS = ("speech", "silence", "constant (DC)", "too short", "noise", "hum", "steady tone", "other sound")


class NoSpeechError(AudioError):
    """Audio that decodes fine but holds no speech; ``reason`` is one of REASONS, the message says more."""

    def __init__(self, message: str, reason: str = "no speech", no_speech_probability: float | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.no_speech_probability = no_speech_probability  # Whisper's, for reason "other sound"


def no_speech_reason(exc: Exception) -> str | None:
    """The ``no_speech`` reason (one of ``REASONS``) of an audio track the voice model could not use: the speech
    check's own for hum, noise or a tone; ``silence`` for digital silence, ``too short`` for a track of a few
    samples (``ser.audio.check_signal`` refuses both before the speech check); None for anything else."""
    from ser.audio import EmptyAudioError, SilentAudioError

    if isinstance(exc, NoSpeechError):
        return exc.reason
    if isinstance(exc, SilentAudioError):
        return "silence"
    if isinstance(exc, EmptyAudioError):
        return "too short"
    return None


@dataclass(frozen=True)
class SpeechCheck:
    """The verdict of ``speech_check`` and the numbers it was based on."""
    is_speech: bool
    reason: str                 # one of REASONS: "speech" or what was found instead
    detail: str                 # the reason in words, with the measurement behind it
    seconds: float              # length of the clip
    active_seconds: float       # frames within ACTIVE_DB of the loudest one
    voiced_share: float         # share of active frames that are periodic with F0 in F0_RANGE_HZ (0..1)
    f0_hz: float                # median F0 of the periodic frames (0 when none)
    f0_spread_st: float         # interquartile range of their F0, semitones
    spectral_change_db: float   # how much the spectral shape moves over time (see _spectral_change)
    dc_offset: float            # mean of the input (its units)
    peak: float                 # peak of the input after DC removal (its units)

    def as_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


# ---------------------------------------------------------------- level
def _finite64(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(y)):
        raise CorruptAudioError("audio contains NaN or infinite samples")
    return y


def _unit_peak(y64: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(signal without DC divided by its peak, DC offset, peak after DC removal); zeros and peak 0 when flat."""
    dc = float(y64.mean()) if y64.size else 0.0
    ac = y64 - dc
    peak = float(np.max(np.abs(ac))) if ac.size else 0.0
    if peak <= FLAT_RELATIVE * abs(dc):  # rounding of the mean, not sound: scaling it up would invent a signal
        return np.zeros_like(ac), dc, 0.0
    # Dividing by the peak first keeps every later square finite, even for samples near 1e300.
    return (ac / peak if peak > 0 else ac), dc, peak


def active_rms(x: np.ndarray, frame: int = LEVEL_FRAME) -> float:
    """RMS of the blocks that carry the signal: gated like ITU-R BS.1770 loudness, but the absolute
    gate is relative to the loudest block, so the result scales exactly with the input."""
    if x.size == 0:
        return 0.0
    n = max(1, x.size // frame)
    blocks = x[: n * frame].reshape(n, -1) if x.size >= frame else x.reshape(1, -1)
    power = np.mean(np.square(blocks), axis=1)
    if not power.max() > 0:
        return 0.0
    gated = power[power >= power.max() * 10 ** (-LEVEL_ABSOLUTE_GATE_DB / 10)]
    gated = gated[gated >= gated.mean() * 10 ** (-LEVEL_RELATIVE_GATE_DB / 10)]
    return float(np.sqrt(gated.mean()))


def normalize_level(y: np.ndarray) -> np.ndarray:
    """``y`` without DC, scaled so its active part has an RMS of ``LEVEL_TARGET_DBFS`` (float32).

    Any finite input level works (1e-6, int16-scale floats, 1e30): the arithmetic is float64 on the
    signal divided by its peak. A flat input (silence or pure DC) comes back as zeros. Peaks may end
    above 1.0 (a clip with a very high crest factor): the features never clip, so nothing is limited.
    """
    x, _, _ = _unit_peak(_finite64(y))
    rms = active_rms(x)
    if rms <= 0:
        return np.zeros(x.shape, np.float32)
    return (x * (LEVEL_TARGET_RMS / rms)).astype(np.float32)


TRIM_FRAME = 2048  # librosa.effects.trim's frame


def trim_silence(y: np.ndarray, top_db: float) -> tuple[np.ndarray, tuple[int, int]]:
    """``librosa.effects.trim``'s rule at every sample: keep from the first to the last sample whose centred
    2048-sample window has a power within ``top_db`` of the loudest window. librosa applies it every 512
    samples, so a few ms more silence before the speech moves its cut by up to 32 ms; here the cut moves with
    the speech, so silence before or after a recording never changes what is kept."""
    # librosa.effects.trim(y, top_db, hop_length=1) finds the same cut, but frames every sample: on a 4 s clip
    # 1.4 s and 512 MB against 1.3 ms and 2 MB for this running sum.
    x = _finite64(y)
    half = TRIM_FRAME // 2
    energy = np.concatenate([[0.0], np.cumsum(np.pad(x * x, half))])
    power = (energy[TRIM_FRAME:] - energy[:-TRIM_FRAME])[: x.size] / TRIM_FRAME
    loud = np.flatnonzero(power > power.max() * 10 ** (-top_db / 10)) if x.size else np.zeros(0, int)
    if loud.size == 0:
        return y[:0], (0, 0)
    start, end = int(loud[0]), int(loud[-1]) + 1
    return y[start:end], (start, end)


# ---------------------------------------------------------------- speech check
def _frames(x: np.ndarray, frame: int, hop: int) -> np.ndarray:
    if x.size < frame:
        x = np.pad(x, (0, frame - x.size))
    n = 1 + (x.size - frame) // hop
    return np.lib.stride_tricks.as_strided(x, (n, frame), (x.strides[0] * hop, x.strides[0]), writeable=False)


@lru_cache(maxsize=8)
def _window(size: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Hann window, its autocorrelation normalised to 1 at lag 0, and the FFT size (no circular wrap)."""
    n_fft = 1 << int(np.ceil(np.log2(2 * size)))
    window = np.hanning(size).astype(np.float32)
    w_ac = np.fft.irfft(np.abs(np.fft.rfft(window, n_fft)) ** 2, n_fft)[:size]
    return window, w_ac / w_ac[0], n_fft


def _periodicity(power: np.ndarray, size: int, sr: int) -> tuple[np.ndarray, np.ndarray]:
    """(peak normalised autocorrelation, F0 in Hz) per frame, searched from F0_RANGE_HZ[1] down to HUM_SEARCH_HZ.

    Boersma's method: the autocorrelation of the Hann-windowed frame divided by that of the window. Of
    the local maxima, the shortest lag within 0.05 of the best one is taken, so a steady tone does not
    hop between its period's multiples (which would look like a moving pitch).
    """
    import scipy.fft

    _, w_ac, n_fft = _window(size)
    lo, hi = int(sr / F0_RANGE_HZ[1]), min(int(np.ceil(sr / HUM_SEARCH_HZ)), size // 2)
    ac = scipy.fft.irfft(power, n_fft)[:, : hi + 2]
    energy = ac[:, :1]
    r = ac[:, lo - 1: hi + 2] / np.where(energy > 0, energy, 1.0) / w_ac[lo - 1: hi + 2]
    inner = r[:, 1:-1]
    is_peak = (inner > r[:, :-2]) & (inner >= r[:, 2:])
    peaks = np.where(is_peak, inner, -np.inf)
    best = peaks.max(axis=1)
    first = np.argmax(peaks >= (best - 0.05)[:, None], axis=1)
    rows = np.arange(len(r))
    # parabolic interpolation of the peak for a sub-sample period
    a, b, c = r[rows, first], r[rows, first + 1], r[rows, first + 2]
    denom = a - 2 * b + c
    shift = np.where(np.abs(denom) > 1e-12, 0.5 * (a - c) / np.where(denom == 0, 1, denom), 0.0)
    lag = lo + first + np.clip(shift, -0.5, 0.5)
    strength = np.where(np.isfinite(best), peaks[rows, first], 0.0)
    return strength, sr / lag


@lru_cache(maxsize=8)
def _band_edges(sr: int, n_fft: int) -> np.ndarray:
    """FFT bin edges of SHAPE_BANDS mel-spaced bands over SHAPE_RANGE_HZ (each at least a few bins wide)."""
    top = min(SHAPE_RANGE_HZ[1], 0.45 * sr)
    mel = np.linspace(*(2595 * np.log10(1 + np.array([SHAPE_RANGE_HZ[0], top]) / 700)), SHAPE_BANDS + 1)
    hz = 700 * (10 ** (mel / 2595) - 1)
    return np.unique(np.round(hz * n_fft / sr).astype(int))


def _spectral_change(power: np.ndarray, sr: int, n_fft: int) -> float:
    """How much the spectral shape moves: per frame, the mean absolute difference (dB) between its band
    levels and the clip's median shape, each frame's mean level removed (so loudness alone is no
    change); the SHAPE_QUANTILE of that over frames. Speech (formants, voiced/unvoiced alternation)
    gives 5-15 dB; a tone, hum or steady noise 0-2.5 dB."""
    edges = _band_edges(sr, n_fft)
    bands = np.add.reduceat(power, edges, axis=1)[:, :-1]  # the last column runs to Nyquist: dropped
    # a floor 60 dB under the loudest band keeps empty bands (float rounding noise) from counting as change
    db = 10 * np.log10(np.maximum(bands, bands.max() * 1e-6 + 1e-30))
    shape = db - db.mean(axis=1, keepdims=True)
    deviation = np.abs(shape - np.median(shape, axis=0)).mean(axis=1)
    return float(np.quantile(deviation, SHAPE_QUANTILE))


def speech_check(y: np.ndarray, sr: int) -> SpeechCheck:
    """Whether ``y`` (mono, any level, sample rate ``sr``) holds speech; see the module notes for the rule."""
    import scipy.fft

    y64 = _finite64(y)
    x, dc, peak = _unit_peak(y64)
    seconds = y64.size / sr

    def verdict(reason: str, detail: str = "", active: float = 0.0, voiced: float = 0.0, f0: float = 0.0,
                spread: float = 0.0, change: float = 0.0) -> SpeechCheck:
        return SpeechCheck(reason == "speech", reason, detail or reason, seconds, active, voiced, f0, spread,
                           change, dc, peak)

    if peak < SILENCE_PEAK:
        if abs(dc) >= SILENCE_PEAK:
            return verdict("constant (DC)", f"constant (DC): an offset of {dc:.3g} with no sound around it")
        return verdict("silence", f"silence (peak {peak:.2g}, below {SILENCE_PEAK})")
    frame, hop = int(round(FRAME_SECONDS * sr)), int(round(HOP_SECONDS * sr))
    # float32 from here: the signal is in [-1, 1], and float32 halves the cost of the framing and FFTs
    frames = _frames(x.astype(np.float32), frame, hop)
    power = np.mean(np.square(frames), axis=1)
    active = power >= power.max() * 10 ** (-ACTIVE_DB / 10)
    active_seconds = min(seconds, (int(active.sum()) - 1) * hop / sr + frame / sr)
    if seconds < MIN_ACTIVE_SECONDS or active_seconds < MIN_ACTIVE_SECONDS:
        return verdict("too short", f"too short ({active_seconds:.2f} s of sound; speech needs at least "
                                    f"{MIN_ACTIVE_SECONDS} s)", active_seconds)
    frames = frames[active]
    window, _, n_fft = _window(frame)
    spectra = scipy.fft.rfft((frames - frames.mean(axis=1, keepdims=True)) * window, n_fft)
    power_spectra = spectra.real ** 2 + spectra.imag ** 2
    strength, f0 = _periodicity(power_spectra, frame, sr)
    change = _spectral_change(power_spectra, sr, n_fft)
    periodic = strength >= VOICING_THRESHOLD
    voiced = periodic & (f0 >= F0_RANGE_HZ[0])
    share = float(voiced.mean())
    median_hz = spread = 0.0
    if periodic.any():
        semitones = 12 * np.log2(f0[periodic] / 100.0)
        median_hz = float(100.0 * 2 ** (np.median(semitones) / 12))
        q75, q25 = np.percentile(semitones, [75, 25])
        spread = float(q75 - q25)
    numbers = dict(active=active_seconds, voiced=share, f0=median_hz, spread=spread, change=change)
    mostly_periodic = periodic.mean() >= STEADY_PERIODIC_SHARE
    low_pitch = median_hz < F0_RANGE_HZ[0]
    steady_spectrum = change < MIN_SPECTRAL_CHANGE_DB
    if steady_spectrum or (mostly_periodic and spread < MIN_F0_SPREAD_ST):
        why = (f"the spectrum does not change ({change:.1f} dB; speech >= {MIN_SPECTRAL_CHANGE_DB})" if steady_spectrum
               else f"the pitch does not move ({spread:.2f} semitones; speech >= {MIN_F0_SPREAD_ST})")
        if not mostly_periodic:
            return verdict("noise", f"noise: {why}", **numbers)
        mains = any(abs(median_hz / (k * m) - 1) < 0.03 for m in MAINS_HZ for k in (1, 2))
        reason = "hum" if low_pitch or mains else "steady tone"
        # a tone is named by its strongest frequency: the F0 search stops at 500 Hz, a test tone need not
        hz = median_hz if reason == "hum" else float(np.argmax(power_spectra.mean(axis=0))) * sr / n_fft
        return verdict(reason, f"{reason} at ~{hz:.0f} Hz: {why}", **numbers)
    if share < MIN_VOICED_SHARE:
        reason = "hum" if mostly_periodic and low_pitch else "noise"
        return verdict(reason, f"{reason}: only {100 * share:.0f} % of the sound is voiced (speech >= "
                               f"{100 * MIN_VOICED_SHARE:.0f} %)", **numbers)
    return verdict("speech", **numbers)


def require_speech(y: np.ndarray, sr: int, source: str = "audio") -> SpeechCheck:
    """``speech_check``, raising NoSpeechError (naming ``source`` and what was found) when it is not speech."""
    check = speech_check(y, sr)
    if not check.is_speech:
        raise NoSpeechError(f"{source}: no speech: {check.detail}", check.reason)
    return check
