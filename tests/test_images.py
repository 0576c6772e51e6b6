"""core.images: one reader, one pixel limit and one clean line per bad file for fer.predict and the server.

Every file is generated here. The decoders must print nothing (capfd sees C libraries' writes to fd 2: libpng,
OpenCV's logger, libtiff) and raise no Python warning (Pillow's "Corrupt EXIF data"); the pixels must be what
``cv2.imdecode(IMREAD_COLOR)`` gave before the reader became Pillow-only (but for three colour conversions where
Pillow's own is kept).
"""
from __future__ import annotations

import inspect
import io
import struct
import threading
import warnings
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from core.images import MAX_IMAGE_PIXELS, ImageReadError, decode_image, read_image
from webapp import media


def photo(width: int = 131, height: int = 97, seed: int = 0) -> Image.Image:
    """A smooth picture with a little noise: gradients, so JPEG blocks and rotations are all told apart."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 // (width - 1), y * 255 // (height - 1), (x * y) % 256], -1)
    return Image.fromarray(np.clip(rgb + rng.integers(-12, 12, rgb.shape), 0, 255).astype(np.uint8))


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b""))


def read_both(tmp_path, data: bytes, name: str = "image.bin"):
    """(CLI result, server result): an array each, or the one-line error each gave."""
    path = tmp_path / name
    path.write_bytes(data)
    try:
        cli = read_image(path)
    except ImageReadError as exc:
        prefix = f"cannot read image {path}: "
        assert str(exc).startswith(prefix)
        cli = str(exc)[len(prefix):]
    try:
        server = media.decode_image(data)
    except media.MediaError as exc:
        server = str(exc)
    return cli, server


def assert_refused_alike(tmp_path, data: bytes, *reasons: str) -> str:
    cli, server = read_both(tmp_path, data)
    assert isinstance(cli, str), "the CLI accepted what should be refused"
    assert cli == server
    assert "\n" not in cli and all(reason in cli for reason in reasons), cli
    return cli


@pytest.fixture
def quiet(capfd, recwarn):
    """Fails the test when anything reached stdout/stderr at the file-descriptor level or a warning was raised."""
    yield
    out, err = capfd.readouterr()
    assert out == "" and err == "", f"decoder noise: {out + err!r}"
    assert not [str(w.message) for w in recwarn], [str(w.message) for w in recwarn]


# ---- 1. one pixel limit -------------------------------------------------------------------------------------

def test_one_pixel_limit_for_cli_and_server():
    assert MAX_IMAGE_PIXELS == 8192 * 8192 >= 8160 * 6120  # a 50 MP phone photo
    assert media.MAX_IMAGE_PIXELS is MAX_IMAGE_PIXELS
    defaults = {f: inspect.signature(f).parameters["max_pixels"].default
                for f in (read_image, decode_image, media.decode_image)}
    assert set(defaults.values()) == {MAX_IMAGE_PIXELS}, defaults


def test_24_megapixel_photo_is_read_by_cli_and_server(tmp_path, quiet):
    """The audit's case: 6000x4000 got a face from fer.predict and HTTP 400 from the server."""
    data = encode(Image.new("L", (6000, 4000), 128), "PNG")
    cli, server = read_both(tmp_path, data, "phone.png")
    assert not isinstance(cli, str) and not isinstance(server, str), (cli, server)
    assert cli.shape == server.shape == (4000, 6000, 3) and cli.dtype == np.uint8
    assert (cli[::500, ::500] == 128).all()


@pytest.mark.parametrize("width,height,reason", [
    (9000, 9000, "image is 9000x9000; at most 67108864 pixels are accepted"),
    (10000, 10000, "image is 10000x10000; at most 67108864 pixels are accepted"),  # Pillow warns at this size
    (20000, 20000, "image too large (Image size (400000000 pixels) exceeds limit"),  # a decompression bomb
])
def test_absurd_sizes_are_refused_from_the_header_in_one_line(tmp_path, quiet, width, height, reason):
    assert_refused_alike(tmp_path, png_header(width, height), reason)


# ---- 2. damaged files: one line, no library noise -----------------------------------------------------------

def test_png_without_iend_is_read_silently(tmp_path, quiet):
    """libpng (inside cv2.imdecode) printed 'libpng error: PNG input buffer is incomplete'."""
    data = encode(photo(), "PNG")
    cli, server = read_both(tmp_path, data[:-12])  # the IEND chunk is 12 bytes
    assert np.array_equal(cli, server) and np.array_equal(cli, decode_image(data))


