"""FERPredictor and the fer.predict CLI: detection on a real photo, no-face images, --no-detect, --json, --annotate."""
from __future__ import annotations

import json

import cv2
import keras
import numpy as np
import pytest

from core.io import write_json
from core.labels import EMOTIONS
from fer import predict as fer_predict
from fer.models import build_cnn
from fer.predict import FERPredictor, ModelNotFoundError
from synth_faces import face


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """An untrained tiny model in a run folder: predictions need not be right, only well formed."""
    run = tmp_path_factory.mktemp("fer_model")
    keras.utils.set_random_seed(0)
    build_cnn((48, 48, 1), 7, filters=(4, 8), dense_units=16).save(run / "model.keras")
    write_json(run / "config.json", {"class_names": list(EMOTIONS), "face_margin": 0.2, "dataset": "fer2013"})
    return run


@pytest.fixture(scope="module")
def predictor(model_dir):
    return FERPredictor(model_dir)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from skimage import data

    folder = tmp_path_factory.mktemp("images")
    cv2.imwrite(str(folder / "astronaut.jpg"), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    cv2.imwrite(str(folder / "blank.png"), np.full((120, 160, 3), 200, np.uint8))
    (folder / "crops").mkdir()
    for emotion in ("happy", "sad"):
        cv2.imwrite(str(folder / "crops" / f"{emotion}.png"), face(emotion))
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    return folder


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_predict_crops_matches_the_model(predictor):
    crops = np.stack([face(e, seed=i) for i, e in enumerate(EMOTIONS)])
    probs = predictor.predict_crops(crops)
    assert probs.shape == (7, 7)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    expected = predictor.model.predict_on_batch(crops[..., None].astype(np.float32))
    np.testing.assert_allclose(probs, expected, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(predictor.predict_crops(crops[0]), probs[:1], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(predictor.predict_crops(crops[..., None]), probs, rtol=1e-4, atol=1e-6)
    assert predictor.predict_crops(np.stack([cv2.resize(c, (96, 96)) for c in crops])).shape == (7, 7)
    assert predictor.predict_crops(np.zeros((0, 48, 48), np.uint8)).shape == (0, 7)


def test_predict_image_finds_the_astronaut_and_nothing_in_a_blank(predictor, images):
    faces = predictor.predict_image(cv2.imread(str(images / "astronaut.jpg")))
    assert len(faces) >= 1
    first = faces[0]
    assert len(first["box"]) == 4 and first["label"] in EMOTIONS
    assert list(first["probabilities"]) == list(EMOTIONS)
    assert first["label"] == max(first["probabilities"], key=first["probabilities"].get)
    json.dumps(faces)  # plain Python types only
    assert predictor.predict_image(cv2.imread(str(images / "blank.png"))) == []


def test_mtcnn_detector(model_dir, images):
    faces = FERPredictor(model_dir, detector="mtcnn").predict_image(cv2.imread(str(images / "astronaut.jpg")))
    assert len(faces) >= 1


def test_a_small_image_is_read_whole_as_one_face_crop(predictor, model_dir, images, capsys):
    crop = cv2.imread(str(images / "crops" / "happy.png"))
    assert crop.shape[:2] == (48, 48)
    (only,) = predictor.predict_image(crop)
    assert only["box"] == [0, 0, 48, 48] and only["label"] == predictor.predict_face(crop)["label"]
    assert only["probabilities"] == predictor.predict_face(crop)["probabilities"]
    side = fer_predict.CROPPED_FACE_SIDE
    assert predictor.predict_image(np.full((side + 1, side + 1, 3), 200, np.uint8)) == []  # searched: no face
    assert fer_predict.main([str(images / "crops"), "--json", "--model-dir", str(model_dir)]) == 0
    lines = _json_lines(capsys.readouterr().out)
    assert [line["faces"][0]["box"] for line in lines] == [[0, 0, 48, 48]] * 2


def test_a_small_picture_of_no_face_has_no_face(predictor, model_dir, images, tmp_path, capsys):
    """Read whole only when it looks like a face: noise and a brick wall do not; the astronaut's face does."""
    from skimage import data

    side = fer_predict.CROPPED_FACE_SIDE
    noise = np.random.default_rng(0).integers(0, 256, (side, side - 10, 3), dtype=np.uint8)
    bricks = data.brick()[100:190, 200:290]
    assert predictor.predict_image(noise) == [] and predictor.predict_image(bricks) == []
    face_crop = cv2.resize(cv2.imread(str(images / "astronaut.jpg"), cv2.IMREAD_GRAYSCALE)[30:230, 130:310], (64, 64))
    (only,) = predictor.predict_image(face_crop)
    assert only["box"] == [0, 0, 64, 64]
    cv2.imwrite(str(tmp_path / "bricks.png"), bricks)
    assert fer_predict.main([str(tmp_path / "bricks.png"), "--json", "--model-dir", str(model_dir)]) == 0
    out = capsys.readouterr()
    assert _json_lines(out.out)[0]["faces"] == [] and "--no-detect reads it whole" in out.err
    assert fer_predict.main([str(tmp_path / "bricks.png"), "--json", "--no-detect", "--model-dir", str(model_dir)]) == 0
    assert _json_lines(capsys.readouterr().out)[0]["label"] in EMOTIONS  # asked to: read whole, unchecked


def test_a_small_blank_image_has_no_face(predictor, model_dir, tmp_path, capsys):
    """FER2013 holds a few one-colour images: nothing there to read an expression from."""
    assert predictor.predict_image(np.full((48, 48, 3), 200, np.uint8)) == []
    assert predictor.predict_image(np.zeros((48, 48), np.uint8)) == []
    faint = np.full((48, 48), 120, np.uint8)
    faint[::2] += 8  # a std of 4 gray levels: faint, but not blank (and then not a face either)
    assert not fer_predict.is_blank(faint) and fer_predict.is_blank(np.full((48, 48), 90, np.uint8))
    cv2.imwrite(str(tmp_path / "gray48.png"), np.full((48, 48), 90, np.uint8))
    assert fer_predict.main([str(tmp_path / "gray48.png"), "--json", "--model-dir", str(model_dir)]) == 0
    out = capsys.readouterr()
    assert _json_lines(out.out)[0]["faces"] == [] and "no face found" in out.err


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(ModelNotFoundError, match="--model-dir"):
        FERPredictor(tmp_path)
    cv2.imwrite(str(tmp_path / "photo.png"), np.full((120, 160, 3), 90, np.uint8))
    assert fer_predict.main([str(tmp_path), "--model-dir", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "fer.train" in err and "--model-dir" in err


def test_cli_json_with_detection(model_dir, images, capsys):
    rc = fer_predict.main([str(images / "astronaut.jpg"), str(images / "blank.png"), "--json",
                           "--model-dir", str(model_dir)])
    assert rc == 0
    out = capsys.readouterr()
    astronaut, blank = _json_lines(out.out)
    assert astronaut["path"].endswith("astronaut.jpg") and len(astronaut["faces"]) >= 1
    assert set(astronaut["faces"][0]) == {"box", "label", "probabilities"}
    assert list(astronaut["faces"][0]["probabilities"]) == list(EMOTIONS)
    assert blank["faces"] == []
    assert "blank.png: no face found" in out.err


def test_cli_no_detect_on_a_folder(model_dir, images, capsys):
    rc = fer_predict.main([str(images / "crops"), "--no-detect", "--json", "--model-dir", str(model_dir)])
    assert rc == 0
    lines = _json_lines(capsys.readouterr().out)
    assert [line["path"].rsplit("/", 1)[-1] for line in lines] == ["happy.png", "sad.png"]
    for line in lines:
        assert set(line) == {"path", "label", "probabilities"}
        assert sum(line["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


def test_cli_bad_files_are_reported_and_the_rest_continue(model_dir, images, capsys):
    rc = fer_predict.main([str(images / "broken.jpg"), str(images / "missing.png"), str(images / "blank.png"),
                           "--model-dir", str(model_dir)])
    assert rc == 1
    out = capsys.readouterr()
    assert "cannot read image" in out.err and "no such file" in out.err
    assert "blank.png: 0 face(s)" in out.out


def test_cli_names_the_tool_for_a_video_or_a_sound_file(model_dir, tmp_path, capsys):
    clip, note = tmp_path / "clip.mp4", tmp_path / "note.opus"
    clip.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(64))
    note.write_bytes(b"OggS" + bytes(64))
    assert fer_predict.main([str(clip), str(note), "--model-dir", str(model_dir)]) == 1
    err = capsys.readouterr().err
    assert "clip.mp4: not a readable image" in err and "`python -m fusion.predict` reads its faces and voice" in err
    assert "note.opus: not a readable image" in err and "`python -m ser.predict` reads it" in err


def test_cli_annotate(model_dir, images, tmp_path, capsys):
    out_dir = tmp_path / "annotated"
    rc = fer_predict.main([str(images / "astronaut.jpg"), str(images / "crops"), "--annotate", str(out_dir),
                           "--model-dir", str(model_dir)])
    assert rc == 0
    drawn = cv2.imread(str(out_dir / "astronaut.jpg"))
    original = cv2.imread(str(images / "astronaut.jpg"))
    assert drawn.shape == original.shape
    assert np.abs(drawn.astype(int) - original.astype(int)).max() > 100  # a box was drawn
    assert (out_dir / "happy.png").is_file() and (out_dir / "sad.png").is_file()
    assert "face(s)" in capsys.readouterr().out


def test_annotating_into_the_photos_own_folder_never_writes_over_a_photo(model_dir, images, tmp_path, capsys):
    import shutil

    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(images / "astronaut.jpg", folder / "astronaut.jpg")
    shutil.copy(images / "blank.png", folder / "blank.png")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert fer_predict.main([str(folder), "--annotate", str(folder), "--model-dir", str(model_dir)]) == 0
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.name in before} == before
    assert {p.name for p in folder.iterdir()} == {"astronaut.jpg", "blank.png", "astronaut_1.jpg", "blank_1.png"}
    assert "no face found (small faces in a large picture? --detector blazeface-full" in capsys.readouterr().err


def test_only_empty_folders_stop_before_the_model_loads(tmp_path, capsys, monkeypatch):
    (tmp_path / "empty").mkdir()
    monkeypatch.setattr(fer_predict, "FERPredictor", lambda *a, **k: pytest.fail("no model is needed"))
    assert fer_predict.main([str(tmp_path / "empty")]) == 2
    assert "error: no images (" in capsys.readouterr().err
