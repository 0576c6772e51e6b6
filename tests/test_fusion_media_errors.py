"""``python -m fusion.predict`` on inputs it cannot use: each refusal names the file and says why in the words
``ser.predict`` and ``fer.predict`` use (not a regular file, FFmpeg's words without its errno, truncated or
damaged, a photo), a partial ``--late-weights`` is refused before anything is read, ``used`` never lists a
modality of weight 0, and ``seconds`` never exceeds the clip. Synthetic files only; the shipped ser and fer
models do the predicting."""
from __future__ import annotations

import copy
import json
import os
import re

import numpy as np
import pytest

from fusion.media import Clip, CorruptMediaError, decode_clip
from tests.synth_video import write_clip

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def shipped():
    """What ``fusion.predict`` loads without flags (late fusion of the shipped models), loaded once."""
    from fusion.predict import load_predictor

    return load_predictor()


@pytest.fixture
def cli(shipped, monkeypatch, capsys):
    """``fusion.predict.main`` with the shipped predictor already loaded: (exit status, stdout, stderr)."""
    from fusion import predict

    monkeypatch.setattr(predict, "load_predictor", lambda *args, **kwargs: shipped)

    def run(*args: str) -> tuple[int, str, str]:
        rc = predict.main(list(args))
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return rc, out, err
    return run


def _damaged_mp4(tmp_path, name: str, keep: float) -> str:
    """An mp4 whose header is intact (moov first) and whose media data after ``keep`` of the file is noise:
    FFmpeg opens it, then fails mid-decode, as on a cut-short download."""
    import av

    source = write_clip(tmp_path / "source.mp4", seconds=2.0)
    path = tmp_path / name
    with av.open(str(source)) as src, av.open(str(path), "w", format="mp4", options={"movflags": "+faststart"}) as dst:
        streams = {s.index: dst.add_stream_from_template(s) for s in src.streams}
        for packet in src.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                dst.mux(packet)
    data = bytearray(path.read_bytes())
    start = max(data.find(b"mdat") + 8, int(len(data) * keep))
    data[start:] = np.random.default_rng(0).integers(0, 256, len(data) - start, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    return str(path)


def test_not_a_regular_file_is_said_so_and_a_missing_one_is_missing(tmp_path, cli):
    fifo = tmp_path / "pipe.mp4"
    os.mkfifo(fifo)
    with pytest.raises(CorruptMediaError, match="not a regular file"):
        decode_clip(fifo)
    paths = [str(fifo), str(tmp_path / "nope.mp4")] + (["/dev/null"] if os.path.exists("/dev/null") else [])
    rc, out, err = cli(*paths)
    assert rc == 1 and out == ""
    assert f"error: {fifo}: not a regular file" in err
    assert f"error: {tmp_path / 'nope.mp4'}: no such file" in err
    if "/dev/null" in paths:
        assert "error: /dev/null: not a regular file" in err


def test_unreadable_media_say_ffmpegs_words_without_its_errno(tmp_path, cli):
    text = tmp_path / "text.wav"
    text.write_text("this is a text file, renamed\n" * 20)
    damaged = _damaged_mp4(tmp_path, "damaged.mp4", keep=0.0)
    rc, out, err = cli(str(text), damaged)
    assert rc == 1 and out == ""
    assert (f"error: {text}: cannot decode (not a valid audio/video file: Invalid data found when processing "
            "input)") in err  # ser.predict's words for the same file
    assert f"error: {damaged}: cannot decode (truncated or damaged, nothing decodable: " in err
    assert "Errno" not in err and "avcodec" not in err and "()" not in err
    # Broken off after a readable start: how far it got.
    with pytest.raises(CorruptMediaError, match=r"truncated or damaged, after \d+\.\d+ s: Invalid data") as info:
        decode_clip(_damaged_mp4(tmp_path, "half.mp4", keep=0.5), fps=5, require_audio=False)
    assert "Errno" not in str(info.value)


def _packet_end_before(path: str, offset: int) -> int:
    """The last byte offset <= ``offset`` where a packet ends: a cut there leaves no half packet, whose bytes FFmpeg
    may or may not call invalid data depending on where the encoder (threads: the core count) put them."""
    import av

    with av.open(path) as container:
        ends = [p.pos + p.size for p in container.demux() if p.pos is not None and p.pos + p.size <= offset]
    assert ends, f"no whole packet in the first {offset} bytes of {path}"
    return max(ends)


def test_a_clip_cut_short_is_refused_not_judged_on_its_start(tmp_path, cli):
    """A download that broke off cleanly: FFmpeg decodes what is there and stops without an error; the length
    the header declares says the clip was cut (it used to be judged on its first second, "truncated": false)."""
    whole = _damaged_mp4(tmp_path, "whole.mp4", keep=1.0)  # header first, media data intact
    data = open(whole, "rb").read()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: _packet_end_before(whole, int(len(data) * 0.4))])
    assert decode_clip(whole, fps=5, require_audio=False).seconds == pytest.approx(2.0, abs=0.1)
    rc, out, err = cli(str(cut))
    assert rc == 1 and out == ""
    assert re.search(rf"error: {re.escape(str(cut))}: cannot decode \(truncated or damaged: \d\.\d\d s of the 2\.\d\d s "
                     "its header declares\)", err), err


