"""Find faces in photos and cut them out the way the training data looks (48x48 grayscale).

Detectors, all without a download:
- ``blazeface`` (default): MediaPipe's short-range BlazeFace (``fer.blazeface``; the ``.tflite`` file ships in
  ``fer/assets/blazeface``, Apache-2.0). ~2 ms per 640x480 frame on one core, 6 landmarks per face; finds
  faces from about 1/8 of the image's longer side up to the whole frame (webcam, portraits, video).
- ``blazeface-full``: BlazeFace's full-range model merged with the short-range one: faces from about 1/16
  of the longer side (group photos, people a few metres away); ~7 ms per frame.
- ``haar``: OpenCV's frontal-face Haar cascade shipped in ``cv2.data`` (OpenCV 4.x wheels). No landmarks,
  ~290 ms per 640x480 frame, false faces on texture.
- ``mtcnn``: the ``mtcnn`` package (weights inside the wheel, TensorFlow); 5 landmarks. Slow.
Each detector is built on first use and reused; a lock guards it because the web app calls from threads.

Crops: with landmarks (blazeface, mtcnn) ``align_face`` rotates the eyes level and frames the face as FER2013
frames its 48x48 images (eyes at 39.5 % of the height, measured with BlazeFace on 1466 FER2013 images);
without them (haar) it is the plain square box crop of ``crop_face``. ``detect_and_align`` is the one call
that every inference path uses (fer.predict, the web app through FERPredictor, fusion, the JAFFE loader).
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Sequence, Union

import cv2
import numpy as np

DETECTORS = ("blazeface", "blazeface-full", "haar", "mtcnn")
DEFAULT_DETECTOR = "blazeface"
HAAR_FILE = "haarcascade_frontalface_default.xml"
HAAR_SCALE_FACTOR = 1.1
HAAR_MIN_NEIGHBORS = 5
HAAR_MIN_SCALED = 30  # px: the smallest wanted face after downscaling (the cascade window is 24 px)
MIN_FACE_FRACTION = 0.05  # ignore "faces" smaller than 5 % of the shorter image side (mostly texture noise)
MIN_FACE_PIXELS = 20
MTCNN_MIN_CONFIDENCE = 0.9
MTCNN_MIN_SCALED = 40
# BlazeFace score thresholds. MediaPipe uses 0.5 for both models; for the short-range model 0.6 was chosen on
# 80 textured 640x480 frames without faces (bench_fer_detect's tuning frames, not its test frames): false faces
# 4 -> 1, no JAFFE face lost at any size the model finds (real faces score 0.75-0.96).
BLAZEFACE_MIN_SCORE = {"short": 0.6, "full": 0.5}
MERGE_IOU = 0.3  # blazeface-full: a face found by both models is kept once (the higher score)
REFINE_SIZE, REFINE_MARGIN = 128, 1.0  # the second look at a face: its upright crop, the face about 60 % of it
FACE_SIZE = 48
# A small image that is to be read whole as one face crop (fer.predict) is first shown to BlazeFace at
# CROP_CHECK_SIDE px in the middle of its 128 px input, borders replicated: letterboxed whole (the face filling
# the input) it misses 20 % of FER2013's crops. runs exp39 (docs/fer.md): a score of at least
# CROP_FACE_MIN_SCORE kept 98.7 % of 1000 FER2013 validation crops, all 927 CK+48 crops and 2.6 % of
# 500 non-face patches (skimage's textures and objects, pixel noise).
CROP_CHECK_SIDE = 64
CROP_FACE_MIN_SCORE = 0.3
CROP_SCORE_FLOOR = 0.1  # scores below this read as 0.0: far from the threshold, and each one costs NMS time
FACE_MARGIN = 0.2
MIN_ANNOTATED_SIDE = 240  # draw_faces enlarges smaller images: a 48 px crop has no room for a legible label
# Aligned crops (align_face): where FER2013 has its faces. Medians of BlazeFace's landmarks on 1466 random
# FER2013 training images (48x48): eye midpoint at x 0.50, y 0.395 of the side; eye centres 0.367 of the side
# apart; mouth 0.388 below the eye midpoint. The crop side is the larger of the two distances over its
# FER2013 fraction (a turned head shortens one, a nodding head the other), divided by 1.03, the median of that
# larger ratio on FER2013 itself. CK+48 has the same framing (eyes at 0.402, 0.380 apart, mouth 0.377 below).
ALIGN_EYE_Y = 0.395
ALIGN_EYE_DISTANCE = 0.367 * 1.03
ALIGN_EYE_MOUTH = 0.388 * 1.03
LANDMARKS = ("right_eye", "left_eye", "nose", "mouth", "right_ear", "left_ear")  # as seen from the person

Box = tuple[int, int, int, int]

_LOCKS = {"haar": threading.Lock(), "mtcnn": threading.Lock(), "load": threading.RLock()}


@dataclass(frozen=True)
class Face:
    """One detected face: ``box`` (x, y, w, h) in pixels, ``landmarks`` (k, 2) x/y pixels in the order of
    ``LANDMARKS`` (the person's right eye first: on the image's left in an ordinary photo) or None, ``score``.

    blazeface gives all 6 landmarks, mtcnn the first 4 (its mouth is the midpoint of the mouth corners),
    haar none.
    """

    box: Box
    landmarks: np.ndarray | None = field(default=None, compare=False)
    score: float = 1.0

    def landmark(self, name: str) -> np.ndarray | None:
        index = LANDMARKS.index(name)
        if self.landmarks is None or len(self.landmarks) <= index:
            return None
        return self.landmarks[index]

    @property
    def can_align(self) -> bool:
        return self.landmarks is not None and len(self.landmarks) >= 4

    def eye_angle(self) -> float | None:
        """Degrees the line from the person's right to left eye is turned from horizontal (clockwise positive,
        as image y points down); None without landmarks."""
        if not self.can_align:
            return None
        (rx, ry), (lx, ly) = self.landmarks[0], self.landmarks[1]
        return math.degrees(math.atan2(ly - ry, lx - rx))

    def scaled(self, factor: float, dx: float = 0.0, dy: float = 0.0) -> "Face":
        """The same face in another image: coordinates times ``factor``, then moved by (dx, dy)."""
        x, y, w, h = self.box
        box = (int(round(x * factor + dx)), int(round(y * factor + dy)), int(round(w * factor)),
               int(round(h * factor)))
        points = None if self.landmarks is None else self.landmarks * factor + np.array([dx, dy], np.float32)
        return Face(box, points, self.score)

    def as_dict(self) -> dict:
        out = {"box": [int(v) for v in self.box], "score": round(float(self.score), 4)}
        if self.landmarks is not None:
            out["landmarks"] = {name: [round(float(v), 1) for v in point]
                                for name, point in zip(LANDMARKS, self.landmarks)}
        return out


FaceOrBox = Union[Face, Sequence[int]]


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


def _blazeface(model: str):
    with _LOCKS["load"]:  # the first frames of several threads at once load the model once
        return _load_blazeface(model)


@lru_cache(maxsize=None)
def _load_blazeface(model: str):
    from fer.blazeface import BlazeFace

    return BlazeFace(model, min_score=BLAZEFACE_MIN_SCORE[model])


def check_loader_detector(name: str) -> None:
    """A corpus loader's ``--detector`` (fer.train, fer.evaluate): one of ``DETECTORS``, or ``none`` (JAFFE's
    whole photos, not searched). Raises ValueError naming the choices."""
    if name not in (*DETECTORS, "none"):
        raise ValueError(f"unknown --detector {name!r}; choose one of {', '.join(DETECTORS)}, none")


def _check_method(method: str) -> None:
    if method not in DETECTORS:
        raise ValueError(f"unknown face detector {method!r}; choose one of {DETECTORS}")


def load_detector(method: str = DEFAULT_DETECTOR) -> None:
    """Build a detector now (e.g. at server start) instead of on the first image."""
    _check_method(method)
    with _LOCKS["load"]:  # two threads asking at once build it once
        if method == "haar":
            _haar()
        elif method == "mtcnn":
            _mtcnn()
        else:
            for model in _blazeface_models(method):
                _blazeface(model)


def _blazeface_models(method: str) -> tuple[str, ...]:
    return ("short",) if method == "blazeface" else ("full", "short")


def detect_faces(image: np.ndarray, method: str = DEFAULT_DETECTOR, min_size: int | None = None) -> list[Box]:
    """Face boxes ``(x, y, w, h)`` in pixels, largest first; ``[]`` when there is no face.

    ``image`` is BGR uint8 (as ``cv2.imread`` gives) or gray uint8. ``min_size`` (px) is the smallest face
    reported, by default 5 % of the shorter image side (at least 20 px); a larger value makes ``haar`` faster
    (e.g. 60 on webcam frames: about 4x less work than the default at 640x480). Landmarks and scores:
    ``detect_faces_with_landmarks``.
    """
    return [face.box for face in detect_faces_with_landmarks(image, method, min_size)]


def detect_faces_with_landmarks(image: np.ndarray, method: str = DEFAULT_DETECTOR,
                                min_size: int | None = None) -> list[Face]:
    """``Face`` objects (box, landmarks or None, score), largest first; arguments as ``detect_faces``."""
    _check_method(method)
    image = _check_image(image)
    height, width = image.shape[:2]
    if min_size is None:
        min_size = max(MIN_FACE_PIXELS, int(MIN_FACE_FRACTION * min(height, width)))
    if method == "haar":
        faces = [Face(box) for box in _detect_haar(to_gray(image), min_size)]
    elif method == "mtcnn":
        faces = _detect_mtcnn(to_rgb(image), min_size)
    else:
        faces = _detect_blazeface(to_rgb(image), _blazeface_models(method), min_size)
    faces = [Face(_clip_box(f.box, width, height), f.landmarks, f.score) for f in faces]
    faces = [f for f in faces if f.box[2] >= min_size and f.box[3] >= min_size]
    return sorted(faces, key=lambda f: f.box[2] * f.box[3], reverse=True)


def _detect_blazeface(rgb: np.ndarray, models: tuple[str, ...], min_size: int) -> list[Face]:
    found = []
    for model in models:
        for box, points, score in _blazeface(model).detect(rgb):
            found.append((box, points, score))
    if len(models) > 1:  # the same face seen by both models: keep the better-scored one
        from fer.blazeface import iou

        found.sort(key=lambda d: -d[2])
        kept: list = []
        for det in found:
            if not kept or iou(det[0], np.stack([k[0] for k in kept])).max() <= MERGE_IOU:
                kept.append(det)
        found = kept
    faces = []
    for (x0, y0, x1, y1), points, score in found:
        box = (int(round(x0)), int(round(y0)), int(round(x1 - x0)), int(round(y1 - y0)))
        if min(box[2], box[3]) < min_size:  # dropped by the caller anyway: no second look
            continue
        faces.append(_refine_landmarks(rgb, Face(box, np.asarray(points, np.float32), float(score))))
    return faces


def _refine_landmarks(rgb: np.ndarray, face: Face) -> Face:
    """The face's landmarks found again by the short-range model in an upright crop around it.

    BlazeFace's keypoints lag behind a tilted head: on skimage's astronaut turned by -30..30 degrees, crops
    aligned with the first keypoints still had their eyes 3-9 degrees off level (measured with OpenCV's eye
    cascade); after this second look, within 2 degrees. Costs one more 128 px model run per face found. When
    the second look finds no face, the first landmarks stay.
    """
    found = alignment_matrix(face, size=REFINE_SIZE, margin=REFINE_MARGIN)
    if found is None:
        return face
    matrix, work = found
    crop = cv2.warpAffine(rgb, matrix, (work, work), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    centre = work / 2.0
    best = None
    for (x0, y0, x1, y1), points, score in _blazeface("short").detect(crop):
        if x0 <= centre <= x1 and y0 <= centre <= y1 and (best is None or score > best[1]):
            best = (points, score)
    if best is None:
        return face
    inverse = cv2.invertAffineTransform(matrix)
    points = np.c_[best[0], np.ones(len(best[0]))] @ inverse.T
    return Face(face.box, points.astype(np.float32), face.score)


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


def _detect_mtcnn(rgb: np.ndarray, min_size: int) -> list[Face]:
    detector = _mtcnn()
    # Same idea as for haar: big photos are searched at a size where the smallest wanted face is ~40 px.
    scale = min(1.0, MTCNN_MIN_SCALED / min_size)
    if scale < 1.0:
        rgb = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    with _LOCKS["mtcnn"]:
        # No min_face_size here: mtcnn 1.0 builds its scale pyramid below PNet's 12 px for values above 20 and
        # then silently returns no face at all. Small boxes are filtered by the caller instead.
        found = detector.detect_faces(rgb)
    faces = []
    for face in found:
        if face.get("confidence", 1.0) < MTCNN_MIN_CONFIDENCE:
            continue
        box = tuple(int(round(v / scale)) for v in face["box"])
        faces.append(Face(box, _mtcnn_landmarks(face.get("keypoints"), scale), float(face.get("confidence", 1.0))))
    return faces


def _mtcnn_landmarks(keypoints: dict | None, scale: float) -> np.ndarray | None:
    """MTCNN's 5 points as LANDMARKS' first 4 (eyes ordered by x: the image's left one is the person's right)."""
    names = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
    if not keypoints or any(n not in keypoints for n in names):
        return None
    eyes = sorted((keypoints["left_eye"], keypoints["right_eye"]), key=lambda p: p[0])
    mouth = np.mean([keypoints["mouth_left"], keypoints["mouth_right"]], axis=0)
    return np.array([eyes[0], eyes[1], keypoints["nose"], mouth], np.float32) / scale


def _clip_box(box: Sequence[int], width: int, height: int) -> Box:
    x, y, w, h = (int(v) for v in box)
    x0, y0 = max(0, x), max(0, y)
    x1, y1 = min(width, x + w), min(height, y + h)
    return x0, y0, max(0, x1 - x0), max(0, y1 - y0)


def crop_face(image: np.ndarray, box: FaceOrBox, size: int = FACE_SIZE, margin: float = FACE_MARGIN) -> np.ndarray:
    """Square gray crop around ``box`` grown by ``margin`` (fraction of the box side), resized to ``size``.

    Parts of the square outside the image are filled by replicating the border, so faces at the edge keep
    their aspect ratio instead of being stretched. Given a ``Face`` with landmarks, this is ``align_face``.
    """
    if isinstance(box, Face):
        if box.can_align:
            return align_face(image, box, size=size, margin=margin)
        box = box.box
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


def align_face(image: np.ndarray, face: FaceOrBox, size: int = FACE_SIZE, margin: float = FACE_MARGIN) -> np.ndarray:
    """uint8 gray (size, size): the face rotated so its eyes are level, framed as FER2013 frames its faces.

    The eye midpoint lands at half the width and ``ALIGN_EYE_Y`` of the height; the face's size comes from
    its eye distance and eye-to-mouth distance (``ALIGN_*``). ``margin`` keeps ``crop_face``'s meaning: the
    default 0.2 (what every model's config.json records as its face margin) gives exactly the FER2013
    framing, a larger value shows more around the face (the side grows by (1 + margin) / 1.2). A face without
    landmarks (haar) or a plain box falls back to ``crop_face``'s box crop. Borders are replicated.
    """
    if not isinstance(face, Face) or not face.can_align:
        return crop_face(image, face.box if isinstance(face, Face) else face, size=size, margin=margin)
    found = alignment_matrix(face, size, margin)
    if found is None:
        return crop_face(image, face.box, size=size, margin=margin)
    matrix, work = found
    crop = cv2.warpAffine(to_gray(image), matrix, (work, work), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
    if work == size:
        return crop
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


def alignment_matrix(face: Face, size: int = FACE_SIZE, margin: float = FACE_MARGIN) -> tuple[np.ndarray, int] | None:
    """(2x3 affine matrix from image pixels to a ``work`` x ``work`` crop, ``work``) for ``align_face``, or None
    when the landmarks give no usable size. ``work`` is about the face's own resolution (between ``size`` and
    4x ``size``): the crop is warped there and then shrunk with INTER_AREA, since a direct bilinear warp of a
    large face to 48 px would alias. Multiply by size / work for the final crop's coordinates."""
    right_eye, left_eye, _nose, mouth = (np.asarray(p, np.float64) for p in face.landmarks[:4])
    eye_mid = (right_eye + left_eye) / 2.0
    eye_distance = float(np.hypot(*(left_eye - right_eye)))
    eye_mouth = float(np.hypot(*(mouth - eye_mid)))
    base = max(eye_distance / ALIGN_EYE_DISTANCE, eye_mouth / ALIGN_EYE_MOUTH)  # the FER2013-framed side
    side = base * (1.0 + margin) / (1.0 + FACE_MARGIN)
    if not np.isfinite(side) or side < 1.0:
        return None
    angle = math.atan2(left_eye[1] - right_eye[1], left_eye[0] - right_eye[0])
    # The crop's centre: below the eye midpoint, along the face's own vertical (the eye line's normal).
    down = np.array([-math.sin(angle), math.cos(angle)])
    centre = eye_mid + down * (0.5 - ALIGN_EYE_Y) * base
    work = int(np.clip(round(side), size, 4 * size))
    matrix = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), math.degrees(angle), work / side)
    matrix[:, 2] += np.array([work / 2.0, work / 2.0]) - centre
    return matrix, work


