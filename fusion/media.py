"""Decode a video clip into frames at a fixed rate and its audio track as 16 kHz mono, in one pass.

PyAV (FFmpeg) demuxes both streams together so a clip is read from disk once. Frames are picked
at ``k / fps`` seconds (the first decoded frame at or after each target time, so a 29.97 fps
source gives exactly 10 frames per second at ``fps=10``) and scaled so the longer side is at most
``max_side`` pixels, which is plenty for face detection and keeps 1080p clips cheap.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.media_types import cut_short, cut_short_words, declared_track_seconds, ffmpeg_words

FPS = 10.0
SAMPLE_RATE = 16_000
MAX_SIDE = 480          # decoded frames are downscaled to this longer side (faces stay detectable)
MIN_AUDIO_SAMPLES = 160  # 10 ms: a shorter track counts as no audio
# Seconds of a clip analysed by prediction, from its start; the server's --max-video-seconds default is the same,
# so the command line and an upload hear and see the same span. A longer clip is reported as truncated.
MAX_CLIP_SECONDS = 120.0
# Frames looked at per clip by prediction (5 per second, fusion.late.LATE_FPS, up to 19 s; spread evenly over a longer
# clip); the server's --video-frames default is the same. Bounds the cost of a long upload.
MAX_CLIP_FRAMES = 96


class MediaError(ValueError):
    """A clip that cannot be used; the message says why."""


class CorruptMediaError(MediaError):
    """Not decodable (truncated, corrupt, or not a video file)."""


class StillImageError(MediaError):
    """A photo: FFmpeg reads one as a silent one-frame video, which would be judged as a 0.2 s clip."""


PHOTO = "a photo, not a video or sound file"


def _is_image_format(container) -> bool:
    """FFmpeg's still-image demuxers: ``image2`` (chosen by the file name) and the ``*_pipe`` ones (by content)."""
    return any(name == "image2" or name.endswith("_pipe") for name in str(container.format.name).split(","))


class NoAudioError(MediaError):
    """The clip has no audio track, or an empty one."""


class NoVideoError(MediaError):
    """The clip has no video track, or no decodable frame."""


@dataclass
class Clip:
    """A decoded clip: RGB frames sampled at ``fps`` and mono audio at ``sample_rate``."""

    frames: np.ndarray   # (T, H, W, 3) uint8 RGB
    audio: np.ndarray    # (N,) float32 in [-1, 1]; empty when the clip has no audio and audio was optional
    fps: float
    sample_rate: int
    duration: float = 0.0  # the whole file's length as its container says (0: it does not say)
    max_seconds: float | None = None  # the cap it was read with (None: the whole file)

    @property
    def seconds(self) -> float:
        """The part decoded: the frames' span (each stands for 1 / fps seconds) or the audio, whichever is longer,
        never past the file's end or the cap: the last frame's share is cut there (17 frames at 5 fps of a 3.3 s
        clip are 3.3 s, not 3.4)."""
        decoded = max(len(self.frames) / self.fps, len(self.audio) / self.sample_rate)
        return min([decoded, *(end for end in (self.duration, self.max_seconds) if end)])

    def span(self, max_seconds: float | None) -> dict[str, float | bool]:
        """``duration_seconds`` (the whole file; the part decoded when the container does not say) and
        ``truncated``: whether ``max_seconds`` cut the clip, so a long recording is never judged on its start
        without saying so."""
        duration = self.duration or self.seconds
        return {"duration_seconds": round(duration, 3),
                "truncated": bool(max_seconds and duration > max_seconds + 0.05)}


def _scaled_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    if not max_side or max(width, height) <= max_side:
        return width, height
    scale = max_side / max(width, height)
    # Even sizes keep FFmpeg's swscale on its fast paths.
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


