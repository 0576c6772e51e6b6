"""Clip -> model inputs: full frames, face crops with a found-face mask, and a log-mel spectrogram.

One ``.npz`` per clip in a cache folder keyed by the preprocessing settings:
``frames`` (T, S, S, 3) uint8 RGB, ``faces`` (T, F, F) uint8 gray, ``face_mask`` (T,) uint8,
``mel`` (M, n_mels) float16. Files are written atomically, clips already cached (or already known
to be bad, recorded in ``*.err.json``) are skipped on the next run, and clips are processed in
parallel worker processes. Faces come from ``fer.faces`` (the same detector and crop as the face model).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from core.cli import progress as progress_bar
from core.io import atomic_write, write_json
from fusion.media import Clip, CorruptMediaError, MediaError, NoAudioError, decode_clip

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path("cache") / "fusion"
ENCODER_FIELDS = ("face_encoder", "audio_encoder", "encoder_key", "face_dim", "audio_states", "audio_dim")
LOG_FLOOR = 1e-6


@dataclass(frozen=True)
class PreprocessConfig:
    fps: float = 10.0
    sample_rate: int = 16_000
    image_size: int = 112       # full frame, resized to a square
    face_size: int = 112        # face crop side
    n_mels: int = 64
    n_fft: int = 512
    win_length: int = 400       # 25 ms
    hop_length: int = 160       # 10 ms -> 100 spectrogram frames per second
    max_seconds: float = 10.0   # longest span cached per clip; the input pipeline cuts further
    detector: str = "blazeface"
    face_margin: float = 0.2
    detect_every: int = 2       # run the detector on every n-th frame, reuse the face in between
    detect_side: int = 320      # detect on a copy scaled to this longer side (Haar cost grows with pixels)
    min_face_fraction: float = 0.1  # smallest face searched, as a fraction of the shorter side
    # Pretrained encoders (fusion.encoders): "" keeps pixels and log-mel. Set by resolve_encoders, which also
    # fills their fingerprints (so the cache key changes with the face model) and output sizes.
    face_encoder: str = ""
    audio_encoder: str = ""
    encoder_key: str = ""
    face_dim: int = 0
    audio_states: int = 0
    audio_dim: int = 0

    @property
    def mel_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def pretrained(self) -> bool:
        return bool(self.face_encoder or self.audio_encoder)

    @property
    def audio_rate(self) -> float:
        """Cached audio steps per second: encoder states with pretrained encoders, else spectrogram frames."""
        from fusion.encoders import AUDIO_STEP_RATE

        return AUDIO_STEP_RATE if self.audio_encoder else self.mel_rate

    def key(self) -> str:
        fields = asdict(self)
        for name in ENCODER_FIELDS:  # unset: the key of caches written before encoders existed stays valid
            if not fields[name]:
                fields.pop(name)
        return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]


def log_mel(audio: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """(frames, n_mels) float32 log-mel, standardised per clip and mel band (per-utterance CMVN)."""
    import librosa

    if audio.size < cfg.n_fft:
        audio = np.pad(audio, (0, cfg.n_fft - audio.size))
    power = librosa.feature.melspectrogram(y=audio, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length,
                                           win_length=cfg.win_length, n_mels=cfg.n_mels)
    mel = np.log(power + LOG_FLOOR).T
    # Loudness differs wildly between recordings; per-clip statistics remove the channel, keep the shape.
    return ((mel - mel.mean(axis=0)) / (mel.std(axis=0) + 1e-3)).astype(np.float32)


def face_track(frames: np.ndarray, cfg: PreprocessConfig) -> tuple[np.ndarray, np.ndarray]:
    """Largest face per RGB frame as a gray crop; frames without a face get a blank crop and mask 0.

    Crops come from ``fer.faces.align_face`` (eyes level, FER2013's framing; the box crop for haar), as in
    fer.predict. Between detections the last face (box and landmarks) is reused.
    """
    import cv2

    from fer.faces import align_face

    crops = np.zeros((len(frames), cfg.face_size, cfg.face_size), np.uint8)
    mask = np.zeros(len(frames), np.uint8)
    face = None
    for i, rgb in enumerate(frames):
        bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
        if i % max(1, cfg.detect_every) == 0:
            face = _largest_face(bgr, cfg)
        if face is not None:
            crops[i] = align_face(bgr, face, size=cfg.face_size, margin=cfg.face_margin)
            mask[i] = 1
    return crops, mask


def _largest_face(bgr: np.ndarray, cfg: PreprocessConfig):
    """Detect on a downscaled copy; the largest ``fer.faces.Face`` in ``bgr``'s pixel coordinates, or None."""
    import cv2

    from fer.faces import detect_faces_with_landmarks

    height, width = bgr.shape[:2]
    scale = min(1.0, cfg.detect_side / max(height, width)) if cfg.detect_side else 1.0
    small = cv2.resize(bgr, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA) \
        if scale < 1.0 else bgr
    min_size = max(20, int(cfg.min_face_fraction * min(small.shape[:2])))
    faces = detect_faces_with_landmarks(small, method=cfg.detector, min_size=min_size)
    return faces[0].scaled(1.0 / scale) if faces else None


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    import cv2

    out = np.empty((len(frames), size, size, 3), np.uint8)
    for i, frame in enumerate(frames):
        out[i] = cv2.resize(frame, (size, size), interpolation=cv2.INTER_AREA)
    return out


def resolve_encoders(cfg: PreprocessConfig) -> PreprocessConfig:
    """``cfg`` with its encoders loaded once: ``auto`` resolved, fingerprints and output sizes filled in."""
    from dataclasses import replace

    from fusion.encoders import get_audio_encoder, get_face_encoder, resolve_face_encoder

    if not cfg.pretrained:
        return cfg
    updates: dict[str, Any] = {}
    keys = []
    if cfg.face_encoder:
        name = resolve_face_encoder(cfg.face_encoder)
        face = get_face_encoder(name)
        updates |= {"face_encoder": name, "face_dim": face.dim, "face_size": face.input_size}
        keys.append(face.fingerprint)
    if cfg.audio_encoder:
        audio = get_audio_encoder(cfg.audio_encoder, cfg.max_seconds)
        updates |= {"audio_states": audio.states, "audio_dim": audio.dim}
        keys.append(audio.fingerprint)
    return replace(cfg, encoder_key="+".join(keys), **updates)


def clip_embeddings(clip: Clip, cfg: PreprocessConfig) -> dict[str, np.ndarray]:
    """The cached arrays of the pretrained-encoder model: face embeddings per sampled frame, speech states."""
    from fusion.encoders import get_audio_encoder, get_face_encoder

    out: dict[str, np.ndarray] = {}
    if cfg.face_encoder:
        encoder = get_face_encoder(cfg.face_encoder)
        faces, face_mask = face_track(clip.frames, cfg)
        emb = np.zeros((len(faces), encoder.dim), np.float16)
        found = face_mask.astype(bool)
        if found.any():  # frames without a face are not worth an encoder call: their embedding stays 0
            emb[found] = encoder(faces[found]).astype(np.float16)
        out["face_emb"], out["face_mask"] = emb, face_mask
    if cfg.audio_encoder:
        out["audio_states"] = get_audio_encoder(cfg.audio_encoder, cfg.max_seconds)(clip.audio)
    return out


def clip_features(clip: Clip, cfg: PreprocessConfig) -> dict[str, np.ndarray]:
    """The cached arrays for one decoded clip."""
    if cfg.pretrained:
        return clip_embeddings(clip, cfg)
    faces, face_mask = face_track(clip.frames, cfg)
    return {
        "frames": resize_frames(clip.frames, cfg.image_size),
        "faces": faces,
        "face_mask": face_mask,
        "mel": log_mel(clip.audio, cfg).astype(np.float16),
    }


def preprocess_clip(path: str | os.PathLike, cfg: PreprocessConfig = PreprocessConfig(),
                    max_seconds: float | None = None) -> tuple[Clip, dict[str, np.ndarray]]:
    """Decode and featurise one clip: (the decoded clip, its model arrays); raises ``MediaError`` subclasses /
    ``FileNotFoundError``."""
    clip = decode_media(path, cfg, max_seconds)
    return clip, clip_features(clip, cfg)


def decode_media(path: str | os.PathLike, cfg: PreprocessConfig = PreprocessConfig(),
                 max_seconds: float | None = None) -> Clip:
    """The clip as ``preprocess_clip`` decodes it, before any features (a check can refuse it first)."""
    return decode_clip(path, fps=cfg.fps, sample_rate=cfg.sample_rate, max_seconds=max_seconds or cfg.max_seconds)


def preprocess_file(path: str | os.PathLike, cfg: PreprocessConfig = PreprocessConfig(),
                    max_seconds: float | None = None) -> dict[str, np.ndarray]:
    """Decode and featurise one clip; raises ``MediaError`` subclasses / ``FileNotFoundError``."""
    return preprocess_clip(path, cfg, max_seconds)[1]


def cache_folder(cache_dir: str | os.PathLike, corpus: str, cfg: PreprocessConfig) -> Path:
    """Settings-specific subfolder, so changing e.g. the image size never mixes old and new arrays."""
    return Path(cache_dir) / f"{corpus}-{cfg.key()}"


def cache_name(relpath: str) -> str:
    return relpath.replace("\\", "/").replace("/", "__").rsplit(".", 1)[0] + ".npz"


def _error_path(npz: Path) -> Path:
    return npz.with_suffix(".err.json")


def load_cached(npz: str | os.PathLike) -> dict[str, np.ndarray]:
    with np.load(npz) as data:
        return {k: data[k] for k in data.files}


def _status_of(exc: BaseException) -> str:
    if isinstance(exc, NoAudioError):
        return "no_audio"
    if isinstance(exc, FileNotFoundError):
        return "missing"
    if isinstance(exc, (CorruptMediaError, MediaError)):
        return "corrupt"
    return "error"


def _process_one(args: tuple[str, str, PreprocessConfig]) -> dict[str, Any]:
    """Worker: cache one clip, or record why it cannot be used. Never raises for bad media."""
    src, dst, cfg = args
    npz = Path(dst)
    if npz.exists():
        return {"path": src, "cache": dst, "status": "cached"}
    err = _error_path(npz)
    if err.exists():
        info = json.loads(err.read_text(encoding="utf-8"))
        return {"path": src, "cache": dst, "status": info["status"], "reason": info["reason"], "known": True}
    try:
        arrays = preprocess_file(src, cfg)
    except (MediaError, FileNotFoundError) as exc:
        status = _status_of(exc)
        if status != "missing":  # a missing file may still arrive; do not remember it
            write_json(err, {"status": status, "reason": str(exc)})
        return {"path": src, "cache": dst, "status": status, "reason": str(exc)}
    atomic_write(npz, lambda tmp: np.savez_compressed(tmp, **arrays), suffix=".npz")
    steps = arrays.get("frames", arrays.get("face_emb"))
    audio = arrays.get("mel", arrays.get("audio_states"))
    return {"path": src, "cache": dst, "status": "ok", "frames": int(len(steps)) if steps is not None else 0,
            "mel_frames": int(len(audio)) if audio is not None else 0}


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core already; OpenCV's own threads would oversubscribe
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "3":  # the parent ran core.cli.quiet_tensorflow: stay as quiet
        from core.cli import quiet_tensorflow

        quiet_tensorflow(verbose=False)
    try:  # encoders import TensorFlow in each worker process
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except (ImportError, RuntimeError):
        pass


def preprocess_clips(paths: Sequence[str | os.PathLike], relpaths: Sequence[str], cache_dir: str | os.PathLike,
                     cfg: PreprocessConfig = PreprocessConfig(), workers: int = 1,
                     progress: bool = True) -> list[dict[str, Any]]:
    """Cache every clip (parallel, resumable); one status dict per clip in input order.

    ``progress``: a progress bar on stderr, shown only when stderr is a terminal.

    Status is ``ok`` (computed now), ``cached`` (already there), ``no_audio``, ``corrupt`` or ``missing``;
    bad clips carry a ``reason`` and are logged, never raised.
    """
    folder = Path(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "preprocess.json", asdict(cfg))
    jobs = [(str(p), str(folder / cache_name(r)), cfg) for p, r in zip(paths, relpaths)]
    todo = [j for j in jobs if not Path(j[1]).exists()]
    results: dict[str, dict[str, Any]] = {j[1]: {"path": j[0], "cache": j[1], "status": "cached"}
                                          for j in jobs if Path(j[1]).exists()}
    iterator: Iterable[dict[str, Any]]
    if workers > 1 and len(todo) > 1:
        # spawn, not fork: the parent may already hold TensorFlow's threads.
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"), initializer=_init_worker)
        iterator = pool.map(_process_one, todo, chunksize=max(1, min(16, len(todo) // (4 * workers))))
    else:
        pool, iterator = None, map(_process_one, todo)
    try:
        if progress:
            iterator = progress_bar(iterator, total=len(todo), desc="preprocess", unit="clip", log_every=30)
        for result in iterator:
            results[result["cache"]] = result
            if result["status"] not in ("ok", "cached") and not result.get("known"):
                log.warning("skipping %s: %s", result["path"], result["reason"])
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return [results[j[1]] for j in jobs]


def summarize(statuses: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Counts per status, e.g. ``{"ok": 10, "cached": 90, "no_audio": 2, "corrupt": 1}``."""
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s["status"]] = counts.get(s["status"], 0) + 1
    return counts


def cache_size_bytes(statuses: Sequence[dict[str, Any]]) -> int:
    return sum(Path(s["cache"]).stat().st_size for s in statuses if s["status"] in ("ok", "cached"))