def test_sound_that_is_not_speech_and_no_face_gets_no_label_as_the_server_gives_it(tmp_path, cli):
    """Noise alone: label null and no_speech, a warning and exit status 1 (ser.predict's answer and the server's
    video endpoint's), not an error; a header without samples is an error that says so."""
    import soundfile as sf

    noise = tmp_path / "noise.wav"
    sf.write(noise, np.random.default_rng(0).normal(0, 0.1, 48_000).astype(np.float32), 16_000)
    rc, out, err = cli(str(noise), "--json")
    (line,) = [json.loads(x) for x in out.splitlines()]
    assert rc == 1 and line["label"] is None and line["probabilities"] is None and line["no_speech"] == "noise"
    assert line["used"] == [] and line["face_missing"] == "no video track"
    assert f"warning: {noise}: no label: no video track; audio: no speech: noise" in err
    rc, out, err = cli(str(noise))
    assert rc == 1 and out == "" and "no label" in err
    empty = tmp_path / "header_only.wav"
    sf.write(empty, np.zeros(0, np.float32), 16_000)
    rc, out, err = cli(str(empty))
    assert rc == 1 and f"error: {empty}: no audio could be decoded (the file is truncated or damaged" in err


def test_a_partial_late_weights_spec_is_refused_before_anything_is_read(tmp_path, capsys):
    from fusion.late import read_late_config
    from fusion.predict import main

    for spec, missing in (("audio=0.5", "face"), ("face=1,rule=product", "audio")):
        with pytest.raises(ValueError, match=f"missing: {missing}") as info:
            read_late_config(spec)
        assert "'audio=0.6,face=0.4'" in str(info.value)
    assert read_late_config("audio=1,face=0").weights == {"audio": 1.0, "face": 0.0}  # 0 leaves one out, said so
    (tmp_path / "late_fusion.json").write_text(json.dumps({"weights": {"audio": 0.7}}))
    with pytest.raises(ValueError, match="missing: face"):
        read_late_config(tmp_path)
    # The clip does not exist and neither do the models: the spec is what is refused, first.
    nowhere = str(tmp_path / "nowhere")
    for mode in ("late", "auto"):
        assert main([str(tmp_path / "clip.mp4"), "--mode", mode, "--late-weights", "audio=0.5",
                     "--ser-model-dir", nowhere, "--fer-model-dir", nowhere]) == 2
        err = capsys.readouterr().err
        assert "'audio=0.5'" in err and "missing: face" in err and "nowhere" not in err


def test_used_never_lists_a_modality_of_weight_zero(shipped, tmp_path):
    from fusion.late import read_late_config
    from fusion.predict import format_text

    audio, face = np.full(7, 1 / 7), np.eye(7)[1]
    late = copy.copy(shipped.late)
    late.config = read_late_config("audio=1,face=0")
    result = late.result("clip.mp4", {"audio": audio, "face": face}, {})
    assert result["used"] == ["voice"] and result["voice"] and result["face"]
    assert result["probabilities"] == result["voice"]["probabilities"]
    assert "face: happy (not used)" in format_text(result)
    assert late.result("clip.mp4", {"audio": None, "face": face}, {})["used"] == ["face"]  # the only one: it decides
    both = shipped.late.result("clip.mp4", {"audio": audio, "face": face}, {})
    assert both["used"] == ["voice", "face"] and "(not used)" not in format_text(both)


def test_a_photo_points_to_fer_predict(tmp_path, cli):
    import cv2

    photo = tmp_path / "gray.png"
    cv2.imwrite(str(photo), np.full((64, 64, 3), 128, np.uint8))
    rc, out, err = cli(str(photo))
    assert rc == 1 and out == ""
    assert f"error: {photo}: a photo" in err and "python -m fer.predict" in err