def _frame_to_rgb(frame, size: tuple[int, int]) -> np.ndarray:
    rgb = frame.to_ndarray(width=size[0], height=size[1], format="rgb24")
    rotation = int(getattr(frame, "rotation", 0) or 0) % 360
    # Phone videos store portrait clips as landscape plus a rotation tag.
    return np.ascontiguousarray(np.rot90(rgb, k=rotation // 90)) if rotation else rgb


def decode_clip(path: str | os.PathLike, fps: float = FPS, sample_rate: int = SAMPLE_RATE,
                max_seconds: float | None = None, max_side: int | None = MAX_SIDE,
                require_audio: bool = True, with_video: bool = True, max_frames: int | None = None) -> Clip:
    """Frames at ``fps`` and the audio track resampled to ``sample_rate`` mono float32.

    ``max_frames`` bounds the frames of a long clip: where ``fps`` would give more over the part read, the rate
    is lowered so that they spread evenly over it (``Clip.fps`` is the rate used).

    Raises ``FileNotFoundError``, ``CorruptMediaError``, ``NoVideoError`` or (with ``require_audio``)
    ``NoAudioError``; each message names the file and the reason.
    """
    import av

    path = Path(path)
    if path.exists() and not path.is_file():  # a folder, /dev/null, a pipe: worded as ser.audio words it
        raise CorruptMediaError(f"{path}: not a regular file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise CorruptMediaError(f"{path}: file is empty (0 bytes)")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    limit = float(max_seconds) if max_seconds else float("inf")
    frames: list[np.ndarray] = []
    chunks: list[np.ndarray] = []
    opened = False  # FFmpeg read the header: a later failure means the file breaks off or is damaged
    try:
        with av.open(str(path)) as container:
            opened = True
            if _is_image_format(container):  # by content: a JPEG named .mp4 too; a PDF named .jpg decodes nothing
                words = "no picture decodes"
                try:
                    picture = next(container.decode(video=0), None)
                except av.error.FFmpegError as exc:
                    picture, words = None, ffmpeg_words(exc)
                if picture is None:
                    raise CorruptMediaError(f"{path}: cannot decode (not a valid audio/video file: {words})")
                raise StillImageError(f"{path}: {PHOTO}")
            video = container.streams.video[0] if with_video and container.streams.video else None
            audio = container.streams.audio[0] if container.streams.audio else None
            if with_video and video is None:
                raise NoVideoError(f"{path}: no video stream")
            total = float(container.duration / av.time_base) if container.duration else 0.0
            span = min(total or limit, limit)
            if video is not None and max_frames and 0 < span < float("inf") and span * fps > max_frames:
                fps = max_frames / span
            if audio is None and require_audio:
                raise NoAudioError(f"{path}: no audio track")
            streams = [s for s in (video, audio) if s is not None]
            if not streams:
                raise NoAudioError(f"{path}: no audio track")
            if video is not None:
                video.thread_type = "AUTO"
                size = _scaled_size(video.codec_context.width, video.codec_context.height, max_side)
            resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate) if audio else None
            next_index, audio_samples = 0, 0
            audio_limit = limit * sample_rate
            for packet in container.demux(*streams):
                video_done = (video is None or next_index / fps >= limit
                              or bool(max_frames and next_index >= max_frames))
                if video_done and (audio is None or audio_samples >= audio_limit):
                    break  # both tracks reached the cap: skip demuxing the rest of a long clip
                if packet.stream is video:
                    if video_done:
                        continue
                    for frame in packet.decode():
                        if frame.time is None:
                            continue
                        # Emit this frame for every target time it reaches (duplicates when the source fps is lower).
                        converted = None
                        while (next_index / fps <= frame.time + 1e-6 and next_index / fps < limit
                               and not (max_frames and next_index >= max_frames)):
                            converted = converted if converted is not None else _frame_to_rgb(frame, size)
                            frames.append(converted)
                            next_index += 1
                elif packet.stream is audio and audio_samples < audio_limit:
                    for frame in packet.decode():
                        for out in resampler.resample(frame):
                            chunk = out.to_ndarray().reshape(-1)
                            chunks.append(chunk)
                            audio_samples += chunk.size
            if resampler is not None:
                for out in resampler.resample(None):
                    chunks.append(out.to_ndarray().reshape(-1))
            if total <= limit and audio is not None:  # the whole clip was to be read: did its sound all decode?
                # The sound track only: sound is continuous, while a screen recording's frames may stop for
                # seconds on a still picture, so fewer frames than the declared length is no sign of a cut.
                decoded, declared = sum(c.size for c in chunks) / sample_rate, declared_track_seconds(container, audio)
                if cut_short(decoded, declared):
                    raise CorruptMediaError(f"{path}: cannot decode ({cut_short_words(decoded, declared)})")
    except MediaError:
        raise
    except (av.error.FFmpegError, UnicodeDecodeError, OSError) as exc:
        if not opened:
            raise CorruptMediaError(f"{path}: cannot decode (not a valid audio/video file: {ffmpeg_words(exc)})") \
                from exc
        decoded = max(len(frames) / fps, sum(c.size for c in chunks) / sample_rate)
        where = f"after {decoded:.2f} s" if decoded else "nothing decodable"
        raise CorruptMediaError(f"{path}: cannot decode (truncated or damaged, {where}: {ffmpeg_words(exc)})") \
            from exc
    if with_video and not frames:
        raise CorruptMediaError(f"{path}: no decodable video frames")
    samples = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    if max_seconds:
        samples = samples[: int(round(max_seconds * sample_rate))]
    if require_audio and samples.size < MIN_AUDIO_SAMPLES:
        raise NoAudioError(f"{path}: the audio track is empty ({samples.size} samples)")
    stacked = np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8)
    return Clip(frames=stacked, audio=samples, fps=float(fps), sample_rate=int(sample_rate), duration=total,
                max_seconds=float(max_seconds) if max_seconds else None)


def decode_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE,
                 max_seconds: float | None = None) -> np.ndarray:
    """Only the audio track of a video (or audio) file, mono float32 at ``sample_rate``."""
    return decode_clip(path, sample_rate=sample_rate, max_seconds=max_seconds, with_video=False).audio


