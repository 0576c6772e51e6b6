"""One live WebSocket stream: parse messages, keep per-connection state, predict off the event loop.

Fast path, per connection:
- frames go through a one-slot mailbox: a newer frame replaces one no worker has taken yet
  (counted in ``frames_dropped``, never answered), and a worker takes the newest frame when it
  starts, so under load replies describe recent pictures instead of a growing backlog;
- audio messages are appended to a rolling window (cheap, on the loop) and each gets exactly one
  reply: a silent window answers at once with ``voice_state: "silence"`` (a window the speech check
  refuses, hum, a steady tone or noise, gets ``"no_speech"`` from the voice thread); at most one voice
  prediction per connection runs at a time, at most every ``voice_interval_seconds``, on the
  newest window, and only while fewer than ``max_queued_voice`` wait for the voice thread
  (all streams together), so voice latency stays bounded under load; the other messages are
  answered at once with the current estimate (``predicted: false``);
- predictions run in two shared worker threads, one per model (faces, voice), so the event loop
  only parses and sends, and a burst of frames never delays the voice (or the other way round).
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect

from core.labels import EMOTIONS
from ser.frontend import NoSpeechError
from webapp import media
from webapp.models import PRECISION, Models, top_label
from webapp.schemas import (StreamAudioIn, StreamError, StreamFrameIn, StreamPingIn, StreamPong, StreamResult,
                            StreamStats)

log = logging.getLogger(__name__)

BINARY_HEADER = struct.Struct("<BId")  # kind, id, client time (ms)
BINARY_KINDS = {1: ("frame", None), 2: ("audio", "int16"), 3: ("audio", "float32")}
JSON_MESSAGES = {"frame": StreamFrameIn, "audio": StreamAudioIn, "ping": StreamPingIn}
MAX_CONSECUTIVE_ERRORS = 20  # a client that sends only garbage is closed (1008) after this many
CLOSE_BUSY = 1013            # "try again later": the connection limit is reached
CLOSE_POLICY = 1008


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
    voice_interval_seconds: float = 1.0
    max_frame_side: int = 640
    full_detect_every: int = 5
    track_pad: float = 0.5


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
         face_weight: float, voice_weight: float) -> dict[str, Any] | None:
    """Weighted average of the modalities present, weights renormalised over them."""
    parts = [(name, probs, w) for name, probs, w in (("face", face, face_weight), ("voice", voice, voice_weight))
             if probs is not None and w > 0]
    if not parts:
        return None
    total = sum(w for _, _, w in parts)
    fused = {e: round(sum(w * probs.get(e, 0.0) for _, probs, w in parts) / total, PRECISION) for e in EMOTIONS}
    return {"label": top_label(fused), "probabilities": fused, "sources": [name for name, _, _ in parts]}


class Lane:
    """One model's worker thread, shared by every stream, and how many jobs wait for it."""

    def __init__(self, name: str, max_queued: int) -> None:
        self.name, self.max_queued, self.queued = name, max_queued, 0
        self.executor: ThreadPoolExecutor | None = None
        self.start()

    def start(self) -> None:
        if self.executor is None:
            self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"live-{self.name}")

    def stop(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None

    def has_room(self) -> bool:
        return self.queued < self.max_queued

    async def run(self, func):
        # `queued` is only touched on the event loop, so a plain counter is safe.
        self.queued += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, func)
        finally:
            self.queued -= 1


