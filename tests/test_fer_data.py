"""FER corpus loaders on synthetic files in the real layouts: parsing, label mapping, skips, splits."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from core.datasets import DatasetNotFoundError
from core.labels import EMOTIONS, EMOTION_INDEX
from fer.ckplus import load_ckplus, subject_of
from fer.data import FaceDataError, load_corpus, make_augmenter, make_dataset, split_faceset
from fer.fer2013 import load_csv, load_fer2013, parse_pixels
from fer.jaffe import load_jaffe, parse_name
from synth_faces import write_ckplus, write_fer2013_csv, write_fer2013_folders, write_jaffe


def test_fer2013_csv_skips_and_counts_bad_rows(tmp_path, caplog):
    expected = write_fer2013_csv(tmp_path / "fer2013" / "fer2013.csv", per_class=4)
    with caplog.at_level(logging.WARNING):
        data = load_fer2013(tmp_path)  # a root holding fer2013/
    assert len(data) == expected["loaded"] == 28
    assert data.images.shape == (28, 48, 48) and data.images.dtype == np.uint8
    report = data.report()
    assert report["skipped_total"] == 2
    assert any("wrong pixel count" in r for r in report["skipped"])
    assert any("malformed row" in r for r in report["skipped"])
    assert "skipped 1 item(s)" in caplog.text
    # Codes map onto the schema: 0 angry ... 6 neutral, 4 per class.
    assert report["per_class"] == {e: 4 for e in EMOTIONS}
    # Usage becomes the split: Training x2, PublicTest, PrivateTest per class.
    assert sorted(set(data.splits)) == ["test", "train", "val"]
    assert (data.splits == "train").sum() == 14
    assert split_faceset(data, 0.1, 0.2, 0).tolist() == data.splits.tolist()


def test_fer2013_csv_without_usage_is_held_out_stratified(tmp_path):
    write_fer2013_csv(tmp_path / "fer2013.csv", per_class=10, usage=False)
    data = load_fer2013(tmp_path / "fer2013.csv")  # the CSV file itself
    assert data.splits is None and len(data) == 70
    splits = split_faceset(data, 0.2, 0.2, seed=1)
    assert (splits == "test").sum() == 14 and (splits == "val").sum() == 14
    # Stratified: each class is held out twice per part.
    for part in ("val", "test"):
        assert np.bincount(data.labels[splits == part], minlength=7).tolist() == [2] * 7


def test_parse_pixels_reasons():
    assert parse_pixels(" ".join(["7"] * 2304)).shape == (48, 48)
    assert "wrong pixel count" in parse_pixels("1 2 3")
    assert "non-numeric" in parse_pixels("a " * 2304)
    assert "outside" in parse_pixels(" ".join(["300"] * 2304))


def test_fer2013_csv_missing_columns(tmp_path):
    (tmp_path / "x.csv").write_text("label,image\n1,2\n")
    with pytest.raises(FaceDataError, match="missing column"):
        load_csv(tmp_path / "x.csv")


def test_fer2013_folders_with_test_split_and_unreadable_file(tmp_path, caplog):
    expected = write_fer2013_folders(tmp_path / "fer2013", per_class=5)
    (tmp_path / "fer2013" / "train" / "contempt").mkdir()  # not a FER2013 class
    with caplog.at_level(logging.WARNING):
        data = load_corpus("fer2013", tmp_path)
    assert len(data) == expected["loaded"] == 70
    report = data.report()
    assert report["skipped"] == {"unreadable image": 1, "unknown emotion folder": 1}
    assert "unreadable image" in caplog.text
    happy = EMOTION_INDEX["happy"]
    assert np.sum((data.labels == happy) & (data.splits == "test")) == 5
    splits = split_faceset(data, val_fraction=0.1, test_fraction=0.2, seed=0)
    assert (splits == "test").sum() == 35  # the corpus' own test/ folder is kept
    assert (splits == "val").sum() == 7  # 10 % of the whole set, out of train
    assert not set(np.flatnonzero(splits == "val")) & set(np.flatnonzero(data.splits == "test"))


def test_fer2013_folders_cap_per_class(tmp_path):
    write_fer2013_folders(tmp_path, per_class=5, splits=("train",))
    data = load_fer2013(tmp_path, max_per_class=2)
    assert np.bincount(data.labels).tolist() == [2] * 7


def test_fer2013_missing_data_is_a_clear_error(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        load_fer2013(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FaceDataError, match="no FER2013 data"):
        load_fer2013(tmp_path / "empty")


def test_jaffe_names_palette_tiff_and_subject_split(tmp_path):
    assert parse_name("KA.AN1.39.tiff") == ("KA", "AN")
    assert parse_name("NA.SU2.79.TIFF") == ("NA", "SU")
    assert parse_name("KA_AN1_39.tiff") is None
    expected = write_jaffe(tmp_path / "jaffe", takes=1)
    data = load_jaffe(tmp_path)
    assert len(data) == expected["loaded"] == 35
    assert data.images.shape[1:] == (48, 48)
    report = data.report()
    assert report["skipped_total"] == expected["bad_name"]
    assert report["subjects"] == 5 and report["per_class"] == {e: 5 for e in EMOTIONS}
    # The palette-mode file became a real gray face, not palette indices.
    first = data.sources.index(str(tmp_path / "jaffe" / "KA.NE1.1.tiff"))
    assert data.images[first].mean() > 60
    splits = split_faceset(data, 0.2, 0.2, seed=0, test_subjects=["KA"])
    for part in ("train", "val", "test"):
        subjects = {s for s, p in zip(data.subjects, splits) if p == part}
        assert subjects, part
        assert not subjects & {s for s, p in zip(data.subjects, splits) if p != part}
    assert {s for s, p in zip(data.subjects, splits) if p == "test"} == {"KA"}


def test_jaffe_without_detector_keeps_whole_frame(tmp_path):
    write_jaffe(tmp_path, subjects=("KA", "KL"))
    data = load_jaffe(tmp_path, detector="none", size=32)
    assert data.images.shape == (14, 32, 32)
    capped = load_corpus("jaffe", tmp_path, size=32, max_per_class=1, seed=3, detector="none")  # as fer.evaluate asks
    assert len(capped) == 7 and sorted(capped.labels.tolist()) == list(range(7))
    assert set(capped.sources) < set(data.sources)


def test_ckplus_drops_contempt_and_splits_by_subject(tmp_path, caplog):
    assert subject_of("S010_004_00000017.png") == "S010"
    expected = write_ckplus(tmp_path / "CK+48")
    with caplog.at_level(logging.INFO):
        data = load_ckplus(tmp_path)
    assert len(data) == expected["loaded"] == 72
    report = data.report()
    assert report["dropped"] == {"contempt": 3} and report["skipped_total"] == 0
    assert report["per_class"]["neutral"] == 0 and report["per_class"]["sad"] == 12
    assert "contempt" in caplog.text
    splits = split_faceset(data, 0.2, 0.2, seed=3)
    by_subject = {}
    for subject, part in zip(data.subjects, splits):
        by_subject.setdefault(subject, set()).add(part)
    assert all(len(parts) == 1 for parts in by_subject.values())
    assert {p for parts in by_subject.values() for p in parts} == {"train", "val", "test"}


def test_unknown_corpus():
    with pytest.raises(FaceDataError, match="unknown dataset"):
        load_corpus("affectnet", ".")


def test_pipeline_augments_training_split_only():
    images = np.tile(np.arange(48, dtype=np.uint8), (8, 48, 1))  # a left-to-right ramp
    labels = np.arange(8) % 7
    plain = next(iter(make_dataset(images, labels, batch_size=8)))[0].numpy()
    assert plain.shape == (8, 48, 48, 1) and plain.dtype == np.float32
    np.testing.assert_array_equal(plain[..., 0], images.astype(np.float32))
    augmented = next(iter(make_dataset(images, labels, 8, training=True, augmenter=make_augmenter(seed=1))))
    x, y = augmented[0].numpy(), augmented[1].numpy()
    assert x.shape == (8, 48, 48, 1) and sorted(y.tolist()) == sorted(labels.tolist())
    assert not np.allclose(np.sort(x, axis=0), np.sort(plain, axis=0))


def test_erasing_blanks_a_rectangle_and_shift_moves_the_face():
    import keras

    images = np.full((4, 48, 48, 1), 200.0, np.float32)
    erased = make_augmenter(seed=3, flip=False, rotation=0, zoom=0, brightness=0, erasing=1.0)(images, training=True)
    changed = np.asarray(erased) != 200.0
    assert changed.any(axis=(1, 2, 3)).all() and changed.mean() < 0.5  # every image, never most of it
    ramp = np.tile(np.arange(48, dtype=np.float32), (4, 48, 1))[..., None]
    shifted = make_augmenter(seed=3, flip=False, rotation=0, zoom=0, brightness=0, shift=0.2)(ramp, training=True)
    assert not np.allclose(np.asarray(shifted), ramp)
    names = [layer.name for layer in make_augmenter(shift=0.1, erasing=0.5).layers]
    assert "aug_shift" in names and "aug_erasing" in names
    assert isinstance(make_augmenter(), keras.Sequential)


def test_camera_degradation_changes_about_its_share_of_faces_in_the_pipeline():
    # --degrade P: a share P of the training faces gets a poor camera's contrast, gain, resolution and noise; the
    # rest pass untouched; validation and test batches never do.
    rng = np.random.default_rng(0)
    images = rng.integers(60, 200, (256, 48, 48), dtype=np.uint8)
    labels = np.arange(256) % 7
    off = dict(flip=False, rotation=0, zoom=0, brightness=0)
    for rate in (0.0, 0.5, 1.0):
        names = [layer.name for layer in make_augmenter(seed=5, degrade=rate, **off).layers]
        assert ("aug_camera" in names) == (rate > 0)
    augmenter = make_augmenter(seed=5, degrade=0.5, **off)
    x, y = next(iter(make_dataset(images, labels, 256, training=True, augmenter=augmenter, seed=5)))
    x, y = x.numpy()[..., 0], y.numpy()
    assert x.shape == (256, 48, 48) and x.min() >= 0 and x.max() <= 255 and sorted(y) == sorted(labels)
    untouched = np.array([any(np.array_equal(face, image) for image in images) for face in x.astype(np.uint8)])
    assert 0.3 < untouched.mean() < 0.7  # about half, by chance
    assert not np.isclose(x[~untouched].std(axis=(1, 2)), 0).all()  # changed faces are still images, not blanks
    plain = next(iter(make_dataset(images, labels, 256, augmenter=augmenter)))[0].numpy()[..., 0]
    np.testing.assert_array_equal(plain, images.astype(np.float32))  # not in training: never degraded


def test_camera_degradation_keeps_only_the_kinds_asked_for():
    # --degrade-kinds: a gain alone scales each face by one factor; noise alone keeps each face's mean level.
    from fer.data import camera_degradation, check_degradations

    faces = np.random.default_rng(0).integers(60, 120, (64, 48, 48, 1)).astype("float32")
    gained = np.asarray(camera_degradation(1.0, seed=3, kinds=("gain",))(faces, training=True))
    ratio = gained / faces
    low = ratio.max(axis=(1, 2, 3)) * 120 <= 255  # faces the gain did not clip
    assert low.sum() > 10
    np.testing.assert_allclose(ratio[low].std(axis=(1, 2, 3)), 0, atol=1e-4)
    assert 0.25 <= ratio[low].min() and ratio[low].max() <= 1.6 and ratio[low].std() > 0.1
    noisy = np.asarray(camera_degradation(1.0, seed=3, kinds="noise")(faces, training=True))
    change = noisy - faces
    assert np.abs(change.mean(axis=(1, 2, 3))).max() < 1.0  # no gain, no contrast: the level stays
    assert (change.std(axis=(1, 2, 3)) > 1.0).mean() > 0.7  # sigma drawn from 0-12 per face
    full = np.asarray(camera_degradation(1.0, seed=3)(faces, training=True))
    assert np.abs((full - faces).mean(axis=(1, 2, 3))).max() > 10  # the gain is part of the full set
    assert check_degradations(" noise, gain ") == ("noise", "gain")
    for bad in ("blur", "", "noise,jpeg"):
        with pytest.raises(ValueError, match="--degrade-kinds must name some of contrast, gain, resolution, noise"):
            check_degradations(bad)


JAX_DEGRADATION = """
import keras, numpy as np
from fer.data import camera_degradation
faces = np.random.default_rng(0).integers(60, 200, (32, 48, 48, 1)).astype("float32")
layer = camera_degradation(0.5, seed=3)
out = np.asarray(layer(faces, training=True))
untouched = np.mean([np.array_equal(a, b) for a, b in zip(out, faces)])
model = keras.Sequential([keras.Input((48, 48, 1)), layer, keras.layers.Flatten(), keras.layers.Dense(7)])
model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
loss = model.train_on_batch(faces, np.arange(32) % 7)  # jit-compiled, as fer.train_gpu trains
print(keras.backend.backend(), untouched, out.min(), out.max(), float(loss))
"""


def test_camera_degradation_runs_on_jax_inside_a_compiled_model():
    # fer.train_gpu trains on the lease with Keras on JAX and no TensorFlow: the layer must not need tf ops, and
    # its random resolution must not need a traced shape.
    import importlib.util
    import os
    import subprocess
    import sys
    from pathlib import Path

    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed (the GPU lease's backend)")
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(repo), "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, "-c", JAX_DEGRADATION], env=env, cwd=repo, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    backend, untouched, low, high, loss = done.stdout.split()[-5:]
    assert backend == "jax" and 0.2 < float(untouched) < 0.8 and float(low) >= 0 and float(high) <= 255
    assert np.isfinite(float(loss))


def test_cutmix_pastes_another_face_and_mixes_the_labels_by_area():
    images = np.concatenate([np.zeros((32, 48, 48), np.uint8), np.full((32, 48, 48), 255, np.uint8)])
    labels = np.r_[np.zeros(32, int), np.full(32, 3)]  # black faces neutral, white faces angry
    batches = list(make_dataset(images, labels, 16, training=True, cutmix=1.0, seed=1))
    mixed = 0
    for x, y in batches:
        white, y = (x.numpy()[..., 0] == 255).mean(axis=(1, 2)), y.numpy()
        assert y.shape == (16, 7) and np.allclose(y.sum(axis=1), 1, atol=1e-5)
        np.testing.assert_allclose(y[:, 3], white, atol=0.05)  # the label is the share of the white face's pixels
        mixed += int(((white > 0) & (white < 1)).sum())
    assert mixed > 16  # rectangles of the other colour were pasted
    plain = list(make_dataset(images, labels, 16, training=True, cutmix=0.0, seed=1))
    assert plain[0][1].shape == (16,)  # without CutMix the labels stay integers


def test_drop_duplicates_removes_leaks_conflicts_and_repeats_from_training_only():
    from fer.data import drop_duplicates

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 48, 48), dtype=np.uint8)
    images[1] = images[6]              # a training copy of a test image
    images[3] = images[2]              # the same face twice in training, different labels
    images[5] = images[4]              # the same face twice in training, same label
    images[7] = images[6]              # a duplicate inside the test split stays
    labels = np.array([0, 1, 2, 3, 4, 4, 5, 5])
    splits = np.array(["train"] * 6 + ["test", "test"])
    out, report = drop_duplicates(images, labels, splits)
    assert out.tolist() == ["train", "unused", "unused", "unused", "train", "unused", "test", "test"]
    assert report == {"copy_of_held_out": 1, "conflicting_labels": 2, "repeated": 1}
    clean = rng.integers(0, 256, (3, 48, 48), dtype=np.uint8)
    assert drop_duplicates(clean, np.arange(3), np.array(["train", "val", "test"]))[0].tolist() == [
        "train", "val", "test"]


def test_cap_split_caps_training_only():
    from fer.data import cap_split

    labels = np.repeat(np.arange(3), 10)
    splits = np.array((["train"] * 8 + ["test"] * 2) * 3)
    capped = cap_split(labels, splits, "train", 3, seed=0)
    assert (capped == "train").sum() == 9 and (capped == "test").sum() == 6 and (capped == "unused").sum() == 15
    assert np.bincount(labels[capped == "train"]).tolist() == [3, 3, 3]
