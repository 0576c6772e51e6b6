"""fusion.media: frames at a fixed rate and the audio track from real (synthetic) mp4 files."""
from __future__ import annotations

import numpy as np
import pytest

from fusion.media import Clip, CorruptMediaError, NoAudioError, decode_audio, decode_clip, probe
from tests.synth_video import corrupt_clip, render_audio, write_clip

SOURCE_FPS = 25.0
SECONDS = 1.6
STEP = 6  # brightness step per source frame (40 frames fit in uint8); survives H.264 compression


@pytest.fixture(scope="module")
def counter_clip(tmp_path_factory):
    """Source frame i is a flat gray image of brightness 10 + STEP * i, so a decoded frame names its index."""
    n = int(SOURCE_FPS * SECONDS)
    frames = np.stack([np.full((64, 80, 3), 10 + STEP * i, np.uint8) for i in range(n)])
    audio = render_audio(SECONDS, 16_000, emotion=3)
    return write_clip(tmp_path_factory.mktemp("media") / "counter.mp4", frames, audio, fps=SOURCE_FPS)


def _source_index(frame: np.ndarray) -> int:
    return int(round((float(frame.mean()) - 10) / STEP))


@pytest.mark.parametrize("fps", [10.0, 5.0, 4.0])
def test_frames_are_sampled_at_the_target_rate(counter_clip, fps):
    clip = decode_clip(counter_clip, fps=fps)
    assert len(clip.frames) == pytest.approx(SECONDS * fps, abs=1)
    # Frame k is the first source frame at or after k / fps seconds.
    expected = [int(np.ceil(k / fps * SOURCE_FPS - 1e-6)) for k in range(len(clip.frames))]
    assert [_source_index(f) for f in clip.frames] == expected
    assert clip.frames.dtype == np.uint8 and clip.frames.shape[1:] == (64, 80, 3)


def test_audio_track_is_16k_mono_and_matches_the_source(counter_clip):
    clip = decode_clip(counter_clip, fps=10, sample_rate=16_000)
    assert clip.audio.dtype == np.float32 and clip.audio.ndim == 1
    # AAC adds encoder priming / padding of at most a couple of 1024-sample frames.
    assert abs(clip.audio.size - SECONDS * 16_000) <= 3 * 1024
    spectrum = np.abs(np.fft.rfft(clip.audio[4000:20000]))
    peak_hz = np.argmax(spectrum) * 16_000 / 16_000
    assert peak_hz == pytest.approx(220.0 * 2 ** (3 / 4.0), rel=0.02)
    assert decode_audio(counter_clip, sample_rate=8_000).size == pytest.approx(SECONDS * 8_000, abs=2048)


def test_max_seconds_and_downscaling(counter_clip, tmp_path):
    clip = decode_clip(counter_clip, fps=10, max_seconds=0.5)
    assert len(clip.frames) == 5 and clip.audio.size == 8_000
    big = write_clip(tmp_path / "big.mp4", seconds=0.4, size=(640, 360))
    frames = decode_clip(big, fps=10, max_side=320).frames
    assert frames.shape[1:] == (180, 320, 3)
    info = probe(big)
    assert info["video"]["width"] == 640 and info["audio"]["sample_rate"] == 16_000


def test_a_clip_knows_the_files_whole_length_and_whether_a_cap_cut_it(counter_clip):
    whole = decode_clip(counter_clip, fps=10)
    cut = decode_clip(counter_clip, fps=10, max_seconds=0.5)
    assert whole.duration == pytest.approx(SECONDS, abs=0.1) and cut.duration == whole.duration
    assert cut.seconds == pytest.approx(0.5)
    assert cut.span(0.5) == {"duration_seconds": round(cut.duration, 3), "truncated": True}
    assert whole.span(SECONDS) == {"duration_seconds": round(whole.duration, 3), "truncated": False}
    assert whole.span(None)["truncated"] is False
    # a container that does not say its length: the part decoded stands in for it
    unknown = Clip(frames=whole.frames[:4], audio=np.zeros(8000, np.float32), fps=10.0, sample_rate=16_000)
    assert unknown.span(10.0) == {"duration_seconds": 0.5, "truncated": False}


def test_max_frames_spreads_the_frames_of_a_long_clip_evenly(counter_clip):
    clip = decode_clip(counter_clip, fps=10, max_frames=8)  # 16 frames at 10/s would cover the 1.6 s
    assert len(clip.frames) == 8 and clip.fps == pytest.approx(5.0)
    expected = [int(np.ceil(k / 5.0 * SOURCE_FPS - 1e-6)) for k in range(8)]  # every 0.2 s, from the start
    assert [_source_index(f) for f in clip.frames] == expected
    assert abs(clip.audio.size - SECONDS * 16_000) <= 3 * 1024  # the sound track is not thinned
    assert len(decode_clip(counter_clip, fps=10, max_frames=100).frames) == 16  # a short clip keeps its rate
    assert len(decode_clip(counter_clip, fps=10, max_seconds=0.8, max_frames=4).frames) == 4  # over the part read


def test_clip_without_audio(tmp_path):
    silent = write_clip(tmp_path / "noaudio.mp4", seconds=0.5, with_audio=False)
    with pytest.raises(NoAudioError, match="no audio track"):
        decode_clip(silent)
    clip = decode_clip(silent, require_audio=False, fps=10)
    assert clip.audio.size == 0 and len(clip.frames) == 5


def test_corrupt_empty_missing_and_non_video_files(tmp_path):
    bad = corrupt_clip(write_clip(tmp_path / "bad.mp4", seconds=0.5))
    with pytest.raises(CorruptMediaError, match="bad.mp4"):
        decode_clip(bad)
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(CorruptMediaError, match="empty"):
        decode_clip(tmp_path / "empty.mp4")
    (tmp_path / "notes.mp4").write_text("not a video at all")
    with pytest.raises(CorruptMediaError):
        decode_clip(tmp_path / "notes.mp4")
    with pytest.raises(FileNotFoundError):
        decode_clip(tmp_path / "nope.mp4")
