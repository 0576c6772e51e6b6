"""The file types the tools pick up from a folder, in one place, so `ser.predict DIR`, `fusion.predict DIR` and the
corpus loaders agree on what a recording is (a folder of WhatsApp .opus notes or iPhone .mov clips included).
Decoding goes through libsndfile or FFmpeg, which read every one of them; a file in a video container without a
sound track is then reported on its own, never silently passed over."""
from __future__ import annotations

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".aif", ".aiff")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")


def ffmpeg_words(exc: BaseException) -> str:
    """FFmpeg's own words ("Invalid data found when processing input") from a PyAV error: without "[Errno
    1094995529]" or the file or function it names ("avcodec_send_packet()"), which mean nothing to a user."""
    return str(getattr(exc, "strerror", None) or exc)
