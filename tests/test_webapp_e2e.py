"""End to end with the real SERPredictor / FERPredictor (tiny models trained here), the API and the browser.

The browser tests run the real server (uvicorn, in a thread or as ``python -m webapp`` in a process that is
killed) and the page in headless Chromium with a fake camera playing a generated Y4M clip of the
astronaut's face and a fake microphone playing a generated WAV of speech-like sound with silent gaps:
results appear, pause / resume, a killed server shows as disconnected within 2 s and the page recovers,
the loading state while models load, blocked devices, and each kind of upload drawn. They skip only when
Chromium is not installed. Screenshots go to test-artifacts/ (``WEBAPP_SCREENSHOTS=docs`` writes the
documentation's copies).
"""
from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
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
REPO_ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO_ROOT / "test-artifacts"
SHOTS = REPO_ROOT / os.environ.get("WEBAPP_SCREENSHOTS", "test-artifacts")
SCREENSHOT = SHOTS / ("screenshot.png" if SHOTS.name == "docs" else "webapp.png")
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


def launch_browser(playwright, tmp_path: Path, video: Path, audio: Path, allow_devices: bool = True,
                   profile: str = "chromium-profile"):
    """Chromium with a fake camera and microphone playing ``video`` and ``audio``; without
    ``allow_devices`` every camera / microphone request is refused, as when a user clicks Block."""
    grant = ["--use-fake-ui-for-media-stream"] if allow_devices else ["--deny-permission-prompts"]
    return playwright.chromium.launch_persistent_context(
        user_data_dir=str(tmp_path / profile),  # fresh profile every run
        executable_path=str(CHROMIUM if CHROMIUM.exists() else shutil.which("chromium")),
        headless=True,
        viewport={"width": 1280, "height": 900},
        args=["--headless", "--no-sandbox", *grant, "--use-fake-device-for-media-stream",
              f"--use-file-for-fake-video-capture={video}", f"--use-file-for-fake-audio-capture={audio}",
              "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"],
    )


def screenshot(page, name: str, selector: str | None = None, top: int | None = None) -> Path:
    """A small PNG (256 colours) in SHOTS: the page, one element, or the page's ``top`` pixels."""
    from PIL import Image

    SHOTS.mkdir(exist_ok=True)
    path = SHOTS / name
    if top is not None:
        page.screenshot(path=str(path), clip={"x": 0, "y": 0, "width": page.viewport_size["width"], "height": top})
    else:
        (page.locator(selector) if selector else page).screenshot(path=str(path))
    Image.open(path).convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)
    assert path.stat().st_size > 5_000
    return path


def live_state(page) -> dict:
    """What the page shows: its live state, the fused label, the bar values and the connection pill."""
    return page.evaluate("""() => ({
        live: document.querySelector('#live').dataset.live,
        conn: document.querySelector('#conn-state').dataset.state,
        connText: document.querySelector('#conn-state').textContent,
        fused: document.querySelector('#fused-label').textContent,
        values: [...document.querySelectorAll('.bar-value')].map(v => v.textContent),
        grey: getComputedStyle(document.querySelector('.result-panel')).filter,
    })""")


def wait_live(page, timeout: int = WAIT_MS) -> None:
    page.wait_for_function("window.emotionApp.live === 'live'", timeout=timeout)


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
    if not os.environ.get(MODELS_ENV):  # no joint model: the voice and face are fused late, as fusion.predict does
        assert health["models"]["fusion"] == {"loaded": True, "classes": list(EMOTIONS), "error": None,
                                              "kind": "late"}
    assert isinstance(client.app.state.models.voice.predictor, SERPredictor)
    assert isinstance(client.app.state.models.face.predictor, FERPredictor)


