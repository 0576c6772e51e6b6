"""ser.finetune (the whole-encoder fine-tune for accelerator machines) on a tiny random encoder: the weight
export that makes its result an --encoder-dir folder, pack -> cv -> fit end to end, and argument checks."""
from __future__ import annotations

import json

import numpy as np
import pytest

from ser import finetune
from ser.whisper.backbone import (build_whisper_encoder, config_from_variables, ct2_encoder_variables,
                                  load_ct2_encoder_weights)
from ser.whisper.ct2 import read_model_bin, write_model_bin
from tests import synth_audio as synth
from tests.test_ser_whisper import tiny_variables


def test_ct2_export_inverts_the_loader():
    original = {k: v for k, v in tiny_variables().items() if k.startswith("encoder/")}
    cfg = config_from_variables(original)
    model = build_whisper_encoder(cfg)
    load_ct2_encoder_weights(model, original, cfg)
    exported = ct2_encoder_variables(model)
    assert set(exported) == set(original)
    for name, value in original.items():
        np.testing.assert_allclose(exported[name], value.astype(np.float32), atol=1e-6, err_msg=name)


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    synth.make_ravdess(root, actors=4)
    encoder_dir = tmp_path_factory.mktemp("tiny_encoder")
    write_model_bin(encoder_dir / "model.bin", tiny_variables())
    out = tmp_path_factory.mktemp("pack")
    info = finetune.pack(str(root), out, ["ravdess"], str(encoder_dir))
    return out, info


def test_pack_holds_every_clip_in_eight_bits_and_the_encoder_without_positions(packed):
    out, info = packed
    data = finetune.load_pack(out)
    assert info["clips"] == len(data["mels"]) == len(data["label"]) > 0 and info["skipped"] == 0
    assert all(m.shape[1] == 80 for m in data["mels"])
    assert np.load(out / "mels.npz")["mel"].dtype == np.uint8
    _, variables = read_model_bin(out / "encoder" / "model.bin")
    assert "encoder/position_encodings/encodings" not in variables and "encoder/conv1/weight" in variables
    assert not any(k.startswith("decoder/") for k in variables)


def test_length_batches_cut_clips_to_a_shared_bucket():
    rng = np.random.default_rng(0)
    mels = [np.zeros((n, 80), np.float32) for n in (30, 49, 50, 74, 10)]
    batches = finetune.length_batches(mels, np.arange(5), 8, rng)
    assert sorted(len(y) for _, y in batches) == [2, 3]  # bucket 25: 30, 49 and 10 (padded); 50: 50, 74
    for x, _ in batches:
        assert x.shape[1] % finetune.BUCKET == 0
    assert sorted(int(v) for _, y in batches for v in y) == list(range(5))


