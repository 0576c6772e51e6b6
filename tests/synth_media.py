"""Synthetic media and stand-in predictors for the web app tests (no real data, no downloads).

- a face picture from ``skimage.data.astronaut()`` (JPEG bytes, BGR array);
- voice-like audio (a gliding harmonic tone with syllable-rate loudness) with silent gaps, as WAV;
- a Y4M clip of the face drifting sideways for Chromium's fake camera;
- an MP4 with the face and the voice for the video upload endpoint;
- fake predictors with the SERPredictor / FERPredictor methods whose outputs follow the input,
  so the page's bars move when the picture or the sound does.
"""
from __future__ import annotations

import io
import time
from pathlib import Path

import cv2
import numpy as np

from core.labels import EMOTIONS

SAMPLE_RATE = 16_000


def face_image(width: int = 640, height: int = 480, shift: int = 0) -> np.ndarray:
    """BGR frame with the astronaut's face (about 120 px wide) left of centre, moved by ``shift`` px."""
    from skimage.data import astronaut

    face = cv2.resize(astronaut()[0:360, 60:420, ::-1], (height, height), interpolation=cv2.INTER_AREA)
    canvas = np.full((height, width, 3), 60, np.uint8)
    x0 = (width - height) // 2 + shift
    left, right = max(0, x0), min(width, x0 + height)
    canvas[:, left:right] = face[:, left - x0:right - x0]
    return canvas


def jpeg_bytes(image: np.ndarray, quality: int = 80) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


