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
