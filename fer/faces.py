"""Find faces in photos and cut them out the way the training data looks (48x48 grayscale).

Two detectors, both without a download:
- ``haar``: OpenCV's frontal-face Haar cascade shipped in ``cv2.data`` (OpenCV 4.x wheels). Fast, misses
  tilted / profile faces.
- ``mtcnn``: the ``mtcnn`` package (weights inside the wheel, TensorFlow). More accurate, slower.
Each detector is built on first use and reused; a lock guards it because the web app calls from threads.
"""
from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

DETECTORS = ("haar", "mtcnn")
HAAR_FILE = "haarcascade_frontalface_default.xml"
HAAR_SCALE_FACTOR = 1.1
HAAR_MIN_NEIGHBORS = 5
HAAR_MIN_SCALED = 30  # px: the smallest wanted face after downscaling (the cascade window is 24 px)
MIN_FACE_FRACTION = 0.05  # ignore "faces" smaller than 5 % of the shorter image side (mostly texture noise)
MIN_FACE_PIXELS = 20
MTCNN_MIN_CONFIDENCE = 0.9
MTCNN_MIN_SCALED = 40
FACE_SIZE = 48
FACE_MARGIN = 0.2

Box = tuple[int, int, int, int]

_LOCKS = {name: threading.Lock() for name in DETECTORS}


class DetectorError(RuntimeError):
    """A face detector cannot be loaded (e.g. an OpenCV build without the Haar files)."""


def to_gray(image: np.ndarray) -> np.ndarray:
    """uint8 gray from gray (H,W), (H,W,1), BGR (H,W,3) or BGRA (H,W,4)."""
    image = _check_image(image)
    if image.ndim == 2:
        return image
    if image.shape[2] == 1:
        return image[:, :, 0]
    code = cv2.COLOR_BGRA2GRAY if image.shape[2] == 4 else cv2.COLOR_BGR2GRAY
    return cv2.cvtColor(image, code)


def to_rgb(image: np.ndarray) -> np.ndarray:
    image = _check_image(image)
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2RGB)
    code = cv2.COLOR_BGRA2RGB if image.shape[2] == 4 else cv2.COLOR_BGR2RGB
    return cv2.cvtColor(image, code)


