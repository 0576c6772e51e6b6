"""The JSON the server speaks: HTTP responses (in the OpenAPI document) and WebSocket messages.

Every ``probabilities`` object maps each emotion to a float, in ``core.labels.EMOTIONS``
order, like the CLIs' ``--json`` output. Field names here are the stable API: add fields,
never rename or remove them.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

Probabilities = dict[str, float]

FaceState = Literal["face", "no_face", "no_model", "unknown"]
VoiceState = Literal["voice", "silence", "no_speech", "no_model", "unknown"]
NoSpeechReason = Literal["silence", "constant (DC)", "too short", "noise", "hum", "steady tone", "other sound"]


class ErrorResponse(BaseModel):
    detail: str = Field(description="Why the request was refused, in words.")


class ModelInfo(BaseModel):
    loaded: bool
    classes: list[str] = Field(default_factory=list, description="Output classes in order; empty when not loaded.")
    error: str | None = Field(None, description="Why the model did not load (absent folder, bad file).")
    kind: Literal["joint", "late"] | None = Field(
        None, description="fusion only: 'joint' (a fusion.train model in the models folder's fusion/) or 'late' (the "
                          "ser and fer models fused with the late-fusion weights and rule, as python -m fusion.predict "
                          "does without a joint model); absent while loading or when no fusion is usable.")


class Limits(BaseModel):
    max_upload_bytes: int
    max_message_bytes: int
    max_connections: int
    max_video_seconds: float


class FusionInfo(BaseModel):
    face_weight: float
    voice_weight: float
    fresh_seconds: float
    method: str = "weighted_average"


class Health(BaseModel):
    status: Literal["ok", "loading"] = Field(
        "ok", description="'loading' while the models load in the background (predictions answer 503, the stream "
                          "closes with 1013 until then); 'ok' afterwards, whatever loaded.")
    progress: float = Field(1.0, description="Share of the loading done, 0 to 1 (1 once loaded).")
    step: str = Field("", description="What is loading now, in words (empty once loaded).")
    emotions: list[str]
    models: dict[str, ModelInfo] = Field(description="One entry per modality: ser, fer, fusion.")
    limits: Limits
    fusion: FusionInfo
    connections: int = Field(description="Open WebSocket streams now.")


class AudioSegment(BaseModel):
    start: float = Field(description="Window start, seconds into the recording.")
    end: float = Field(description="Window end, seconds.")
    label: str
    probabilities: Probabilities


class AudioPrediction(BaseModel):
    """Same object as ``python -m ser.predict --json`` (``--segments`` adds ``segments``).

    A recording without speech (hum, a steady tone, noise, DC) answers ``label: null``,
    ``probabilities: null`` and ``no_speech`` with what was heard instead.
    """
    path: str
    label: str | None = Field(description="Top emotion; null when the recording holds no speech.")
    probabilities: Probabilities | None
    no_speech: NoSpeechReason | None = Field(
        default=None, description="Only when no window of the recording holds speech: what it holds instead.")
    segments: list[AudioSegment] | None = Field(
        default=None, description="Only with ?segments=true: each 3 s window of speech the recording's "
                                  "probabilities average, in time order.")


class Face(BaseModel):
    box: list[int] = Field(description="[x, y, width, height] in pixels of the image that was sent.")
    label: str
    probabilities: Probabilities


class ImagePrediction(BaseModel):
    """Same object as ``python -m fer.predict --json`` (``?annotate=true`` adds ``annotated``)."""
    path: str
    faces: list[Face]
    annotated: str | None = Field(
        default=None, description="Only with ?annotate=true: the photo with every face boxed and labelled "
                                  "(fer.faces.draw_faces, as `python -m fer.predict --annotate`), a data URL "
                                  "of a JPEG at most 960 px on its longer side.")


class ModalityResult(BaseModel):
    label: str
    probabilities: Probabilities


class VideoSegment(BaseModel):
    start: float = Field(description="Segment start, seconds into the clip.")
    end: float = Field(description="Segment end, seconds.")
    voice: ModalityResult | None = Field(description="Mean over the speech windows centred in this segment.")
    face: ModalityResult | None = Field(description="Mean over the sampled frames of this segment with a face.")
    fused: ModalityResult | None = Field(description="The two fused by the whole clip's weights and rule.")
    frames_sampled: int
    frames_with_face: int


class VideoPrediction(BaseModel):
    """Same object as ``python -m fusion.predict --json`` (both built by ``fusion.late.clip_answer``;
    ``?segments=true`` adds ``segments``)."""
    path: str
    mode: str = Field(description="'late': the voice and face models fused by weights and rule; 'joint': a "
                                  "fusion model (python -m fusion.train) answered.")
    label: str | None = Field(description="Fused label; null when neither a face nor a voice was found.")
    probabilities: Probabilities | None
    voice: ModalityResult | None = Field(description="The voice model's own answer for the audio track.")
    face: ModalityResult | None = Field(description="The face model's own answer: its probabilities averaged over "
                                                    "the sampled frames with a face.")
    used: list[str] | None = Field(description="Late mode: 'voice' and/or 'face', the ones that decided (never "
                                               "one of weight 0 while the other is there); null for 'joint'.")
    weights: dict[str, float] | None = Field(description="Late mode: the 'voice' and 'face' weights "
                                                         "(see /api/health); null for 'joint'.")
    rule: str | None = Field(description="Late mode: 'mean' or 'product'; null for 'joint'.")
    frames_sampled: int
    frames_with_face: int
    seconds: float = Field(description="Seconds of the clip analysed (at most max_video_seconds).")
    duration_seconds: float = Field(description="The whole file's length, as its container says.")
    truncated: bool = Field(description="The clip is longer than the server's max_video_seconds (see "
                                        "/api/health): only its start was analysed.")
    no_speech: NoSpeechReason | None = Field(
        description="The audio track holds no speech (what it holds instead: 'silence' for a digitally "
                    "silent track): the face alone decides.")
    audio_missing: str | None = Field(
        description="Why 'voice' is null, in words: 'no audio track', the speech check's finding, or that no "
                    "voice model is loaded.")
    face_missing: str | None = Field(
        description="Why 'face' is null, in words: 'no video track', 'no face found in any sampled frame', or "
                    "that no face model is loaded.")
    segments: list[VideoSegment] | None = Field(
        default=None, description="Only with ?segments=true: face, voice and fused per segment of the clip, in "
                                  "time order.")


# ---- WebSocket /ws/stream -------------------------------------------------------------------

class FusedResult(ModalityResult):
    sources: list[Literal["face", "voice"]] = Field(description="Modalities that entered the weighted average.")


class StreamStats(BaseModel):
    frames_received: int = 0
    frames_processed: int = 0
    frames_dropped: int = Field(0, description="Frames replaced by a newer one before the server got to them.")
    audio_received: int = 0
    audio_processed: int = Field(0, description="Audio messages answered (each at once).")
    voice_estimates: int = Field(0, description="Voice estimates pushed (kind 'voice'), no-speech verdicts included.")
    errors: int = 0


class StreamHello(BaseModel):
    type: Literal["hello"] = "hello"
    session: str
    server_time: float = Field(description="Server clock, milliseconds since the Unix epoch.")
    emotions: list[str]
    models: dict[str, ModelInfo]
    limits: Limits
    audio_sample_rate: int = 16000


class StreamResult(BaseModel):
    type: Literal["result"] = "result"
    kind: Literal["frame", "audio", "voice"] = Field(
        description="'frame' and 'audio' answer the message with this id; 'voice' is a new voice estimate, pushed "
                    "when the voice model finishes, with the id and t of the newest audio message it heard.")
    id: int | None = Field(description="Echo of the id of the message this answers (for round-trip time).")
    t: float | None = Field(description="Echo of the client's timestamp of that message.")
    server_time: float
    processing_ms: float = Field(description="Server time from receipt to reply for this message.")
    predicted: bool = Field(description="True when this result carries a new prediction (frames with faces "
                                        "analysed, voice estimates); false for the immediate answers to audio.")
    face_state: FaceState
    voice_state: VoiceState
    faces: list[Face] = Field(description="Faces in this frame (empty for audio replies).")
    image_size: list[int] | None = Field(None, description="[width, height] of the decoded frame.")
    face: Probabilities | None = Field(description="Latest fresh face probabilities (largest face).")
    voice: Probabilities | None = Field(description="Latest fresh voice probabilities.")
    no_speech: NoSpeechReason | None = Field(
        default=None, description="With voice_state 'no_speech': what the latest audio window holds instead of "
                                  "speech (hum, noise, ...).")
    fused: FusedResult | None
    stats: StreamStats


class StreamPong(BaseModel):
    type: Literal["pong"] = "pong"
    id: int | None
    t: float | None
    server_time: float


class StreamError(BaseModel):
    type: Literal["error"] = "error"
    code: Literal["too_large", "malformed", "unsupported", "bad_media", "no_model", "internal"]
    detail: str
    id: int | None = None


class StreamFrameIn(BaseModel):
    """A camera frame as JSON (the page sends the binary form instead)."""
    type: Literal["frame"]
    id: int | None = None
    t: float | None = None
    data: str = Field(description="Base64 JPEG or PNG.")


class StreamAudioIn(BaseModel):
    """A window of microphone samples as JSON (the page sends the binary form instead)."""
    type: Literal["audio"]
    id: int | None = None
    t: float | None = None
    format: Literal["int16", "float32"] = "int16"
    sample_rate: Literal[16000] = 16000
    data: str = Field(description="Base64 little-endian mono PCM samples.")


class StreamPingIn(BaseModel):
    type: Literal["ping"]
    id: int | None = None
    t: float | None = None


def stream_schema() -> dict:
    """JSON Schema of every WebSocket message, served at /api/schema/stream."""
    incoming = [StreamFrameIn, StreamAudioIn, StreamPingIn]
    outgoing = [StreamHello, StreamResult, StreamPong, StreamError]
    return {
        "binary_messages": {
            "layout": "byte 0 kind | bytes 1-4 id (uint32 LE) | bytes 5-12 client time ms (float64 LE) | payload",
            "kinds": {"1": "JPEG/PNG frame", "2": "PCM int16 mono 16 kHz", "3": "PCM float32 mono 16 kHz"},
        },
        "client_to_server": {m.__name__: m.model_json_schema() for m in incoming},
        "server_to_client": {m.__name__: m.model_json_schema() for m in outgoing},
    }
