"""FastAPI app: the page, health, file predictions and the live WebSocket stream.

``create_app(models_dir)`` starts loading the models in a background thread and answers at once:
``/api/health`` says ``loading`` with the progress until they are in; tests pass ``models=`` fakes instead.
Nothing here takes a path from a request: uploads go to private temp files, static files come
from ``webapp/static`` only (Starlette refuses paths that leave it), models from the folder
given at start-up.
"""
from __future__ import annotations

import asyncio
import base64
import logging
import math
import re
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, HTTPException, Query, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from core.labels import EMOTIONS
from fusion.media import MAX_CLIP_FRAMES, MAX_CLIP_SECONDS
from ser.frontend import NoSpeechError, no_speech_reason
from webapp import media
from webapp.models import ModelLoader, ModelUnavailable, Models, top_label
from webapp.schemas import (AudioPrediction, ErrorResponse, Health, ImagePrediction, StreamHello, VideoPrediction,
                            stream_schema)
from webapp.stream import CLOSE_BUSY, LiveWorkers, StreamConfig, StreamSession, _now_ms

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"


@dataclass
class Settings:
    """Server limits and live-stream tuning (each one is a ``python -m webapp`` option)."""
    max_upload_bytes: int = 25 * 1024 * 1024
    max_message_bytes: int = 1024 * 1024
    max_connections: int = 32
    max_video_seconds: float = MAX_CLIP_SECONDS  # as python -m fusion.predict
    video_frames: int = MAX_CLIP_FRAMES  # an uploaded video's frames: 5 per second, at most this many (spread evenly)
    upload_workers: int = 1              # concurrent file predictions
    max_waiting_uploads: int = 8         # queued beyond the workers; more get 503 at once
    upload_timeout_seconds: float = 60.0  # the whole body must arrive within this (408 otherwise)
    max_uploads_per_client: int = 2      # uploads one client address may send or wait on at once (429 above)
    max_reading_uploads: int = 16        # bodies being received at once, all clients (503 above); bounds memory
    # -60 dBFS over the last silence_seconds: below any voice a microphone picks up (a quiet voice is
    # -45 to -55 dBFS); sound above it that is not speech (hum, fan noise) is the speech check's job.
    silence_rms: float = 0.001
    silence_seconds: float = 0.5
    audio_window_seconds: float = 2.0    # the voice model sees the last this-many seconds
    min_audio_seconds: float = 0.5
    voice_interval_seconds: float = 1.0  # at most this often a new voice estimate per stream
    max_frame_side: int = 640            # larger stream frames are downscaled before face detection
    full_detect_every: int = 5           # stream frames search near the last face, the whole frame every Nth
    track_pad: float = 0.5               # that search region: the last box grown by this many box sizes
    min_face_fraction: float = 0.0       # live frames: smallest face searched, share of the shorter side
    max_face_batch: int = 8              # streams' frames per face-thread tick (one model call)
    # Face ticks that run at once. 2 answered about as many frames as 1 with longer p95 tails on the shared
    # 2-core machine (load 6-7, three alternating 20-client runs each); more may pay on more cores.
    face_threads: int = 1
    max_voice_batch: int = 4             # streams' windows per voice-thread tick (one encoder call)
    voice_max_share: float = 0.5         # the voice thread rests so that it works at most this share of the time
    model_threads: int = 1               # TensorFlow threads per model call (0: TensorFlow's default)
    face_weight: float = 0.6
    voice_weight: float = 0.4
    fusion_rule: str = "mean"
    fresh_seconds: float = 2.0           # older face / voice estimates drop out of the fusion
    detector: str = ""                   # "": the face package's default detector
    live_face_model: str = "fer_tiny"    # the live stream's face model (a models subfolder) when it exists
    live_face_tflite: str = "float16"    # ... through its exported TFLite file when it has one ("": Keras)
    warmup: bool = True
    video_segment_seconds: float = 3.0   # ?segments=true on a video: one row per this many seconds

    # Every size, count and time limit, checked at start (python -m webapp exits with status 2 naming the option):
    # a 0-byte upload limit or a 0 s timeout would refuse every request while /api/health said "ok".
    AT_LEAST = {"max_upload_bytes": 1, "max_message_bytes": 1, "max_connections": 1, "video_frames": 1,
                "upload_workers": 1, "max_waiting_uploads": 0, "max_uploads_per_client": 1,
                "max_reading_uploads": 1, "max_frame_side": 1, "full_detect_every": 1, "max_face_batch": 1,
                "face_threads": 1, "max_voice_batch": 1, "model_threads": 0,
                "silence_rms": 0, "min_audio_seconds": 0, "voice_interval_seconds": 0, "track_pad": 0}
    ABOVE_ZERO = ("max_video_seconds", "upload_timeout_seconds", "silence_seconds", "audio_window_seconds",
                  "fresh_seconds", "video_segment_seconds")

    def __post_init__(self) -> None:
        infinite = [f.name for f in fields(self)
                    if type(getattr(self, f.name)) is float and not math.isfinite(getattr(self, f.name))]
        problems = [f"--{name.replace('_', '-')} must be a finite number, got {getattr(self, name)}"
                    for name in infinite]
        problems += [f"--{name.replace('_', '-')} must be at least {low}, got {getattr(self, name)}"
                     for name, low in self.AT_LEAST.items()
                     if name not in infinite and not getattr(self, name) >= low]
        problems += [f"--{name.replace('_', '-')} must be greater than 0, got {getattr(self, name)}"
                     for name in self.ABOVE_ZERO if name not in infinite and not getattr(self, name) > 0]
        if self.min_audio_seconds > self.audio_window_seconds:
            problems.append(f"--min-audio-seconds must be at most --audio-window-seconds "
                            f"({self.audio_window_seconds:g}: the window holds no more), got {self.min_audio_seconds}")
        if not 0 <= self.min_face_fraction < 1:
            problems.append(f"--min-face-fraction must be from 0 to 1 (0: the detector's default), "
                            f"got {self.min_face_fraction}")
        if not 0 < self.voice_max_share <= 1:
            problems.append(f"--voice-max-share must be above 0 and at most 1, got {self.voice_max_share}")
        if self.live_face_model and not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", self.live_face_model):
            problems.append(f"--live-face-model must be a folder name inside the models folder, got "
                            f"{self.live_face_model!r}")
        if self.live_face_tflite not in ("", "float16", "int8"):
            problems.append(f"--live-face-tflite must be float16, int8 or empty, got {self.live_face_tflite!r}")
        if min(self.face_weight, self.voice_weight) < 0 or self.face_weight + self.voice_weight <= 0:
            problems.append(f"--face-weight and --voice-weight must be >= 0 and not both 0, got "
                            f"{self.face_weight} and {self.voice_weight}")
        if self.fusion_rule not in ("mean", "product"):
            problems.append(f"--fusion-rule must be mean or product, got {self.fusion_rule!r}")
        if self.detector:
            from fer.faces import DETECTORS

            if self.detector not in DETECTORS:
                problems.append(f"--detector must be one of {', '.join(DETECTORS)}, got {self.detector!r}")
        if problems:
            raise ValueError("; ".join(problems))


