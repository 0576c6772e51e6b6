"""ser.ensemble's membership check: members may differ in training data, never in what they hold out."""
from __future__ import annotations

import json

import pytest

from ser.ensemble import check_compatible

HEADER = "file,corpus,speaker,label,split\n"
TEST = ["ravdess/Actor_10/a.flac,ravdess,ravdess_10,sad,test", "ravdess/Actor_10/b.flac,ravdess,ravdess_10,happy,test"]
RAVDESS_TRAIN = ["ravdess/Actor_01/c.flac,ravdess,ravdess_01,sad,train"]


def run(tmp_path, name: str, rows: list[str]):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model": name}))
    (folder / "split.csv").write_text(HEADER + "\n".join(rows) + "\n")
    return folder


def test_members_trained_on_different_corpora_with_the_same_test_clips_are_accepted(tmp_path):
    whisper = run(tmp_path, "whisper", RAVDESS_TRAIN + TEST)
    cnn = run(tmp_path, "cnn", RAVDESS_TRAIN + ["tess/OAF/d.wav,tess,tess_OAF,angry,train"] + TEST[::-1])
    check_compatible([whisper, cnn])  # TESS in one member's training only; the test rows agree (in any order)


def test_members_with_other_test_clips_are_refused(tmp_path):
    whisper = run(tmp_path, "whisper", RAVDESS_TRAIN + TEST)
    other = run(tmp_path, "cnn", RAVDESS_TRAIN + TEST[:1])
    with pytest.raises(ValueError, match="test split differs"):
        check_compatible([whisper, other])


def test_a_member_that_trained_on_a_test_speaker_is_refused(tmp_path):
    whisper = run(tmp_path, "whisper", RAVDESS_TRAIN + TEST)
    leaky = run(tmp_path, "cnn", RAVDESS_TRAIN + ["ravdess/Actor_10/e.flac,ravdess,ravdess_10,fear,train"] + TEST)
    with pytest.raises(ValueError, match="ravdess_10"):
        check_compatible([whisper, leaky])