def detect_and_align(image: np.ndarray, method: str = DEFAULT_DETECTOR, size: int = FACE_SIZE,
                     margin: float = FACE_MARGIN, min_size: int | None = None) -> tuple[list[Face], np.ndarray]:
    """Every face (largest first) and its crop (n, size, size) uint8: the one path from an image to model input.

    fer.predict, the web app (through FERPredictor), fusion and the JAFFE loader all cut faces here, so the
    geometry is the same everywhere: aligned with landmarks, the box crop without (haar).
    """
    faces = detect_faces_with_landmarks(image, method, min_size)
    if not faces:
        return [], np.zeros((0, size, size), np.uint8)
    gray = to_gray(image)  # once per frame, not once per face
    return faces, np.stack([align_face(gray, face, size=size, margin=margin) for face in faces])


def crop_face_score(image: np.ndarray) -> float:
    """How much an image looks like one face crop (FER2013-style, the face filling it): the best BlazeFace score
    (0..1) of a face covering the image's centre, with the image shown as ``CROP_CHECK_SIDE`` describes; 0.0
    when BlazeFace sees nothing there scoring at least ``CROP_SCORE_FLOOR``. ``image``: gray or BGR, as
    ``detect_faces`` takes."""
    gray = to_gray(image)
    small = cv2.resize(gray, (CROP_CHECK_SIDE, CROP_CHECK_SIDE),
                       interpolation=cv2.INTER_AREA if max(gray.shape) > CROP_CHECK_SIDE else cv2.INTER_LINEAR)
    detector = _blazeface("short")
    size = detector.spec.input_size
    before = (size - CROP_CHECK_SIDE) // 2
    after = size - CROP_CHECK_SIDE - before
    framed = cv2.copyMakeBorder(small, before, after, before, after, cv2.BORDER_REPLICATE)
    centre = size / 2.0
    scores = [score for (x0, y0, x1, y1), _, score in detector.detect(cv2.cvtColor(framed, cv2.COLOR_GRAY2RGB),
                                                                      min_score=CROP_SCORE_FLOOR)
              if x0 <= centre <= x1 and y0 <= centre <= y1]
    return float(max(scores, default=0.0))