def test_an_uploaded_video_gets_the_answer_fusion_predict_gives(client, models_dir, tmp_path):
    """The server and `python -m fusion.predict` read a clip through the same function (fusion.late.
    decode_for_prediction): the same frames, the same samples, so the same face, voice and fused answer."""
    from fusion.late import LateFusion

    settings = client.app.state.settings
    late = LateFusion(models_dir / "ser", models_dir / "fer", rule=settings.fusion_rule,
                      weights={"audio": settings.voice_weight, "face": settings.face_weight})
    for seconds in (3.0, 25.0):  # 25 s: more frames than --video-frames at 5 per second, spread evenly
        path = sm.write_mp4(tmp_path / f"clip{seconds:g}.mp4", seconds=seconds)
        cli = late.predict_clip(path, segments=True, segment_seconds=settings.video_segment_seconds)
        server = client.post("/api/predict/video?segments=true", content=path.read_bytes(),
                             headers={"content-type": "video/mp4"})
        assert server.status_code == 200, server.text
        server = server.json()
        assert len(server["segments"]) == len(cli["segments"]) == math.ceil(seconds / 3)  # the same timeline
        for mine, theirs in zip(server.pop("segments"), cli.pop("segments")):
            assert list(mine) == list(theirs)
            assert [mine[k] for k in ("start", "end", "frames_sampled", "frames_with_face")] == \
                   [theirs[k] for k in ("start", "end", "frames_sampled", "frames_with_face")]
            for side in ("voice", "face", "fused"):
                assert (mine[side] is None) == (theirs[side] is None), side
                if mine[side]:
                    assert mine[side]["probabilities"] == pytest.approx(theirs[side]["probabilities"], abs=1e-4)
        assert server["frames_sampled"] == cli["frames_sampled"] == min(int(seconds * 5), settings.video_frames)
        assert server["frames_with_face"] == cli["frames_with_face"] > 0
        assert list(server) == list(cli)  # one object (fusion.late.clip_answer), field for field
        for side in ("face", "voice"):
            assert server[side]["probabilities"] == pytest.approx(cli[side]["probabilities"], abs=1e-4)
        assert server["probabilities"] == pytest.approx(cli["probabilities"], abs=1e-4)
        facts = set(cli) - {"path", "probabilities", "face", "voice"}
        assert {k: server[k] for k in facts} == {k: cli[k] for k in facts}
        assert cli["mode"] == "late" and cli["used"] == ["voice", "face"]


def test_a_video_with_a_silent_or_no_audio_track_says_why_as_fusion_predict_does(client, models_dir, tmp_path):
    """A digitally silent track used to answer "voice": null, "no_speech": null while fusion.predict --json named
    the reason (audio_missing): both now read the track through the same code and say the same."""
    from fusion.late import LateFusion
    from tests.synth_video import write_clip

    late = LateFusion(models_dir / "ser", models_dir / "fer")
    clips = {"silent": write_clip(tmp_path / "silent.mp4", audio=np.zeros(32_000, np.float32), seconds=2.0,
                                  fps=10, size=(160, 120)),
             "mute": sm.write_mp4(tmp_path / "mute.mp4", with_audio=False)}
    for kind, path in clips.items():
        cli = late.predict_clip(path)
        server = client.post("/api/predict/video", content=path.read_bytes(), headers={"content-type": "video/mp4"})
        assert server.status_code == 200, server.text
        server = server.json()
        assert server["voice"] is None and cli["voice"] is None
        assert list(server) == list(cli)
        assert (server["audio_missing"], server["face_missing"]) == (cli["audio_missing"], cli["face_missing"]), kind
        assert server["no_speech"] == ("silence" if kind == "silent" else None)
        assert server["label"] == cli["label"]


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
        ack = StreamResult.model_validate(ws.receive_json())
        assert (ack.kind, ack.id, ack.predicted) == ("audio", 2, False)
        audio = StreamResult.model_validate(ws.receive_json())
        assert (audio.kind, audio.id, audio.predicted) == ("voice", 2, True)
        assert audio.voice_state == "voice" and audio.fused.sources == ["face", "voice"]
        assert sum(audio.voice.values()) == pytest.approx(1.0, abs=1e-4)