def voice(seconds: float = 1.0, sr: int = SAMPLE_RATE, f0: float = 140.0, seed: int = 0) -> np.ndarray:
    """Speech-like float32: harmonics of a gliding pitch, 4 Hz syllable envelope, a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    pitch = f0 * (1.0 + 0.15 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / sr
    y = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.5 * (1 + np.sin(2 * np.pi * 4.0 * t)) ** 2
    y = 0.3 * y * envelope / np.max(np.abs(y)) + 0.005 * rng.standard_normal(t.size)
    return y.astype(np.float32)


def voice_with_gaps(speech_seconds: float = 2.0, gap_seconds: float = 1.5, repeats: int = 2,
                    sr: int = SAMPLE_RATE) -> np.ndarray:
    """Speech / silence / speech ... so a stream shows both states."""
    parts = []
    for i in range(repeats):
        parts.append(voice(speech_seconds, sr, f0=120.0 + 60.0 * i, seed=i))
        parts.append(np.zeros(int(gap_seconds * sr), np.float32))
    return np.concatenate(parts)


def wav_bytes(y: np.ndarray, sr: int = SAMPLE_RATE) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, y, sr, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def write_wav(path: str | Path, y: np.ndarray, sr: int = SAMPLE_RATE) -> Path:
    Path(path).write_bytes(wav_bytes(y, sr))
    return Path(path)


def write_y4m(path: str | Path, n_frames: int = 30, fps: int = 15, width: int = 640, height: int = 480) -> Path:
    """YUV4MPEG2 4:2:0 clip for ``--use-file-for-fake-video-capture`` (Chromium loops it)."""
    path = Path(path)
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for i in range(n_frames):
            shift = int(40 * np.sin(2 * np.pi * i / n_frames))
            yuv = cv2.cvtColor(face_image(width, height, shift), cv2.COLOR_BGR2YUV_I420)
            f.write(b"FRAME\n" + yuv.tobytes())
    return path


def write_mp4(path: str | Path, seconds: float = 2.0, fps: int = 10, with_audio: bool = True,
              width: int = 320, height: int = 240) -> Path:
    """H.264 (or MPEG-4) + AAC clip of the face and a voice, written with PyAV."""
    import av

    path = Path(path)
    with av.open(str(path), "w") as container:
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        vstream = container.add_stream(codec, rate=fps)
        vstream.width, vstream.height, vstream.pix_fmt = width, height, "yuv420p"
        astream = container.add_stream("aac", rate=SAMPLE_RATE) if with_audio else None
        if astream is not None:
            astream.layout = "mono"
        for i in range(int(seconds * fps)):
            image = face_image(width, height, int(10 * np.sin(i / 3)))
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            container.mux(vstream.encode(frame))
        container.mux(vstream.encode(None))
        if astream is not None:
            y = voice(seconds)
            samples = (np.clip(y, -1, 1) * 32767).astype(np.int16)
            step = 1024
            for start in range(0, samples.size, step):
                chunk = samples[start:start + step].reshape(1, -1)
                frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="mono")
                frame.sample_rate = SAMPLE_RATE
                frame.pts = start
                container.mux(astream.encode(frame))
            container.mux(astream.encode(None))
    return path


def _softmax(z: np.ndarray) -> np.ndarray:
    z = np.exp(z - z.max())
    return z / z.sum()


class FakeVoice:
    """SERPredictor stand-in: probabilities from loudness and pitch-ish statistics of the window; audio
    without speech raises ser.frontend.NoSpeechError, as the real predictor does. Like SERPredictor it
    has ``speech_segments`` + ``window_results``, so the live stream batches windows through it;
    ``batches`` records how many windows each model call got."""
    class_names = EMOTIONS

    def __init__(self, delay: float = 0.0) -> None:
        self.delay, self.calls, self.batches = delay, 0, []

    @staticmethod
    def _probs(y: np.ndarray) -> np.ndarray:
        y = np.asarray(y, np.float32)
        zcr = float(np.mean(np.abs(np.diff(np.sign(y))) > 0)) if y.size > 1 else 0.0
        loud = float(np.sqrt(np.mean(y ** 2))) if y.size else 0.0
        z = np.array([1.0, 8 * loud, 4 * zcr, 2 * loud, zcr, 0.5, 10 * loud * zcr])
        return _softmax(z)

    def predict_waveform(self, y: np.ndarray, sr: int) -> np.ndarray:
        from ser.frontend import require_speech

        self.calls += 1
        self.batches.append(1)
        if self.delay:
            time.sleep(self.delay)
        require_speech(np.asarray(y, np.float32), sr)
        return self._probs(y)

    def speech_segments(self, y: np.ndarray, sr: int) -> list[tuple[float, float, np.ndarray]]:
        from ser.frontend import require_speech

        require_speech(np.asarray(y, np.float32), sr)
        return [(0.0, len(y) / sr, np.asarray(y, np.float32))]

    def window_probabilities(self, waveforms) -> np.ndarray:
        self.calls += 1
        self.batches.append(len(waveforms))
        if self.delay:
            time.sleep(self.delay)
        return np.stack([self._probs(y) for y in waveforms])

    def window_results(self, waveforms) -> list:
        return list(self.window_probabilities(waveforms))

    def predict_segments(self, y: np.ndarray, sr: int) -> list[tuple[float, float, np.ndarray]]:
        """Back-to-back 1 s windows of speech (the real model: 3 s windows of speech every 1.5 s)."""
        from ser.frontend import NoSpeechError, speech_check

        starts = range(0, max(len(y) - sr, 0) + 1, sr)
        checks = [speech_check(y[s:s + sr], sr) for s in starts]
        kept = [s for s, check in zip(starts, checks) if check.is_speech]
        if not kept:
            raise NoSpeechError(f"audio: no speech: {checks[0].detail}", checks[0].reason)
        return [(s / sr, min(s + sr, len(y)) / sr, self.predict_waveform(y[s:s + sr], sr)) for s in kept]


class FakeFusion:
    """fusion.predict.FusionPredictor stand-in: a fixed answer, or the joint model's no-speech refusal."""
    class_names = EMOTIONS

    def __init__(self, fail: bool = False) -> None:
        self.fail, self.paths = fail, []

    def predict_clip(self, path: str) -> dict:
        self.paths.append(path)
        if self.fail:
            raise ValueError("the joint model needs speech")
        probs = dict(zip(EMOTIONS, [0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.7]))
        return {"path": path, "mode": "joint", "label": "surprise", "probabilities": probs}