def with_late_fusion_weights(settings: Settings, path: str | Path) -> Settings:
    """``settings`` with the face/voice weights and the rule (mean or product) of a ``late_fusion.json``."""
    from dataclasses import replace

    from fusion.late import read_late_config

    if not Path(path).is_file():
        raise FileNotFoundError(f"no such file: {path}")
    config = read_late_config(path)
    voice, face = float(config.weights.get("audio", 0.0)), float(config.weights.get("face", 0.0))
    if min(voice, face) < 0 or voice + face <= 0:
        raise ValueError(f"weights must be non-negative and not both zero, got audio={voice}, face={face}")
    return replace(settings, face_weight=face / (voice + face), voice_weight=voice / (voice + face),
                   fusion_rule=config.rule)


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text} for code, text in (
        (400, "Undecodable or unusable media; 'detail' says why."),
        (408, "The upload body did not arrive within upload_timeout_seconds."),
        (413, "Upload larger than max_upload_bytes."),
        (415, "Content type is not this endpoint's media type, multipart/form-data or application/octet-stream."),
        (422, "A query parameter is invalid; 'detail' is one line naming it."),
        (429, "This client already has max_uploads_per_client uploads in progress."),
        (503, "The model this endpoint needs is not loaded, or the server is busy."),
    )
}


