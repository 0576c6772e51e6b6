"""fer.distill: fixed and consistent (view-bank) distillation targets, and fer.train --teacher-views end to end."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from core.io import read_json
from fer import distill
from fer import train as fer_train
from fer.data import make_augmenter
from fer.models import build_tiny, with_flip_average
from synth_faces import write_fer2013_csv


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher") / "teacher.keras"
    keras.utils.set_random_seed(0)
    build_tiny((48, 48, 1), 7, filters=(4, 8)).save(path)
    return path


@pytest.fixture(scope="module")
def faces():
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (10, 48, 48)).astype(np.uint8), rng.integers(0, 7, 10)


def test_view_zero_is_the_face_and_every_target_is_the_teachers_answer_for_its_own_view(teacher_file, faces):
    images, labels = faces
    bank, targets = distill.view_bank(str(teacher_file), images, labels, views=3, weight=0.6, label_smoothing=0.1,
                                      augmenters=lambda v: make_augmenter(seed=3 + v, erasing=0.5))
    assert bank.shape == (3, 10, 48, 48) and bank.dtype == np.uint8 and targets.shape == (3, 10, 7)
    np.testing.assert_array_equal(bank[0], images)
    assert not np.array_equal(bank[1], images) and not np.array_equal(bank[1], bank[2])
    teacher = with_flip_average(keras.models.load_model(teacher_file, compile=False))
    one_hot = np.eye(7)[labels] * 0.9 + 0.1 / 7
    for v in range(3):
        probs = np.asarray(teacher.predict_on_batch(bank[v, ..., None].astype(np.float32)))
        np.testing.assert_allclose(targets[v], 0.6 * probs + 0.4 * one_hot, atol=1e-5)
    np.testing.assert_allclose(targets[0], distill.distill_targets(str(teacher_file), images.astype(np.float32),
                                                                   labels, 0.6, 0.1), atol=1e-5)


def test_mixed_views_mix_the_label_part_too(teacher_file):
    images = np.random.default_rng(2).integers(0, 256, (140, 48, 48)).astype(np.uint8)
    labels = np.arange(140) % 7
    _, targets = distill.view_bank(str(teacher_file), images, labels, views=2, weight=0.0, label_smoothing=0.0,
                                   augmenters=None, mixup=1.0)
    # weight 0: the targets are the labels alone; view 0 carries one class, a mixed view two unless its partner
    # face has the same label (1 in 7 here)
    assert np.all(targets[0].max(axis=1) == 1.0)
    assert np.mean(targets[1].max(axis=1) < 1.0) > 0.7
    np.testing.assert_allclose(targets.sum(axis=2), 1.0, atol=1e-6)


def test_a_saved_bank_is_reused_only_for_the_same_faces_and_settings(teacher_file, faces, tmp_path):
    images, labels = faces
    cache = tmp_path / distill.BANK_FILE
    args = dict(weight=0.7, label_smoothing=0.1, augmenters=lambda v: make_augmenter(seed=5 + v), cache=cache)
    first = distill.view_bank(str(teacher_file), images, labels, 2, **args)
    assert cache.is_file()
    again = distill.view_bank(str(teacher_file), images, labels, 2,
                              **(args | {"augmenters": lambda v: make_augmenter(seed=9 + v)}))
    np.testing.assert_array_equal(first[0], again[0])  # reused: a fresh augmenter would have drawn other views
    other = distill.view_bank(str(teacher_file), images, labels, 3, **args)
    assert other[0].shape[0] == 3
    # the augmenters' settings are part of the key when named: a bank drawn with other ones is drawn again
    named = distill.view_bank(str(teacher_file), images, labels, 3, **(args | {"augmentation": (True, 0.1)}))
    np.testing.assert_array_equal(named[0], other[0])  # recomputed with the same augmenters: the same views
    stronger = distill.view_bank(str(teacher_file), images, labels, 3,
                                 **(args | {"augmentation": (True, 0.3),
                                            "augmenters": lambda v: make_augmenter(seed=5 + v, shift=0.3)}))
    assert not np.array_equal(stronger[0][1], other[0][1])
    with pytest.raises(ValueError, match="teacher-views must be >= 1"):
        distill.view_bank(str(teacher_file), images, labels, 0, **args)


def test_an_interrupted_bank_continues_at_its_first_missing_view_and_ends_the_same(teacher_file, faces, tmp_path,
                                                                                     monkeypatch):
    images, labels = faces
    args = dict(weight=0.7, label_smoothing=0.1, augmenters=lambda v: make_augmenter(seed=5 + v), mixup=0.5)
    whole = distill.view_bank(str(teacher_file), images, labels, 4, **args)

    cache = tmp_path / distill.BANK_FILE
    real_one_view, made = distill._one_view, []

    def one_view(*a, **k):
        if len(made) == 2:
            raise KeyboardInterrupt  # stopped while the third view is computed
        made.append(1)
        return real_one_view(*a, **k)

    monkeypatch.setattr(distill, "_one_view", one_view)
    with pytest.raises(KeyboardInterrupt):
        distill.view_bank(str(teacher_file), images, labels, 4, cache=cache, **args)
    parts = tmp_path / "teacher_views.parts"
    assert not cache.exists() and sorted(p.name for p in parts.iterdir()) == ["view0.npz", "view1.npz"]

    made.clear()
    monkeypatch.setattr(distill, "_one_view", lambda *a, **k: made.append(1) or real_one_view(*a, **k))
    resumed = distill.view_bank(str(teacher_file), images, labels, 4, cache=cache, **args)
    assert len(made) == 2  # only the two missing views were computed
    np.testing.assert_array_equal(resumed[0], whole[0])
    np.testing.assert_allclose(resumed[1], whole[1], atol=1e-6)
    assert cache.is_file() and not parts.exists()  # the finished bank replaces its parts


def test_an_epoch_shows_every_face_once_as_one_of_its_views_with_that_views_target():
    rng = np.random.default_rng(2)
    bank = rng.integers(0, 256, (4, 9, 6, 6)).astype(np.uint8)
    targets = rng.dirichlet(np.ones(7), (4, 9)).astype(np.float32)
    ds = distill.view_dataset(bank, targets, batch_size=4, seed=0)
    assert len(ds) == 3
    picked_views, flipped = [], 0
    for _ in range(2):  # two epochs
        seen = []
        for x, y in ds:
            for face, target in zip(x.numpy()[..., 0], y.numpy()):
                v, i = np.argwhere(np.all(np.isclose(targets, target), axis=2))[0]
                mirrored = np.array_equal(face, bank[v, i, :, ::-1])
                assert mirrored or np.array_equal(face, bank[v, i])
                flipped += mirrored
                seen.append(i)
                picked_views.append(v)
        assert sorted(seen) == list(range(9))
    assert len(set(picked_views)) > 1 and 0 < flipped < 18


def test_a_resumed_fit_sees_the_views_an_uninterrupted_one_sees_at_that_epoch():
    rng = np.random.default_rng(3)
    bank = rng.integers(0, 256, (3, 10, 5, 5)).astype(np.uint8)
    targets = rng.dirichlet(np.ones(7), (3, 10)).astype(np.float32)

    def batches(ds):
        return [(x.numpy(), y.numpy()) for x, y in ds]

    uninterrupted = distill.view_dataset(bank, targets, batch_size=4, seed=1)
    passes = [batches(uninterrupted) for _ in range(4)]
    assert not np.array_equal(passes[2][0][1], passes[3][0][1])  # each epoch is a new draw
    clock = distill.EpochClock()
    resumed = distill.view_dataset(bank, targets, batch_size=4, seed=1, clock=clock)
    clock.callback().on_epoch_begin(3)  # fit's first epoch after resuming at epoch 3
    for (x, y), (x_ref, y_ref) in zip(batches(resumed), passes[3]):
        np.testing.assert_array_equal(x, x_ref)
        np.testing.assert_array_equal(y, y_ref)


def _train_student(teacher_file, tmp_path, *extra: str) -> tuple[int, object]:
    """fer.train's tiny student for 2 epochs on a synthetic FER2013 csv with ``teacher_file``: (exit code, run)."""
    data = tmp_path / "data"
    write_fer2013_csv(data / "fer2013" / "fer2013.csv", per_class=4)
    run = tmp_path / "student"
    rc = fer_train.main(["--model", "tiny", "--filters", "4,8", "--dataset", "fer2013", "--data-dir", str(data),
                         "--epochs", "2", "--batch-size", "8", "--output", str(run), "--teacher", str(teacher_file),
                         *extra])
    return rc, run


