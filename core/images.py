"""One image reader for the command lines and the server, so both accept and refuse the same files.

``decode_image(data)`` turns bytes into BGR uint8; ``read_image(path)`` does the same for a file. Both raise
:class:`ImageReadError` (a ValueError) with one line saying why: not an image, truncated or corrupt pixel data
(a half-written JPEG is refused, not read as a gray-padded picture with a made-up face), too many pixels,
not a regular file.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

MAX_IMAGE_PIXELS = 4096 * 4096


class ImageReadError(ValueError):
    """Bytes or a file that cannot be used as an image; the message says why."""


def decode_image(data: bytes, max_pixels: int | None = MAX_IMAGE_PIXELS) -> np.ndarray:
    """BGR uint8 image from JPEG/PNG/WebP/BMP/TIFF/GIF bytes; ImageReadError when unusable."""
    import cv2
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageReadError("empty image")
    try:
        with Image.open(io.BytesIO(data)) as header:  # reads the header only
            width, height = header.size
    except UnidentifiedImageError:
        raise ImageReadError("not a readable image (expected JPEG, PNG, WebP, BMP or TIFF data)") from None
    except Image.DecompressionBombError as exc:  # a header claiming hundreds of megapixels
        raise ImageReadError(f"image too large ({exc})") from None
    except (OSError, ValueError) as exc:
        raise ImageReadError(f"not a readable image ({exc})") from None
    if max_pixels and width * height > max_pixels:
        raise ImageReadError(f"image is {width}x{height}; at most {max_pixels} pixels are accepted")
    try:  # a full decode: Pillow refuses truncated data where some decoders pad it with gray
        with Image.open(io.BytesIO(data)) as full:
            full.load()
            pixels = np.asarray(full.convert("RGB"))
    except Exception:  # Pillow raises many types for corrupt data
        raise ImageReadError("image header is valid but the pixel data cannot be decoded (truncated or "
                             "corrupt)") from None
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # applies EXIF orientation
    if image is None or image.size == 0:  # formats OpenCV lacks (GIF, some TIFFs)
        image = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR)
    return image


def read_image(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
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
