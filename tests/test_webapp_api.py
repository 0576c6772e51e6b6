"""HTTP and WebSocket API of the web app, with stand-in predictors (fast; real models: test_webapp_real.py)."""
from __future__ import annotations

import base64
import contextlib
import json
import struct
import threading
import time

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

import synth_media as sm
from core.labels import EMOTIONS
from webapp.app import Settings, create_app
from webapp.models import Models, load_models
from webapp.schemas import (AudioPrediction, Health, ImagePrediction, StreamError, StreamHello, StreamPong,
                            StreamResult, VideoPrediction)
from webapp.stream import BINARY_HEADER, MAX_CONSECUTIVE_ERRORS, fuse

SMALL = dict(max_upload_bytes=400_000, max_message_bytes=200_000, max_connections=3, warmup=False,
             min_audio_seconds=0.25)


def make_client(models: Models | None = None, **overrides) -> TestClient:
    models = models if models is not None else Models(ser=sm.FakeVoice(), fer=sm.FakeFace())
    return TestClient(create_app(settings=Settings(**(SMALL | overrides)), models=models),
                      raise_server_exceptions=False)


@pytest.fixture()
def client():
    with make_client() as c:
        yield c


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("webapp-media")
    return {
        "jpeg": sm.jpeg_bytes(sm.face_image()),
        "blank_jpeg": sm.jpeg_bytes(np.full((240, 320, 3), 90, np.uint8)),
        "wav": sm.wav_bytes(sm.voice(1.0)),
        "silent_wav": sm.wav_bytes(np.zeros(16000, np.float32)),
        "mp4": sm.write_mp4(folder / "clip.mp4").read_bytes(),
        "mp4_mute": sm.write_mp4(folder / "mute.mp4", with_audio=False).read_bytes(),
    }


def binary(kind: int, msg_id: int, payload: bytes, t: float = 123.5) -> bytes:
    return BINARY_HEADER.pack(kind, msg_id, t) + payload


def pcm16(y: np.ndarray) -> bytes:
    return (np.clip(y, -1, 1) * 32767).astype("<i2").tobytes()


def receive_until(ws, predicate, limit: int = 50) -> dict:
    return receive_until_list(ws, predicate, limit)[-1]


def receive_until_list(ws, predicate, limit: int = 50) -> list[dict]:
    """Every message up to and including the first that ``predicate`` accepts."""
    seen = []
    for _ in range(limit):
        seen.append(ws.receive_json())
        if predicate(seen[-1]):
            return seen
    raise AssertionError("expected message never came")


# ---- page, static files, schema -----------------------------------------------------------