class Workers:
    """The threads predictions run in, off the event loop.

    The live streams share one face thread and one voice thread (``LiveWorkers``: each serves the
    waiting streams in turn, many per model call). Uploads have their own pool so a long video does
    not hold up the live streams.
    """

    def __init__(self, settings: Settings, live: LiveWorkers) -> None:
        self.upload_workers = settings.upload_workers
        self.live = live
        self.upload: ThreadPoolExecutor | None = None
        self.start()

    def start(self) -> None:
        self.live.start()
        if self.upload is None:
            self.upload = ThreadPoolExecutor(self.upload_workers, thread_name_prefix="upload")

    def stop(self) -> None:
        self.live.stop()
        if self.upload is not None:
            self.upload.shutdown(wait=False, cancel_futures=True)
            self.upload = None


def _upload_doc(family: str) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
            "file": {"type": "string", "format": "binary"}}}},
        f"{family}/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    }}, "parameters": [{"name": "filename", "in": "query", "required": False, "schema": {"type": "string"},
                        "description": "Name echoed as 'path' for raw (non-multipart) uploads."}]}


async def read_upload(request: Request, family: str, limit: int) -> tuple[str, bytes]:
    """(file name, bytes) of a multipart or raw upload, refusing oversize (413) and wrong types (415)."""
    mime = request.headers.get("content-type", "").split(";")[0].strip().lower()
    multipart = mime == "multipart/form-data"
    if not (multipart or mime.startswith(f"{family}/") or mime == "application/octet-stream"):
        raise HTTPException(415, f"content type {mime or '(none)'!r} is not accepted here; send {family}/*, "
                                 "application/octet-stream or multipart/form-data with a 'file' field")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"upload of {declared} bytes exceeds the {limit}-byte limit")
    body = bytearray()
    async for chunk in request.stream():  # counted as it arrives: a missing Content-Length cannot bypass the limit
        body += chunk
        if len(body) > limit:
            raise HTTPException(413, f"upload exceeds the {limit}-byte limit")
    if not multipart:
        if not body:
            raise HTTPException(400, "empty upload")
        return request.query_params.get("filename") or "upload", bytes(body)
    return await _multipart_file(request, bytes(body), family)


async def _multipart_file(request: Request, body: bytes, family: str) -> tuple[str, bytes]:
    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=10)
    except MultiPartException as exc:
        raise HTTPException(400, f"malformed multipart body: {exc.message}") from None
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise HTTPException(400, "multipart body has no file field named 'file'")
    part_type = (upload.content_type or "").split(";")[0].strip().lower()
    if part_type and not (part_type.startswith(f"{family}/") or part_type == "application/octet-stream"):
        raise HTTPException(415, f"uploaded file has content type {part_type!r}; expected {family}/*")
    data = await upload.read()
    await form.close()
    if not data:
        raise HTTPException(400, "empty upload")
    return upload.filename or "upload", data


