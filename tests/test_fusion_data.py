"""fusion.meld / fusion.ravdess_av / fusion.data loaders and fusion.preprocess (faces, log-mel, cache)."""
from __future__ import annotations

import json

import numpy as np
import pytest

import fusion.preprocess as prep
from fusion.data import assign_splits, corpus_root, load_index, parse_groups
from fusion.meld import load_meld
from fusion.media import decode_clip
from fusion.preprocess import PreprocessConfig, cache_name, face_track, log_mel, preprocess_clips, summarize
from fusion.ravdess_av import load_ravdess_av, parse_name
from tests.synth_video import make_meld, make_ravdess, render_frames, write_clip

SMALL = PreprocessConfig(fps=5.0, image_size=32, face_size=32, n_mels=16, max_seconds=2.0)


@pytest.fixture(scope="module")
def ravdess_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ravdess_video")
    make_ravdess(root, actors=(1, 2, 3), emotions=(0, 1, 2), seconds=0.6, size=(64, 64), no_audio=1, corrupt=1)
    return root


@pytest.fixture(scope="module")
def meld_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("MELD.Raw")
    return make_meld(root / "nested" / "MELD", {"train": 8, "dev": 3, "test": 3}, seconds=0.5, size=(64, 64),
                     missing=1, no_audio=1, corrupt=1)


def test_meld_index_from_release_layout(meld_dir):
    frame, report = load_meld(meld_dir.parent.parent)  # files are found below the given root
    assert report["csv_rows"] == 14 and report["missing_clip"] == 1
    assert sorted(frame["split"].unique()) == ["test", "train", "val"]
    assert set(frame["emotion"]) <= {"neutral", "happy", "sad", "angry", "fear", "disgust", "surprise"}
    row = frame[frame["relpath"] == "train/dia0_utt1.mp4"].iloc[0]
    assert row["emotion"] == "happy" and row["label"] == 1  # MELD "joy"
    assert all(p.endswith(".mp4") for p in frame["path"])


def test_meld_custom_folder_and_bad_csv(meld_dir, tmp_path):
    renamed = tmp_path / "my_train_clips"
    renamed.symlink_to(meld_dir / "train_splits", target_is_directory=True)
    frame, _ = load_meld(meld_dir, {"train": str(renamed)})
    assert (frame["split"] == "train").sum() == 7
    (tmp_path / "train_sent_emo.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="missing columns"):
        load_meld(tmp_path)


def test_ravdess_names_and_speaker_independent_split(ravdess_dir):
    assert parse_name("01-01-03-01-02-01-12")["actor"] == "12" and parse_name("clip") is None
    frame, report = load_ravdess_av(ravdess_dir)
    assert len(frame) == 3 * 3 + 2 and report["bad_name"] == 0
    frame = assign_splits(frame, 0.0, 0.0, seed=1, val_groups=parse_groups("2", "actor_"),
                          test_groups=parse_groups("3", "actor_"))
    for group, part in frame.groupby("group"):
        assert part["split"].nunique() == 1, group
    assert set(frame.loc[frame["group"] == "actor_02", "split"]) == {"val"}
    with pytest.raises(ValueError, match="unknown"):
        load_index("cremad", ravdess_dir)


def test_corpus_root_offline_error_names_data_dir(monkeypatch):
    import core.datasets

    monkeypatch.setattr(core.datasets, "network_reachable", lambda *a, **k: False)
    with pytest.raises(core.datasets.DatasetNotFoundError, match="--data-dir"):
        corpus_root("meld")


def test_face_crop_and_mask(tmp_path):
    frames = np.concatenate([render_frames(5, (96, 96), emotion=1, face=True),
                             render_frames(5, (96, 96), emotion=1, face=False)])
    path = write_clip(tmp_path / "half_face.mp4", frames, fps=10.0)
    clip = decode_clip(path, fps=10.0)
    cfg = PreprocessConfig(face_size=32, detect_every=1)
    crops, mask = face_track(clip.frames, cfg)
    assert crops.shape == (10, 32, 32) and crops.dtype == np.uint8
    assert mask.tolist() == [1] * 5 + [0] * 5
    assert (crops[5:] == 0).all() and crops[:5].std() > 10  # blank crop where no face, a real face elsewhere


def test_log_mel_shape_and_normalisation():
    y = np.sin(2 * np.pi * 440 * np.arange(16_000) / 16_000).astype(np.float32)
    mel = log_mel(y, SMALL)
    assert mel.shape == (101, 16)
    assert np.allclose(mel.mean(axis=0), 0, atol=1e-3)
    assert log_mel(np.zeros(100, np.float32), SMALL).shape[1] == 16  # very short and silent still works


def test_cache_skips_bad_clips_is_reused_and_resumable(ravdess_dir, tmp_path, monkeypatch):
    frame, _ = load_ravdess_av(ravdess_dir)
    paths, rel = frame["path"].tolist(), frame["relpath"].tolist()
    first = preprocess_clips(paths, rel, tmp_path / "cache", SMALL)
    counts = summarize(first)
    assert counts == {"ok": 9, "no_audio": 1, "corrupt": 1}
    ok = [s for s in first if s["status"] == "ok"][0]
    with np.load(ok["cache"]) as data:
        assert data["frames"].dtype == np.uint8 and data["frames"].shape[1:] == (32, 32, 3)
        assert data["faces"].shape[1:] == (32, 32) and data["mel"].dtype == np.float16
        assert data["face_mask"].shape == (len(data["frames"]),)
    bad = [s for s in first if s["status"] == "corrupt"][0]
    assert json.loads(prep._error_path(prep.Path(bad["cache"])).read_text())["status"] == "corrupt"

    # Second run: nothing is decoded again, bad clips are remembered.
    def fail(*args, **kwargs):
        raise AssertionError("recomputed a cached clip")

    monkeypatch.setattr(prep, "preprocess_file", fail)
    second = preprocess_clips(paths, rel, tmp_path / "cache", SMALL)
    assert summarize(second) == {"cached": 9, "no_audio": 1, "corrupt": 1}
    monkeypatch.undo()

    # Resume: a clip whose file is gone (interrupted run) is the only one computed.
    prep.Path(ok["cache"]).unlink()
    third = preprocess_clips(paths, rel, tmp_path / "cache", SMALL)
    assert summarize(third) == {"ok": 1, "cached": 8, "no_audio": 1, "corrupt": 1}
    assert [s["status"] for s in third if s["cache"] == ok["cache"]] == ["ok"]


def test_parallel_workers_give_identical_arrays(ravdess_dir, tmp_path):
    frame, _ = load_ravdess_av(ravdess_dir)
    paths, rel = frame["path"].tolist()[:4], frame["relpath"].tolist()[:4]
    serial = preprocess_clips(paths, rel, tmp_path / "serial", SMALL, workers=1)
    parallel = preprocess_clips(paths, rel, tmp_path / "parallel", SMALL, workers=2)
    assert [s["status"] for s in parallel] == ["ok"] * 4
    for a, b in zip(serial, parallel):
        assert prep.Path(a["cache"]).name == prep.Path(b["cache"]).name == cache_name(rel[serial.index(a)])
        with np.load(a["cache"]) as x, np.load(b["cache"]) as y:
            for key in x.files:
                np.testing.assert_array_equal(x[key], y[key])
