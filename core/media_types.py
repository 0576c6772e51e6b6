"""The file types the tools pick up from a folder, in one place, so `ser.predict DIR`, `fusion.predict DIR` and the
corpus loaders agree on what a recording is (a folder of WhatsApp .opus notes or iPhone .mov clips included).
Decoding goes through libsndfile or FFmpeg, which read every one of them; a file in a video container without a
sound track is then reported on its own, never silently passed over."""
from __future__ import annotations

from typing import Collection

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".aif", ".aiff")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")


def files_below(root, suffixes: Collection[str]) -> list:
    """Files below ``root`` whose suffix is one of ``suffixes`` (lower case), hidden ones excluded, sorted. Linked
    folders are followed (a corpus assembled from links to actor folders elsewhere; ``Path.rglob`` skips them),
    each real folder once, so a link cycle ends."""
    import os
    from pathlib import Path

    found, seen = [], set()
    for dirpath, dirnames, names in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        found.extend(path for path in (Path(dirpath) / n for n in names if not n.startswith("."))
                     if path.suffix.lower() in suffixes and path.is_file())
    return sorted(found)


def ffmpeg_words(exc: BaseException) -> str:
    """FFmpeg's own words ("Invalid data found when processing input") from a PyAV error: without "[Errno
    1094995529]" or the file or function it names ("avcodec_send_packet()"), which mean nothing to a user."""
    return str(getattr(exc, "strerror", None) or exc)


# A decode that ends this far short of the length the file's header declares is a cut-short file (a broken-off
# download or copy), not a rounding difference such as an encoder's delay or a track a few frames shorter than its
# container. Decoders stop quietly at the end of what is there, so without this a third of a clip is judged as
# if it were the whole.
CUT_SHORT_SECONDS = 0.5
CUT_SHORT_FRACTION = 0.1
# Containers whose header states each track's length (MP4 / MOV / M4A, Matroska / WebM, FLAC's sample count,
# WAV / AIFF data sizes). Elsewhere FFmpeg may estimate it from the bitrate (an MP3 without a Xing header), which
# can be far off on an intact file.
EXACT_DURATION_FORMATS = ("mov", "mp4", "m4a", "matroska", "webm", "flac", "wav", "aiff")


def cut_short(decoded_seconds: float, declared_seconds: float | None) -> bool:
    """Whether a file decoded to ``decoded_seconds`` is truncated, given the length its header declares."""
    if not declared_seconds:
        return False
    return declared_seconds - decoded_seconds > max(CUT_SHORT_SECONDS, CUT_SHORT_FRACTION * declared_seconds)


def cut_short_words(decoded_seconds: float, declared_seconds: float) -> str:
    return f"truncated or damaged: {decoded_seconds:.2f} s of the {declared_seconds:.2f} s its header declares"


def declared_track_seconds(container, stream) -> float | None:
    """The length a PyAV stream's header declares, where the container states it exactly (else None)."""
    if not any(name in EXACT_DURATION_FORMATS for name in str(container.format.name).split(",")):
        return None
    if stream.duration is not None and stream.time_base:
        return float(stream.duration * stream.time_base)
    return None


def mp3_declares_length(path) -> bool:
    """Whether an MP3's first frame holds a Xing / Info / VBRI header: the encoder's count of the file's frames,
    which libsndfile (mpg123) and FFmpeg then report as its length. Without one, both estimate the length from the
    file's size, so a cut-short file looks whole and an intact variable-bitrate one can look cut."""
    with open(path, "rb") as f:
        head = f.read(10)
        start = 0
        if head[:3] == b"ID3" and len(head) == 10:  # an ID3v2 tag first: its size is four 7-bit bytes
            start = 10 + sum((byte & 0x7F) << (7 * (3 - i)) for i, byte in enumerate(head[6:10]))
            start += 10 if head[5] & 0x10 else 0  # a footer
        f.seek(start)
        frame = f.read(4096)
    sync = frame.find(b"\xff")  # padding may sit between the tag and the first frame
    return sync >= 0 and any(tag in frame[sync:sync + 48] for tag in (b"Xing", b"Info", b"VBRI"))


def declared_sndfile_seconds(info: str, samplerate: int, frames: int) -> float | None:
    """The length a libsndfile header declares when it promises more audio data than the file holds: libsndfile
    reads what is there and notes ``data : 131332 (should be 43748)`` (bytes) in its log (``SoundFile.extra_info``).
    None when the header and the file agree, or when the header states no size (a streamed WAV: 0 or 0xFFFFFFFF)."""
    import re

    match = re.search(r"^(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", info, re.MULTILINE)
    if not match or not samplerate:
        return None
    declared, present = int(match.group(1)), int(match.group(2))
    if present <= 0 or declared <= present or declared >= 0xFFFFFFF0:
        return None
    return frames / samplerate * declared / present