def test_train_with_teacher_views_runs_end_to_end_and_removes_its_bank(teacher_file, tmp_path, monkeypatch):
    loads = []
    real_load = distill.load_teacher
    monkeypatch.setattr(distill, "load_teacher", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    rc, run = _train_student(teacher_file, tmp_path, "--teacher-views", "3", "--view-mixup", "0.5")
    assert rc == 0
    config = read_json(run / "config.json")
    assert config["teacher_views"] == 3 and config["view_mixup"] == 0.5
    assert len((run / "history.csv").read_text().strip().splitlines()) == 3
    assert not (run / distill.BANK_FILE).exists()
    assert len(loads) == 1  # checked before anything is written, then the same model builds the bank


def test_fresh_targets_are_the_teachers_answer_for_the_very_faces_the_student_gets(teacher_file, faces):
    from fer.data import make_dataset

    images, labels = faces
    teacher = distill.load_teacher(str(teacher_file), (48, 48))
    one_hot = distill.smoothed_one_hot(labels, 0.1)
    ds = make_dataset(images, one_hot, batch_size=4, training=True, augmenter=make_augmenter(seed=3, erasing=0.5),
                      teacher=teacher, distill_weight=0.6)
    for epoch in range(2):
        seen = []
        for x, target in ds:
            x, target = np.asarray(x), np.asarray(target)
            assert not any(np.array_equal(face, original) for face in x[..., 0] for original in images)  # augmented
            probs = np.asarray(teacher.predict_on_batch(x))
            label_part = (target - 0.6 * probs) / 0.4  # what is left must be one face's smoothed label
            rows = [np.flatnonzero(np.all(np.isclose(one_hot, row, atol=1e-4), axis=1)) for row in label_part]
            assert all(len(r) >= 1 for r in rows)
            seen.append(x)
        assert sum(len(x) for x in seen) == len(images)
    with pytest.raises(ValueError, match="probability-vector labels"):
        make_dataset(images, labels, batch_size=4, training=True, teacher=teacher)


def test_train_with_a_fresh_teacher_runs_end_to_end(teacher_file, tmp_path, monkeypatch):
    from fer import data as fer_data

    calls = []
    real_dataset = fer_data.make_dataset
    monkeypatch.setattr(fer_data, "make_dataset", lambda *a, **k: calls.append(k) or real_dataset(*a, **k))
    monkeypatch.setattr(fer_train, "distill_targets", lambda *a, **k: pytest.fail("fresh targets are not fixed ones"))
    rc, run = _train_student(teacher_file, tmp_path, "--teacher-fresh", "true", "--degrade", "0.5",
                             "--distill-weight", "0.4")
    assert rc == 0
    assert read_json(run / "config.json")["teacher_fresh"] is True
    assert len((run / "history.csv").read_text().strip().splitlines()) == 3
    training = [k for k in calls if k.get("training")]
    assert len(training) == 1 and training[0]["teacher"] is not None and training[0]["distill_weight"] == 0.4
    assert all(k.get("teacher") is None for k in calls if not k.get("training"))


@pytest.mark.parametrize("extra, message", [
    (["--teacher-views", "2"], "--teacher-views needs a --teacher"),
    (["--teacher-fresh", "true"], "--teacher-fresh needs a --teacher"),
    (["--teacher", "T", "--teacher-fresh", "true", "--teacher-views", "2"], "two ways to teach: choose one"),
    (["--teacher", "T", "--teacher-views", "-1"], "--teacher-views must be >= 0, got -1"),
    (["--teacher", "T", "--view-mixup", "0.5"], "--view-mixup needs --teacher-views"),
    (["--teacher", "T", "--teacher-views", "2", "--view-mixup", "2"], "--view-mixup must be from 0 to 1, got 2.0"),
])
def test_bad_view_settings_fail_before_loading_data(tmp_path, capsys, extra, message):
    teacher = tmp_path / "t.keras"
    teacher.write_bytes(b"")
    extra = [str(teacher) if a == "T" else a for a in extra]
    args = ["--model", "tiny", "--data-dir", str(tmp_path / "nowhere"), "--output", str(tmp_path / "r"), *extra]
    with pytest.raises(SystemExit) as exit_:  # refused while parsing, one line
        fer_train.main(args)
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
