"""bench/bench_fusion.py's model card names the fusion rule that was fitted, in words that match fusion.late."""
import copy
import json

import pytest

from conftest import load_bench_script


@pytest.fixture(scope="module")
def bench_fusion():
    return load_bench_script("bench_fusion")


@pytest.mark.parametrize("rule, words, not_words", [("mean", "weighted mean of the probabilities", "geometric"),
                                                    ("product", "weighted geometric mean", "of the probabilities")])
def test_the_card_describes_the_fitted_rule(bench_fusion, repo_root, tmp_path, rule, words, not_words):
    result = copy.deepcopy(json.loads((repo_root / "bench" / "results" / "fusion_late.json").read_text()))
    result["late_fit"] |= {"rule": rule, "fallback": False}
    card = tmp_path / "MODEL_CARD.md"
    bench_fusion.write_model_card(card, result)
    fitted = next(line for line in card.read_text().splitlines() if line.startswith("| fitted |"))
    assert f"{rule} rule ({words})" in fitted and not_words not in fitted
