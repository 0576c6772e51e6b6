"""End to end with the real SERPredictor / FERPredictor (tiny models trained here), the API and the browser.

The browser test runs the real server (uvicorn) and the page in headless Chromium with a fake camera
playing a generated Y4M clip of the astronaut's face and a fake microphone playing a generated WAV of
speech-like sound with silent gaps. It skips only when Chromium is not installed.
"""
from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

import synth_media as sm
from core.labels import EMOTIONS
from webapp.app import Settings, create_app
from webapp.models import Models, load_models
from webapp.schemas import AudioPrediction, ImagePrediction, StreamResult, VideoPrediction
from webapp.stream import BINARY_HEADER

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
SCREENSHOT = ARTIFACTS / "webapp.png"
WAIT_MS = 30_000
MODELS_ENV = "WEBAPP_E2E_MODELS"

needs_chromium = pytest.mark.skipif(not CHROMIUM.exists() and not shutil.which("chromium"),
                                    reason="Chromium is not installed (apt-get install chromium); "
                                           "the browser end-to-end test needs it")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """uvicorn serving ``app`` in a background thread; stop() and start() again on the same port."""

    def __init__(self, app, port: int) -> None:
        self.app, self.port, self.thread, self.server = app, port, None, None

    def start(self) -> "ServerThread":
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port,
                                                    log_level="warning", ws_max_size=4 * 1024 * 1024,
                                                    ws_per_message_deflate=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            assert self.thread.is_alive() and time.time() < deadline, "server did not start"
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def launch_browser(playwright, tmp_path: Path, video: Path, audio: Path):
    return playwright.chromium.launch_persistent_context(
        user_data_dir=str(tmp_path / "chromium-profile"),  # fresh profile every run
        executable_path=str(CHROMIUM if CHROMIUM.exists() else shutil.which("chromium")),
        headless=True,
        viewport={"width": 1280, "height": 900},
        args=["--headless", "--no-sandbox", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
              f"--use-file-for-fake-video-capture={video}", f"--use-file-for-fake-audio-capture={audio}",
              "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"],
    )


def bars(page, group: str) -> dict[str, float]:
    return page.eval_on_selector_all(
        f"#bars-{group} .bar-row",
        "rows => Object.fromEntries(rows.map(r => "
        "[r.dataset.emotion, parseFloat(r.querySelector('.bar-fill').dataset.p)]))")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory) -> Path:
    # WEBAPP_E2E_MODELS=saved_models runs everything on the shipped models (e.g. for the README screenshot).
    if os.environ.get(MODELS_ENV):
        return Path(os.environ[MODELS_ENV])
    return sm.train_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def live_models(models_dir) -> Models:
    models = load_models(models_dir)  # the server's own loader, warm-up included
    assert models.voice.loaded and models.face.loaded, models.info()
    return models


@pytest.fixture(scope="module")
def client(live_models):
    with TestClient(create_app(settings=Settings(warmup=False), models=live_models)) as c:
        yield c


def test_real_models_load_from_the_models_folder(client, models_dir):
    from fer.predict import FERPredictor
    from ser.predict import SERPredictor

    health = client.get("/api/health").json()
    assert health["models"]["ser"] == {"loaded": True, "classes": list(EMOTIONS), "error": None}
    assert health["models"]["fer"]["loaded"]
    if not os.environ.get(MODELS_ENV):
        assert not health["models"]["fusion"]["loaded"]
    assert isinstance(client.app.state.models.voice.predictor, SERPredictor)
    assert isinstance(client.app.state.models.face.predictor, FERPredictor)


def test_broken_model_is_reported_and_the_rest_still_loads(models_dir, tmp_path):
    import shutil as sh

    sh.copytree(models_dir / "fer", tmp_path / "fer")
    sh.copytree(models_dir / "ser", tmp_path / "ser")
    (tmp_path / "ser" / "model.keras").write_bytes(b"not a keras file")  # truncated download, say
    models = load_models(tmp_path, warmup=False)
    assert models.face.loaded and not models.voice.loaded
    assert models.voice.error  # the loader's reason, shown by /api/health
    assert str(tmp_path) not in models.voice.error, "health must not reveal server paths"
    assert models.info()["ser"] == {"loaded": False, "classes": [], "error": models.voice.error}