def test_batched_live_calls_answer_like_the_predictors(live_models):
    """The stream's batches (faces of several frames in one call, windows of several streams in one call)
    give each frame and window what FERPredictor.predict_image and SERPredictor.predict_waveform give it."""
    from ser.frontend import NoSpeechError

    frames = [sm.face_image(shift=s) for s in (-40, 0, 40)] + [np.full((240, 320, 3), 90, np.uint8)]
    found = [live_models.find_faces(f) for f in frames]
    batched = live_models.classify_faces(list(zip(frames, found)))
    assert [len(f) for f in batched[:3]] == [1, 1, 1] and batched[3] == []
    for image, faces in zip(frames, batched):
        single = live_models.predict_faces(image)
        assert [f["box"] for f in faces] == [f["box"] for f in single]
        for a, b in zip(faces, single):
            assert a["label"] == b["label"]
            assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)

    t = np.arange(32000) / 16000
    hum = (0.3 * np.sin(2 * np.pi * 50 * t)).astype(np.float32)
    windows = [sm.voice(2.0), sm.voice(1.3, f0=200, seed=4), hum, sm.voice(2.0, seed=5), 0.03 * sm.voice(2.0, seed=5)]
    answers = live_models.predict_voice_batch(windows, 16000)
    assert isinstance(answers[2], NoSpeechError) and answers[2].reason == "hum"
    for window, answer in zip(windows, answers):
        if window is hum:
            continue
        assert answer == pytest.approx(live_models.predict_voice(window, 16000), abs=1e-5)
    # the same voice 30 dB quieter gets the same answer: the level is normalised before the model hears it
    assert answers[4] == pytest.approx(answers[3], abs=1e-3)


def voice_estimate_through_the_stream(client, y: np.ndarray) -> tuple[dict, list[dict]]:
    """The first voice estimate of a new stream that sends ``y`` as the page does (250 ms int16 chunks),
    and every answer to the chunks before it."""
    pcm = (np.clip(y, -1, 1) * 32767).astype("<i2")
    answers = []
    with client.websocket_connect("/ws/stream") as ws:
        ws.receive_json()
        for k, start in enumerate(range(0, pcm.size - 3999, 4000)):
            ws.send_bytes(BINARY_HEADER.pack(2, k + 1, 0.0) + pcm[start:start + 4000].tobytes())
        for _ in range(100):
            msg = ws.receive_json()
            if msg.get("kind") == "voice":
                return msg, answers
            answers.append(msg)
    raise AssertionError("no voice estimate")


HUM = (0.3 * np.sin(2 * np.pi * 50 * np.arange(32000) / 16000)).astype(np.float32)


def test_stream_hears_a_quiet_voice_and_no_emotion_in_a_hum(client):
    speech = 0.03 * sm.voice(2.0, seed=7)  # about -52 dBFS: a quiet talker a metre from a laptop
    assert 20 * np.log10(np.sqrt(np.mean(speech ** 2))) < -45
    quiet, _ = voice_estimate_through_the_stream(client, speech)
    assert quiet["voice_state"] == "voice" and quiet["voice"] and quiet["fused"]["sources"] == ["voice"]
    hum, _ = voice_estimate_through_the_stream(client, HUM)
    assert hum["voice_state"] == "no_speech" and hum["no_speech"] == "hum"
    assert hum["voice"] is None and hum["fused"] is None


def test_stream_hears_a_quiet_real_recording(client, shared_data):
    import librosa

    from ser.audio import load_audio
    from ser.frontend import active_rms

    clips = sorted((shared_data / "ravdess").rglob("03-01-0[1-8]-01-01-01-*.*"))[:1] if \
        (shared_data / "ravdess").is_dir() else []
    if not clips:
        pytest.skip("no RAVDESS speech clip under the shared data folder")
    y, _ = librosa.effects.trim(load_audio(clips[0], sr=16000), top_db=30)  # the sentence, without the pauses
    y = y / active_rms(y) * 10 ** (-50 / 20)  # spoken at -50 dBFS
    quiet, answers = voice_estimate_through_the_stream(client, y[: 16000 * 2])
    assert quiet["voice_state"] == "voice" and quiet["voice"]
    assert sum(a["voice_state"] == "silence" for a in answers) <= 1, "a quiet voice is not silence"