def create_app(models_dir: str | Path | None = None, settings: Settings | None = None,
               models: Models | None = None) -> FastAPI:
    """The ASGI app. Unless ``models`` is given, the models in ``models_dir`` load in a background
    thread started with the server (the ASGI lifespan), which answers (``/api/health``: ``loading``)
    while they do."""
    settings = settings or Settings()
    loader = None
    if models is None:
        loader = ModelLoader(models_dir, settings.detector, settings.warmup, settings.model_threads,
                             settings.live_face_model, settings.live_face_tflite)
        models = loader.models
    uploads_in_flight = [0]  # only touched on the event loop, so plain counters are safe
    uploads_reading = [0]
    per_client: dict[str, int] = {}
    stream_config = StreamConfig(
        max_message_bytes=settings.max_message_bytes, silence_rms=settings.silence_rms,
        silence_seconds=settings.silence_seconds, audio_window_seconds=settings.audio_window_seconds,
        min_audio_seconds=settings.min_audio_seconds, face_weight=settings.face_weight,
        voice_weight=settings.voice_weight, fresh_seconds=settings.fresh_seconds, fusion_rule=settings.fusion_rule,
        voice_interval_seconds=settings.voice_interval_seconds, max_frame_side=settings.max_frame_side,
        full_detect_every=settings.full_detect_every, track_pad=settings.track_pad,
        min_face_fraction=settings.min_face_fraction)
    workers = Workers(settings, LiveWorkers(models, stream_config, settings.max_face_batch, settings.max_voice_batch,
                                            settings.voice_max_share, settings.face_threads))
    connections: set[StreamSession] = set()

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        workers.start()  # again after a previous shutdown: the same app can be served again
        if loader is not None:
            # Here rather than in create_app: uvicorn has finished its own imports and binds the port right
            # after this, instead of sharing the interpreter with TensorFlow's import for seconds first.
            loader.start()
        yield
        workers.stop()

    # No /docs or /redoc: FastAPI's UIs load their scripts from a CDN; the OpenAPI JSON is at /openapi.json.
    app = FastAPI(title="Emotion recognition server", version="1.0", docs_url=None, redoc_url=None,
                  description="Seven emotions from voice, face and both; live over a WebSocket at /ws/stream "
                              "(message schema at /api/schema/stream).", lifespan=lifespan)
    app.state.models, app.state.settings, app.state.connections = models, settings, connections
    app.state.workers = workers
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default is a list of error objects; the API promises {"detail": "<one line>"} everywhere.
        parts = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors()]
        return JSONResponse({"detail": "invalid request: " + "; ".join(parts)}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # A model or decoder bug answers this request with 500 and a reason; the server keeps serving.
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}: {exc}"}, status_code=500)

    def limits() -> dict[str, Any]:
        return {"max_upload_bytes": settings.max_upload_bytes, "max_message_bytes": settings.max_message_bytes,
                "max_connections": settings.max_connections, "max_video_seconds": settings.max_video_seconds}

    async def predict_upload(request: Request, family: str, func) -> dict[str, Any]:
        """Read the upload, then run ``func(name, data)`` in the upload pool.

        A work slot is taken only once the whole body is here, so a client that stalls mid-upload holds
        nothing other users need: its read ends with 408 after ``upload_timeout_seconds``, one address
        may have ``max_uploads_per_client`` uploads in progress (429 beyond), and at most
        ``max_reading_uploads`` bodies are received at once. Past the read, at most (workers + waiting)
        uploads are held; beyond that 503 rather than an unbounded queue.
        """
        client = request.client.host if request.client else "unknown"
        if per_client.get(client, 0) >= settings.max_uploads_per_client:
            raise HTTPException(429, f"this client already has {settings.max_uploads_per_client} uploads in "
                                     "progress; wait for them to finish")
        if uploads_reading[0] >= settings.max_reading_uploads:
            raise HTTPException(503, "server busy receiving other uploads; retry later")
        per_client[client] = per_client.get(client, 0) + 1
        try:
            uploads_reading[0] += 1
            try:
                async with asyncio.timeout(settings.upload_timeout_seconds):
                    name, data = await read_upload(request, family, settings.max_upload_bytes)
            except TimeoutError:
                raise HTTPException(408, f"upload body not received within {settings.upload_timeout_seconds:g} "
                                         "seconds") from None
            finally:
                uploads_reading[0] -= 1
            if uploads_in_flight[0] >= settings.upload_workers + settings.max_waiting_uploads:
                raise HTTPException(503, "server busy with other uploads; retry later")
            uploads_in_flight[0] += 1
            try:
                return await asyncio.get_running_loop().run_in_executor(workers.upload, func, name, data)
            except media.MediaError as exc:
                raise HTTPException(400, str(exc)) from None
            except ModelUnavailable as exc:
                raise HTTPException(503, str(exc)) from None
            finally:
                uploads_in_flight[0] -= 1
        finally:
            per_client[client] -= 1
            if not per_client[client]:
                del per_client[client]

    def loading_detail() -> str:
        return f"the models are still loading ({round(100 * models.progress)} %: {models.step}); retry in a few seconds"

    def require(slot_name: str) -> None:
        slot = models.slots[slot_name]
        if not slot.loaded:
            if models.loading:
                raise HTTPException(503, loading_detail(), headers={"Retry-After": "2"})
            raise HTTPException(503, f"no {slot_name} model is loaded: {slot.error}")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        # Browsers ask for /favicon.ico before they read the page's <link rel="icon">.
        return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml")

    # exclude_unset: "kind" is listed for the fusion entry only
    @app.get("/api/health", response_model=Health, response_model_exclude_unset=True,
             summary="Loading state, loaded models, their classes, limits")
    async def health() -> dict[str, Any]:
        return {"status": "loading" if models.loading else "ok", "progress": round(models.progress, 3),
                "step": models.step, "emotions": list(EMOTIONS), "models": models.info(), "limits": limits(),
                "fusion": {"face_weight": settings.face_weight, "voice_weight": settings.voice_weight,
                           "fresh_seconds": settings.fresh_seconds, "rule": settings.fusion_rule,
                           "method": "weighted_average" if settings.fusion_rule == "mean" else "weighted_product"},
                "connections": len(connections)}

    @app.get("/api/schema/stream", summary="JSON Schema of the /ws/stream messages")
    async def schema_stream() -> dict[str, Any]:
        return stream_schema()

    # exclude_unset: "segments" appears only when asked for, "label": null only when there is no speech
    @app.post("/api/predict/audio", response_model=AudioPrediction, response_model_exclude_unset=True,
              responses=ERRORS, openapi_extra=_upload_doc("audio"), summary="Emotion of a speech recording")
    async def predict_audio(request: Request, segments: bool = Query(
            False, description="also return each 3 s window's emotion (a timeline of a long recording)")
    ) -> dict[str, Any]:
        require("ser")

        def work(name: str, data: bytes) -> dict[str, Any]:
            y = media.decode_audio(data, name)
            try:
                if not segments:
                    probs = models.predict_voice(y, media.SAMPLE_RATE)
                    return {"path": name, "label": top_label(probs), "probabilities": probs}
                probs, parts = models.predict_voice_segments(y, media.SAMPLE_RATE)
            except NoSpeechError as exc:  # the same answer as `python -m ser.predict --json`
                log.info("%s: %s", name, exc)
                answer = {"path": name, "label": None, "probabilities": None, "no_speech": exc.reason}
                return (answer | {"segments": []}) if segments else answer
            return {"path": name, "label": top_label(probs), "probabilities": probs, "segments": parts}

        return await predict_upload(request, "audio", work)

    @app.post("/api/predict/image", response_model=ImagePrediction, response_model_exclude_unset=True,
              responses=ERRORS, openapi_extra=_upload_doc("image"), summary="Faces and their emotions in a photo")
    async def predict_image(request: Request, annotate: bool = Query(
            False, description="also return the photo with every face boxed and labelled (a JPEG data URL)")
    ) -> dict[str, Any]:
        require("fer")

        def work(name: str, data: bytes) -> dict[str, Any]:
            image = media.decode_image(data)
            faces = models.predict_faces(image)
            answer: dict[str, Any] = {"path": name, "faces": faces}
            if annotate:
                answer["annotated"] = "data:image/jpeg;base64," + base64.b64encode(
                    media.annotated_jpeg(image, faces)).decode("ascii")
            return answer

        return await predict_upload(request, "image", work)

    @app.post("/api/predict/video", response_model=VideoPrediction, response_model_exclude_unset=True,
              responses=ERRORS, openapi_extra=_upload_doc("video"),
              summary="Emotion of a video clip (face, voice and fused)")
    async def predict_video(request: Request, segments: bool = Query(
            False, description="also return face, voice and fused per segment of the clip (a timeline)")
    ) -> dict[str, Any]:
        if models.loading:
            raise HTTPException(503, loading_detail(), headers={"Retry-After": "2"})
        if not (models.face.loaded or models.voice.loaded or models.fusion.loaded):
            raise HTTPException(503, "no face, voice or fusion model is loaded")
        return await predict_upload(request, "video",
                                    lambda name, data: predict_video_bytes(models, settings, name, data, segments))

    @app.websocket("/ws/stream")
    async def stream(ws: WebSocket) -> None:
        await ws.accept()
        if models.loading:
            # The page reads the progress from /api/health and tries again.
            await ws.close(code=CLOSE_BUSY, reason=f"loading models ({round(100 * models.progress)} %); retry shortly")
            return
        if len(connections) >= settings.max_connections:
            await ws.close(code=CLOSE_BUSY, reason=f"server busy: {settings.max_connections} streams are open "
                                                   "(the limit); retry later")
            return
        session = StreamSession(ws, models, workers.live, stream_config)
        connections.add(session)
        try:
            hello = StreamHello(session=session.id, server_time=_now_ms(), emotions=list(EMOTIONS),
                                models=models.info(), limits=limits())
            await session.send(hello.model_dump())
            await session.run()
        finally:
            connections.discard(session)

    return app


