"""Face detection and cropping on a real photo (skimage's astronaut) and on images without faces."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from fer.faces import CROP_FACE_MIN_SCORE, crop_face, crop_face_score, detect_faces, draw_faces, to_gray


@pytest.fixture(scope="module")
def astronaut_bgr() -> np.ndarray:
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


@pytest.mark.parametrize("method", ["blazeface", "haar", "mtcnn"])
def test_detects_the_astronaut_face(astronaut_bgr, method):
    boxes = detect_faces(astronaut_bgr, method=method)
    assert len(boxes) >= 1
    x, y, w, h = boxes[0]
    # The face is in the upper middle of the 512x512 photo, around (225, 120).
    assert x < 225 < x + w and y < 120 < y + h
    assert 50 < w < 200 and 50 < h < 200
    # Gray input gives the same face.
    assert len(detect_faces(to_gray(astronaut_bgr), method=method)) >= 1
    # A big photo is searched downscaled; boxes come back in its own pixels.
    bx, by, bw, bh = detect_faces(cv2.resize(astronaut_bgr, (1536, 1536)), method=method)[0]
    assert bx < 3 * 225 < bx + bw and by < 3 * 120 < by + bh and bw > 150


@pytest.mark.parametrize("method", ["blazeface", "haar", "mtcnn"])
def test_detects_a_face_in_a_vga_frame(astronaut_bgr, method):
    # 640x480 raises the minimum face size above 20 px (a value that once made mtcnn find nothing).
    frame = np.full((480, 640, 3), 90, np.uint8)
    frame[40:440, 200:600] = cv2.resize(astronaut_bgr, (400, 400))
    boxes = detect_faces(frame, method=method)
    assert len(boxes) >= 1
    x, y, w, h = boxes[0]
    assert 200 < x + w / 2 < 600 and 40 < y + h / 2 < 440


@pytest.mark.parametrize("method", ["blazeface", "haar", "mtcnn"])
def test_blank_and_noise_images_have_no_face(method):
    assert detect_faces(np.zeros((240, 320, 3), np.uint8), method=method) == []
    noise = np.random.default_rng(0).integers(0, 256, (120, 160), dtype=np.uint8)
    assert detect_faces(noise, method=method) == []


def test_crop_face_score_tells_small_face_crops_from_other_small_pictures(astronaut_bgr):
    from skimage import data

    face = astronaut_bgr[30:230, 130:310]
    for side in (48, 64, 100):  # FER2013 / CK+48 crops are 48 px, RAF-DB's 100 px
        assert crop_face_score(cv2.resize(face, (side, side), interpolation=cv2.INTER_AREA)) >= CROP_FACE_MIN_SCORE
    assert crop_face_score(to_gray(cv2.resize(face, (48, 48)))) >= CROP_FACE_MIN_SCORE
    rng = np.random.default_rng(0)
    assert crop_face_score(rng.integers(0, 256, (90, 90), dtype=np.uint8)) < CROP_FACE_MIN_SCORE
    assert crop_face_score(data.brick()[100:190, 200:290]) < CROP_FACE_MIN_SCORE
    assert crop_face_score(np.zeros((48, 48), np.uint8)) == 0.0


def test_crop_face_score_keeps_real_face_crops(shared_data):
    """FER2013 and CK+48 crops as they come: the check keeps (nearly) all of them (98.7 % of 1000 FER2013
    validation crops in exp39, docs/fer.md)."""
    from fer.ckplus import load_ckplus
    from fer.fer2013 import load_fer2013

    for faces, least in ((load_fer2013(shared_data, max_per_class=30), 0.95),
                         (load_ckplus(shared_data, max_per_class=15), 0.98)):
        kept = np.mean([crop_face_score(image) >= CROP_FACE_MIN_SCORE for image in faces.images])
        assert kept >= least, f"{faces.corpus}: only {kept:.3f} of {len(faces)} crops look like faces"


def test_unknown_detector_and_bad_image():
    with pytest.raises(ValueError, match="unknown face detector"):
        detect_faces(np.zeros((10, 10), np.uint8), method="yolo")
    with pytest.raises(ValueError, match="expected a gray"):
        detect_faces(np.zeros((0, 0), np.uint8))


def test_crop_face_shapes_margin_and_edges(astronaut_bgr):
    box = detect_faces(astronaut_bgr)[0]
    crop = crop_face(astronaut_bgr, box)
    assert crop.shape == (48, 48) and crop.dtype == np.uint8
    assert crop.std() > 10  # an actual face, not padding
    assert crop_face(astronaut_bgr, box, size=64, margin=0.0).shape == (64, 64)
    # A box hanging over the corner is padded, not stretched.
    corner = crop_face(astronaut_bgr, (-20, -20, 60, 40), size=32)
    assert corner.shape == (32, 32)
    # Float RGB-like input in [0, 1] is accepted.
    assert crop_face(astronaut_bgr.astype(np.float32) / 255.0, box).shape == (48, 48)
    with pytest.raises(ValueError, match="empty face box"):
        crop_face(astronaut_bgr, (10, 10, 0, 5))


def test_draw_faces_marks_the_box(astronaut_bgr):
    face = {"box": [177, 67, 93, 93], "label": "happy", "probabilities": {"happy": 0.9}}
    drawn = draw_faces(astronaut_bgr, [face])
    assert drawn.shape == astronaut_bgr.shape
    assert not np.array_equal(drawn, astronaut_bgr)
    assert np.array_equal(draw_faces(to_gray(astronaut_bgr), []).shape, astronaut_bgr.shape)


def test_a_small_crop_is_drawn_enlarged_with_its_whole_box_and_a_label_inside(astronaut_bgr):
    """A 48 px crop boxed whole: the label has no room above or below, so it goes inside; the image is enlarged
    by a whole factor so the label fits (it used to fall outside the image, with two edges of the box)."""
    crop = cv2.resize(astronaut_bgr[30:230, 130:310], (48, 48))
    drawn = draw_faces(crop, [{"box": [0, 0, 48, 48], "label": "neutral", "probabilities": {"neutral": 0.55}}])
    assert drawn.shape == (240, 240, 3)
    green = (drawn[..., 1] == 255) & (drawn[..., 0] == 0) & (drawn[..., 2] == 0)
    edges = (green[0], green[-1], green[20:, 0], green[:, -1])  # all four (the label covers the left edge's top)
    assert all(edge.all() for edge in edges)
    label = drawn[2:14, 2:60]  # the label inside the box's top: green background, black text
    no_red_or_blue = (label[..., 0] < 40) & (label[..., 2] < 40)  # green, black, or anti-aliased between
    assert no_red_or_blue.mean() > 0.95 and green[2:14, 2:60].mean() > 0.4