def timeline_right_edge_is_blank(page) -> bool:
    """Whether the fused band at the timeline's right end ("now") is not any emotion's colour."""
    return page.evaluate("""(colors) => {
        const c = document.querySelector('#timeline');
        const [r, g, b] = c.getContext('2d').getImageData(c.width - 3, 3, 1, 1).data;
        return !colors.some(hex => { const n = parseInt(hex.slice(1), 16);
            return Math.abs((n >> 16) - r) < 12 && Math.abs(((n >> 8) & 255) - g) < 12 && Math.abs((n & 255) - b) < 12; });
    }""", ['#b8c2cc', '#f2c230', '#4a8fe7', '#e5533d', '#9b6ee8', '#5fb548', '#f08ac6'])


def assert_greyed_out(page, word: str) -> None:
    state = live_state(page)
    assert state["fused"] == word, state
    assert all(v == "–" for v in state["values"]), "no probability may stay on screen"
    assert "grayscale" in state["grey"]
    assert page.eval_on_selector("#live-banner", "b => getComputedStyle(b).display") == "block"


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
            assert page.get_attribute("#device-help", "data-state") == "none" and not page.is_visible("#device-help")
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

            # The microphone file alternates speech and silence: both states show up, and voice estimates
            # arrive as their own results.
            seen = set()
            deadline = time.time() + 12
            while time.time() < deadline and not {"voice", "silence"} <= seen:
                seen.add(page.get_attribute("#voice-state", "data-state"))
                page.wait_for_timeout(100)
            assert {"voice", "silence"} <= seen
            page.wait_for_function("document.querySelector('#voice-state').dataset.state === 'voice'",
                                   timeout=WAIT_MS)
            assert page.evaluate("window.emotionApp.voiceResults") >= 1
            assert float(page.text_content("#rtt")) > 0
            assert max(bars(page, "voice").values()) > 0
            # frames analysed per second, next to the frames sent per second
            analysed, sent = int(page.text_content("#frame-rate")), int(page.text_content("#frame-sent"))
            assert 1 <= analysed <= sent + 1 and sent >= 3
            page.wait_for_function("window.emotionApp.frameResults > 0 && "
                                   "document.querySelector('#face-state').dataset.state === 'face'", timeout=WAIT_MS)
            page.wait_for_timeout(300)
            screenshot(page, SCREENSHOT.name)

            # Pause: nothing is sent, the results grey out and say so; resume brings them back.
            page.click("#pause")
            assert page.evaluate("window.emotionApp.paused") and page.text_content("#pause") == "Resume"
            page.wait_for_timeout(400)  # answers in flight arrive and are not shown as live
            sent_before = page.evaluate("window.emotionApp.framesSent")
            page.wait_for_timeout(800)
            assert page.evaluate("window.emotionApp.framesSent") == sent_before
            assert_greyed_out(page, "paused")
            page.click("#pause")
            wait_live(page)
            page.wait_for_function(f"window.emotionApp.framesSent > {sent_before + 2}", timeout=WAIT_MS)
            page.wait_for_function("document.querySelector('#fused-label').dataset.label !== ''", timeout=WAIT_MS)

            # Server goes away: within 2 s the page says disconnected, greys out every result and stops the
            # timeline; it reconnects by itself when the server is back.
            server.stop()
            page.wait_for_function("window.emotionApp.live === 'down'", timeout=2000)
            assert "disconnected" in page.text_content("#conn-state") and "server down" in page.text_content("#conn-state")
            assert_greyed_out(page, "disconnected")
            page.wait_for_timeout(2200)
            assert timeline_right_edge_is_blank(page), "the last emotion must not be drawn forward"
            server.start()
            wait_live(page)
            assert page.get_attribute("#conn-state", "data-state") == "connected"
            count = page.evaluate("window.emotionApp.frameResults")
            page.wait_for_function(f"window.emotionApp.frameResults > {count + 2}", timeout=WAIT_MS)

            # Microphone only: voice works, the face side says the camera is off.
            mic_only = browser.new_page()
            mic_only.goto(url + "?camera=off")
            mic_only.wait_for_function("window.emotionApp.audioResults >= 2", timeout=WAIT_MS)
            assert mic_only.get_attribute("#camera-state", "data-state") == "off"
            assert mic_only.get_attribute("#face-state", "data-state") == "no_camera"
            assert mic_only.evaluate("window.emotionApp.frameResults") == 0
            assert mic_only.get_attribute("#device-help", "data-state") == "none"  # off on purpose: no complaint
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
def test_page_shows_the_models_loading_then_goes_live(tmp_path, models_dir, monkeypatch):
    """The server answers before its models are in; the page says so with the progress and goes live after."""
    from playwright.sync_api import sync_playwright

    import webapp.models as wm

    gate = threading.Event()
    real_voice = wm.FACTORIES["ser"]

    def slow_voice(model_dir, detector):  # a big encoder still loading
        assert gate.wait(60)
        return real_voice(model_dir, detector)

    monkeypatch.setitem(wm.FACTORIES, "ser", slow_voice)
    server = ServerThread(create_app(models_dir, Settings(warmup=False, model_threads=0)), free_port()).start()
    try:
        health = client_health(server.port)
        assert health["status"] == "loading" and 0 < health["progress"] < 1
        with sync_playwright() as p:
            browser = launch_browser(p, tmp_path, sm.write_y4m(tmp_path / "face.y4m", n_frames=10, fps=15),
                                     sm.write_wav(tmp_path / "voice.wav", sm.voice(2.0)))
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{server.port}/")
            page.wait_for_function("window.emotionApp.connection === 'loading' && window.emotionApp.loadProgress > 0",
                                   timeout=WAIT_MS)
            assert page.is_visible("#loading") and "loading" in page.text_content("#conn-state")
            assert "%" in page.text_content("#load-text") and "ser" in page.text_content("#load-text")
            assert live_state(page)["live"] == "loading"
            screenshot(page, "webapp-loading.png", top=170)
            gate.set()
            wait_live(page)
            page.wait_for_function("window.emotionApp.frameResults >= 2", timeout=WAIT_MS)
            assert not page.is_visible("#loading")
            browser.close()
    finally:
        gate.set()
        server.stop()


