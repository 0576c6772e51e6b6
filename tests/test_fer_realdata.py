"""Loaders on the real corpora in ../shared/data (skipped when it is absent)."""
from __future__ import annotations

import numpy as np
import pytest

from core.labels import EMOTIONS
from fer.data import load_corpus, split_faceset

pytestmark = pytest.mark.realdata


def test_real_jaffe(shared_data):
    data = load_corpus("jaffe", shared_data)
    report = data.report()
    assert report["loaded"] == 213 and report["subjects"] == 10 and report["skipped_total"] == 0
    assert all(report["per_class"][e] >= 29 for e in EMOTIONS)
    assert data.images.shape == (213, 48, 48)
    assert "0 image(s) without a detected face" in report["notes"][0]
    splits = split_faceset(data, 0.1, 0.2, seed=42)
    test_subjects = {s for s, p in zip(data.subjects, splits) if p == "test"}
    assert len(test_subjects) == 2 and not test_subjects & {s for s, p in zip(data.subjects, splits) if p != "test"}


def test_real_ckplus(shared_data):
    data = load_corpus("ckplus", shared_data)
    report = data.report()
    assert report["loaded"] + report["dropped"]["contempt"] == 981
    assert report["dropped"] == {"contempt": 54} and report["per_class"]["neutral"] == 0
    assert all(s.startswith("S") and len(s) == 4 for s in data.subjects)


def test_real_fer2013_folders(shared_data):
    data = load_corpus("fer2013", shared_data, max_per_class=20)
    assert len(data) == 140 and set(data.splits) == {"train"}
    assert np.bincount(data.labels).tolist() == [20] * 7
    splits = split_faceset(data, 0.1, 0.1, seed=0)
    assert (splits == "val").sum() == 14 and (splits == "test").sum() == 14
