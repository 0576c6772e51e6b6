import json
import time

import numpy as np
import pytest

from core import datasets, labels
from core.io import read_json, write_json
from core.reports import compute_metrics, write_report
from core.training import class_weights, group_split, random_split


def test_schema_has_seven_emotions_in_fixed_order():
    assert labels.EMOTIONS == ("neutral", "happy", "sad", "angry", "fear", "disgust", "surprise")


@pytest.mark.parametrize("corpus, raw, expected", [
    ("ravdess", "02", "neutral"), ("ravdess", "08", "surprise"), ("tess", "ps", "surprise"),
    ("tess", "PS", "surprise"), ("crema_d", "ANG", "angry"), ("savee", "sa", "sad"), ("savee", "su", "surprise"),
    ("fer2013", 0, "angry"), ("fer2013", "6", "neutral"), ("jaffe", "NE", "neutral"),
    ("ckplus", "sadness", "sad"), ("ckplus", "contempt", None), ("meld", "joy", "happy"), ("meld", "anger", "angry"),
])
def test_map_label(corpus, raw, expected):
    assert labels.map_label(corpus, raw) == expected


def test_every_mapping_lands_in_the_schema():
    for table in labels.CORPUS_LABELS.values():
        assert set(v for v in table.values() if v is not None) <= set(labels.EMOTIONS)


def test_unknown_label_and_corpus_are_explicit_errors():
    with pytest.raises(labels.UnknownLabelError, match="calm"):
        labels.map_label("meld", "calm")
    with pytest.raises(labels.UnknownLabelError, match="unknown corpus"):
        labels.map_label("iemocap", "neu")


def test_offline_download_fails_fast_and_names_data_dir(monkeypatch):
    monkeypatch.setattr(datasets, "KAGGLE_HOST", ("kaggle.invalid", 443))
    start = time.monotonic()
    with pytest.raises(datasets.DatasetNotFoundError, match="--data-dir"):
        datasets.resolve_corpus_dir("ravdess")
    assert time.monotonic() - start < 10


def test_data_dir_finds_corpus_subfolder_or_uses_itself(tmp_path, monkeypatch):
    (tmp_path / "ravdess").mkdir()
    assert datasets.resolve_corpus_dir("ravdess", tmp_path) == tmp_path / "ravdess"
    assert datasets.resolve_corpus_dir("tess", tmp_path) == tmp_path
    monkeypatch.setenv(datasets.DATA_DIR_ENV, str(tmp_path))
    assert datasets.resolve_corpus_dir("ravdess") == tmp_path / "ravdess"
    with pytest.raises(datasets.DatasetNotFoundError, match="does not exist"):
        datasets.resolve_corpus_dir("ravdess", tmp_path / "missing")