def test_gif_without_trailer_is_read_silently(tmp_path, quiet):
    """OpenCV's GIF decoder logged '[ERROR:0@...] global loadsave.cpp ... Unexpected end of input stream'."""
    data = encode(photo().convert("P", palette=Image.ADAPTIVE), "GIF")
    cli, server = read_both(tmp_path, data[:-1])
    assert np.array_equal(cli, server) and np.array_equal(cli, decode_image(data))


@pytest.mark.parametrize("cut", [30, 50, 100])
def test_truncated_tiff_is_called_damaged_not_another_format(tmp_path, quiet, cut):
    """Pillow warned 'Corrupt EXIF data...' / 'Truncated File Read' on stderr, then the file was refused as
    'expected JPEG, PNG, ...'."""
    message = assert_refused_alike(tmp_path, encode(photo(), "TIFF")[:cut], "TIFF data that is damaged or truncated")
    assert "expected JPEG" not in message
    assert "Corrupt EXIF data" in message or "Truncated File Read" in message  # Pillow's reason, kept


@pytest.mark.parametrize("compression", ["tiff_lzw", "tiff_adobe_deflate"])
def test_corrupt_compressed_tiff_is_refused_without_libtiff_noise(tmp_path, quiet, compression):
    data = bytearray(encode(photo(seed=1), "TIFF", compression=compression))
    assert data[4:8] != b"\x08\0\0\0"  # the strip comes first, from byte 8; the directory last
    data[8:72] = np.random.default_rng(5).integers(0, 255, 64, np.uint8).tobytes()
    assert_refused_alike(tmp_path, bytes(data), "truncated or corrupt")


@pytest.mark.parametrize("fmt,data", [
    ("JPEG", b"\xff\xd8\xff\xe0" + b"\0" * 50),
    ("PNG", b"\x89PNG\r\n\x1a\n garbage"),
    ("WebP", encode(photo(), "WEBP")[:60]),
])
def test_damaged_header_names_its_format(tmp_path, quiet, fmt, data):
    assert_refused_alike(tmp_path, data, f"not a readable image ({fmt} data that is damaged or truncated")