def as_vector(probabilities: dict[str, float] | None) -> np.ndarray | None:
    return None if probabilities is None else np.array([probabilities[e] for e in EMOTIONS], np.float64)


NO_AUDIO_TRACK = "no audio track"  # fusion.late.LateFusion.modality_probs's audio_missing for the same clip


def predict_video_bytes(models: Models, settings: Settings, name: str, data: bytes,
                        segments: bool = False) -> dict[str, Any]:
    """Video upload -> face (mean over sampled frames), voice (audio track) and their fusion; with
    ``segments`` also face, voice and fused per stretch of ``video_segment_seconds``.

    The clip is read by ``fusion.late.decode_for_prediction``, as ``python -m fusion.predict`` reads it: the same
    frames (5 per second, at most ``video_frames``) and the same audio samples, so both give the same answer."""
    import cv2

    from fusion.late import (LATE_FPS, NO_FACE_FOUND, LateFusionConfig, clip_answer, clip_segments,
                             decode_for_prediction)
    from fusion.media import MediaError as ClipError
    from fusion.media import StillImageError
    from ser.audio import AudioError, check_signal

    with media.temp_file(data, name) as path:
        try:
            clip, info = decode_for_prediction(path, LATE_FPS, settings.max_video_seconds, settings.video_frames)
        except ClipError as exc:  # a voice memo (no video stream) is not an error: it gives no frames
            hint = " (POST /api/predict/image reads it)" if isinstance(exc, StillImageError) else ""
            raise media.MediaError(media.video_reason(exc, path) + hint) from None
        span = clip.span(settings.max_video_seconds)  # the rule fusion.predict reports by
        frames = [cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) for rgb in clip.frames]
        times = [k / clip.fps for k in range(len(frames))]
        voice = no_speech = audio_missing = None
        speechless = False  # sound that is not speech (hum, noise): the joint model is not asked either
        per_frame: list[np.ndarray | None] = [None] * len(frames)  # the largest face's probabilities
        if models.face.loaded:
            for i, faces in enumerate(map(models.predict_faces, frames)):
                per_frame[i] = as_vector(faces[0]["probabilities"]) if faces else None
        seen = [p for p in per_frame if p is not None]
        face = np.mean(seen, axis=0) if seen else None
        frames_with_face = len(seen)
        windows: list[dict] = []
        if not clip.audio.size:
            audio_missing = NO_AUDIO_TRACK
        elif not models.voice.loaded:
            audio_missing = f"no voice model is loaded ({models.voice.error})"
        else:
            try:
                # The source name "audio" is SERPredictor.predict_waveform's, so audio_missing reads word for word
                # as fusion.predict's (LateFusion.modality_probs: str() of the same AudioError).
                check_signal(clip.audio, "audio")  # a silent track is no voice, as in load_audio
                if segments:
                    probs, windows = models.predict_voice_segments(clip.audio, clip.sample_rate)
                else:
                    probs = models.predict_voice(clip.audio, clip.sample_rate)
                voice = as_vector(probs)
            except AudioError as exc:  # silent, too short, or no speech in it: the face alone decides
                log.info("%s: no usable audio (%s)", name, exc)
                no_speech, audio_missing = no_speech_reason(exc), str(exc)
                speechless = isinstance(exc, NoSpeechError)
        if not frames and voice is None and not speechless:  # worded as fusion.late.LateFusion.predict_clip says it
            raise media.MediaError(f"nothing to predict from ({audio_missing}; "
                                   f"{info.get('face_missing', 'no video frames')})")
        fused = None
        if models.fusion.loaded and not speechless and frames:
            try:
                fused = as_vector(models.predict_fusion_file(str(path)))
            except Exception as exc:  # the clip may not suit the joint model (no speech, say): fall back
                log.warning("%s: fusion model failed (%s); fused late instead", name, exc)
    if not frames_with_face and "face_missing" not in info:
        info["face_missing"] = (NO_FACE_FOUND if models.face.loaded
                                else f"no face model is loaded ({models.face.error})")
    info.update({"seconds": round(clip.seconds, 3), "frames_sampled": len(frames),
                 "frames_with_face": frames_with_face, "no_speech": no_speech, "audio_missing": audio_missing, **span})
    # One builder for this answer and fusion.predict's: the same fields, the same fusion of the same numbers.
    late = LateFusionConfig({"audio": settings.voice_weight, "face": settings.face_weight}, settings.fusion_rule)
    answer = clip_answer(name, {"audio": voice, "face": face}, info, None if fused is not None else late, fused=fused)
    if segments:
        answer["segments"] = clip_segments(
            per_frame, times, [(w["start"], w["end"], as_vector(w["probabilities"])) for w in windows],
            span["duration_seconds"], settings.max_video_seconds, late, settings.video_segment_seconds)
    return answer