def draw_faces(image: np.ndarray, faces: Sequence[dict], color: tuple[int, int, int] = (0, 255, 0)) -> np.ndarray:
    """A BGR copy with each face's box and ``label probability`` written above it (below it, or inside its top,
    where there is no room). An image under ``MIN_ANNOTATED_SIDE`` px (a 48 px face crop) is drawn enlarged by a
    whole factor, so that its label fits and can be read."""
    canvas = to_bgr(image)
    factor = min(8, math.ceil(MIN_ANNOTATED_SIDE / max(1, min(canvas.shape[:2]))))
    canvas = (cv2.resize(canvas, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST) if factor > 1
              else canvas.copy())
    height = canvas.shape[0]
    scale = max(0.4, min(canvas.shape[:2]) / 800.0)
    thickness = max(1, int(round(scale * 2)))
    for face in faces:
        x, y, w, h = (int(v) * factor for v in face["box"])
        cv2.rectangle(canvas, (x, y), (x + w - 1, y + h - 1), color, thickness)
        label = face.get("label", "")
        prob = face.get("probabilities", {}).get(label)
        text = f"{label} {prob:.2f}" if prob is not None else label
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thickness)
        if y - th - base - 4 >= 0:
            ty = y - 4
        elif y + h + th + base + 4 <= height:
            ty = y + h + th + 4
        else:
            ty = y + th + 4
        cv2.rectangle(canvas, (x, ty - th - base), (x + tw, ty + base), color, cv2.FILLED)
        cv2.putText(canvas, text, (x, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness, cv2.LINE_AA)
    return canvas
