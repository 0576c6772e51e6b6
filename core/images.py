"""One image reader for the command lines and the server, so both accept and refuse the same files.

``decode_image(data)`` turns bytes into BGR uint8; ``read_image(path)`` does the same for a file. Both raise
:class:`ImageReadError` (a ValueError) with one line saying why: not an image, damaged or truncated data
(a half-written JPEG is refused, not read as a gray-padded picture with a made-up face), too many pixels,
not a regular file. Both use the same pixel limit, :data:`MAX_IMAGE_PIXELS`.

Pillow alone decodes (one full decode, turned upright by ``ImageOps.exif_transpose``), so nothing writes to
stderr: libpng and OpenCV's logger (which ``cv2.imdecode`` let print) are not called, Pillow's libtiff is
silenced and Pillow's warnings (corrupt EXIF, decompression-bomb sizes) become part of the one-line error, only
around the decode.
"""
from __future__ import annotations

import io
import os
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

# One limit for fer.predict and the server: a 50 MP phone photo (8160x6120) is read, a header claiming more
# than 8192x8192 pixels is refused before anything is decoded.
MAX_IMAGE_PIXELS = 8192 * 8192

_SIGNATURES = [  # for naming the format of data Pillow cannot even open
    (b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"BM", "BMP"),
]


class ImageReadError(ValueError):
    """Bytes or a file that cannot be used as an image; the message says why."""


class _Quiet:
    """While any thread decodes: Pillow's warnings (corrupt EXIF, a large header) are kept for that thread's
    error message instead of printed, and Pillow's libtiff prints no errors or warnings. The first thread in
    sets this up and the last one out restores it (``warnings.catch_warnings`` entered by overlapping threads
    could restore a neighbour's state and leave it changed for good); other threads' warnings still show."""

    def __init__(self):
        self._lock = threading.Lock()
        self._depth = 0
        self._local = threading.local()
        self._saved: warnings.catch_warnings | None = None
        self._show = None
        self._tiff_setters: list | None = None  # TIFFSetErrorHandler, TIFFSetWarningHandler of Pillow's libtiff
        self._tiff_handlers: list = []  # (setter, the handler it replaced)

    def _showwarning(self, message, category, filename, lineno, file=None, line=None):
        caught = getattr(self._local, "caught", None)
        if caught is not None:
            caught.append(str(message))
        else:
            self._show(message, category, filename, lineno, file, line)

    def _silence_libtiff(self):
        if self._tiff_setters is None:
            self._tiff_setters = []
            try:
                import ctypes

                from PIL import _imaging

                library = ctypes.CDLL(_imaging.__file__)  # its symbols resolve to the libtiff it links
                for name in ("TIFFSetErrorHandler", "TIFFSetWarningHandler"):
                    setter = getattr(library, name)
                    setter.restype, setter.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
                    self._tiff_setters.append(setter)
            except (ImportError, OSError, AttributeError):  # Pillow without libtiff, or no dlsym (Windows)
                self._tiff_setters = []
        self._tiff_handlers = [(setter, setter(None)) for setter in self._tiff_setters]

    @contextmanager
    def __call__(self) -> Iterator[list[str]]:
        caught: list[str] = []
        self._local.caught = caught
        with self._lock:
            if self._depth == 0:
                self._saved = warnings.catch_warnings()
                self._saved.__enter__()
                warnings.filterwarnings("always", module=r"PIL(\.|$)")  # each one, for the message
                self._show, warnings.showwarning = warnings.showwarning, self._showwarning
                self._silence_libtiff()
            self._depth += 1
        try:
            yield caught
        finally:
            self._local.caught = None
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    for setter, previous in reversed(self._tiff_handlers):
                        setter(previous)
                    self._tiff_handlers.clear()
                    self._saved.__exit__(None, None, None)  # restores the filters and showwarning
                    self._saved = None


_quiet = _Quiet()


def _format_name(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((name for magic, name in _SIGNATURES if data.startswith(magic)), None)


def _to_bgr(image) -> np.ndarray:
    """BGR uint8 of a loaded Pillow image: Pillow's RGB conversion (alpha dropped, palette and CMYK expanded),
    except 16-bit samples, which become their high byte (Pillow's conversion would clip them to white)."""
    import cv2

    if image.mode.startswith("I;16") or image.mode == "I":
        gray = (np.asarray(image).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8)
        return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(np.asarray(image.convert("RGB")), cv2.COLOR_RGB2BGR)


def _decode(data: bytes) -> np.ndarray:
    """Full Pillow decode, turned upright by its EXIF orientation; raises what Pillow raises for bad data."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        try:
            upright = ImageOps.exif_transpose(image)
        except Exception:  # damaged EXIF: the pixels are still good, as they stand
            upright = image
        return _to_bgr(upright)


# ---- the reader ---------------------------------------------------------------------------------------------

def decode_image(data: bytes, max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    """BGR uint8 image from JPEG/PNG/WebP/BMP/TIFF/GIF bytes; ImageReadError when unusable."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageReadError("empty image")
    with _quiet() as caught:  # Pillow's warnings and libtiff's messages would print to stderr
        try:
            with Image.open(io.BytesIO(data)) as header:  # reads the header only
                width, height = header.size
        except Image.DecompressionBombError as exc:  # a header claiming hundreds of megapixels
            raise ImageReadError(f"image too large ({exc})") from None
        except (OSError, ValueError) as exc:  # UnidentifiedImageError among them
            kind = _format_name(data)
            if kind is None:
                raise ImageReadError("not a readable image (expected JPEG, PNG, WebP, BMP, TIFF or GIF "
                                     "data)") from None
            reasons = [] if isinstance(exc, UnidentifiedImageError) else [str(exc)]
            reason = "; ".join(dict.fromkeys(" ".join(r.split()) for r in caught + reasons if r.strip()))
            raise ImageReadError(f"not a readable image ({kind} data that is damaged or truncated"
                                 f"{': ' + reason if reason else ''})") from None
        if max_pixels and width * height > max_pixels:
            raise ImageReadError(f"image is {width}x{height}; at most {max_pixels} pixels are accepted")
        try:  # a full decode: Pillow refuses truncated data where some decoders pad it with gray
            return _decode(data)
        except Exception:  # Pillow raises many types for corrupt data
            pass
        raise ImageReadError("image header is valid but the pixel data cannot be decoded (truncated or "
                             "corrupt)")


def read_image(path: str | os.PathLike, max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    """BGR uint8 image of a file; ImageReadError naming the file when it is missing, not a regular file
    (a folder, /dev/null) or not a usable image."""
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file")
    if not path.is_file():
        raise ImageReadError(f"{path}: not a regular file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    try:
        return decode_image(data, max_pixels)
    except ImageReadError as exc:
        raise ImageReadError(f"cannot read image {path}: {exc}") from None
