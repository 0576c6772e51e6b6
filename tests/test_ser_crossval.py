"""ser.crossval: speaker folds, one ser.train run per fold, pooled report, resume."""
import numpy as np
import pandas as pd
import pytest

from core.io import read_json
from ser import crossval
from tests import synth_audio as synth


def _argv(root, out, cache, *extra):
    return ["--model", "cnn", "--corpora", "ravdess,tess", "--data-dir", str(root), "--epochs", "1",
            "--batch-size", "16", "--max-seconds", "1.0", "--augment", "0", "--output", str(out),
            "--cache-dir", str(cache), "--n-jobs", "1", "--folds", "2", *extra]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    synth.make_ravdess(root, actors=4)
    synth.make_tess(root)
    return root


def test_speaker_folds_cover_every_speaker_once():
    speakers = [f"ravdess_{i:02d}" for i in (3, 1, 2, 4, 5, 1, 3)]
    folds = crossval.speaker_folds(speakers, 2)
    assert folds == [["ravdess_01", "ravdess_02", "ravdess_03"], ["ravdess_04", "ravdess_05"]]
    with pytest.raises(ValueError, match="between 2 and"):
        crossval.speaker_folds(speakers, 6)


def test_pooled_predictions_rebuild_every_clip_from_confusion_matrices():
    a = {"confusion_matrix": [[2, 1], [0, 3]]}
    b = {"confusion_matrix": [[1, 0], [1, 0]]}
    y_true, y_pred = crossval.pooled_predictions([a, b])
    assert len(y_true) == 8 and (y_true == y_pred).sum() == 6
    assert np.bincount(y_true).tolist() == [4, 4]


def test_every_ravdess_clip_is_tested_once_and_rerun_skips_finished_folds(corpora, tmp_path, monkeypatch, capsys):
    out = tmp_path / "cv"
    assert crossval.main(_argv(corpora, out, tmp_path / "cache", "--fold", "1")) == 0  # one fold alone
    assert (out / "fold1" / "metrics.json").is_file() and not (out / "fold0").exists()
    assert not (out / "crossval.json").exists()
    assert crossval.main(_argv(corpora, out, tmp_path / "cache")) == 0  # trains fold 0, reuses fold 1, pools
    summary = read_json(out / "crossval.json")
    tested = [s for fold in summary["folds"] for s in fold["test_speakers"]]
    assert sorted(tested) == [f"ravdess_{i:02d}" for i in range(1, 5)] and len(set(tested)) == 4
    for fold in summary["folds"]:
        split = pd.read_csv(f"{fold['run']}/split.csv")
        assert set(split.loc[split["split"] == "test", "speaker"]) == set(fold["test_speakers"])
        assert set(split["split"]) == {"train", "test"}  # refit: no validation speakers
        assert (split.loc[split["corpus"] == "tess", "split"] == "train").all()
    pooled = read_json(out / "metrics.json")
    assert pooled["n"] == sum(f["n"] for f in summary["folds"]) == 4 * len(synth.RAVDESS_CODES)
    weighted = sum(f["accuracy"] * f["n"] for f in summary["folds"]) / pooled["n"]
    assert pooled["accuracy"] == pytest.approx(weighted)
    assert (out / "confusion_matrix.png").is_file()

    def no_training(cfg):
        raise AssertionError("a finished fold was trained again")

    monkeypatch.setattr("ser.train.run", no_training)
    assert crossval.main(_argv(corpora, out, tmp_path / "cache")) == 0
    assert summary["config"]["refit"] is True  # each fold is a refit run
    # Another fold count on this folder is refused by name, before anything is trained.
    assert crossval.main(_argv(corpora, out, tmp_path / "cache", "--folds", "3")) == 2
    assert "--folds 2 there, 3 now" in capsys.readouterr().err


def test_bad_settings_are_clear_errors(corpora, tmp_path, capsys):
    assert crossval.main(_argv(corpora, tmp_path / "a", tmp_path / "c", "--schedule", "plateau")) == 2
    assert "--schedule cosine" in capsys.readouterr().err
    assert crossval.main(_argv(corpora, tmp_path / "b", tmp_path / "c", "--folds", "9")) == 2
    assert "between 2 and the number of speakers (4)" in capsys.readouterr().err
    assert crossval.main(_argv(corpora, tmp_path / "d", tmp_path / "c", "--fold-corpus", "savee")) == 2
    assert "not among --corpora" in capsys.readouterr().err
    assert crossval.main(_argv(corpora, tmp_path / "e", tmp_path / "c", "--fold", "2")) == 2
    assert "--fold 2 does not exist" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in "abde")  # a refused run leaves no run folder