def test_page_and_static_assets_are_served_locally(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for asset in ("/static/app.js", "/static/style.css", "/static/audio-worklet.js"):
        assert asset in page.text or asset == "/static/audio-worklet.js"
        assert client.get(asset).status_code == 200
    assert client.get("/docs").status_code == 404  # FastAPI's UI would pull scripts from a CDN
    for name in ("index.html", "app.js", "audio-worklet.js"):
        text = client.get(f"/static/{name}").text
        assert "https://" not in text and "cdn" not in text.lower(), f"{name} must not load remote code"


@pytest.mark.parametrize("path", ["/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fmodels.py",
                                  "/static/%2e%2e/%2e%2e/core/io.py", "/static//etc/passwd",
                                  "/static/%2fetc%2fpasswd"])
def test_static_files_cannot_leave_the_static_folder(client, path):
    response = client.get(path)
    assert response.status_code in (404, 400)
    assert "import" not in response.text and "root:" not in response.text


def test_no_endpoint_takes_a_path_parameter(client):
    spec = client.get("/openapi.json").json()
    for path, ops in spec["paths"].items():
        assert "{" not in path, path
        for op in ops.values():
            for param in op.get("parameters", []):
                assert param["in"] != "path"


def test_health_lists_models_classes_limits(client):
    response = client.get("/api/health")
    assert response.status_code == 200
    health = Health.model_validate(response.json())
    assert health.emotions == list(EMOTIONS)
    assert health.models["ser"].loaded and health.models["ser"].classes == list(EMOTIONS)
    assert health.models["fer"].loaded and health.models["fer"].classes == list(EMOTIONS)
    # no joint model: the voice and face are fused late, and that is a loaded fusion, not an error
    assert response.json()["models"]["fusion"] == {"loaded": True, "classes": list(EMOTIONS), "error": None,
                                                   "kind": "late"}
    assert "kind" not in response.json()["models"]["ser"]  # the kind is the fusion entry's only
    assert health.limits.max_upload_bytes == SMALL["max_upload_bytes"]
    assert health.fusion.face_weight == pytest.approx(0.6)


def test_health_says_which_fusion_is_used_and_errs_only_when_none_is_usable(tmp_path, repo_root):
    """The shipped models folder has late_fusion.json and no joint model: /api/health used to report the fusion as
    an error ("fusion/model.keras and config.json not found") although late fusion was loaded and in use."""
    import webapp.models as wm

    with make_client(Models(ser=sm.FakeVoice(), fer=sm.FakeFace(), fusion=sm.FakeFusion())) as c:
        assert c.get("/api/health").json()["models"]["fusion"]["kind"] == "joint"
    (tmp_path / "fusion").mkdir()  # what ships: the late-fusion file, no model.keras
    (tmp_path / "fusion" / "late_fusion.json").write_text(
        (repo_root / "saved_models" / "fusion" / "late_fusion.json").read_text())
    loader = wm.ModelLoader(tmp_path, warmup=False)
    loader.models.set_predictor("ser", sm.FakeVoice())
    loader.models.set_predictor("fer", sm.FakeFace())
    loader.models.set_predictor("fusion", error=loader._missing("fusion"))
    loader.models.loading = False
    with make_client(loader.models) as c:
        fusion = Health.model_validate(c.get("/api/health").json()).models["fusion"]
    assert (fusion.loaded, fusion.kind, fusion.error) == (True, "late", None)
    for models, missing in ((Models(ser=sm.FakeVoice()), "fer not loaded"), (Models(), "ser and fer not loaded")):
        with make_client(models) as c:
            fusion = Health.model_validate(c.get("/api/health").json()).models["fusion"]
        assert not fusion.loaded and fusion.kind is None and missing in fusion.error
    loading = Models(errors={"ser": "loading", "fer": "loading", "fusion": "loading"})
    loading.loading = True
    assert loading.info()["fusion"] == {"loaded": False, "classes": [], "error": "loading"}


def test_openapi_documents_every_endpoint_and_schema(client):
    spec = client.get("/openapi.json").json()
    assert {"/api/health", "/api/predict/audio", "/api/predict/image", "/api/predict/video",
            "/api/schema/stream"} <= set(spec["paths"])
    schemas = spec["components"]["schemas"]
    assert {"Health", "AudioPrediction", "ImagePrediction", "VideoPrediction", "ErrorResponse"} <= set(schemas)
    for kind in ("audio", "image", "video"):
        op = spec["paths"][f"/api/predict/{kind}"]["post"]
        assert "multipart/form-data" in op["requestBody"]["content"]
        assert f"{kind}/*" in op["requestBody"]["content"]
        assert {"200", "400", "413", "415", "503"} <= set(op["responses"])
    stream = client.get("/api/schema/stream").json()
    assert {"StreamFrameIn", "StreamAudioIn", "StreamPingIn"} == set(stream["client_to_server"])
    assert {"StreamHello", "StreamResult", "StreamPong", "StreamError"} == set(stream["server_to_client"])


# ---- file predictions ---------------------------------------------------------------------

def test_predict_audio_multipart_and_raw(client, media):
    response = client.post("/api/predict/audio", files={"file": ("hello.wav", media["wav"], "audio/wav")})
    assert response.status_code == 200, response.text
    result = AudioPrediction.model_validate(response.json())
    assert result.path == "hello.wav"
    assert list(result.probabilities) == list(EMOTIONS)
    assert sum(result.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert result.label == max(result.probabilities, key=result.probabilities.get)

    raw = client.post("/api/predict/audio?filename=raw.wav", content=media["wav"],
                      headers={"content-type": "audio/wav"})
    assert raw.status_code == 200 and raw.json()["path"] == "raw.wav"
    assert raw.json()["probabilities"] == pytest.approx(result.probabilities)


def test_predict_audio_segments_give_a_timeline_that_averages_to_the_answer(client):
    wav = sm.wav_bytes(np.concatenate([sm.voice(2.0), 0.05 * sm.voice(2.0)]))
    plain = client.post("/api/predict/audio", content=wav, headers={"content-type": "audio/wav"})
    assert plain.status_code == 200 and "segments" not in plain.json()
    response = client.post("/api/predict/audio?segments=true", content=wav, headers={"content-type": "audio/wav"})
    assert response.status_code == 200, response.text
    result = AudioPrediction.model_validate(response.json())
    assert [(s.start, s.end) for s in result.segments] == [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 4.0)]
    assert result.segments[0].probabilities != result.segments[-1].probabilities  # loud half vs quiet half
    for segment in result.segments:
        assert segment.label == max(segment.probabilities, key=segment.probabilities.get)
    mean = {e: np.mean([s.probabilities[e] for s in result.segments]) for e in EMOTIONS}
    assert result.probabilities == pytest.approx(mean, abs=1e-5)


def test_predict_image_finds_the_face(client, media):
    response = client.post("/api/predict/image", files={"file": ("astronaut.jpg", media["jpeg"], "image/jpeg")})
    assert response.status_code == 200, response.text
    result = ImagePrediction.model_validate(response.json())
    assert result.path == "astronaut.jpg" and len(result.faces) >= 1
    x, y, w, h = result.faces[0].box
    assert 0 <= x < x + w <= 640 and 0 <= y < y + h <= 480 and w > 60
    assert list(result.faces[0].probabilities) == list(EMOTIONS)

    blank = client.post("/api/predict/image", content=media["blank_jpeg"], headers={"content-type": "image/jpeg"})
    assert blank.status_code == 200 and blank.json() == {"path": "upload", "faces": []}


def test_predict_video_fuses_face_and_voice(client, media):
    response = client.post("/api/predict/video", files={"file": ("clip.mp4", media["mp4"], "video/mp4")})
    assert response.status_code == 200, response.text
    result = VideoPrediction.model_validate(response.json())
    assert result.mode == "late" and result.rule == "mean" and result.used == ["voice", "face"]
    assert result.weights == {"voice": 0.4, "face": 0.6} and result.face_missing is None
    assert result.frames_sampled > 0 and result.frames_with_face > 0
    assert result.face is not None and result.voice is not None
    assert result.duration_seconds == pytest.approx(2.0, abs=0.3)
    for e in EMOTIONS:  # documented fusion: 0.6 face + 0.4 voice
        expected = 0.6 * result.face.probabilities[e] + 0.4 * result.voice.probabilities[e]
        assert result.probabilities[e] == pytest.approx(expected, abs=1e-5)
    assert result.label == max(result.probabilities, key=result.probabilities.get)


def test_predict_video_without_audio_uses_the_face_alone(client, media):
    response = client.post("/api/predict/video", content=media["mp4_mute"], headers={"content-type": "video/mp4"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["voice"] is None and body["face"] is not None
    assert body["probabilities"] == pytest.approx(body["face"]["probabilities"], abs=1e-5)


def test_predict_video_with_a_silent_audio_track_says_why_there_is_no_voice(client, media, tmp_path):
    """A digitally silent track used to give "voice": null, "no_speech": null; fusion.predict says why
    (audio_missing), and docs/speech_frontend.md promises "no_speech": "<reason>" whenever the voice is null."""
    from tests.synth_video import write_clip

    silent = write_clip(tmp_path / "silent.mp4", audio=np.zeros(32_000, np.float32), seconds=2.0, fps=10,
                        size=(160, 120)).read_bytes()
    response = client.post("/api/predict/video", files={"file": ("silent.mp4", silent, "video/mp4")})
    assert response.status_code == 200, response.text
    body = VideoPrediction.model_validate(response.json())
    assert body.voice is None and body.no_speech == "silence"
    assert body.audio_missing == "audio: silent (peak amplitude below 0.0001)"  # fusion.predict's words
    assert body.face is not None and body.probabilities == pytest.approx(body.face.probabilities, abs=1e-5)
    mute = client.post("/api/predict/video", content=media["mp4_mute"], headers={"content-type": "video/mp4"}).json()
    assert mute["voice"] is None and mute["no_speech"] is None and mute["audio_missing"] == "no audio track"
    with make_client(Models(fer=sm.FakeFace())) as c:  # no voice model: the answer still says why
        answer = c.post("/api/predict/video", content=media["mp4"], headers={"content-type": "video/mp4"}).json()
    assert answer["voice"] is None and answer["audio_missing"].startswith("no voice model is loaded")
    speech = client.post("/api/predict/video", content=media["mp4"], headers={"content-type": "video/mp4"}).json()
    assert speech["voice"] is not None and speech["no_speech"] is None and speech["audio_missing"] is None


def test_a_photo_sent_as_a_video_is_refused_and_pointed_to_the_image_endpoint(client, media):
    """fusion.predict refuses a photo; the server used to answer 200 with a one-frame face label."""
    for name in ("photo.jpg", "photo.mp4"):
        response = client.post("/api/predict/video", files={"file": (name, media["jpeg"], "video/mp4")})
        assert response.status_code == 400, response.text
        assert response.json()["detail"].endswith(
            "a photo, not a video or sound file (POST /api/predict/image reads it)")


def test_predict_video_without_a_video_stream_uses_the_voice_alone_like_fusion_predict(client, tmp_path):
    """An audio-only mp4 (a phone's voice memo): `python -m fusion.predict` answers from the voice, so the server
    must too, rather than refuse it; a silent one is refused, as the CLI refuses it."""
    from tests.synth_video import render_audio, write_audio_only_mp4

    memo = write_audio_only_mp4(tmp_path / "memo.mp4", render_audio(2.0, 16_000, emotion=3)).read_bytes()
    response = client.post("/api/predict/video", files={"file": ("memo.mp4", memo, "video/mp4")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["face"] is None and body["voice"] is not None and body["frames_sampled"] == 0
    assert body["probabilities"] == pytest.approx(body["voice"]["probabilities"], abs=1e-5)
    assert body["duration_seconds"] == pytest.approx(2.0, abs=0.3)
    silent = write_audio_only_mp4(tmp_path / "silent.mp4", np.zeros(32_000, np.float32)).read_bytes()
    answer = client.post("/api/predict/video", files={"file": ("silent.mp4", silent, "video/mp4")})
    assert answer.status_code == 400  # nothing to predict from, as fusion.predict says
    assert answer.json()["detail"] == ("nothing to predict from (audio: silent (peak amplitude below 0.0001); "
                                       "no video track)")  # fusion.predict's words for the same file


def test_predict_video_uses_the_fusion_model_when_loaded_and_falls_back_when_it_fails(media):
    for fusion, mode in ((sm.FakeFusion(), "joint"), (sm.FakeFusion(fail=True), "late")):
        with make_client(Models(ser=sm.FakeVoice(), fer=sm.FakeFace(), fusion=fusion)) as c:
            assert c.get("/api/health").json()["models"]["fusion"]["loaded"]
            response = c.post("/api/predict/video", files={"file": ("clip.mp4", media["mp4"], "video/mp4")})
            assert response.status_code == 200, response.text
            body = VideoPrediction.model_validate(response.json())
            assert body.mode == mode and len(fusion.paths) == 1
            assert body.face is not None and body.voice is not None
            if mode == "joint":
                assert body.label == "surprise" and body.probabilities["surprise"] == pytest.approx(0.7)
                assert body.weights is None and body.rule is None and body.used is None
            else:
                assert body.probabilities["neutral"] == pytest.approx(
                    0.6 * body.face.probabilities["neutral"] + 0.4 * body.voice.probabilities["neutral"], abs=1e-5)


# ---- bad input ----------------------------------------------------------------------------

@pytest.mark.parametrize("endpoint", ["audio", "image", "video"])
def test_upload_too_large_is_413(client, endpoint):
    big = b"\0" * (SMALL["max_upload_bytes"] + 1)
    response = client.post(f"/api/predict/{endpoint}", content=big,
                           headers={"content-type": "application/octet-stream"})
    assert response.status_code == 413
    assert str(SMALL["max_upload_bytes"]) in response.json()["detail"]


def test_upload_too_large_without_content_length_is_413(client):
    def chunks():  # streamed (chunked) body: no Content-Length to trust
        for _ in range(10):
            yield b"\0" * 50_000

    response = client.post("/api/predict/audio", content=chunks(), headers={"content-type": "audio/wav"})
    assert response.status_code == 413


@pytest.mark.parametrize("endpoint,kwargs", [
    ("audio", {"json": {"samples": [1, 2, 3]}}),
    ("audio", {"content": b"RIFF", "headers": {"content-type": "image/png"}}),
    ("image", {"content": b"hello", "headers": {"content-type": "text/plain"}}),
    ("video", {"content": b"\0\0", "headers": {"content-type": "audio/wav"}}),
    ("image", {"files": {"file": ("notes.txt", b"hello", "text/plain")}}),
])
def test_wrong_content_type_is_415(client, endpoint, kwargs):
    response = client.post(f"/api/predict/{endpoint}", **kwargs)
    assert response.status_code == 415, response.text
    assert "content type" in response.json()["detail"]


@pytest.mark.parametrize("endpoint,payload,reason", [
    ("audio", b"this is not audio at all" * 20, "not readable as audio"),
    ("image", b"\x89PNG\r\n\x1a\n garbage", "not a readable image"),
    ("video", b"\x00\x00\x00\x18ftypmp42 garbage" * 10, "cannot decode (not a valid audio/video file"),
])
def test_undecodable_media_is_400_with_the_reason(client, endpoint, payload, reason):
    response = client.post(f"/api/predict/{endpoint}", files={"file": (f"bad.{endpoint}", payload,
                                                                        "application/octet-stream")})
    assert response.status_code == 400, response.text
    assert reason in response.json()["detail"]
    assert "webapp-upload-" not in response.json()["detail"], "temp file names must not leak"


def test_more_unusable_uploads_are_400(client, media):
    truncated = media["jpeg"][: len(media["jpeg"]) // 3]
    cases = [
        ("image", {"content": truncated, "headers": {"content-type": "image/jpeg"}}, "cannot be decoded"),
        ("audio", {"files": {"file": ("quiet.wav", media["silent_wav"], "audio/wav")}}, "silent"),
        ("audio", {"content": b"", "headers": {"content-type": "audio/wav"}}, "empty"),
        ("audio", {"files": {"other": ("x.wav", media["wav"], "audio/wav")}}, "no file field"),
        ("audio", {"content": b"--xyz\r\nnonsense", "headers": {"content-type": "multipart/form-data; boundary=abc"}},
         ""),
    ]
    from core.images import MAX_IMAGE_PIXELS

    side = int(MAX_IMAGE_PIXELS ** 0.5) + 8  # just over the one limit fer.predict applies too
    big_png = cv2.imencode(".png", np.zeros((side, side), np.uint8))[1].tobytes()
    cases.append(("image", {"content": big_png, "headers": {"content-type": "image/png"}}, "pixels"))
    for endpoint, kwargs, reason in cases:
        response = client.post(f"/api/predict/{endpoint}", **kwargs)
        assert response.status_code == 400, (endpoint, reason, response.text)
        assert reason in response.json()["detail"]


def test_missing_model_is_503_and_health_says_why(tmp_path):
    with make_client(load_models(tmp_path, warmup=False)) as c:
        health = c.get("/api/health").json()
        assert all(not m["loaded"] for m in health["models"].values())
        assert "ser/model.keras" in health["models"]["ser"]["error"]
        for endpoint in ("audio", "image", "video"):
            response = c.post(f"/api/predict/{endpoint}", content=b"x", headers={"content-type": "image/png"})
            assert response.status_code == 503
            assert "model" in response.json()["detail"]


def test_a_failing_model_gives_500_and_the_server_keeps_serving(media):
    with make_client(Models(ser=sm.FakeVoice(), fer=sm.FakeFace(fail=True))) as c:
        response = c.post("/api/predict/image", content=media["jpeg"], headers={"content-type": "image/jpeg"})
        assert response.status_code == 500 and "model exploded" in response.json()["detail"]
        assert c.get("/api/health").status_code == 200
        ok = c.post("/api/predict/audio", content=media["wav"], headers={"content-type": "audio/wav"})
        assert ok.status_code == 200


def test_too_many_waiting_uploads_get_503(media):
    with make_client(Models(ser=sm.FakeVoice(delay=1.0)), upload_workers=1, max_waiting_uploads=0) as c:
        codes = []

        def post():
            codes.append(c.post("/api/predict/audio", content=media["wav"],
                                headers={"content-type": "audio/wav"}).status_code)

        threads = [threading.Thread(target=post) for _ in range(2)]
        for t in threads:
            t.start()
            time.sleep(0.2)
        for t in threads:
            t.join()
        assert sorted(codes) == [200, 503]


# ---- WebSocket stream ---------------------------------------------------------------------

def test_stream_hello_frame_audio_silence_and_ping(client, media):
    with client.websocket_connect("/ws/stream") as ws:
        hello = StreamHello.model_validate(ws.receive_json())
        assert hello.emotions == list(EMOTIONS) and hello.models["fer"].loaded

        ws.send_bytes(binary(1, 7, media["jpeg"], t=1000.25))
        frame = StreamResult.model_validate(ws.receive_json())
        assert (frame.kind, frame.id, frame.t) == ("frame", 7, 1000.25)
        assert frame.face_state == "face" and frame.faces and frame.image_size == [640, 480]
        assert frame.fused.sources == ["face"] and frame.fused.probabilities == pytest.approx(frame.face, abs=1e-5)
        assert frame.voice_state == "unknown"

        # An audio message is answered at once; the voice estimate follows as its own result.
        ws.send_bytes(binary(2, 8, pcm16(sm.voice(0.5)), t=2000.5))
        ack = StreamResult.model_validate(ws.receive_json())
        assert (ack.kind, ack.id, ack.predicted, ack.voice_state) == ("audio", 8, False, "unknown")
        audio = StreamResult.model_validate(ws.receive_json())
        assert (audio.kind, audio.id, audio.t, audio.predicted) == ("voice", 8, 2000.5, True)
        assert audio.voice_state == "voice" and audio.fused.sources == ["face", "voice"]
        for e in EMOTIONS:
            assert audio.fused.probabilities[e] == pytest.approx(0.6 * audio.face[e] + 0.4 * audio.voice[e], abs=1e-5)

        ws.send_json({"type": "audio", "id": 9, "t": 5.0, "format": "float32",
                      "data": base64.b64encode(np.zeros(8000, "<f4").tobytes()).decode()})
        silent = StreamResult.model_validate(ws.receive_json())
        assert silent.voice_state == "silence" and silent.voice is None and silent.fused.sources == ["face"]

        ws.send_json({"type": "frame", "id": 10, "data": base64.b64encode(media["blank_jpeg"]).decode()})
        no_face = StreamResult.model_validate(ws.receive_json())
        assert no_face.face_state == "no_face" and no_face.faces == [] and no_face.face is None
        assert no_face.fused is None

        ws.send_json({"type": "ping", "id": 11, "t": 42.0})
        pong = StreamPong.model_validate(ws.receive_json())
        assert (pong.id, pong.t) == (11, 42.0)
        assert no_face.stats.frames_received == 2 and no_face.stats.audio_received == 2
        assert no_face.stats.voice_estimates == 1


@pytest.mark.parametrize("message,code", [
    ("this is not json", "malformed"),
    ('["a list"]', "malformed"),
    ('{"type": "dance", "id": 3}', "unsupported"),
    ('{"type": "frame", "id": 3}', "malformed"),
    ('{"type": "frame", "id": 3, "data": "!!!not base64!!!"}', "malformed"),
    ('{"type": "audio", "id": 3, "sample_rate": 44100, "data": "AAAA"}', "malformed"),
    ('{"type": "audio", "id": 3, "data": "AAAA"}', "bad_media"),
    (b"\x01\x02", "malformed"),
    (struct.pack("<BId", 9, 3, 0.0) + b"xx", "unsupported"),
    (struct.pack("<BId", 1, 3, 0.0) + b"not a jpeg", "bad_media"),
    (struct.pack("<BId", 3, 3, 0.0) + struct.pack("<2f", float("nan"), 0.0), "bad_media"),
])
def test_malformed_stream_messages_get_an_error_and_the_stream_goes_on(client, message, code):
    with client.websocket_connect("/ws/stream") as ws:
        ws.receive_json()  # hello
        (ws.send_bytes if isinstance(message, bytes) else ws.send_text)(message)
        error = StreamError.model_validate(ws.receive_json())
        assert error.code == code and error.detail
        ws.send_json({"type": "ping", "id": 99})
        assert ws.receive_json()["type"] == "pong"


def test_oversized_stream_message_is_refused_with_an_error(client):
    with client.websocket_connect("/ws/stream") as ws:
        ws.receive_json()
        ws.send_bytes(binary(1, 5, b"\xff" * (SMALL["max_message_bytes"] + 10)))
        error = StreamError.model_validate(ws.receive_json())
        assert error.code == "too_large" and str(SMALL["max_message_bytes"]) in error.detail and error.id == 5
        ws.send_text("x" * (SMALL["max_message_bytes"] + 10))
        assert ws.receive_json()["code"] == "too_large"
        ws.send_json({"type": "ping", "id": 1})
        assert ws.receive_json()["type"] == "pong"


def test_a_client_sending_only_garbage_is_closed(client):
    with client.websocket_connect("/ws/stream") as ws:
        ws.receive_json()
        for _ in range(MAX_CONSECUTIVE_ERRORS):
            ws.send_text("garbage")
        for _ in range(MAX_CONSECUTIVE_ERRORS):
            assert ws.receive_json()["type"] == "error"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == 1008


def test_too_many_connections_are_refused_with_a_reason(client):
    with client.websocket_connect("/ws/stream") as a, client.websocket_connect("/ws/stream") as b, \
            client.websocket_connect("/ws/stream") as c:
        for ws in (a, b, c):
            assert ws.receive_json()["type"] == "hello"
        assert client.get("/api/health").json()["connections"] == 3
        with client.websocket_connect("/ws/stream") as refused:
            with pytest.raises(WebSocketDisconnect) as closed:
                refused.receive_json()
        assert closed.value.code == 1013 and "busy" in closed.value.reason
    with client.websocket_connect("/ws/stream") as again:  # slots free again once clients leave
        assert again.receive_json()["type"] == "hello"


def test_stale_frames_are_dropped_not_queued(media):
    face = sm.FakeFace(delay=0.2)
    with make_client(Models(fer=face)) as c, c.websocket_connect("/ws/stream") as ws:
        ws.receive_json()
        for i in range(1, 11):
            ws.send_bytes(binary(1, i, media["jpeg"]))
        answered = []
        last = receive_until(ws, lambda m: answered.append(m["id"]) or m["id"] == 10)
        stats = last["stats"]
        assert stats["frames_received"] == 10
        assert stats["frames_processed"] + stats["frames_dropped"] == 10
        assert stats["frames_dropped"] >= 5 and len(answered) <= 5 and answered[-1] == 10
        assert face.calls == stats["frames_processed"]


def test_stream_searches_near_the_last_face_and_the_whole_frame_every_nth(media, monkeypatch):
    import fer.faces

    searched = []
    name = "detect_faces_with_landmarks" if hasattr(fer.faces, "detect_faces_with_landmarks") else "detect_faces"
    real = getattr(fer.faces, name)

    def spy(image, method="haar", min_size=None):
        searched.append((image.shape[:2], min_size))
        return real(image, method, min_size)

    monkeypatch.setattr(fer.faces, name, spy)
    with make_client(Models(fer=sm.FakeFace()), full_detect_every=3) as c, c.websocket_connect("/ws/stream") as ws:
        ws.receive_json()
        boxes = []
        for i in range(1, 8):
            ws.send_bytes(binary(1, i, media["jpeg"]))
            boxes.append(ws.receive_json()["faces"][0]["box"])
    full = (480, 640)
    assert [shape == full for shape, _ in searched] == [True, False, False, True, False, False, True]
    assert all(max(shape) < 400 for shape, _ in searched if shape != full)
    assert {size for shape, size in searched if shape == full} == {None}  # the detector's own default
    for box in boxes:  # boxes found near the last face are reported in whole-frame pixels
        assert np.abs(np.array(box) - np.array(boxes[0])).max() <= 12


def test_slow_prediction_does_not_block_the_event_loop(media):
    with make_client(Models(fer=sm.FakeFace(delay=1.0))) as c, c.websocket_connect("/ws/stream") as ws:
        ws.receive_json()
        start = time.perf_counter()
        ws.send_bytes(binary(1, 1, media["jpeg"]))
        ws.send_json({"type": "ping", "id": 2})
        first = ws.receive_json()
        assert first["type"] == "pong" and time.perf_counter() - start < 0.5
        assert c.get("/api/health").status_code == 200 and time.perf_counter() - start < 0.8
        assert ws.receive_json()["kind"] == "frame"


def test_the_same_app_can_be_served_again_after_shutdown(media):
    app = create_app(settings=Settings(**SMALL), models=Models(fer=sm.FakeFace()))
    for _ in range(2):  # lifespan stops the worker threads; the next start must bring them back
        with TestClient(app) as c, c.websocket_connect("/ws/stream") as ws:
            ws.receive_json()
            ws.send_bytes(binary(1, 1, media["jpeg"]))
            assert ws.receive_json()["face_state"] == "face"


def test_failing_model_in_the_stream_answers_with_an_error(media):
    with make_client(Models(fer=sm.FakeFace(fail=True))) as c, c.websocket_connect("/ws/stream") as ws:
        ws.receive_json()
        ws.send_bytes(binary(1, 1, media["jpeg"]))
        error = ws.receive_json()
        assert error["type"] == "error" and error["code"] == "internal" and "exploded" in error["detail"]
        ws.send_json({"type": "ping"})
        assert ws.receive_json()["type"] == "pong"


def test_stream_without_models_reports_no_model(media, tmp_path):
    with make_client(load_models(tmp_path, warmup=False)) as c, c.websocket_connect("/ws/stream") as ws:
        assert not any(m["loaded"] for m in ws.receive_json()["models"].values())
        ws.send_bytes(binary(1, 1, media["jpeg"]))
        frame = ws.receive_json()
        assert frame["face_state"] == "no_model" and frame["fused"] is None
        ws.send_bytes(binary(2, 2, pcm16(sm.voice(0.5))))
        assert ws.receive_json()["voice_state"] == "no_model"


def test_voice_waits_for_enough_audio_and_silence_wins_over_older_speech():
    with make_client(Models(ser=sm.FakeVoice()), min_audio_seconds=0.5) as c, \
            c.websocket_connect("/ws/stream") as ws:
        ws.receive_json()
        ws.send_bytes(binary(2, 1, pcm16(sm.voice(0.25))))  # too little audio yet: answered, nothing predicted
        first = ws.receive_json()
        assert (first["kind"], first["id"], first["predicted"], first["voice_state"], first["voice"]) == \
            ("audio", 1, False, "unknown", None)
        ws.send_bytes(binary(2, 2, pcm16(sm.voice(0.25, seed=1))))
        second, estimate = ws.receive_json(), ws.receive_json()
        assert (second["kind"], second["id"], second["predicted"]) == ("audio", 2, False)
        assert (estimate["kind"], estimate["id"], estimate["predicted"], estimate["voice_state"]) == \
            ("voice", 2, True, "voice")
        ws.send_bytes(binary(2, 3, pcm16(np.zeros(8000))))
        silent = ws.receive_json()
        assert (silent["id"], silent["predicted"], silent["voice_state"], silent["voice"]) == \
            (3, False, "silence", None)


def test_every_audio_message_gets_one_reply_and_voice_estimates_are_rate_limited():
    voice = sm.FakeVoice(delay=0.1)
    with make_client(Models(ser=voice), voice_interval_seconds=0.5) as c, c.websocket_connect("/ws/stream") as ws:
        ws.receive_json()
        for i in range(1, 9):
            ws.send_bytes(binary(2, i, pcm16(sm.voice(0.5, seed=i))))
        time.sleep(0.6)  # an estimate in flight arrives before the pong below
        replies = []
        ws.send_json({"type": "ping", "id": 99})
        replies += receive_until_list(ws, lambda m: m.get("type") == "pong")
        acks = [r for r in replies if r.get("kind") == "audio"]
        estimates = [r for r in replies if r.get("kind") == "voice"]
        assert sorted(r["id"] for r in acks) == list(range(1, 9)) and not any(r["predicted"] for r in acks)
        assert 1 <= len(estimates) <= 2 and voice.calls == len(estimates)
        assert all(r["predicted"] and r["id"] in range(1, 9) for r in estimates)


def test_audio_is_answered_at_once_while_the_voice_model_is_slow():
    with make_client(Models(ser=sm.FakeVoice(delay=0.5))) as c, c.websocket_connect("/ws/stream") as ws:
        ws.receive_json()
        start = time.perf_counter()
        ws.send_bytes(binary(2, 1, pcm16(sm.voice(0.5))))
        ack = ws.receive_json()
        assert (ack["kind"], ack["id"]) == ("audio", 1) and time.perf_counter() - start < 0.3
        ws.send_bytes(binary(2, 2, pcm16(sm.voice(0.25, seed=2))))
        assert ws.receive_json()["id"] == 2 and time.perf_counter() - start < 0.4
        later = receive_until(ws, lambda m: m.get("kind") == "voice")
        # The voice thread takes the newest window when it starts: clip 1's, or clip 2's on a loaded machine.
        assert later["id"] in (1, 2) and (later["predicted"], later["voice_state"]) == (True, "voice")
        assert time.perf_counter() - start >= 0.5


# ---- batching and fairness across streams -------------------------------------------------

@contextlib.contextmanager
def _streams(client: TestClient, n: int):
    """``n`` open live streams, each past its hello message; closed (in reverse order) on the way out."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(client.websocket_connect("/ws/stream")) for _ in range(n)]
        for ws in sockets:
            ws.receive_json()
        yield sockets


def test_frames_of_many_streams_share_one_model_call(media):
    face = sm.FakeFace(delay=0.3)
    with make_client(Models(fer=face), max_connections=6) as c, _streams(c, 5) as sockets:
        for i, ws in enumerate(sockets):  # the first tick takes one; the rest arrive while it runs
            ws.send_bytes(binary(1, i + 1, media["jpeg"]))
        replies = [ws.receive_json() for ws in sockets]
    assert all(r["kind"] == "frame" and r["face_state"] == "face" for r in replies)
    assert face.calls < 5 and sum(face.batches) == sum(len(r["faces"]) for r in replies)
    assert max(face.batches) > max(len(r["faces"]) for r in replies)  # crops of several frames in one call


def test_a_fast_stream_does_not_starve_a_slow_one(media):
    """One face model call per tick and one stream per tick: the stream that sends frames non-stop is
    served in turn with the one that sent a single frame, not before it."""
    face = sm.FakeFace(delay=0.15)
    with make_client(Models(fer=face), max_face_batch=1) as c, c.websocket_connect("/ws/stream") as greedy, \
            c.websocket_connect("/ws/stream") as modest:
        greedy.receive_json(), modest.receive_json()
        greedy.send_bytes(binary(1, 1, media["jpeg"]))
        time.sleep(0.05)  # greedy's first frame is being analysed
        modest.send_bytes(binary(1, 100, media["jpeg"]))
        for i in range(2, 6):
            greedy.send_bytes(binary(1, i, media["jpeg"]))
        answer = modest.receive_json()
        first, second = greedy.receive_json(), greedy.receive_json()
        assert (answer["id"], first["id"], second["id"]) == (100, 1, 5)  # 2-4 were replaced, never queued
        # served right after greedy's first frame, before greedy's next one
        assert first["server_time"] < answer["server_time"] < second["server_time"]


def test_voice_windows_of_many_streams_share_one_model_call():
    voice = sm.FakeVoice(delay=0.3)
    with make_client(Models(ser=voice), max_connections=6) as c, _streams(c, 4) as sockets:
        for i, ws in enumerate(sockets):
            ws.send_bytes(binary(2, i + 1, pcm16(sm.voice(0.5, seed=i))))
        estimates = [receive_until(ws, lambda m: m.get("kind") == "voice") for ws in sockets]
    assert [e["id"] for e in estimates] == [1, 2, 3, 4] and all(e["voice_state"] == "voice" for e in estimates)
    assert sum(voice.batches) == 4 and max(voice.batches) >= 2


def test_a_hum_in_one_stream_does_not_cost_the_others_their_estimate():
    voice = sm.FakeVoice(delay=0.2)
    t = np.arange(8000) / 16000
    hum = (0.3 * np.sin(2 * np.pi * 50 * t)).astype(np.float32)
    with make_client(Models(ser=voice)) as c, c.websocket_connect("/ws/stream") as a, \
            c.websocket_connect("/ws/stream") as b, c.websocket_connect("/ws/stream") as d:
        for ws in (a, b, d):
            ws.receive_json()
        a.send_bytes(binary(2, 1, pcm16(sm.voice(0.5))))  # keeps the voice thread busy while b and d arrive
        b.send_bytes(binary(2, 2, pcm16(hum)))
        d.send_bytes(binary(2, 3, pcm16(sm.voice(0.5, seed=3))))
        answers = [receive_until(ws, lambda m: m.get("kind") == "voice") for ws in (a, b, d)]
    assert [x["voice_state"] for x in answers] == ["voice", "no_speech", "voice"]
    assert answers[1]["no_speech"] == "hum" and answers[1]["voice"] is None


def test_batcher_serves_the_longest_waiting_first_and_each_item_once():
    from webapp.scheduler import Batcher

    seen, gate = [], threading.Event()

    def work(batch):
        gate.wait(2)
        seen.append(list(batch))

    batcher = Batcher("test", work, max_batch=2)
    batcher.start()
    try:
        batcher.submit("a")   # taken at once; the tick waits at the gate while the others queue
        time.sleep(0.1)
        for item in ("b", "c", "b", "d", "e"):
            batcher.submit(item)  # "b" twice: still one place in the queue
        batcher.discard("e")      # a stream that closed
        gate.set()
        deadline = time.time() + 2
        while sum(map(len, seen)) < 4 and time.time() < deadline:
            time.sleep(0.01)
    finally:
        batcher.stop()
    assert seen == [["a"], ["b", "c"], ["d"]]
    assert batcher.ticks == 3 and batcher.served == 4
    with pytest.raises(ValueError):
        Batcher("bad", work, max_batch=0)


# ---- fusion rule --------------------------------------------------------------------------

def test_fusion_is_a_weighted_average_of_the_modalities_present():
    face = dict(zip(EMOTIONS, [0.7, 0.3, 0, 0, 0, 0, 0]))
    voice = dict(zip(EMOTIONS, [0.1, 0, 0.9, 0, 0, 0, 0]))
    both = fuse(face, voice, 0.6, 0.4)
    assert both["probabilities"]["neutral"] == pytest.approx(0.46)
    assert both["probabilities"]["sad"] == pytest.approx(0.36)
    assert both["label"] == "neutral" and both["sources"] == ["face", "voice"]
    assert fuse(None, voice, 0.6, 0.4)["probabilities"] == pytest.approx(voice, abs=1e-6)
    assert fuse(face, voice, 0.0, 1.0)["sources"] == ["voice"]
    assert fuse(None, None, 0.6, 0.4) is None
    assert sum(fuse(face, voice, 3, 1)["probabilities"].values()) == pytest.approx(1.0)


def test_stream_json_messages_round_trip_through_the_schema():
    # The page relies on these exact field names; a rename must fail here first.
    fields = set(StreamResult.model_fields)
    assert {"type", "kind", "id", "t", "server_time", "processing_ms", "predicted", "face_state", "voice_state",
            "faces",
            "image_size", "face", "voice", "no_speech", "fused", "stats"} == fields
    assert json.loads(StreamError(code="malformed", detail="x").model_dump_json())["type"] == "error"


def test_command_line_options_reach_the_settings():
    from core.config import from_args
    from webapp.__main__ import build_parser

    args = build_parser().parse_args(["--port", "9001", "--models", "elsewhere", "--max-connections", "5",
                                      "--face-weight", "0.5", "--warmup", "false"])
    settings = from_args(Settings, args)
    assert (args.port, args.models) == (9001, "elsewhere")
    assert (settings.max_connections, settings.face_weight, settings.warmup) == (5, 0.5, False)


@pytest.mark.parametrize("port", ["-1", "0", "65536", "http"])
def test_a_port_outside_the_tcp_range_is_refused_while_parsing(port, capsys):
    from webapp.__main__ import build_parser

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["--port", port])
    assert exit_.value.code == 2 and "--port" in capsys.readouterr().err


def test_late_fusion_file_sets_the_live_fusion_weights(tmp_path):
    from webapp.app import with_late_fusion_weights

    path = tmp_path / "late_fusion.json"
    path.write_text(json.dumps({"weights": {"audio": 0.3, "face": 0.9}}))
    settings = with_late_fusion_weights(Settings(), path)
    assert settings.voice_weight == pytest.approx(0.25) and settings.face_weight == pytest.approx(0.75)
    assert Settings().face_weight == 0.6  # the defaults are not mutated
    with pytest.raises(FileNotFoundError):
        with_late_fusion_weights(Settings(), tmp_path / "missing.json")
    path.write_text(json.dumps({"weights": {"audio": 0.0, "face": 0.0}}))
    with pytest.raises(ValueError):
        with_late_fusion_weights(Settings(), path)


def _started_settings(monkeypatch, check_listen: bool = False) -> dict:
    """``python -m webapp`` without serving: the returned dict gets the Settings each ``main()`` starts with.
    The host/port check is skipped unless ``check_listen`` (port 8000 may be taken on the test machine)."""
    import uvicorn

    import webapp.__main__ as cli
    import webapp.app as app_module

    if not check_listen:
        monkeypatch.setattr(cli, "listen_problem", lambda host, port: None)

    seen: dict = {}

    def fake_create_app(models_dir, settings):
        seen["settings"], seen["models_dir"] = settings, models_dir
        return create_app(models_dir, settings, models=Models())

    monkeypatch.setattr(app_module, "create_app", fake_create_app)
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    return seen


def test_server_reads_late_fusion_json_from_the_models_folder(tmp_path, monkeypatch):
    import webapp.__main__ as cli

    (tmp_path / "late_fusion.json").write_text(json.dumps({"weights": {"audio": 0.8, "face": 0.2}}))
    seen = _started_settings(monkeypatch)
    assert cli.main(["--models", str(tmp_path), "--warmup", "false"]) == 0
    assert (seen["settings"].voice_weight, seen["settings"].face_weight) == pytest.approx((0.8, 0.2))
    # weights given on the command line win over the file in the models folder
    assert cli.main(["--models", str(tmp_path), "--face-weight", "0.5", "--voice-weight", "0.5"]) == 0
    assert seen["settings"].face_weight == 0.5
    # a broken file named explicitly is an error, not a silent default
    (tmp_path / "bad.json").write_text("{}")
    assert cli.main(["--models", str(tmp_path), "--late-fusion", str(tmp_path / "bad.json")]) == 2


def test_a_port_in_use_an_unknown_host_or_a_bad_certificate_is_one_error_line_before_serving(tmp_path,
                                                                                              monkeypatch, capsys):
    """uvicorn's own bind error could come while TensorFlow's import held stderr: the server exited with status
    3 and no message. These are now checked first, with exit status 2."""
    import socket

    import webapp.__main__ as cli

    seen = _started_settings(monkeypatch, check_listen=True)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["--models", str(tmp_path), "--port", str(port)]) == 2
        assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert cli.main(["--models", str(tmp_path), "--host", "no-such-host.invalid"]) == 2
    assert "--host no-such-host.invalid" in capsys.readouterr().err
    # A mistyped --models folder used to start a server with no models whose /api/health said "ok".
    assert cli.main(["--models", str(tmp_path / "saved_modles")]) == 2
    assert capsys.readouterr().err == f"error: --models {tmp_path / 'saved_modles'}: no such folder\n"
    text = tmp_path / "notes.pem"
    text.write_text("not a certificate")
    for args, words in ((["--ssl-certfile", str(tmp_path / "absent.pem")], "absent.pem: no such file"),
                        (["--ssl-certfile", str(text), "--ssl-keyfile", str(tmp_path / "nokey.pem")],
                         "--ssl-keyfile " + str(tmp_path / "nokey.pem") + ": no such file"),
                        (["--ssl-certfile", str(text)], "not a usable PEM certificate"),
                        (["--ssl-keyfile", str(text)], "--ssl-keyfile needs --ssl-certfile")):
        assert cli.main(["--models", str(tmp_path), *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and words in err and "Traceback" not in err
    assert "settings" not in seen  # nothing was served
    assert cli.tls_problem(None, None) is None and cli.listen_problem("127.0.0.1", 0) is None


def test_a_real_self_signed_certificate_passes_the_check(tmp_path):
    import shutil
    import subprocess

    import webapp.__main__ as cli

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True)
    assert cli.tls_problem(str(cert), str(key)) is None
    assert "not a usable PEM" in cli.tls_problem(str(cert), str(cert))  # the certificate is not its own key


def test_server_reads_the_shipped_fusion_folder_with_its_rule(tmp_path, monkeypatch, repo_root):
    import webapp.__main__ as cli
    from fusion.late import read_late_config

    (tmp_path / "fusion").mkdir()
    shipped = repo_root / "saved_models" / "fusion" / "late_fusion.json"
    (tmp_path / "fusion" / "late_fusion.json").write_text(shipped.read_text())
    want = read_late_config(shipped)
    seen = _started_settings(monkeypatch)
    assert cli.main(["--models", str(tmp_path), "--warmup", "false"]) == 0
    total = want.weights["audio"] + want.weights["face"]
    assert seen["settings"].fusion_rule == want.rule
    assert seen["settings"].voice_weight == pytest.approx(want.weights["audio"] / total)


def test_live_fusion_product_rule_is_fusion_late_and_refuses_unknown_rules():
    from fusion.late import fuse as late_fuse

    face = {e: p for e, p in zip(EMOTIONS, [0.5, 0.2, 0.1, 0.1, 0.05, 0.03, 0.02])}
    voice = {e: p for e, p in zip(EMOTIONS, [0.1, 0.6, 0.1, 0.1, 0.05, 0.03, 0.02])}
    out = fuse(face, voice, 0.6, 0.4, "product")
    want = late_fuse({"face": np.array(list(face.values())), "audio": np.array(list(voice.values()))},
                     {"face": 0.6, "audio": 0.4}, "product")
    assert [out["probabilities"][e] for e in EMOTIONS] == pytest.approx(want, abs=1e-4)
    assert out["sources"] == ["face", "voice"] and out["label"] == EMOTIONS[int(np.argmax(want))]
    assert fuse(face, None, 0.6, 0.4, "product")["probabilities"] == pytest.approx(face, abs=1e-4)
    assert fuse(face, voice, 0.0, 0.0) is None
    with pytest.raises(ValueError, match="--fusion-rule"):
        Settings(fusion_rule="max")


# ---- start-up, uploads drawn, video timeline, settings --------------------------------------

def test_the_server_answers_while_the_models_load(tmp_path, monkeypatch, media):
    import webapp.models as wm

    (tmp_path / "fer").mkdir()
    for name in ("model.keras", "config.json"):
        (tmp_path / "fer" / name).write_text("{}")
    gate = threading.Event()

    def slow_face(model_dir, detector):  # a model that takes its time to load
        assert gate.wait(20)
        return sm.FakeFace()

    monkeypatch.setitem(wm.FACTORIES, "fer", slow_face)
    app = create_app(tmp_path, Settings(**(SMALL | dict(model_threads=0))))
    with TestClient(app, raise_server_exceptions=False) as c:
        deadline = time.time() + 10  # the loader thread may not have begun when the first request comes
        while (health := Health.model_validate(c.get("/api/health").json())).step == "starting" \
                and time.time() < deadline:
            time.sleep(0.02)
        assert health.status == "loading" and 0 < health.progress < 1 and "fer" in health.step
        assert health.models["fer"].error == "loading"
        busy = c.post("/api/predict/image", content=media["jpeg"], headers={"content-type": "image/jpeg"})
        assert busy.status_code == 503 and "still loading" in busy.json()["detail"]
        assert busy.headers["retry-after"] == "2"
        with c.websocket_connect("/ws/stream") as ws:
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
        assert closed.value.code == 1013 and "loading models" in closed.value.reason
        gate.set()
        deadline = time.time() + 10
        while c.get("/api/health").json()["status"] != "ok" and time.time() < deadline:
            time.sleep(0.05)
        health = Health.model_validate(c.get("/api/health").json())
        assert (health.status, health.progress, health.step) == ("ok", 1.0, "")
        assert health.models["fer"].loaded and "ser/model.keras" in health.models["ser"].error
        with c.websocket_connect("/ws/stream") as ws:
            assert ws.receive_json()["type"] == "hello"
            ws.send_bytes(binary(1, 1, media["jpeg"]))
            assert ws.receive_json()["face_state"] == "face"


def test_a_photo_comes_back_drawn(client, media):
    plain = client.post("/api/predict/image", content=media["jpeg"], headers={"content-type": "image/jpeg"})
    assert plain.status_code == 200 and "annotated" not in plain.json()
    response = client.post("/api/predict/image?annotate=true", files={"file": ("me.jpg", media["jpeg"], "image/jpeg")})
    assert response.status_code == 200, response.text
    body = ImagePrediction.model_validate(response.json())
    assert body.faces == ImagePrediction.model_validate(plain.json()).faces
    prefix = "data:image/jpeg;base64,"
    assert body.annotated.startswith(prefix)
    drawn = cv2.imdecode(np.frombuffer(base64.b64decode(body.annotated[len(prefix):]), np.uint8), cv2.IMREAD_COLOR)
    original = cv2.imdecode(np.frombuffer(media["jpeg"], np.uint8), cv2.IMREAD_COLOR)
    assert drawn.shape == original.shape
    x, y, w, h = body.faces[0].box
    edge = np.abs(drawn[y + h // 2, x - 1:x + 2].astype(int) - original[y + h // 2, x - 1:x + 2]).max()
    assert edge > 60, "the face's box is drawn on the photo"
    blank = client.post("/api/predict/image?annotate=true", content=media["blank_jpeg"],
                        headers={"content-type": "image/jpeg"}).json()
    assert blank["faces"] == [] and blank["annotated"].startswith(prefix)


def test_a_video_gets_face_voice_and_fused_per_segment(client, tmp_path):
    clip = sm.write_mp4(tmp_path / "long.mp4", seconds=7.0).read_bytes()
    plain = client.post("/api/predict/video", content=clip, headers={"content-type": "video/mp4"})
    assert plain.status_code == 200 and "segments" not in plain.json()
    response = client.post("/api/predict/video?segments=true", content=clip, headers={"content-type": "video/mp4"})
    assert response.status_code == 200, response.text
    body = VideoPrediction.model_validate(response.json())
    assert [(s.start, s.end) for s in body.segments] == [(0.0, 3.0), (3.0, 6.0), (6.0, pytest.approx(7.0, abs=0.2))]
    assert sum(s.frames_sampled for s in body.segments) == body.frames_sampled >= 6
    for segment in body.segments:
        assert segment.face and segment.voice and segment.fused and segment.frames_with_face >= 1
        for e in EMOTIONS:
            expected = 0.6 * segment.face.probabilities[e] + 0.4 * segment.voice.probabilities[e]
            assert segment.fused.probabilities[e] == pytest.approx(expected, abs=1e-5)
    assert body.label in EMOTIONS and body.face and body.voice


def test_a_video_longer_than_max_video_seconds_says_it_was_truncated(tmp_path):
    clip = sm.write_mp4(tmp_path / "long.mp4", seconds=4.0).read_bytes()
    with make_client(max_video_seconds=2.0) as short, make_client() as default:
        cut = short.post("/api/predict/video?segments=true", content=clip, headers={"content-type": "video/mp4"})
        whole = default.post("/api/predict/video", content=clip, headers={"content-type": "video/mp4"})
    assert cut.status_code == 200 and whole.status_code == 200, (cut.text, whole.text)
    cut, whole = VideoPrediction.model_validate(cut.json()), VideoPrediction.model_validate(whole.json())
    assert cut.truncated and not whole.truncated
    assert cut.duration_seconds == pytest.approx(4.0, abs=0.3)  # the file's length, not the part analysed
    assert cut.segments[-1].end == pytest.approx(2.0, abs=0.05)


def test_favicon_and_page_links():
    with make_client() as c:
        icon = c.get("/favicon.ico")
        assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
        page = c.get("/").text
        assert 'rel="icon"' in page and c.get("/static/favicon.svg").status_code == 200


@pytest.mark.parametrize("option,value,message", [
    ("max_face_batch", 0, "--max-face-batch must be at least 1"),
    ("min_face_fraction", 1.5, "--min-face-fraction must be from 0 to 1"),
    ("voice_max_share", 0.0, "--voice-max-share must be above 0 and at most 1"),
    ("detector", "eyeball", "--detector must be one of"),
    ("audio_window_seconds", 0.0, "--audio-window-seconds must be greater than 0"),
    ("face_weight", -1.0, "--face-weight and --voice-weight must be >= 0"),
])
def test_bad_settings_are_refused_with_the_option_named(option, value, message, capsys):
    from webapp.__main__ import main

    with pytest.raises(ValueError, match=message):
        Settings(**{option: value})
    assert main([f"--{option.replace('_', '-')}", str(value)]) == 2
    assert message in capsys.readouterr().err


# Every size, count and time limit (python -m webapp --max-upload-bytes 0 used to start a server that refused every
# upload); the ones that may be 0 (no queue, no rate limit, no silence detection) are refused below 0 only.
LIMITS_ABOVE_ZERO = ["max_upload_bytes", "max_message_bytes", "max_connections", "video_frames", "upload_workers",
                     "max_uploads_per_client", "max_reading_uploads", "max_frame_side", "full_detect_every",
                     "max_face_batch", "face_threads", "max_voice_batch", "max_video_seconds",
                     "upload_timeout_seconds", "silence_seconds", "audio_window_seconds", "fresh_seconds",
                     "video_segment_seconds"]
LIMITS_FROM_ZERO = ["max_waiting_uploads", "model_threads", "silence_rms", "min_audio_seconds",
                    "voice_interval_seconds", "track_pad"]


@pytest.mark.parametrize("option", LIMITS_ABOVE_ZERO + LIMITS_FROM_ZERO)
def test_every_limit_is_checked_at_start_with_the_option_named(option, tmp_path, monkeypatch, capsys):
    from dataclasses import fields

    import webapp.__main__ as cli

    seen = _started_settings(monkeypatch)
    flag = "--" + option.replace("_", "-")
    default = Settings.__dataclass_fields__[option].default
    bad = ["-1"] + (["0"] if option in LIMITS_ABOVE_ZERO else []) + (["nan", "inf"] if isinstance(default, float)
                                                                        else [])
    for value in bad:
        assert cli.main(["--models", str(tmp_path), flag, value]) == 2, (flag, value)
        err = capsys.readouterr().err
        assert err.startswith(f"error: {flag} must be") and "Traceback" not in err, err
    assert "settings" not in seen  # refused before the app (and its models) were made
    if option in LIMITS_FROM_ZERO:
        assert cli.main(["--models", str(tmp_path), flag, "0", "--warmup", "false"]) == 0
    checked = set(Settings.AT_LEAST) | set(Settings.ABOVE_ZERO)
    numeric = {f.name for f in fields(Settings) if type(f.default) in (int, float)}
    # weights, shares and fractions have their own range checks (test_bad_settings_are_refused_...)
    assert numeric - checked == {"face_weight", "voice_weight", "voice_max_share", "min_face_fraction"}


def test_min_audio_seconds_cannot_exceed_the_audio_window():
    with pytest.raises(ValueError, match="--min-audio-seconds must be at most --audio-window-seconds"):
        Settings(audio_window_seconds=1.0, min_audio_seconds=1.5)
    Settings(audio_window_seconds=1.0, min_audio_seconds=1.0)


def test_the_default_models_folder_is_the_repositorys_wherever_the_server_starts(tmp_path, monkeypatch, caplog):
    """--models defaulted to the relative "saved_models": started elsewhere, the server loaded nothing and
    /api/health said "ok". The default is now fusion.late.SHIPPED_MODELS, the folder fusion.predict reads."""
    import logging

    import webapp.__main__ as cli
    from fusion.late import SHIPPED_MODELS

    seen = _started_settings(monkeypatch)
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.WARNING)
    assert cli.main(["--warmup", "false"]) == 0
    assert seen["models_dir"] == SHIPPED_MODELS and SHIPPED_MODELS.is_absolute()
    assert cli.models_problem(SHIPPED_MODELS, "fer_tiny") is None
    assert "no models" not in caplog.text
    # a folder with none of the expected models is served, with a warning naming it as resolved
    (tmp_path / "empty").mkdir()
    assert cli.main(["--models", "empty", "--warmup", "false"]) == 0
    assert seen["models_dir"] == tmp_path.resolve() / "empty"
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING][-1]
    assert f"models folder {tmp_path.resolve() / 'empty'} holds none of the expected models" in warning
    assert "ser/, fer/, fusion/, fer_tiny/" in warning and "the server starts with no models" in warning
    assert "does not exist" in cli.models_problem(tmp_path / "absent")
    (tmp_path / "empty" / "ser").mkdir()
    for name in ("model.keras", "config.json"):
        (tmp_path / "empty" / "ser" / name).write_text("{}")
    assert cli.models_problem(tmp_path / "empty") is None


def test_a_batcher_with_a_max_share_rests_between_ticks():
    from webapp.scheduler import Batcher

    done = []

    def work(batch):
        time.sleep(0.1)
        done.append((time.perf_counter(), batch))

    batcher = Batcher("test", work, max_batch=1, max_share=0.5)
    batcher.start()
    try:
        batcher.submit("a")
        batcher.submit("b")
        time.sleep(0.15)
        batcher.submit("c")  # arrives during the rest: it waits its turn, it does not cut the rest short
        batcher.discard("c")
        deadline = time.time() + 3
        while len(done) < 2 and time.time() < deadline:
            time.sleep(0.01)
    finally:
        batcher.stop()
    assert [b for _, b in done] == [["a"], ["b"]]
    assert done[1][0] - done[0][0] >= 0.19  # 0.1 s of work, 0.1 s of rest, 0.1 s of work
    with pytest.raises(ValueError):
        Batcher("bad", work, max_share=0.0)


def test_a_failing_voice_model_answers_with_an_error_and_tries_again_later():
    class Broken(sm.FakeVoice):
        def window_results(self, waveforms):
            self.calls += 1
            raise RuntimeError("encoder exploded")

    voice = Broken()
    with make_client(Models(ser=voice), voice_interval_seconds=0.0) as c, c.websocket_connect("/ws/stream") as ws:
        ws.receive_json()
        ws.send_bytes(binary(2, 1, pcm16(sm.voice(0.5))))
        error = receive_until(ws, lambda m: m["type"] == "error")
        assert (error["code"], error["id"]) == ("internal", 1) and "encoder exploded" in error["detail"]
        ws.send_bytes(binary(2, 2, pcm16(sm.voice(0.5, seed=2))))
        again = receive_until(ws, lambda m: m["type"] == "error")
        assert again["id"] == 2 and voice.calls == 2  # the stream was not left waiting for the first estimate


def test_a_batcher_with_two_threads_never_has_an_item_in_two_ticks():
    from webapp.scheduler import Batcher

    lock, inside, overlaps, served = threading.Lock(), set(), [], []

    def work(batch):
        with lock:
            overlaps.extend(item for item in batch if item in inside)
            inside.update(batch)
        time.sleep(0.05)
        with lock:
            inside.difference_update(batch)
            served.extend(batch)

    batcher = Batcher("test", work, max_batch=2, threads=2)
    batcher.start()
    try:
        for _ in range(20):  # "a" is resubmitted while its tick runs: it waits for that tick, then runs again
            for item in ("a", "b", "c"):
                batcher.submit(item)
            time.sleep(0.01)
        deadline = time.time() + 3
        while batcher.waiting and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(0.15)
    finally:
        batcher.stop()
    assert not overlaps
    assert served.count("a") >= 3 and served.count("b") >= 3 and served.count("c") >= 3
    assert batcher.ticks >= 4 and len(batcher._workers) == 0


def test_the_live_stream_uses_its_own_small_face_model_and_uploads_the_default(tmp_path, monkeypatch, media):
    import webapp.models as wm

    for name in ("fer", "fer_tiny"):
        (tmp_path / name).mkdir()
        for f in ("model.keras", "config.json"):
            (tmp_path / name / f).write_text("{}")
    made = {}

    def face_factory(model_dir, detector, tflite=""):
        made[model_dir.name] = sm.FakeFace()
        return made[model_dir.name]

    monkeypatch.setitem(wm.FACTORIES, "fer", face_factory)
    monkeypatch.setitem(wm.FACTORIES, wm.LIVE_FACE, face_factory)
    with make_client(wm.load_models(tmp_path, warmup=False, live_face="fer_tiny")) as c:
        health = c.get("/api/health").json()
        assert health["models"]["fer"]["loaded"] and health["models"]["fer_live"]["loaded"]
        with c.websocket_connect("/ws/stream") as ws:
            ws.receive_json()
            ws.send_bytes(binary(1, 1, media["jpeg"]))
            assert ws.receive_json()["face_state"] == "face"
        assert made["fer_tiny"].calls == 1 and made["fer"].calls == 0
        assert c.post("/api/predict/image", content=media["jpeg"], headers={"content-type": "image/jpeg"}).json()["faces"]
        assert made["fer"].calls == 1 and made["fer_tiny"].calls == 1

    (tmp_path / "fer_tiny" / "model.keras").unlink()  # without it the stream uses fer, and health says so
    models = wm.load_models(tmp_path, warmup=False, live_face="fer_tiny")
    assert models.live_face is models.face
    assert "the live stream uses fer" in models.info()["fer_live"]["error"]
    assert "fer_live" not in wm.load_models(tmp_path, warmup=False).info()  # none asked for: not listed


@pytest.mark.parametrize("name", ["..", "../elsewhere", "/etc", "a/b"])
def test_the_live_face_model_is_a_folder_inside_the_models_folder(name):
    with pytest.raises(ValueError, match="--live-face-model must be a folder name"):
        Settings(live_face_model=name)


def test_the_page_sorts_files_by_the_same_extensions_as_the_command_lines():
    import re

    from core.media_types import AUDIO_EXTENSIONS, VIDEO_EXTENSIONS

    from pathlib import Path

    script = (Path(__file__).resolve().parents[1] / "webapp" / "static" / "app.js").read_text()
    table = re.search(r"const KIND_BY_EXTENSION = \{(.*?)\};", script, re.S).group(1)
    kinds = dict(re.findall(r"(\w+): '(\w+)'", table))
    assert {f".{e}" for e, k in kinds.items() if k == "audio"} == set(AUDIO_EXTENSIONS)
    assert {f".{e}" for e, k in kinds.items() if k == "video"} == set(VIDEO_EXTENSIONS)
