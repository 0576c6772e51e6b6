"""One live WebSocket stream: parse messages, keep per-connection state, predict off the event loop.

Fast path:
- the event loop only parses, keeps per-connection state and sends; predictions run in two
  worker threads shared by every stream (``LiveWorkers``: faces, voice), each serving the streams
  that wait in turn and many of them per model call (``webapp.scheduler.Batcher``);
- frames go through a one-slot mailbox per stream: a newer frame replaces one the face thread has
  not taken yet (counted in ``frames_dropped``, never answered), and the face thread takes the
  newest frame when the stream's turn comes, so under load replies describe recent pictures;
  one tick finds the faces of up to ``max_face_batch`` streams' frames and classifies all their
  crops in one model call;
- every audio message is answered at once with the current state (``kind: "audio"``); its samples
  go into a rolling window, and when a stream is due a new voice estimate (speech, not silence,
  at most every ``voice_interval_seconds``), the voice thread takes its newest window, up to
  ``max_voice_batch`` streams per encoder call, and the estimate is pushed as its own result
  (``kind: "voice"``, ``id`` and ``t`` of the newest audio message it heard). The voice thread
  works at most ``voice_max_share`` of the time: on a loaded machine voice estimates come less
  often, and frames stay fast.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import struct
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect

from core.labels import EMOTIONS
from ser.frontend import NoSpeechError
from webapp import media
from webapp.models import PRECISION, Models, face_box, top_label
from webapp.scheduler import Batcher
from webapp.schemas import (StreamAudioIn, StreamError, StreamFrameIn, StreamPingIn, StreamPong, StreamResult,
                            StreamStats)

log = logging.getLogger(__name__)

BINARY_HEADER = struct.Struct("<BId")  # kind, id, client time (ms)
BINARY_KINDS = {1: ("frame", None), 2: ("audio", "int16"), 3: ("audio", "float32")}
JSON_MESSAGES = {"frame": StreamFrameIn, "audio": StreamAudioIn, "ping": StreamPingIn}
MAX_CONSECUTIVE_ERRORS = 20  # a client that sends only garbage is closed (1008) after this many
CLOSE_BUSY = 1013            # "try again later": the connection limit is reached, or the models still load
CLOSE_POLICY = 1008
MAX_PENDING_SENDS = 32       # replies waiting for a client that does not read; more are dropped (bounds memory)


class MessageError(ValueError):
    def __init__(self, code: str, detail: str, msg_id: int | None = None) -> None:
        super().__init__(detail)
        self.code, self.detail, self.msg_id = code, detail, msg_id


@dataclass
class Incoming:
    kind: str                      # frame | audio | ping
    id: int | None
    t: float | None
    payload: bytes = b""
    samples: np.ndarray | None = None
    received: float = 0.0          # time.perf_counter() at receipt


@dataclass(frozen=True)
class StreamConfig:
    max_message_bytes: int
    silence_rms: float
    silence_seconds: float
    audio_window_seconds: float
    min_audio_seconds: float
    face_weight: float
    voice_weight: float
    fresh_seconds: float
    fusion_rule: str = "mean"
    voice_interval_seconds: float = 1.0
    max_frame_side: int = 640
    full_detect_every: int = 5
    track_pad: float = 0.5
    min_face_fraction: float = 0.0


def _decode_b64(text: str, msg_id: int | None) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MessageError("malformed", f"'data' is not valid base64 ({exc})", msg_id) from None


def parse_message(raw: bytes | str) -> Incoming:
    """A binary or JSON client message -> Incoming; MessageError says what is wrong with it."""
    now = time.perf_counter()
    if isinstance(raw, bytes):
        if len(raw) < BINARY_HEADER.size:
            raise MessageError("malformed", f"binary message shorter than its {BINARY_HEADER.size}-byte header")
        kind_code, msg_id, t = BINARY_HEADER.unpack_from(raw)
        if kind_code not in BINARY_KINDS:
            raise MessageError("unsupported", f"unknown binary message kind {kind_code}; known: "
                               f"{sorted(BINARY_KINDS)}", msg_id)
        kind, fmt = BINARY_KINDS[kind_code]
        payload = raw[BINARY_HEADER.size:]
        t = t if np.isfinite(t) else None
    else:
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise MessageError("malformed", f"not JSON: {exc}") from None
        if not isinstance(obj, dict) or "type" not in obj:
            raise MessageError("malformed", "expected a JSON object with a 'type' field")
        msg_id = obj.get("id") if isinstance(obj.get("id"), int) else None
        schema = JSON_MESSAGES.get(obj["type"]) if isinstance(obj["type"], str) else None
        if schema is None:
            raise MessageError("unsupported", f"unknown message type {obj['type']!r}; known: "
                               f"{sorted(JSON_MESSAGES)}", msg_id)
        try:
            msg = schema.model_validate(obj)
        except ValidationError as exc:
            errors = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise MessageError("malformed", f"invalid {obj['type']} message: {errors}", msg_id) from None
        kind, msg_id, t = msg.type, msg.id, msg.t
        # Python's JSON reader takes NaN / Infinity; echoed back they would make our replies invalid JSON
        t = t if t is None or np.isfinite(t) else None
        fmt = getattr(msg, "format", None)
        payload = _decode_b64(msg.data, msg_id) if kind != "ping" else b""
    incoming = Incoming(kind, msg_id, t, payload, received=now)
    if kind == "audio":
        try:
            incoming.samples = media.pcm_samples(payload, fmt)
        except media.MediaError as exc:
            raise MessageError("bad_media", str(exc), msg_id) from None
    elif kind == "frame" and not payload:
        raise MessageError("bad_media", "empty frame", msg_id)
    return incoming


def fuse(face: dict[str, float] | None, voice: dict[str, float] | None,
         face_weight: float, voice_weight: float, rule: str = "mean") -> dict[str, Any] | None:
    """Late fusion of the modalities present (``fusion.late.fuse``: weighted mean, or weighted geometric mean for
    ``rule="product"``, weights renormalised over them); a modality with weight 0 is left out."""
    import numpy as np

    from fusion.late import fuse as late_fuse

    parts = {name: probs for name, probs, w in (("face", face, face_weight), ("voice", voice, voice_weight))
             if probs is not None and w > 0}
    if not parts:
        return None
    vectors = {("audio" if name == "voice" else name): np.array([probs.get(e, 0.0) for e in EMOTIONS])
               for name, probs in parts.items()}
    fused = late_fuse(vectors, {"face": face_weight, "audio": voice_weight}, rule)
    probabilities = {e: round(float(p), PRECISION) for e, p in zip(EMOTIONS, fused)}
    return {"label": top_label(probabilities), "probabilities": probabilities, "sources": list(parts)}


@dataclass
class FrameJob:
    session: "StreamSession"
    incoming: Incoming
    image: np.ndarray     # downscaled for detection
    scale: float          # boxes in ``image`` times this are boxes in the frame that was sent
    size: list[int]       # [width, height] of the frame that was sent
    faces: list[Any] | None = None  # as Models.find_faces gives them


class LiveWorkers:
    """The face and voice threads every stream shares (see the module notes)."""

    def __init__(self, models: Models, config: StreamConfig, max_face_batch: int = 8, max_voice_batch: int = 4,
                 voice_max_share: float = 0.5, face_threads: int = 1) -> None:
        self.models, self.config = models, config
        self.face = Batcher("face", self.process_frames, max_face_batch, threads=face_threads)
        self.voice = Batcher("voice", self.process_voice, max_voice_batch, max_share=voice_max_share)

    def start(self) -> None:
        self.face.start()
        self.voice.start()

    def stop(self) -> None:
        self.face.stop()
        self.voice.stop()

    # ---- faces (in the face thread) ------------------------------------------------------
    def process_frames(self, sessions: Sequence["StreamSession"]) -> None:
        """One tick: the newest frame of each stream, faces found frame by frame, classified in one call."""
        jobs: list[FrameJob] = []
        batchable = self.models.face_batchable
        for session in sessions:
            incoming = session.take_frame()
            if incoming is None:
                continue
            try:
                image = media.decode_image(incoming.payload)
                small, scale = media.downscale(image, self.config.max_frame_side)
                job = FrameJob(session, incoming, small, scale, [int(image.shape[1]), int(image.shape[0])])
                if batchable:
                    job.faces = session.find_faces(small)
            except Exception as exc:  # answered as an error message by the stream's event loop
                session.deliver_frame(incoming, exc)
                continue
            jobs.append(job)
        if not jobs:
            return
        if batchable:
            try:
                found: list[Any] = self.models.classify_faces([(job.image, job.faces or []) for job in jobs])
            except Exception as exc:  # the model failed: each of these frames is answered with the error
                found = [exc] * len(jobs)
        else:  # a predictor without separate detection (a stand-in): one call per frame
            found = []
            for job in jobs:
                try:
                    found.append(self.models.predict_faces(job.image, live=True))
                except Exception as exc:
                    found.append(exc)
        for job, faces in zip(jobs, found):
            outcome = faces if isinstance(faces, Exception) else (media.scale_faces(faces, job.scale), job.size)
            job.session.deliver_frame(job.incoming, outcome)

    # ---- voice (in the voice thread) -----------------------------------------------------
    def process_voice(self, sessions: Sequence["StreamSession"]) -> None:
        """One tick: the newest audio window of each stream, through the voice model in one call."""
        taken = [(session, session.take_window()) for session in sessions]
        try:
            answers: list[Any] = self.models.predict_voice_batch([window for _, (window, _, _) in taken],
                                                                 media.SAMPLE_RATE)
        except Exception as exc:  # every stream hears of it; none is left waiting for an estimate forever
            answers = [exc] * len(taken)
        for (session, (_, seq, newest)), answer in zip(taken, answers):
            session.deliver_voice(seq, newest, answer)


class StreamSession:
    """State and tasks of one WebSocket connection."""

    def __init__(self, ws: WebSocket, models: Models, workers: LiveWorkers, config: StreamConfig) -> None:
        self.ws, self.models, self.workers, self.config = ws, models, workers, config
        self.loop = asyncio.get_running_loop()
        self.id = uuid.uuid4().hex[:12]
        self.stats = StreamStats()
        self.send_lock = asyncio.Lock()
        self.tasks: set[asyncio.Task] = set()
        self.closed = False
        # The worker threads take the newest input when the stream's turn comes, not when it arrived.
        self.take_lock = threading.Lock()
        self.latest_frame: Incoming | None = None
        self.track_box: list[int] | None = None  # last face found, searched first in the next frame
        self.frames_since_full = 0               # (both touched by the face thread only)
        self.voice_pending = False
        self.last_voice_start = -1e9
        self.window = np.zeros(0, np.float32)
        self.window_size = int(config.audio_window_seconds * media.SAMPLE_RATE)
        self.audio_seq = 0        # audio messages received so far
        self.newest_audio: Incoming | None = None  # id, t and receipt time of the newest audio message
        self.silence_seq = -1     # number of the last audio message that ended in silence
        self.face_probs: dict[str, float] | None = None
        self.face_time = 0.0
        self.voice_probs: dict[str, float] | None = None
        self.voice_time = 0.0
        self.no_speech: str | None = None  # what the latest voice window held instead of speech
        self.face_state = "unknown" if models.live_face.loaded else "no_model"
        self.voice_state = "unknown" if models.voice.loaded else "no_model"
        self.consecutive_errors = 0

    # ---- receiving -----------------------------------------------------------------------
    async def run(self) -> None:
        try:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
                raw = message.get("bytes")
                if raw is None:
                    raw = message.get("text") or ""
                if not await self.handle_raw(raw):
                    break
        except WebSocketDisconnect:
            pass
        finally:
            self.closed = True
            self.workers.face.discard(self)
            self.workers.voice.discard(self)
            for task in list(self.tasks):
                task.cancel()

    async def handle_raw(self, raw: bytes | str) -> bool:
        """Handle one message; False when the connection should close."""
        size = len(raw) if isinstance(raw, bytes) or len(raw) * 4 <= self.config.max_message_bytes \
            else len(raw.encode("utf-8", "surrogatepass"))
        try:
            if size > self.config.max_message_bytes:
                msg_id = BINARY_HEADER.unpack_from(raw)[1] if isinstance(raw, bytes) else None
                raise MessageError("too_large", f"message of {size} bytes exceeds the "
                                   f"{self.config.max_message_bytes}-byte limit; send smaller frames or chunks",
                                   msg_id)
            incoming = parse_message(raw)
        except MessageError as exc:
            return await self.report_error(exc.code, exc.detail, exc.msg_id)
        self.consecutive_errors = 0
        if incoming.kind == "ping":
            await self.send(StreamPong(id=incoming.id, t=incoming.t, server_time=_now_ms()).model_dump())
        elif incoming.kind == "frame":
            await self.on_frame(incoming)
        else:
            await self.on_audio(incoming)
        return True

    async def report_error(self, code: str, detail: str, msg_id: int | None) -> bool:
        self.stats.errors += 1
        self.consecutive_errors += 1
        await self.send(StreamError(code=code, detail=detail, id=msg_id).model_dump())
        if self.consecutive_errors >= MAX_CONSECUTIVE_ERRORS:
            await self.ws.close(code=CLOSE_POLICY, reason=f"{MAX_CONSECUTIVE_ERRORS} bad messages in a row")
            return False
        return True

    # ---- frames --------------------------------------------------------------------------
    async def on_frame(self, incoming: Incoming) -> None:
        self.stats.frames_received += 1
        if not self.models.live_face.loaded:
            self.stats.frames_processed += 1
            await self.send_result("frame", incoming)
            return
        with self.take_lock:
            if self.latest_frame is not None:
                self.stats.frames_dropped += 1  # replaced before the face thread got to it
            self.latest_frame = incoming
        self.workers.face.submit(self)

    def take_frame(self) -> Incoming | None:
        """The newest frame, now that the stream's turn has come (face thread)."""
        with self.take_lock:
            incoming, self.latest_frame = self.latest_frame, None
        return incoming

    def find_faces(self, image: np.ndarray) -> list[Any]:
        """Faces in a stream frame (face thread): near the last face when there is one, the whole frame
        every ``full_detect_every`` frames (new faces) or when the face was lost."""
        faces: list[Any] = []
        tracking = self.track_box is not None and self.frames_since_full < self.config.full_detect_every - 1
        if tracking:
            faces = self.models.find_faces(image, near=self.track_box, pad=self.config.track_pad)
            self.frames_since_full += 1
        if not faces:
            # min_face_fraction > 0: only webcam-sized faces, which makes a haar search 2-5x cheaper
            # (and at high values more prone to false faces: haar then searches a much smaller copy).
            fraction = self.config.min_face_fraction
            min_size = max(20, int(fraction * min(image.shape[:2]))) if fraction > 0 else None
            faces = self.models.find_faces(image, min_size=min_size)
            self.frames_since_full = 0
        self.track_box = face_box(faces[0]) if faces else None
        return faces

    def deliver_frame(self, incoming: Incoming, outcome: Any) -> None:
        """Hand a frame's faces (or the exception it raised) from the face thread to the event loop."""
        self._call_on_loop(self._frame_done, incoming, outcome)

    def _frame_done(self, incoming: Incoming, outcome: Any) -> None:
        if isinstance(outcome, media.MediaError):
            self._spawn(self.report_error("bad_media", str(outcome), incoming.id))
        elif isinstance(outcome, Exception):  # a failing model answers this frame with an error
            log.error("face prediction failed: %r", outcome)
            self._spawn(self.report_error("internal", f"face prediction failed: {type(outcome).__name__}: "
                                          f"{outcome}", incoming.id))
        else:
            faces, size = outcome
            self.stats.frames_processed += 1
            if faces:
                self.face_probs, self.face_time, self.face_state = faces[0]["probabilities"], time.monotonic(), "face"
            else:
                self.face_probs, self.face_state = None, "no_face"
            self._spawn_send(self.send_result("frame", incoming, faces, size, predicted=True))

    # ---- audio ---------------------------------------------------------------------------
    async def on_audio(self, incoming: Incoming) -> None:
        """Every audio message is answered at once; a new voice estimate, when due, follows on its own."""
        self.stats.audio_received += 1
        with self.take_lock:
            self.audio_seq += 1
            self.window = np.concatenate([self.window, incoming.samples])[-self.window_size:]
            self.newest_audio = Incoming("audio", incoming.id, incoming.t, received=incoming.received)
        recent = self.window[-int(self.config.silence_seconds * media.SAMPLE_RATE):]
        now = time.monotonic()
        if media.rms(recent) < self.config.silence_rms:
            # Silence replaces the voice estimate: a stale emotion would outlive what was said.
            self.voice_probs, self.voice_state, self.silence_seq = None, "silence", self.audio_seq
        elif not self.models.voice.loaded:
            self.voice_state = "no_model"
        elif (not self.voice_pending and self.window.size >= self.config.min_audio_seconds * media.SAMPLE_RATE
              and now - self.last_voice_start >= self.config.voice_interval_seconds):
            self.voice_pending, self.last_voice_start = True, now
            self.workers.voice.submit(self)
        self.stats.audio_processed += 1
        await self.send_result("audio", incoming)

    def take_window(self) -> tuple[np.ndarray, int, Incoming | None]:
        """(newest audio window, its message count, its newest message) (voice thread)."""
        with self.take_lock:  # arrays are replaced, never changed in place
            return self.window, self.audio_seq, self.newest_audio

    def deliver_voice(self, seq: int, newest: Incoming | None, answer: Any) -> None:
        """Hand a voice estimate (or the exception it raised) from the voice thread to the event loop."""
        self._call_on_loop(self._voice_done, seq, newest, answer)

    def _voice_done(self, seq: int, newest: Incoming | None, answer: Any) -> None:
        self.voice_pending = False
        newest = newest or Incoming("audio", None, None, received=time.perf_counter())
        msg_id = newest.id
        if isinstance(answer, Exception) and not isinstance(answer, NoSpeechError):
            log.error("voice prediction failed: %r", answer)
            self._spawn(self.report_error("internal", f"voice prediction failed: {type(answer).__name__}: {answer}",
                                          msg_id))
            return
        self.stats.voice_estimates += 1
        if self.silence_seq < seq:  # silence that arrived after the window was taken wins
            if isinstance(answer, NoSpeechError):  # hum or noise replaces the estimate, as silence does
                self.voice_probs, self.voice_state, self.no_speech = None, "no_speech", answer.reason
            else:
                self.voice_probs, self.voice_time, self.voice_state = answer, time.monotonic(), "voice"
        # id, t and processing_ms are those of the newest audio message the estimate heard: now - t is its age
        self._spawn_send(self.send_result("voice", newest, predicted=True))

    # ---- replies -------------------------------------------------------------------------
    def _fresh(self, probs: dict[str, float] | None, stamp: float) -> dict[str, float] | None:
        return probs if probs is not None and time.monotonic() - stamp <= self.config.fresh_seconds else None

    async def send_result(self, kind: str, incoming: Incoming, faces: list[dict] | None = None,
                          image_size: list[int] | None = None, predicted: bool = False) -> None:
        face = self._fresh(self.face_probs, self.face_time)
        voice = self._fresh(self.voice_probs, self.voice_time)
        result = StreamResult(
            kind=kind, id=incoming.id, t=incoming.t, server_time=_now_ms(),
            processing_ms=1000.0 * (time.perf_counter() - incoming.received), predicted=predicted,
            face_state=self.face_state, voice_state=self.voice_state, faces=faces or [], image_size=image_size,
            face=face, voice=voice, no_speech=self.no_speech if self.voice_state == "no_speech" else None,
            fused=fuse(face, voice, self.config.face_weight, self.config.voice_weight, self.config.fusion_rule),
            stats=self.stats.model_copy())
        await self.send(result.model_dump())

    async def send(self, obj: dict) -> None:
        async with self.send_lock:
            try:
                await self.ws.send_text(to_json(obj))
            except (WebSocketDisconnect, RuntimeError):
                pass  # the client left; the receive loop notices and ends the session

    def _call_on_loop(self, func, *args) -> None:
        if self.closed:
            return
        try:
            self.loop.call_soon_threadsafe(func, *args)
        except RuntimeError:  # the loop is gone (server shutting down)
            pass

    def _spawn_send(self, coro) -> None:
        # A client that stops reading would otherwise collect replies without bound.
        if sum(1 for task in self.tasks if not task.done()) >= MAX_PENDING_SENDS:
            coro.close()
            return
        self._spawn(coro)

    def _spawn(self, coro) -> None:
        if self.closed:
            coro.close()
            return
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("stream %s: reply task ended: %r", self.id, task.exception())

def finite(obj: Any) -> Any:
    """``obj`` with every NaN / infinite float replaced by None (JSON has no such numbers)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def to_json(obj: Any) -> str:
    """Compact, strictly valid JSON: a non-finite number (a model gone wrong) goes out as null, never NaN."""
    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return json.dumps(finite(obj), separators=(",", ":"), allow_nan=False)


def _now_ms() -> float:
    return time.time() * 1000.0