def test_not_an_image_lists_the_formats(tmp_path, quiet):
    assert_refused_alike(tmp_path, b"hello, this is text\n" * 20, "expected JPEG, PNG, WebP, BMP, TIFF or GIF data")


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP", "WEBP"])
def test_truncated_pixel_data_is_refused_in_one_line(tmp_path, quiet, fmt):
    image = photo().convert("P", palette=Image.ADAPTIVE) if fmt == "GIF" else photo()
    data = encode(image, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    cli, server = read_both(tmp_path, data[:len(data) * 2 // 3])
    assert isinstance(cli, str) and cli == server and "\n" not in cli
    assert "truncated" in cli


def test_warnings_state_is_restored_after_concurrent_decodes():
    bad_tiff = encode(photo(), "TIFF")[:50]
    filters, show = list(warnings.filters), warnings.showwarning
    errors: list[str] = []

    def work():
        for _ in range(20):
            try:
                decode_image(bad_tiff)
            except ImageReadError as exc:
                errors.append(str(exc))

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(errors) == 120 and all("Truncated File Read" in e for e in errors)
    assert warnings.filters == filters and warnings.showwarning is show
    with pytest.warns(UserWarning, match="still shown"):  # warnings outside a decode are not swallowed
        warnings.warn("still shown", UserWarning)


# ---- 3. a JPEG cut short stays refused ---------------------------------------------------------------------

JPEG_KINDS = {
    "baseline": {"quality": 90},
    "progressive": {"quality": 90, "progressive": True},
    "optimized": {"quality": 90, "optimize": True},
    "restarts": {"quality": 90, "restart_marker_blocks": 4},
}


@pytest.mark.parametrize("kind", JPEG_KINDS)
def test_jpeg_cut_in_its_scan_data_is_still_refused(tmp_path, quiet, kind):
    """libjpeg would pad the missing blocks with gray (and a face could be found there): refused."""
    data = encode(photo(160, 120), "JPEG", **JPEG_KINDS[kind])
    cuts = [len(data) // 2, len(data) - 200, len(data) - 20, len(data) - 4]
    if kind == "progressive":  # cut exactly where the last scan starts: every scan before it is complete
        cuts.append(data.rfind(b"\xff\xda"))
    if kind == "restarts":  # cut exactly at a restart marker: every interval before it is complete
        cuts += [i for i in range(len(data) // 2, len(data) - 1) if data[i] == 0xFF and 0xD0 <= data[i + 1] <= 0xD7][:3]
    for cut in cuts:
        assert_refused_alike(tmp_path, data[:cut], "truncated or corrupt")


# ---- the same pixels as cv2.imdecode(IMREAD_COLOR), now from one Pillow decode ------------------------------

def variants() -> dict[str, bytes]:
    base = photo()
    alpha = Image.fromarray((np.add.outer(np.arange(97), np.arange(131)) % 256).astype(np.uint8))
    rgba = base.copy()
    rgba.putalpha(alpha)
    rgb = np.asarray(base)
    gray16 = np.asarray(base.convert("L")).astype(np.uint16) * 257 + 99
    out = {
        "jpeg": encode(base, "JPEG", quality=90),
        "jpeg_444_progressive": encode(base, "JPEG", quality=85, subsampling=0, progressive=True),
        "jpeg_gray": encode(base.convert("L"), "JPEG"),
        "jpeg_cmyk": encode(base.convert("CMYK"), "JPEG"),
        "png_rgba": encode(rgba, "PNG"),
        "png_gray": encode(base.convert("L"), "PNG"),
        "png_gray16": encode(Image.fromarray(gray16), "PNG"),
        "png_rgb16": cv2.imencode(".png", rgb[..., ::-1].astype(np.uint16) * 257 + 99)[1].tobytes(),
        "png_palette_trns": encode(base.convert("P", palette=Image.ADAPTIVE), "PNG", transparency=3),
        "gif_palette": encode(base.convert("P", palette=Image.ADAPTIVE), "GIF"),
        "gif_transparent": encode(base.convert("P", palette=Image.ADAPTIVE), "GIF", transparency=5, background=7),
        "webp_lossy": encode(base, "WEBP", quality=80),
        "webp_lossless_alpha": encode(rgba, "WEBP", lossless=True),
        "bmp": encode(base, "BMP"),
        "bmp_palette": encode(base.convert("P", palette=Image.ADAPTIVE), "BMP"),
        "tiff_lzw": encode(base, "TIFF", compression="tiff_lzw"),
        "tiff_rgba": encode(rgba, "TIFF"),
        "tiff_gray16": encode(Image.fromarray(gray16), "TIFF"),
    }
    for orientation in range(2, 9):
        out[f"jpeg_exif{orientation}"] = encode(base, "JPEG", quality=90, exif=exif(orientation))
    out["png_exif6"] = encode(base, "PNG", exif=exif(6))
    out["webp_exif8"] = encode(base, "WEBP", quality=90, exif=exif(8))
    return out


def exif(orientation: int) -> bytes:
    tags = Image.Exif()
    tags[0x0112] = orientation
    return tags.tobytes()


VARIANTS = variants()


# Pillow's conversion where OpenCV's differs: CMYK (its own formula), a GIF's transparent pixels (OpenCV: the
# background colour), an RGBA TIFF (OpenCV: premultiplied). Both are fair readings; one reader decides.
PILLOW_OWN = {"jpeg_cmyk", "gif_transparent", "tiff_rgba"}


@pytest.mark.parametrize("name", VARIANTS)
def test_pixels_match_opencv(quiet, name):
    data = VARIANTS[name]
    expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    got = decode_image(data)
    assert got.dtype == np.uint8 and got.flags["C_CONTIGUOUS"]
    assert got.shape == expected.shape
    assert np.array_equal(got, expected) or name in PILLOW_OWN
    if "exif" in name and name[-1] in "5678":
        assert got.shape[:2] == (131, 97)  # turned upright


def test_opencv_does_not_decode(monkeypatch):
    """cv2.imdecode (the source of the noise, and a second full decode) is not called any more."""
    def refuse(*args, **kwargs):
        raise AssertionError("cv2.imdecode called")

    monkeypatch.setattr(cv2, "imdecode", refuse)
    assert decode_image(VARIANTS["jpeg_exif6"]).shape == (131, 97, 3)