def probe(path: str | os.PathLike) -> dict:
    """Stream facts without decoding: duration, video size and rate, audio rate and channels."""
    import av

    path = Path(path)
    try:
        with av.open(str(path)) as container:
            info: dict = {"path": str(path), "duration_s": (container.duration or 0) / 1e6}
            if container.streams.video:
                v = container.streams.video[0]
                info["video"] = {"width": v.codec_context.width, "height": v.codec_context.height,
                                 "fps": float(v.average_rate or 0), "codec": v.codec_context.name}
            if container.streams.audio:
                a = container.streams.audio[0]
                info["audio"] = {"sample_rate": a.rate, "channels": a.channels, "codec": a.codec_context.name}
            return info
    except av.error.FFmpegError as exc:
        raise CorruptMediaError(f"{path}: cannot open (not a valid audio/video file: {ffmpeg_words(exc)})") from exc


def encode_clip(path: str | os.PathLike, frames: np.ndarray, fps: float, audio: np.ndarray | None = None,
                sample_rate: int = SAMPLE_RATE) -> Path:
    """Write RGB uint8 frames (T, H, W, 3) as H.264 (MPEG-4 Part 2 if absent) plus optional mono AAC audio."""
    import av
    from fractions import Fraction

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames.shape[1] - frames.shape[1] % 2, frames.shape[2] - frames.shape[2] % 2
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    with av.open(str(tmp), "w", format="mp4") as container:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        vstream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        vstream.width, vstream.height, vstream.pix_fmt = width, height, "yuv420p"
        if codec == "libx264":
            vstream.options = {"preset": "ultrafast"}
        astream = container.add_stream("aac", rate=sample_rate, layout="mono") if audio is not None else None
        for image in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[:height, :width]), format="rgb24")
            container.mux(vstream.encode(frame))
        container.mux(vstream.encode(None))
        if astream is not None:
            block = 1024
            samples = np.asarray(audio, np.float32)
            for start in range(0, len(samples), block):
                aframe = av.AudioFrame.from_ndarray(samples[start:start + block].reshape(1, -1), format="fltp",
                                                    layout="mono")
                aframe.sample_rate, aframe.pts = sample_rate, start
                container.mux(astream.encode(aframe))
            container.mux(astream.encode(None))
    os.replace(tmp, path)  # a half-written clip never appears under the real name
    return path