class FakeFace:
    """FERPredictor stand-in: real Haar detection and crops (fer.faces), probabilities from the crop's
    pixels. Like FERPredictor it has ``predict_crops`` (with ``detector``, ``face_size``, ``margin``), so
    the live stream classifies the faces of many frames in one call; ``batches`` records how many
    crops each call got. ``delay`` is per model call, ``fail`` makes every call raise."""
    class_names = EMOTIONS
    detector = "haar"
    face_size = 48
    margin = 0.2

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.delay, self.fail, self.calls, self.batches = delay, fail, 0, []

    def predict_crops(self, crops: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.batches.append(len(crops))
        if self.delay:
            time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("model exploded")
        out = []
        for crop in np.asarray(crops, np.float32) / 255.0:
            z = np.array([crop[:16].mean(), crop[16:32].mean(), crop[32:].mean(), crop[:, :16].mean(),
                          crop[:, 32:].mean(), crop.std(), crop[16:32, 16:32].mean()]) * 6
            out.append(_softmax(z))
        return np.stack(out)

    def predict_image(self, image_bgr: np.ndarray) -> list[dict]:
        from fer.faces import crop_face, detect_faces

        boxes = detect_faces(image_bgr, self.detector)
        if not boxes:
            if self.fail:
                raise RuntimeError("model exploded")
            return []
        probs = self.predict_crops(np.stack([crop_face(image_bgr, box, self.face_size, self.margin) for box in boxes]))
        return [{"box": [int(v) for v in box], "label": EMOTIONS[int(np.argmax(p))],
                 "probabilities": dict(zip(EMOTIONS, p.tolist()))} for box, p in zip(boxes, probs)]


def train_tiny_models(root: str | Path, seed: int = 0) -> Path:
    """Real SER and FER run folders (model.keras + config.json) in ``root/ser`` and ``root/fer``.

    Built with the packages' own builders and fitted for one epoch on random inputs: the weights
    mean nothing, but loading, feature extraction, detection and inference are the real code paths.
    """
    from dataclasses import asdict

    import keras

    from core.io import save_model, write_json
    from core.training import set_seed
    from fer.models import build_cnn as build_face_cnn
    from ser.features import FeatureConfig, Normalizer
    from ser.models import build_model as build_voice_model

    root = Path(root)
    set_seed(seed)
    rng = np.random.default_rng(seed)
    labels = keras.utils.to_categorical(np.arange(16) % len(EMOTIONS), len(EMOTIONS))

    features = FeatureConfig(max_seconds=1.0)
    voice_model = build_voice_model("cnn", (features.max_frames, features.n_features), len(EMOTIONS))
    voice_model.compile(optimizer="adam", loss="categorical_crossentropy", jit_compile=False)
    voice_model.fit(rng.standard_normal((16, features.max_frames, features.n_features)).astype(np.float32),
                    labels, epochs=1, batch_size=8, verbose=0)
    ser_dir = root / "ser"
    save_model(voice_model, ser_dir / "model.keras")
    Normalizer(np.zeros(features.n_features, np.float32), np.full(features.n_features, 20.0, np.float32)).save(
        ser_dir / "normalization.npz")
    write_json(ser_dir / "config.json", {"task": "ser", "class_names": list(EMOTIONS), "model": "cnn",
                                         "input_shape": [features.max_frames, features.n_features],
                                         "features": asdict(features)})

    face_model = build_face_cnn((48, 48, 1), len(EMOTIONS), filters=(8, 16), dense_units=32)
    face_model.compile(optimizer="adam", loss="categorical_crossentropy", jit_compile=False)
    face_model.fit(rng.uniform(0, 255, (16, 48, 48, 1)).astype(np.float32), labels, epochs=1, batch_size=8,
                   verbose=0)
    fer_dir = root / "fer"
    save_model(face_model, fer_dir / "model.keras")
    write_json(fer_dir / "config.json", {"class_names": list(EMOTIONS), "input_shape": [48, 48, 1],
                                         "face_margin": 0.2})
    return root