def test_uploads_answer_like_the_clis(client, models_dir, tmp_path):
    from fer.predict import FERPredictor
    from ser.predict import SERPredictor

    wav = sm.write_wav(tmp_path / "speech.wav", sm.voice(1.5))
    response = client.post("/api/predict/audio", files={"file": ("speech.wav", wav.read_bytes(), "audio/wav")})
    assert response.status_code == 200, response.text
    served = AudioPrediction.model_validate(response.json())
    cli = SERPredictor(models_dir / "ser").predict_file(wav)
    assert served.label == cli["label"]
    assert served.probabilities == pytest.approx(cli["probabilities"], abs=1e-5)

    image = sm.face_image()
    response = client.post("/api/predict/image", content=sm.jpeg_bytes(image, 95),
                           headers={"content-type": "image/jpeg"})
    served_faces = ImagePrediction.model_validate(response.json()).faces
    decoded = sm.cv2.imdecode(np.frombuffer(sm.jpeg_bytes(image, 95), np.uint8), sm.cv2.IMREAD_COLOR)
    cli_faces = FERPredictor(models_dir / "fer").predict_image(decoded)
    assert len(served_faces) == len(cli_faces) >= 1
    assert served_faces[0].box == cli_faces[0]["box"] and served_faces[0].label == cli_faces[0]["label"]
    assert served_faces[0].probabilities == pytest.approx(cli_faces[0]["probabilities"], abs=1e-5)

    clip = sm.write_mp4(tmp_path / "clip.mp4")
    response = client.post("/api/predict/video", files={"file": ("clip.mp4", clip.read_bytes(), "video/mp4")})
    video = VideoPrediction.model_validate(response.json())
    assert video.face and video.voice and video.label in EMOTIONS and video.frames_with_face > 0


def test_stream_with_real_models(client):
    with client.websocket_connect("/ws/stream") as ws:
        assert ws.receive_json()["type"] == "hello"
        ws.send_bytes(BINARY_HEADER.pack(1, 1, 0.0) + sm.jpeg_bytes(sm.face_image()))
        frame = StreamResult.model_validate(ws.receive_json())
        assert frame.face_state == "face" and frame.faces[0].label in EMOTIONS
        pcm = (sm.voice(1.0) * 32767).astype("<i2").tobytes()
        ws.send_bytes(BINARY_HEADER.pack(2, 2, 0.0) + pcm)
        audio = StreamResult.model_validate(ws.receive_json())
        assert audio.voice_state == "voice" and audio.fused.sources == ["face", "voice"]
        assert sum(audio.voice.values()) == pytest.approx(1.0, abs=1e-4)


@needs_chromium
def test_page_shows_live_emotions_in_chromium(tmp_path, live_models):
    from playwright.sync_api import sync_playwright

    video = sm.write_y4m(tmp_path / "face.y4m", n_frames=30, fps=15)
    audio = sm.write_wav(tmp_path / "voice.wav", sm.voice_with_gaps(speech_seconds=2.0, gap_seconds=1.5))
    app = create_app(settings=Settings(warmup=False), models=live_models)
    server = ServerThread(app, free_port()).start()
    url = f"http://127.0.0.1:{server.port}/"
    try:
        with sync_playwright() as p:
            browser = launch_browser(p, tmp_path, video, audio)
            page = browser.new_page()
            page.goto(url)
            page.wait_for_function("window.emotionApp.frameResults >= 3 && window.emotionApp.audioResults >= 2",
                                   timeout=WAIT_MS)
            assert page.get_attribute("#camera-state", "data-state") == "on"
            assert page.get_attribute("#mic-state", "data-state") == "on"
            assert page.get_attribute("#conn-state", "data-state") == "connected"
            page.wait_for_function("document.querySelector('#face-state').dataset.state === 'face'", timeout=WAIT_MS)
            page.wait_for_function("document.querySelector('#fused-label').dataset.label !== ''", timeout=WAIT_MS)
            assert page.text_content("#fused-label").strip() in live_models.face.classes

            # Bars carry probabilities that sum to one, and they move as the face moves and the voice changes.
            first = {g: bars(page, g) for g in ("face", "fused")}
            count = page.evaluate("window.emotionApp.results")
            assert sum(first["face"].values()) == pytest.approx(1.0, abs=0.01)
            page.wait_for_function(f"window.emotionApp.results > {count + 5}", timeout=WAIT_MS)
            page.wait_for_timeout(500)
            second = {g: bars(page, g) for g in ("face", "fused")}
            assert second["face"] != first["face"] or second["fused"] != first["fused"]

            # The microphone file alternates speech and silence: both states show up.
            seen = set()
            deadline = time.time() + 12
            while time.time() < deadline and not {"voice", "silence"} <= seen:
                seen.add(page.get_attribute("#voice-state", "data-state"))
                page.wait_for_timeout(100)
            assert {"voice", "silence"} <= seen
            page.wait_for_function("document.querySelector('#voice-state').dataset.state === 'voice'",
                                   timeout=WAIT_MS)
            assert float(page.text_content("#rtt")) > 0
            assert max(bars(page, "voice").values()) > 0
            page.wait_for_function("window.emotionApp.frameResults > 0 && "
                                   "document.querySelector('#face-state').dataset.state === 'face'", timeout=WAIT_MS)
            ARTIFACTS.mkdir(exist_ok=True)
            page.wait_for_timeout(300)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
            assert SCREENSHOT.stat().st_size > 10_000

            # Server goes away: the page says so, then reconnects by itself when it is back.
            server.stop()
            page.wait_for_function("document.querySelector('#conn-state').dataset.state === 'down'", timeout=WAIT_MS)
            assert "server down" in page.text_content("#conn-state")
            server.start()
            page.wait_for_function("document.querySelector('#conn-state').dataset.state === 'connected'",
                                   timeout=WAIT_MS)
            count = page.evaluate("window.emotionApp.frameResults")
            page.wait_for_function(f"window.emotionApp.frameResults > {count + 2}", timeout=WAIT_MS)

            # Microphone only: voice works, the face side says the camera is off.
            mic_only = browser.new_page()
            mic_only.goto(url + "?camera=off")
            mic_only.wait_for_function("window.emotionApp.audioResults >= 2", timeout=WAIT_MS)
            assert mic_only.get_attribute("#camera-state", "data-state") == "off"
            assert mic_only.get_attribute("#face-state", "data-state") == "no_camera"
            assert mic_only.evaluate("window.emotionApp.frameResults") == 0
            mic_only.close()

            # Camera only: faces and the fused label from the face alone.
            camera_only = browser.new_page()
            camera_only.goto(url + "?mic=off")
            camera_only.wait_for_function("window.emotionApp.frameResults >= 2", timeout=WAIT_MS)
            assert camera_only.get_attribute("#voice-state", "data-state") == "no_microphone"
            assert camera_only.evaluate("window.emotionApp.audioResults") == 0
            camera_only.wait_for_function("document.querySelector('#fused-label').dataset.label !== ''",
                                          timeout=WAIT_MS)
            assert camera_only.evaluate("window.emotionApp.lastResult.fused.sources") == ["face"]
            browser.close()
    finally:
        server.stop()