def test_padded_clips_match_the_log_mel_of_a_zero_padded_waveform():
    from ser.whisper.preprocessor import log_mel

    y = synth.tone("fear", seconds=1.0)
    alone, padded = log_mel(y), log_mel(y, pad_to_seconds=2.0)
    x, mask = finetune.pad_clips(alone[None], len(padded))
    assert x.shape == (1, len(padded), 80) and mask.shape == (1, len(padded) // 2)
    assert mask[0].sum() == len(alone) // 2 and mask[0, : len(alone) // 2].all()
    # Away from the clip's last frames (whose STFT windows reach into the padding) the two are the same.
    np.testing.assert_allclose(x[0, len(alone) + 3:], padded[len(alone) + 3:], atol=1e-5)
    np.testing.assert_array_equal(x[0, : len(alone)], alone)
    x, mask = finetune.pad_clips(alone[None], 0)  # --pad-seconds 0: the clip alone, every step its own
    np.testing.assert_array_equal(x[0], alone)
    assert mask.shape == (1, len(alone) // 2) and mask.all()


def test_cv_then_fit_give_scores_and_a_fine_tuned_encoder_folder(packed, tmp_path):
    out, _ = packed
    cfg = finetune.FinetuneConfig(epochs=1, batch_size=4, learning_rate=1e-3, folds=2)
    summary = finetune.crossval(out, tmp_path / "cv", cfg)
    assert len(summary["folds"]) == 2 and 0 <= summary["accuracy"] <= 1
    folds = [json.loads((tmp_path / "cv" / f"fold{k}.json").read_text()) for k in range(2)]
    assert [h["epoch"] for h in folds[0]["history"]] == [0, 1]  # the probe, then one epoch
    assert set(folds[0]["speakers"]).isdisjoint(folds[1]["speakers"])

    finetune.fit(out, tmp_path / "fit", cfg)
    _, before = read_model_bin(out / "encoder" / "model.bin")
    _, after = read_model_bin(tmp_path / "fit" / "encoder" / "model.bin")
    np.testing.assert_array_equal(after["encoder/conv1/weight"], before["encoder/conv1/weight"])  # frozen
    moved = np.abs(after["encoder/layer_1/ffn/linear_1/weight"].astype(np.float32)
                   - before["encoder/layer_1/ffn/linear_1/weight"].astype(np.float32)).max()
    assert moved > 0  # the layers trained
    from ser.whisper.encoder import WhisperEncoder  # the result loads through the normal --encoder-dir path
    states = WhisperEncoder(tmp_path / "fit" / "encoder").hidden_states(np.zeros((1, 40, 80), np.float32))
    assert states.shape[:2] == (1, 3)


def test_cv_refuses_a_folder_without_a_pack(tmp_path, capsys):
    assert finetune.main(["cv", "--pack", str(tmp_path), "--output", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("error: --pack") and not (tmp_path / "out").exists()


def test_cv_with_more_folds_than_speakers_says_so(packed, tmp_path, capsys):
    out, _ = packed
    assert finetune.main(["cv", "--pack", str(out), "--output", str(tmp_path / "cv"), "--folds", "9"]) == 2
    assert "--folds must be between 2 and the number of speakers" in capsys.readouterr().err


@pytest.mark.parametrize("option", [["--epochs", "-1"], ["--batch-size", "0"], ["--fold", "4"], ["--folds", "1"],
                                    ["--dropout", "1.5"], ["--head-c", "0"], ["--pad-seconds", "40"]])
def test_cv_and_fit_check_their_options_before_reading_the_pack(tmp_path, capsys, option):
    """tmp_path holds no pack: each bad option must be the error named, as a usage error (exit 2)."""
    for command in ("cv", "fit"):
        with pytest.raises(SystemExit) as exited:
            finetune.main([command, "--pack", str(tmp_path), "--output", str(tmp_path / "out"), *option])
        err = capsys.readouterr().err
        assert exited.value.code == 2 and option[0] in err and "mels.npz" not in err


def test_pack_of_a_missing_data_folder_is_one_error_line(tmp_path, capsys):
    encoder_dir = tmp_path / "tiny_encoder"
    encoder_dir.mkdir()
    write_model_bin(encoder_dir / "model.bin", tiny_variables())
    assert finetune.main(["pack", "--data-dir", str(tmp_path / "absent"), "--output", str(tmp_path / "p"),
                          "--encoder-dir", str(encoder_dir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "does not exist" in err and "Traceback" not in err
    assert finetune.main(["pack", "--data-dir", str(tmp_path), "--output", str(tmp_path / "p"), "--corpora", ","]) == 2
    assert "no corpus named" in capsys.readouterr().err  # before the encoder or any clip is read


def test_pack_counts_an_unreadable_clip_and_refuses_a_missing_encoder(tmp_path):
    root = tmp_path / "data"
    synth.make_ravdess(root, actors=1)
    (root / "ravdess" / "Actor_01" / "03-01-05-01-01-02-01.wav").write_bytes(b"not audio")
    with pytest.raises(Exception, match="no model.bin"):  # checked before any audio is read
        finetune.pack(str(root), tmp_path / "none", ["ravdess"], str(tmp_path / "no_encoder"))
    encoder_dir = tmp_path / "encoder"
    encoder_dir.mkdir()
    write_model_bin(encoder_dir / "model.bin", tiny_variables())
    info = finetune.pack(str(root), tmp_path / "pack", ["ravdess"], str(encoder_dir))
    assert info["skipped"] == 1 and info["clips"] == len(finetune.load_pack(tmp_path / "pack")["label"])