class StreamSession:
    """State and tasks of one WebSocket connection."""

    def __init__(self, ws: WebSocket, models: Models, face_lane: Lane, voice_lane: Lane,
                 config: StreamConfig) -> None:
        self.ws, self.models, self.config = ws, models, config
        self.face_lane, self.voice_lane = face_lane, voice_lane
        self.id = uuid.uuid4().hex[:12]
        self.stats = StreamStats()
        self.send_lock = asyncio.Lock()
        self.tasks: set[asyncio.Task] = set()
        # Worker threads take the newest input when they start, not when the job was queued:
        # under load a reply describes a recent frame instead of one that waited in the queue.
        self.take_lock = threading.Lock()
        self.latest_frame: Incoming | None = None
        self.frame_scheduled = False
        self.track_box: list[int] | None = None  # last face found, searched first in the next frame
        self.frames_since_full = 0
        self.voice_scheduled = False
        self.last_voice_start = -1e9
        self.window = np.zeros(0, np.float32)
        self.window_size = int(config.audio_window_seconds * media.SAMPLE_RATE)
        self.audio_seq = 0        # audio messages received so far
        self.silence_seq = -1     # number of the last audio message that ended in silence
        self.face_probs: dict[str, float] | None = None
        self.face_time = 0.0
        self.voice_probs: dict[str, float] | None = None
        self.voice_time = 0.0
        self.no_speech: str | None = None  # what the latest voice window held instead of speech
        self.face_state = "unknown" if models.face.loaded else "no_model"
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
            for task in self.tasks:
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
        if not self.models.face.loaded:
            self.stats.frames_processed += 1
            await self.send_result("frame", incoming)
            return
        with self.take_lock:
            if self.latest_frame is not None:
                self.stats.frames_dropped += 1  # replaced before a worker got to it
            self.latest_frame = incoming
        if not self.frame_scheduled:
            self.frame_scheduled = True
            self._spawn(self._frame_worker())

    async def _frame_worker(self) -> None:
        try:
            while True:
                taken = await self.face_lane.run(self._take_and_predict_frame)
                if taken is None:
                    break
                incoming, outcome = taken
                if isinstance(outcome, media.MediaError):
                    await self.report_error("bad_media", str(outcome), incoming.id)
                elif isinstance(outcome, Exception):  # a failing model answers this frame with an error
                    log.error("face prediction failed: %r", outcome)
                    await self.report_error("internal", f"face prediction failed: {type(outcome).__name__}: "
                                            f"{outcome}", incoming.id)
                else:
                    faces, size = outcome
                    self.stats.frames_processed += 1
                    if faces:
                        self.face_probs, self.face_time, self.face_state = faces[0]["probabilities"], \
                            time.monotonic(), "face"
                    else:
                        self.face_probs, self.face_state = None, "no_face"
                    await self.send_result("frame", incoming, faces, size, predicted=True)
                if self.latest_frame is None:  # no await between this check and the flag reset below
                    break
        finally:
            self.frame_scheduled = False

    def _take_and_predict_frame(self) -> tuple[Incoming, Any] | None:
        with self.take_lock:
            incoming, self.latest_frame = self.latest_frame, None
        if incoming is None:
            return None
        try:
            image = media.decode_image(incoming.payload)
            small, scale = media.downscale(image, self.config.max_frame_side)
            faces = self._detect(small)
            return incoming, (media.scale_faces(faces, scale), [int(image.shape[1]), int(image.shape[0])])
        except Exception as exc:  # handed to the event loop, which answers with an error message
            return incoming, exc

    def _detect(self, image: np.ndarray) -> list[dict]:
        """Faces in a stream frame: near the last face when there is one, the whole frame every
        ``full_detect_every`` frames (new faces) or when the face was lost. One job per connection
        runs at a time, so the tracking state needs no lock."""
        faces: list[dict] = []
        tracking = self.track_box is not None and self.frames_since_full < self.config.full_detect_every - 1
        if tracking:
            faces = self.models.predict_faces_near(image, self.track_box, self.config.track_pad)
            self.frames_since_full += 1
        if not faces:
            faces = self.models.predict_faces(image)
            self.frames_since_full = 0
        self.track_box = faces[0]["box"] if faces else None
        return faces

    # ---- audio ---------------------------------------------------------------------------
    async def on_audio(self, incoming: Incoming) -> None:
        """Every audio message gets one reply: a new voice estimate, or at once the current state."""
        self.stats.audio_received += 1
        with self.take_lock:
            self.audio_seq += 1
            self.window = np.concatenate([self.window, incoming.samples])[-self.window_size:]
        recent = self.window[-int(self.config.silence_seconds * media.SAMPLE_RATE):]
        now = time.monotonic()
        if media.rms(recent) < self.config.silence_rms:
            # Silence replaces the voice estimate: a stale emotion would outlive what was said.
            self.voice_probs, self.voice_state, self.silence_seq = None, "silence", self.audio_seq
        elif not self.models.voice.loaded:
            self.voice_state = "no_model"
        elif (not self.voice_scheduled and self.window.size >= self.config.min_audio_seconds * media.SAMPLE_RATE
              and now - self.last_voice_start >= self.config.voice_interval_seconds
              and self.voice_lane.has_room()):  # a full lane answers now; the next window tries again
            self.voice_scheduled, self.last_voice_start = True, now
            self._spawn(self._voice_worker(incoming))
            return
        self.stats.audio_processed += 1
        await self.send_result("audio", incoming)

    async def _voice_worker(self, incoming: Incoming) -> None:
        try:
            seq, outcome = await self.voice_lane.run(self._take_and_predict_voice)
            if isinstance(outcome, Exception) and not isinstance(outcome, NoSpeechError):
                log.error("voice prediction failed: %r", outcome)
                await self.report_error("internal", f"voice prediction failed: {type(outcome).__name__}: "
                                        f"{outcome}", incoming.id)
                return
            self.stats.audio_processed += 1
            if self.silence_seq < seq:  # silence that arrived after the window was taken wins
                if isinstance(outcome, NoSpeechError):  # hum or noise replaces the estimate, as silence does
                    self.voice_probs, self.voice_state, self.no_speech = None, "no_speech", outcome.reason
                else:
                    self.voice_probs, self.voice_time, self.voice_state = outcome, time.monotonic(), "voice"
            await self.send_result("audio", incoming, predicted=True)
        finally:
            self.voice_scheduled = False

    def _take_and_predict_voice(self) -> tuple[int, Any]:
        with self.take_lock:
            window, seq = self.window, self.audio_seq  # arrays are replaced, never changed in place
        try:
            return seq, self.models.predict_voice(window, media.SAMPLE_RATE)
        except Exception as exc:  # see _take_and_predict_frame
            return seq, exc

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
            fused=fuse(face, voice, self.config.face_weight, self.config.voice_weight),
            stats=self.stats.model_copy())
        await self.send(result.model_dump())

    async def send(self, obj: dict) -> None:
        async with self.send_lock:
            try:
                await self.ws.send_text(to_json(obj))
            except (WebSocketDisconnect, RuntimeError):
                pass  # the client left; the receive loop notices and ends the session

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:  # e.g. workers stopped at shutdown
            log.warning("stream %s: worker task ended: %r", self.id, task.exception())


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
