"""Turn uploaded bytes and stream messages into arrays, with a specific MediaError for each failure.

Everything here runs in worker threads, never on the event loop. Sizes are checked from the
header before decoding, so a tiny file that claims to be a huge image is refused cheaply.
"""
from __future__ import annotations

import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from core.images import MAX_IMAGE_PIXELS  # one pixel limit for the server and fer.predict

SAMPLE_RATE = 16_000
MAX_PROCESS_SIDE = 640  # frames are downscaled to this longer side before face detection


class MediaError(ValueError):
    """Bytes that cannot be used as the media the request claims; the message says why."""


def safe_suffix(filename: str | None) -> str:
    """A short extension for a temp file (decoders sniff content, the suffix only helps FFmpeg guess)."""
    match = re.search(r"\.([A-Za-z0-9]{1,5})$", filename or "")
    return f".{match.group(1).lower()}" if match else ""


@contextmanager
def temp_file(data: bytes, filename: str | None) -> Iterator[Path]:
    """The upload in a private temp file (PyAV and libsndfile read paths), removed afterwards."""
    fd, name = tempfile.mkstemp(prefix="webapp-upload-", suffix=safe_suffix(filename))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield Path(name)
    finally:
        os.remove(name)


def decode_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """BGR uint8 image from JPEG/PNG/WebP/BMP/TIFF/GIF bytes: core.images, the reader (and the pixel limit)
    fer.predict uses too."""
    from core.images import ImageReadError
    from core.images import decode_image as decode

    try:
        return decode(data, max_pixels)
    except ImageReadError as exc:
        raise MediaError(str(exc)) from None


def downscale(image: np.ndarray, max_side: int = MAX_PROCESS_SIDE) -> tuple[np.ndarray, float]:
    """Image with its longer side at most ``max_side``, and the factor to map boxes back."""
    height, width = image.shape[:2]
    scale = max(height, width) / max_side
    if scale <= 1.0:
        return image, 1.0
    size = (max(1, round(width / scale)), max(1, round(height / scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), scale


def scale_faces(faces: list[dict], scale: float) -> list[dict]:
    if scale == 1.0:
        return faces
    return [f | {"box": [int(round(v * scale)) for v in f["box"]]} for f in faces]


def decode_audio(data: bytes, filename: str | None) -> np.ndarray:
    """16 kHz mono float32 from any audio file ser.audio reads; MediaError with the reason otherwise."""
    from ser.audio import AudioError, load_audio

    if not data:
        raise MediaError("empty audio upload")
    with temp_file(data, filename) as path:
        try:
            return load_audio(path, sr=SAMPLE_RATE)
        except AudioError as exc:
            # The reason names our temp file; the client only knows its own file name.
            raise MediaError(str(exc).replace(str(path), filename or "upload")) from None


def pcm_samples(payload: bytes, fmt: str) -> np.ndarray:
    """Little-endian mono PCM bytes -> float32 in [-1, 1]."""
    width = 2 if fmt == "int16" else 4
    if len(payload) == 0 or len(payload) % width:
        raise MediaError(f"{fmt} PCM needs a positive multiple of {width} bytes, got {len(payload)}")
    if fmt == "int16":
        return np.frombuffer(payload, "<i2").astype(np.float32) / 32768.0
    samples = np.frombuffer(payload, "<f4").astype(np.float32)
    if not np.all(np.isfinite(samples)):
        raise MediaError("float32 PCM contains NaN or infinite samples")
    return np.clip(samples, -1.0, 1.0)


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if samples.size else 0.0


def annotated_jpeg(image: np.ndarray, faces: list[dict], max_side: int = 960, quality: int = 85) -> bytes:
    """JPEG of ``image`` with every face boxed and labelled (``fer.faces.draw_faces``, as
    ``python -m fer.predict --annotate`` draws them), at most ``max_side`` px on its longer side."""
    from fer.faces import draw_faces

    small, scale = downscale(image, max_side)
    drawn = draw_faces(small, [f | {"box": [int(round(v / scale)) for v in f["box"]]} for f in faces])
    ok, buf = cv2.imencode(".jpg", drawn, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise MediaError("the annotated image could not be encoded")
    return buf.tobytes()


def video_reason(exc: Exception, path: str | os.PathLike) -> str:
    """fusion.media's reason for an unusable video in the words ``fusion.predict`` prints (``cannot decode (not a
    valid audio/video file: ...)``, ``cannot decode (truncated or damaged: ...)``), without the upload's temp
    file name."""
    return str(exc).replace(f"{path}: ", "").replace(f": '{path}'", "").replace(str(path), "upload")