def client_health(port: int, timeout: float = 2.0) -> dict:
    import json

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=timeout) as response:
        return json.load(response)


def start_server_process(models_dir: Path, port: int, log: Path) -> tuple[subprocess.Popen, dict, float]:
    """``python -m webapp`` in its own process; (process, its first /api/health answer, seconds to it)."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "webapp", "--models", str(models_dir), "--port", str(port),
                             "--warmup", "false", "--log-level", "warning"], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=open(log, "ab"))
    start = time.perf_counter()
    while time.perf_counter() - start < 60:
        assert proc.poll() is None, f"server exited: {log.read_text()[-2000:]}"
        try:
            return proc, client_health(port, 1.0), time.perf_counter() - start
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("the server did not answer in 60 s")


@needs_chromium
def test_page_recovers_from_a_killed_server(tmp_path, models_dir):
    """A real ``python -m webapp`` process: it answers while its models load, is killed (SIGKILL) under the
    page, which says "disconnected" within 2 s, and the page goes live again when a new one starts."""
    from playwright.sync_api import sync_playwright

    port, log = free_port(), tmp_path / "server.log"
    proc, health, waited = start_server_process(models_dir, port, log)
    try:
        # the port answers at once (fastapi + uvicorn start in well under the models' load time)
        assert health["status"] == "loading" and waited < 15, (health, waited)
        with sync_playwright() as p:
            browser = launch_browser(p, tmp_path, sm.write_y4m(tmp_path / "face.y4m", n_frames=10, fps=15),
                                     sm.write_wav(tmp_path / "voice.wav", sm.voice(2.0)))
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/")
            wait_live(page, timeout=90_000)
            page.wait_for_function("window.emotionApp.frameResults >= 3", timeout=WAIT_MS)
            proc.send_signal(signal.SIGKILL)
            killed = time.perf_counter()
            page.wait_for_function("window.emotionApp.live === 'down'", timeout=2000)
            assert time.perf_counter() - killed < 2.0
            assert_greyed_out(page, "disconnected")
            page.wait_for_timeout(500)
            screenshot(page, "webapp-disconnected.png", "main")
            proc.wait(10)
            proc, _, _ = start_server_process(models_dir, port, log)
            wait_live(page, timeout=90_000)  # through "server starting" if the page catches it loading
            count = page.evaluate("window.emotionApp.frameResults")
            page.wait_for_function(f"window.emotionApp.frameResults > {count + 2}", timeout=WAIT_MS)
            assert live_state(page)["fused"] != "disconnected"
            browser.close()
    finally:
        proc.kill()
        proc.wait(10)


@needs_chromium
def test_page_notices_a_server_that_stops_answering(tmp_path, live_models):
    """A connection that stays open but goes quiet (a hung server, a dropped network) is not live either:
    unanswered pings make the page say disconnected, and it reconnects."""
    from playwright.sync_api import sync_playwright

    server = ServerThread(create_app(settings=Settings(warmup=False), models=live_models), free_port()).start()
    frozen = threading.Event()

    def relay(ws) -> None:  # between page and server; while frozen the server's messages are lost
        upstream = ws.connect_to_server()
        upstream.on_message(lambda message: None if frozen.is_set() else ws.send(message))

    try:
        with sync_playwright() as p:
            browser = launch_browser(p, tmp_path, sm.write_y4m(tmp_path / "face.y4m", n_frames=5, fps=15),
                                     sm.write_wav(tmp_path / "voice.wav", sm.voice(1.0)))
            page = browser.new_page()
            page.route_web_socket("**/ws/stream", relay)
            page.goto(f"http://127.0.0.1:{server.port}/?mic=off")
            page.wait_for_function("window.emotionApp.frameResults >= 2", timeout=WAIT_MS)
            frozen.set()
            started = time.perf_counter()
            page.wait_for_function("window.emotionApp.live === 'down'", timeout=5000)
            assert time.perf_counter() - started < 3.5  # 2 s without an answer to a ping sent every 0.5 s
            assert "no answer from the server" in page.text_content("#conn-state")
            assert_greyed_out(page, "disconnected")
            frozen.clear()
            wait_live(page)
            count = page.evaluate("window.emotionApp.frameResults")
            page.wait_for_function(f"window.emotionApp.frameResults > {count + 1}", timeout=WAIT_MS)
            browser.close()
    finally:
        server.stop()


@needs_chromium
def test_page_explains_blocked_devices_and_points_to_the_file_box(tmp_path, live_models):
    from playwright.sync_api import sync_playwright

    server = ServerThread(create_app(settings=Settings(warmup=False), models=live_models), free_port()).start()
    try:
        with sync_playwright() as p:
            browser = launch_browser(p, tmp_path, sm.write_y4m(tmp_path / "face.y4m", n_frames=5, fps=15),
                                     sm.write_wav(tmp_path / "voice.wav", sm.voice(1.0)), allow_devices=False)
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{server.port}/")
            page.wait_for_function("window.emotionApp.deviceHelp !== 'none'", timeout=WAIT_MS)
            assert page.evaluate("[window.emotionApp.camera, window.emotionApp.microphone]") == ["denied", "denied"]
            assert page.get_attribute("#device-help", "data-state") == "denied"
            help_text = page.text_content("#device-help")
            assert "blocked" in help_text and "Allow" in help_text and "reload" in help_text
            assert page.get_attribute("#device-help a", "href") == "#file-panel"
            assert page.get_attribute("#camera-state", "data-state") == "denied"
            wait_live(page)  # the stream still connects; the file box still works
            screenshot(page, "webapp-blocked.png", top=190)
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
    # 6.5 s analysed of the 7 s video below: the page must say that only its start was heard and seen.
    settings = Settings(warmup=False, max_video_seconds=6.5)
    server = ServerThread(create_app(settings=settings, models=live_models), free_port()).start()
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

            def mini_bars() -> list[dict[str, float]]:  # the 7 probabilities under each result
                return page.eval_on_selector_all("#file-result .mini-bars", "boxes => boxes.map(b => Object.fromEntries("
                                                 "[...b.children].map(c => [c.dataset.emotion, parseFloat(c.dataset.p)])))")

            # A recording: its label and 7 probabilities, a plot of its windows, then one row per 3 s window.
            rows = upload("talk.wav", "audio/wav", speech)
            assert page.get_attribute("#file-state", "data-state") == "done"
            assert rows[0]["text"].startswith("talk.wav: ") and rows[0]["label"] in EMOTIONS
            assert [r["label"] for r in rows[1:]] == [s["label"] for s in expected]
            assert rows[1]["text"].startswith(f"{expected[0]['start']:.1f}–{expected[0]['end']:.1f} s")
            (overall,) = mini_bars()
            assert list(overall) == list(EMOTIONS) and sum(overall.values()) == pytest.approx(1.0, abs=0.01)
            assert page.get_attribute("#file-result canvas.file-plot", "data-columns") == str(len(expected))
            screenshot(page, "webapp-upload-recording.png", "#file-panel")

            # A photo: drawn by the server (every face boxed and labelled), one row and 7 bars per face.
            rows = upload("me.jpg", "image/jpeg", sm.jpeg_bytes(sm.face_image()))
            assert rows and rows[0]["text"].startswith("face 1 at (") and rows[0]["label"] in EMOTIONS
            page.wait_for_function("document.querySelector('#file-result img.file-image').naturalWidth === 640",
                                   timeout=WAIT_MS)
            assert page.get_attribute("#file-result img.file-image", "src").startswith("data:image/jpeg;base64,")
            assert len(mini_bars()) == len(rows) and all(len(b) == 7 for b in mini_bars())
            screenshot(page, "webapp-upload-photo.png", "#file-panel")

            # A video: fused, face and voice, a plot of the segments and one table row per segment.
            clip = sm.write_mp4(tmp_path / "clip.mp4", seconds=7.0).read_bytes()
            rows = upload("clip.mp4", "video/mp4", clip)
            assert rows[0]["text"].startswith("clip.mp4: ") and rows[0]["label"] in EMOTIONS
            assert [r["text"].split(":")[0] for r in rows[1:]] == ["face", "voice"]
            segments = page.evaluate("window.emotionApp.fileResult.segments")
            cells = page.eval_on_selector_all("#file-result table.segments tr[data-fused]", "trs => trs.map(tr => "
                                              "[...tr.querySelectorAll('td[data-side]')].map(td => td.dataset.label || ''))")
            assert len(cells) == len(segments) == 3 and segments[-1]["end"] == pytest.approx(6.5)
            assert "only the start of this 7.0 s clip was analysed" in page.text_content("#file-state")
            for row, seg in zip(cells, segments):
                assert row == [seg[side]["label"] if seg[side] else "" for side in ("fused", "face", "voice")]
            assert page.get_attribute("#file-result canvas.file-plot", "data-kind") == "video"
            screenshot(page, "webapp-upload-video.png", "#file-panel")

            # A broken recording shows the server's reason; a text file never leaves the page.
            rows = upload("broken.wav", "audio/wav", b"RIFF" + bytes(40))
            assert page.get_attribute("#file-state", "data-state") == "error" and not rows
            assert "broken.wav: " in page.text_content("#file-state")
            rows = upload("notes.txt", "text/plain", b"hello")
            assert "not an audio, image or video file" in page.text_content("#file-state") and not rows
            browser.close()
    finally:
        server.stop()


def test_load_benchmark_reports_the_goals_and_writes_where_told(tmp_path):
    """bench/bench_webapp.py against a running server (stand-in models, 2 clients, 2 s): it writes into the
    folder given, never over bench/results, and states the goals, the voice estimates and the load."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("bench_webapp", REPO_ROOT / "bench" / "bench_webapp.py")
    bench = sys.modules.setdefault("bench_webapp", importlib.util.module_from_spec(spec))
    if not hasattr(bench, "main"):
        spec.loader.exec_module(bench)
    assert bench.DEFAULT_OUT.parent.name == "runs"  # the committed results only with --out bench/results
    committed = (REPO_ROOT / "bench" / "results" / "webapp.json").stat().st_mtime
    server = ServerThread(create_app(settings=Settings(warmup=False, voice_interval_seconds=0.5),
                                     models=Models(ser=sm.FakeVoice(), fer=sm.FakeFace())), free_port()).start()
    try:
        code = bench.main(["--url", f"ws://127.0.0.1:{server.port}/ws/stream", "--clients", "2", "--duration", "2",
                           "--out", str(tmp_path / "out")])
    finally:
        server.stop()
    assert code == 0
    report = json.loads((tmp_path / "out" / "webapp.json").read_text())
    assert report["connected"] == 2 and report["errors"] == 0 and report["frames_sent"] >= 10
    assert 0 < report["frames_answered_share"] <= 1 and report["voice_estimates"] >= 2
    assert set(report["goals"]) == {"rtt_all_p95_ms", "rtt_frame_p95_ms", "frames_answered_share", "errors"}
    assert len(report["machine"]["load_average_before"]) == 3
    text = (tmp_path / "out" / "webapp.md").read_text()
    assert "Machine load" in text and "voice estimate age" in text and "| goal (issue 18) |" in text
    assert (REPO_ROOT / "bench" / "results" / "webapp.json").stat().st_mtime == committed
    with pytest.raises(SystemExit):  # refused while parsing, before anything starts
        bench.main(["--clients", "0", "--url", "ws://127.0.0.1:1/ws/stream"])