def to_bgr(image: np.ndarray) -> np.ndarray:
    image = _check_image(image)
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(image.reshape(image.shape[:2]), cv2.COLOR_GRAY2BGR)
    return image[:, :, :3]


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.size == 0 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise ValueError(f"expected a gray (H,W) or BGR (H,W,3) image, got shape {image.shape}")
    if image.dtype != np.uint8:
        # Float images in [0, 1] are common (skimage); anything else is clipped to the byte range.
        scale = 255.0 if image.dtype.kind == "f" and image.max() <= 1.0 else 1.0
        image = np.clip(image.astype(np.float32) * scale, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(image)


@lru_cache(maxsize=1)
def _haar() -> cv2.CascadeClassifier:
    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    path = Path(folder or "") / HAAR_FILE
    if not folder or not path.is_file():
        raise DetectorError(
            f"OpenCV {cv2.__version__} has no bundled Haar cascade ({HAAR_FILE}); OpenCV 5 wheels dropped them. "
            "Install opencv-python-headless 4.x (see requirements.txt) or use --detector mtcnn.")
    cascade = cv2.CascadeClassifier(str(path))
    if cascade.empty():
        raise DetectorError(f"could not load the Haar cascade {path}")
    return cascade


@lru_cache(maxsize=1)
def _mtcnn():
    try:
        from mtcnn import MTCNN
    except ImportError as exc:
        raise DetectorError("the mtcnn detector needs the 'mtcnn' package: pip install mtcnn") from exc
    return MTCNN()


def load_detector(method: str = "haar") -> None:
    """Build a detector now (e.g. at server start) instead of on the first image."""
    if method not in DETECTORS:
        raise ValueError(f"unknown face detector {method!r}; choose one of {DETECTORS}")
    (_haar if method == "haar" else _mtcnn)()


def detect_faces(image: np.ndarray, method: str = "haar", min_size: int | None = None) -> list[Box]:
    """Face boxes ``(x, y, w, h)`` in pixels, largest first; ``[]`` when there is no face.

    ``image`` is BGR uint8 (as ``cv2.imread`` gives) or gray uint8. ``min_size`` (px) is the smallest face
    reported, by default 5 % of the shorter image side (at least 20 px); a larger value makes ``haar`` faster
    (e.g. 60 on webcam frames: about 4x less work than the default at 640x480).
    """
    if method not in DETECTORS:
        raise ValueError(f"unknown face detector {method!r}; choose one of {DETECTORS}")
    image = _check_image(image)
    height, width = image.shape[:2]
    if min_size is None:
        min_size = max(MIN_FACE_PIXELS, int(MIN_FACE_FRACTION * min(height, width)))
    if method == "haar":
        boxes = _detect_haar(to_gray(image), min_size)
    else:
        boxes = _detect_mtcnn(to_rgb(image), min_size)
    boxes = [_clip_box(b, width, height) for b in boxes]
    boxes = [b for b in boxes if b[2] >= min_size and b[3] >= min_size]
    return sorted(boxes, key=lambda b: b[2] * b[3], reverse=True)


def _detect_haar(gray: np.ndarray, min_size: int) -> list[Box]:
    cascade = _haar()
    # The cascade's cost is mostly in its finest scales: when only larger faces are wanted, detect on a smaller
    # copy (the smallest wanted face becomes HAAR_MIN_SCALED px, just above the 24 px cascade window).
    scale = min(1.0, HAAR_MIN_SCALED / min_size)
    if scale < 1.0:
        gray = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    # Equalising makes the cascade less sensitive to exposure (dark webcam frames).
    gray = cv2.equalizeHist(gray)
    scaled_min = max(HAAR_MIN_SCALED - 6, int(min_size * scale))
    with _LOCKS["haar"]:
        found = cascade.detectMultiScale(gray, scaleFactor=HAAR_SCALE_FACTOR, minNeighbors=HAAR_MIN_NEIGHBORS,
                                         minSize=(scaled_min, scaled_min))
    return [tuple(int(round(v / scale)) for v in box) for box in np.asarray(found).reshape(-1, 4)]


def _detect_mtcnn(rgb: np.ndarray, min_size: int) -> list[Box]:
    detector = _mtcnn()
    # Same idea as for haar: big photos are searched at a size where the smallest wanted face is ~40 px.
    scale = min(1.0, MTCNN_MIN_SCALED / min_size)
    if scale < 1.0:
        rgb = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    with _LOCKS["mtcnn"]:
        # No min_face_size here: mtcnn 1.0 builds its scale pyramid below PNet's 12 px for values above 20 and
        # then silently returns no face at all. Small boxes are filtered by the caller instead.
        found = detector.detect_faces(rgb)
    return [tuple(int(round(v / scale)) for v in face["box"]) for face in found
            if face.get("confidence", 1.0) >= MTCNN_MIN_CONFIDENCE]


def _clip_box(box: Sequence[int], width: int, height: int) -> Box:
    x, y, w, h = (int(v) for v in box)
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(width, x + w), min(height, y + h)
    return x0, y0, max(0, x1 - x0), max(0, y1 - y0)


def crop_face(image: np.ndarray, box: Sequence[int], size: int = FACE_SIZE, margin: float = FACE_MARGIN) -> np.ndarray:
    """Square gray crop around ``box`` grown by ``margin`` (fraction of the box side), resized to ``size``.

    Parts of the square outside the image are filled by replicating the border, so faces at the edge keep
    their aspect ratio instead of being stretched.
    """
    gray = to_gray(image)
    x, y, w, h = (int(v) for v in box)
    if w <= 0 or h <= 0:
        raise ValueError(f"empty face box {tuple(box)}")
    side = int(round(max(w, h) * (1.0 + margin)))
    cx, cy = x + w / 2.0, y + h / 2.0
    x0, y0 = int(round(cx - side / 2.0)), int(round(cy - side / 2.0))
    x1, y1 = x0 + side, y0 + side
    height, width = gray.shape
    pad = max(0, -x0, -y0, x1 - width, y1 - height)
    if pad:
        gray = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        x0, y0, x1, y1 = x0 + pad, y0 + pad, x1 + pad, y1 + pad
    crop = gray[y0:y1, x0:x1]
    interpolation = cv2.INTER_AREA if side >= size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interpolation)


def draw_faces(image: np.ndarray, faces: Sequence[dict], color: tuple[int, int, int] = (0, 255, 0)) -> np.ndarray:
    """A BGR copy with each face's box and ``label probability`` written above it."""
    canvas = to_bgr(image).copy()
    scale = max(0.4, min(canvas.shape[:2]) / 800.0)
    thickness = max(1, int(round(scale * 2)))
    for face in faces:
        x, y, w, h = (int(v) for v in face["box"])
        cv2.rectangle(canvas, (x, y), (x + w, y + h), color, thickness)
        label = face.get("label", "")
        prob = face.get("probabilities", {}).get(label)
        text = f"{label} {prob:.2f}" if prob is not None else label
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        ty = y - 4 if y - th - base - 4 >= 0 else y + h + th + 4
        cv2.rectangle(canvas, (x, ty - th - base), (x + tw, ty + base), color, cv2.FILLED)
        cv2.putText(canvas, text, (x, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness, cv2.LINE_AA)
    return canvas