@needs_chromium
def test_page_analyses_uploaded_files(tmp_path, live_models):
    from playwright.sync_api import sync_playwright

    from webapp.media import SAMPLE_RATE, decode_audio

    speech = sm.wav_bytes(sm.voice(5.0))  # expected from the same 16-bit samples the server will decode
    _, expected = live_models.predict_voice_segments(decode_audio(speech, "talk.wav"), SAMPLE_RATE)
    assert len(expected) >= 2
    server = ServerThread(create_app(settings=Settings(warmup=False), models=live_models), free_port()).start()
    try:
        with sync_playwright() as p:
            browser = launch_browser(p, tmp_path, sm.write_y4m(tmp_path / "face.y4m", n_frames=5, fps=15),
                                     sm.write_wav(tmp_path / "voice.wav", sm.voice(1.0)))
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{server.port}/?camera=off&mic=off")

            def upload(name: str, mime: str, data: bytes) -> list[dict]:
                page.evaluate("document.querySelector('#file-state').dataset.state = 'idle'")
                page.set_input_files("#file-input", files=[{"name": name, "mimeType": mime, "buffer": data}])
                page.wait_for_function("['done', 'error'].includes(document.querySelector('#file-state').dataset.state)",
                                       timeout=WAIT_MS)
                return page.eval_on_selector_all("#file-result .file-row", "rows => rows.map(r => "
                                                 "({label: r.dataset.label || '', text: r.textContent}))")

            # A recording: its label, then one row per 3 s window, as the API's segments.
            rows = upload("talk.wav", "audio/wav", speech)
            assert page.get_attribute("#file-state", "data-state") == "done"
            assert rows[0]["text"].startswith("talk.wav: ") and rows[0]["label"] in EMOTIONS
            assert [r["label"] for r in rows[1:]] == [s["label"] for s in expected]
            assert rows[1]["text"].startswith(f"{expected[0]['start']:.1f}–{expected[0]['end']:.1f} s")

            # A photo: one row per face.
            rows = upload("me.jpg", "image/jpeg", sm.jpeg_bytes(sm.face_image()))
            assert rows and rows[0]["text"].startswith("face 1 at (") and rows[0]["label"] in EMOTIONS

            # A broken recording shows the server's reason; a text file never leaves the page.
            rows = upload("broken.wav", "audio/wav", b"RIFF" + bytes(40))
            assert page.get_attribute("#file-state", "data-state") == "error" and not rows
            assert "broken.wav: " in page.text_content("#file-state")
            rows = upload("notes.txt", "text/plain", b"hello")
            assert "not an audio, image or video file" in page.text_content("#file-state") and not rows
            browser.close()
    finally:
        server.stop()
