"""bench/ship.py: card rows parse as written, and a bad call leaves the shipped model where it is."""
import pytest

from conftest import load_bench_script


@pytest.fixture(scope="module")
def ship():
    return load_bench_script("ship")


def test_a_row_splits_at_the_first_unspaced_equals_sign(ship):
    assert ship.parse_row("chosen on validation (n = 2871)=0.652 / 0.643") == (
        "chosen on validation (n = 2871)", "0.652 / 0.643")
    assert ship.parse_row("rule=a=b") == ("rule", "a=b")
    for bad in ("no separator", "=value", "spaced = out"):
        with pytest.raises(ValueError, match="name=value"):
            ship.parse_row(bad)


@pytest.mark.parametrize("problem", ["bad row", "no model"])
def test_a_bad_call_changes_nothing_shipped(ship, repo_root, tmp_path, problem):
    run = tmp_path / "run"
    run.mkdir()
    if problem == "bad row":
        (run / "model.keras").write_bytes(b"not read: the row is refused first")
    name = "zz_ship_test_never_created"
    argv = ["--task", "fer", "--run", str(run), "--name", name, "--title", "t", "--data", "d", "--split", "s",
            "--licence", "l", "--row", "no separator" if problem == "bad row" else "a=b"]
    with pytest.raises(SystemExit) as exc:
        ship.main(argv)
    assert exc.value.code == 2
    assert not (repo_root / "saved_models" / name).exists()


def test_a_run_refit_on_every_item_ships_with_the_scores_of_another_corpus(ship, repo_root, tmp_path):
    import json
    import shutil

    import keras

    run, scores = tmp_path / "run", tmp_path / "ckplus_eval"
    run.mkdir()
    scores.mkdir()
    inputs = keras.Input((48, 48, 1))
    keras.Model(inputs, keras.layers.Dense(7, activation="softmax")(keras.layers.Flatten()(inputs))).save(
        run / "model.keras")
    classes = ["neutral", "happy", "sad", "angry", "fear", "disgust", "surprise"]
    (run / "config.json").write_text(json.dumps({"model": "tiny", "class_names": classes, "input_shape": [48, 48, 1]}))
    (run / "metrics.json").write_text(json.dumps({"split": "none", "n": 0}))
    per_class = {c: {"precision": 0.5, "recall": 0.5, "f1-score": 0.5, "support": 1} for c in classes}
    (scores / "metrics.json").write_text(json.dumps({"accuracy": 0.776, "n": 927, "f1_macro": 0.62,
                                                     "f1_weighted": 0.79, "per_class": per_class}))
    name = "zz_ship_test_refit_all"
    argv = ["--task", "fer", "--run", str(run), "--name", name, "--title", "t", "--data", "d",
            "--split", "CK+48, all 927 faces", "--licence", "l"]
    try:
        with pytest.raises(SystemExit) as exc:  # its own metrics.json scores nothing: refused, nothing shipped
            ship.main(argv)
        assert exc.value.code == 2 and not (repo_root / "saved_models" / name).exists()
        ship.main([*argv, "--metrics", str(scores)])
        shipped = repo_root / "saved_models" / name
        assert json.loads((shipped / "metrics.json").read_text())["n"] == 927
        assert "0.776 (n = 927)" in (shipped / "MODEL_CARD.md").read_text()
    finally:
        shutil.rmtree(repo_root / "saved_models" / name, ignore_errors=True)