def test_metrics_match_hand_computed_values(tmp_path):
    y_true = [0, 0, 1, 1, 2, 2]
    y_pred = [0, 1, 1, 1, 2, 0]
    m = compute_metrics(y_true, y_pred)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["f1_micro"] == pytest.approx(4 / 6)
    # per class F1: class0 p=.5 r=.5 -> .5; class1 p=2/3 r=1 -> .8; class2 p=1 r=.5 -> 2/3
    assert m["f1_macro"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["confusion_matrix"][0][:3] == [1, 1, 0]
    written = write_report(tmp_path, y_true, y_pred, extra={"split": "speaker"})
    assert read_json(tmp_path / "metrics.json")["accuracy"] == written["accuracy"]
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 1000


def test_write_json_is_atomic_and_handles_numpy(tmp_path):
    path = write_json(tmp_path / "a.json", {"x": np.float32(1.5), "y": np.arange(3)})
    assert json.loads(path.read_text()) == {"x": 1.5, "y": [0, 1, 2]}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_group_split_keeps_groups_whole_and_is_seeded():
    groups = [f"s{i // 10}" for i in range(100)]
    a = group_split(groups, 0.2, 0.2, seed=1)
    b = group_split(groups, 0.2, 0.2, seed=1)
    assert (a == b).all()
    for g in set(groups):
        assert len({s for s, gg in zip(a, groups) if gg == g}) == 1
    assert sorted(set(a)) == ["test", "train", "val"]
    named = group_split(groups, 0.2, 0.2, seed=1, test_groups=["s0"])
    assert set(named[:10]) == {"test"} and (named == "test").sum() == 10
    with pytest.raises(ValueError, match="unknown"):
        group_split(groups, 0.2, 0.2, seed=1, test_groups=["nobody"])


def test_group_split_refuses_a_group_named_twice_and_impossible_fractions():
    groups = [f"s{i // 10}" for i in range(100)]
    with pytest.raises(ValueError, match=r"both validation and test: \['s1'\]"):
        group_split(groups, 0.2, 0.2, seed=1, val_groups=["s1", "s2"], test_groups=["s1"])
    for val_fraction, test_fraction in ((1.5, 0.2), (0.2, -0.1), (0.2, 1.0)):
        with pytest.raises(ValueError, match="fraction must be in"):
            group_split(groups, val_fraction, test_fraction, seed=1)


def test_random_split_is_stratified():
    y = np.repeat(np.arange(7), 20)
    s = random_split(y, 0.15, 0.15, seed=0)
    for c in range(7):
        assert (s[y == c] == "test").sum() in (2, 3, 4)


def test_class_weights_balance_counts():
    w = class_weights([0, 0, 0, 1], 3)
    assert w[0] * 3 == pytest.approx(w[1] * 1)
    assert w[2] == 1.0


def test_ci_runs_the_readme_test_command(repo_root):
    command = "python -m pytest -q"
    assert command in (repo_root / "README.md").read_text()
    assert (repo_root / ".ci" / "run").read_text().strip().splitlines()[-1] == command


def test_model_card_counts_parameters_and_names_the_task(tmp_path):
    import keras

    from core.io import write_json
    from core.labels import EMOTIONS
    from core.model_card import write_model_card

    inputs = keras.Input((4,))
    keras.Model(inputs, keras.layers.Dense(7, name="out")(inputs)).save(tmp_path / "model.keras")  # 35 weights
    write_json(tmp_path / "config.json", {"model": "cnn", "class_names": list(EMOTIONS), "input_shape": [4]})
    per_class = {e: {"precision": 0.5, "recall": 0.5, "f1-score": 0.5, "support": 2} for e in EMOTIONS}
    write_json(tmp_path / "metrics.json", {"accuracy": 0.5, "n": 14, "f1_macro": 0.4, "f1_weighted": 0.45,
                                           "per_class": per_class})
    card = write_model_card(tmp_path, "Title", "some data", "a split", "CC0", ["python -m x"], {"extra": "1"},
                            task="fer").read_text()
    assert "| task | fer |" in card and "| parameters | 35 |" in card
    assert "| test accuracy (a split) | 0.500 (n = 14) |" in card and "| extra | 1 |" in card
    assert "python -m x" in card and "| neutral | 0.500 |" in card


def test_fer_recipe_fills_only_what_the_command_line_leaves_out():
    from core.config import apply_recipe
    from fer import train as fer_train

    cfg = apply_recipe(fer_train.TrainConfig(epochs=3), fer_train.MODEL_RECIPES, ["--epochs=3"])
    assert (cfg.model, cfg.epochs, cfg.learning_rate, cfg.label_smoothing) == ("tiny", 3, 0.002, 0.1)
    cnn = apply_recipe(fer_train.TrainConfig(model="cnn"), fer_train.MODEL_RECIPES, ["--model", "cnn"])
    assert cnn == fer_train.TrainConfig(model="cnn")  # no recipe measured for it: plain defaults


def test_faceres_recipe_is_the_face_backbone_fine_tune():
    from core.config import apply_recipe
    from fer import train as fer_train

    argv = ["--model", "faceres", "--fine-tune-epochs", "2"]
    cfg = apply_recipe(fer_train.TrainConfig(model="faceres", fine_tune_epochs=2), fer_train.MODEL_RECIPES, argv)
    assert (cfg.weights, cfg.base_size, cfg.schedule, cfg.fine_tune_layers) == ("faceres", 112, "cosine", 50)
    assert cfg.fine_tune_epochs == 2  # given on the command line: kept


def test_an_ensemble_needs_two_different_runs(tmp_path):
    from core.ensemble import check_member_count

    check_member_count([tmp_path / "a", tmp_path / "b"])
    with pytest.raises(ValueError, match="at least two runs"):
        check_member_count([tmp_path / "a"])
    with pytest.raises(ValueError, match="given twice"):
        check_member_count([tmp_path / "a", tmp_path / "b", tmp_path / "x" / ".." / "a"])