def test_the_live_face_model_runs_its_tflite_file_and_answers_like_keras(models_dir, tmp_path):
    """--live-face-model with --live-face-tflite float16: the stream's faces go through the exported file
    (cheaper per face, and outside TensorFlow's thread pool the voice model uses), within 1e-3 of Keras."""
    from core.export import TFLiteModel, to_tflite
    from core.io import load_keras_model

    shutil.copytree(models_dir / "fer", tmp_path / "fer")
    shutil.copytree(models_dir / "fer", tmp_path / "fer_tiny")
    model = load_keras_model(tmp_path / "fer_tiny" / "model.keras")
    (tmp_path / "fer_tiny" / "model_float16.tflite").write_bytes(
        to_tflite(model, "float16", np.random.default_rng(0).uniform(0, 255, (8, 48, 48, 1)).astype(np.float32)))
    models = load_models(tmp_path, warmup=False, live_face="fer_tiny", live_tflite="float16")
    assert models.info()["fer_live"]["loaded"] and isinstance(models.live_face.predictor._forward, TFLiteModel)
    frames = [sm.face_image(shift=s) for s in (-30, 30)]
    live = models.classify_faces([(f, models.find_faces(f)) for f in frames])
    for image, faces in zip(frames, live):
        keras_faces = models.predict_faces(image)  # the uploads' model: the same weights through Keras
        assert [f["box"] for f in faces] == [f["box"] for f in keras_faces]
        for a, b in zip(faces, keras_faces):
            assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-3)