def test_a_photo_is_found_by_its_content_not_its_name(tmp_path, cli):
    """A JPEG named .mp4 used to be read as a silent one-frame video and given a face label (exit 0); a PDF named
    .jpg is no photo, and is not called a truncated one either."""
    import cv2

    from fusion.media import StillImageError

    photo = tmp_path / "photo_as.mp4"
    photo.write_bytes(cv2.imencode(".jpg", np.full((64, 64, 3), 128, np.uint8))[1].tobytes())
    with pytest.raises(StillImageError, match="a photo, not a video or sound file"):
        decode_clip(photo, require_audio=False)
    rc, out, err = cli(str(photo))
    assert rc == 1 and out == ""
    assert f"error: {photo}: a photo, not a video or sound file (`python -m fer.predict` reads it)" in err
    fake = tmp_path / "document.mov"
    fake.write_bytes(b"%PDF-1.4\n" + bytes(range(256)) * 40)
    (tmp_path / "named.jpg").write_bytes(fake.read_bytes())
    for path in (fake, tmp_path / "named.jpg"):
        with pytest.raises(CorruptMediaError, match=r"cannot decode \(not a valid audio/video file"):
            decode_clip(path, require_audio=False)


def test_seconds_analysed_never_exceed_the_clip_or_the_cap(tmp_path, cli, shipped):
    # 17 frames at 5 fps of a 3.303 s clip (what a RAVDESS clip gives): 3.303 s analysed, not 3.4.
    clip = Clip(frames=np.zeros((17, 2, 2, 3), np.uint8), audio=np.zeros(52_848, np.float32), fps=5.0,
                sample_rate=16_000, duration=3.303)
    assert clip.seconds == pytest.approx(3.303)
    # Frames at 0, 0.2, 0.4 and 0.6 s of a 0.72 s clip: 4 / 5 fps would say 0.8 s.
    path = write_clip(tmp_path / "short.mp4", seconds=0.72, size=(160, 160))
    decoded = decode_clip(path, fps=5, require_audio=False)
    assert len(decoded.frames) / decoded.fps > decoded.duration and decoded.seconds == pytest.approx(decoded.duration)
    assert decode_clip(path, fps=5, max_seconds=0.5).seconds == pytest.approx(0.5)  # 3 frames would say 0.6
    rc, out, _ = cli(str(path), "--json")
    result = json.loads(out)
    assert rc == 0 and result["seconds"] <= result["duration_seconds"]
    late = copy.copy(shipped.late)
    late.max_seconds = 0.5
    assert late.predict_clip(path)["seconds"] == pytest.approx(0.5)


def test_segments_are_a_timeline_of_the_whole_answer(cli, tmp_path, shipped):
    """``--segments`` (the server's ?segments=true): rows cover the analysed part in order, each frame in exactly
    one row, each row's face the mean of its own frames; bad lengths and the joint model are refused first."""
    clip = write_clip(tmp_path / "talk.mp4", seconds=4.0)
    rc, out, _ = cli(str(clip), "--json", "--segments", "--segment-seconds", "1.5")
    (answer,) = [json.loads(x) for x in out.splitlines()]
    rows = answer["segments"]
    assert rc == 0 and [(r["start"], r["end"]) for r in rows] == [(0.0, 1.5), (1.5, 3.0), (3.0, answer["seconds"])]
    assert sum(r["frames_sampled"] for r in rows) == answer["frames_sampled"]
    assert sum(r["frames_with_face"] for r in rows) == answer["frames_with_face"] > 0
    reading = shipped.late.read(clip)
    first = [p for p, t in zip(reading.per_frame, reading.times) if t < 1.5 and p is not None]
    np.testing.assert_allclose(list(rows[0]["face"]["probabilities"].values()), np.mean(first, axis=0), atol=1e-6)
    for row in rows:  # each row fused as the whole clip is: by the same weights and rule
        probs = {m: None if row[n] is None else np.array(list(row[n]["probabilities"].values()))
                 for m, n in (("audio", "voice"), ("face", "face"))}
        np.testing.assert_allclose(list(row["fused"]["probabilities"].values()), shipped.late.config.fuse(probs),
                                   atol=1e-5)
    rc, out, _ = cli(str(clip), "--segments")
    assert rc == 0 and len(out.splitlines()) == 1 + len(list(np.arange(0, answer["seconds"], 3.0)))
    assert re.search(r"^\s+0\.00-\s+3\.00 s  \w+\s+voice: \S+  face: \S+$", out.splitlines()[1])
    for bad in (["--segment-seconds", "0"], ["--segment-seconds", "nan"], ["--mode", "joint"]):
        with pytest.raises(SystemExit) as stop:
            cli(str(clip), "--segments", *bad)
        assert stop.value.code == 2
