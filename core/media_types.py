"""The file types the tools pick up from a folder, in one place, so `ser.predict DIR`, `fusion.predict DIR` and the
corpus loaders agree on what a recording is (a folder of WhatsApp .opus notes or iPhone .mov clips included).
Decoding goes through libsndfile or FFmpeg, which read every one of them; a file in a video container without a
sound track is then reported on its own, never silently passed over."""
from __future__ import annotations

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".aif", ".aiff")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")
