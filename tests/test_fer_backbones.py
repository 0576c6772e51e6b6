"""The face backbone: TF.js reader and runner, the faceres-deep -> Keras converter, the emotion model on it."""
from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from fer import backbones
from fer.tfjs import TfjsGraph
from tests.synth_tfjs import write_faceres_graph

ALPHA = 0.25  # a quarter-width MobileNet: the same layout as faceres-deep, 16x fewer weights
SIZE = 64


@pytest.fixture(scope="module")
def graph_path(tmp_path_factory) -> Path:
    return write_faceres_graph(tmp_path_factory.mktemp("tfjs"), alpha=ALPHA)


def test_reader_reads_every_weight_with_its_shape(graph_path):
    graph = TfjsGraph(graph_path)
    assert graph.inputs() == ["input_1"]
    assert graph.weights["conv1/convolution/merged_input"].shape == (3, 3, 3, 8)
    assert graph.weights["conv_pw_13/convolution/merged_input"].shape == (1, 1, 256, 256)
    assert graph.weights["global_pooling/Mean/reduction_indices"].dtype == np.int32
    assert float(graph.weights["conv1_relu/Cast"]) == 6.0


def test_reader_dequantises_uint8_weights(tmp_path, graph_path):
    exact = TfjsGraph(graph_path).weights
    quantised = TfjsGraph(write_faceres_graph(tmp_path, alpha=ALPHA, quantize="uint8")).weights
    kernel, approx = exact["feats/kernel"], quantised["feats/kernel"]
    step = (kernel.max() - kernel.min()) / 255
    assert approx.dtype == np.float32
    assert np.abs(approx - kernel).max() <= step / 2 + 1e-6


def test_reader_refuses_truncated_shards(tmp_path):
    path = write_faceres_graph(tmp_path, alpha=ALPHA)
    shard = tmp_path / "faceres-deep.bin"
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ValueError, match="runs past the end"):
        TfjsGraph(path)


def test_runner_names_unsupported_ops(tmp_path, graph_path):
    graph = TfjsGraph(graph_path)
    graph.nodes["gender_pred/Sigmoid"]["op"] = "Erf"
    with pytest.raises(NotImplementedError, match="op Erf"):
        graph.run("gender_pred/Sigmoid", {"input_1": np.zeros((1, SIZE, SIZE, 3), np.float32)})


def test_converted_keras_model_matches_the_tfjs_graph(graph_path):
    graph = TfjsGraph(graph_path)
    network = backbones.build_faceres_network(SIZE, alpha=ALPHA)
    backbones.load_tfjs_faceres(network, graph)
    x = np.random.default_rng(1).uniform(0, 255, (3, SIZE, SIZE, 3)).astype(np.float32)
    out = network.predict_on_batch(x)
    features, gender, age = graph.run(["global_pooling/Mean", "gender_pred/Sigmoid", "age_pred/Softmax"],
                                      {"input_1": x})
    assert out["features"].shape == (3, 256) and np.abs(features).max() > 0.1  # not a dead network
    np.testing.assert_allclose(out["features"], features, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["gender"], gender, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["age"], age, rtol=1e-4, atol=1e-6)


def test_converter_refuses_a_graph_of_another_layout(graph_path):
    graph = TfjsGraph(graph_path)
    del graph.weights["conv_dw_7/depthwise_kernel"]
    with pytest.raises(ValueError, match="not a faceres-deep graph"):
        backbones.load_tfjs_faceres(backbones.build_faceres_network(SIZE, alpha=ALPHA), graph)


def test_converted_weights_round_trip_at_another_input_size(tmp_path, graph_path):
    network = backbones.build_faceres_network(SIZE, alpha=ALPHA)
    backbones.load_tfjs_faceres(network, TfjsGraph(graph_path))
    path = tmp_path / "faceres.weights.h5"
    network.save_weights(path)
    other = backbones.build_faceres_network(96, alpha=ALPHA)  # convolutions do not depend on the input size
    other.load_weights(path)
    for a, b in zip(network.weights, other.weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _tarball(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for member in backbones.MEMBERS:
            data = b"x"
            info = tarfile.TarInfo(member)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_package_with_the_wrong_hash_is_refused_and_nothing_is_extracted(tmp_path):
    tarball = _tarball(tmp_path / "fake.tgz")
    with pytest.raises(backbones.BackboneWeightsError, match="sha256"):
        backbones.human_models_dir(tarball, cache_root=tmp_path / "cache")
    assert not (tmp_path / "cache" / "human-models-3.0.4").exists()


def test_package_pinned_by_hash_is_extracted_once(tmp_path, monkeypatch):
    tarball = _tarball(tmp_path / "pinned.tgz")
    monkeypatch.setattr(backbones, "TARBALL_SHA256", backbones.sha256_of(tarball))
    folder = backbones.human_models_dir(tarball, cache_root=tmp_path / "cache")
    assert (folder / "models" / "faceres-deep.json").read_bytes() == b"x"
    tarball.unlink()  # a second call uses the extracted folder
    assert backbones.human_models_dir(tarball, cache_root=tmp_path / "cache") == folder


def test_missing_package_file_is_a_clear_error(tmp_path):
    with pytest.raises(backbones.BackboneWeightsError, match="no such file"):
        backbones.human_models_dir(tmp_path / "absent.tgz", cache_root=tmp_path / "cache")


def test_missing_npm_says_how_to_get_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(backbones.shutil, "which", lambda name: None)
    with pytest.raises(backbones.BackboneWeightsError, match="npm is not installed.*--package"):
        backbones.human_models_dir(cache_root=tmp_path / "cache")


def test_faceres_emotion_model_shapes_training_step_and_save_load(tmp_path, graph_path):
    import keras

    from fer.models import build_model, compile_model, unfreeze_top

    # Converted weights (a random Keras init shrinks activations to ~1e-21 through 27 layers: no gradient).
    network = backbones.build_faceres_network(SIZE, alpha=ALPHA)
    backbones.load_tfjs_faceres(network, TfjsGraph(graph_path))
    weights = tmp_path / "faceres.weights.h5"
    network.save_weights(weights)
    model = build_model("faceres", (48, 48, 1), 7, weights=str(weights), image_size=SIZE, alpha=ALPHA)
    assert model.output_shape == (None, 7)
    assert len(model.trainable_weights) == 2  # frozen base: only the head learns
    assert unfreeze_top(model, 4) == 1 and len(model.trainable_weights) == 3  # the last pointwise conv
    compile_model(model, 1e-3, label_smoothing=0.1)
    x = np.random.default_rng(0).uniform(0, 255, (4, 48, 48, 1)).astype(np.float32)
    y = np.array([0, 1, 2, 3])
    before = model.get_layer("faceres_backbone").get_layer("conv_pw_13").get_weights()[0].copy()
    model.train_on_batch(x, y)
    after = model.get_layer("faceres_backbone").get_layer("conv_pw_13").get_weights()[0]
    assert not np.allclose(before, after)
    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = keras.models.load_model(path, compile=False)
    np.testing.assert_allclose(reloaded.predict_on_batch(x), model.predict_on_batch(x), atol=1e-5)


def test_unfrozen_faceres_keeps_batch_norm_on_the_converted_statistics(tmp_path, graph_path):
    """A whole-network fine-tune (fer.train_gpu) must not switch batch norm to batch statistics: with dropout
    off, training and inference mode are the same function, and a training step leaves the statistics alone."""
    from fer.models import build_model

    network = backbones.build_faceres_network(SIZE, alpha=ALPHA)
    backbones.load_tfjs_faceres(network, TfjsGraph(graph_path))
    weights = tmp_path / "faceres.weights.h5"
    network.save_weights(weights)
    model = build_model("faceres", (48, 48, 1), 7, weights=str(weights), image_size=SIZE, alpha=ALPHA,
                        freeze_base=False, dropout=0.0)
    x = np.random.default_rng(1).uniform(0, 255, (8, 48, 48, 1)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(model(x, training=True)), np.asarray(model(x, training=False)), atol=1e-5)
    bn = model.get_layer("faceres_backbone").get_layer("conv_pw_13_bn")
    moving = [w.copy() for w in bn.get_weights()]
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.train_on_batch(x, np.arange(8) % 7)
    for before, after in zip(moving, bn.get_weights()):
        np.testing.assert_array_equal(before, after)
    assert model.get_layer("faceres_backbone").get_layer("conv_pw_13").trainable


def test_faceres_model_with_a_missing_weights_file_fails_clearly(tmp_path):
    from fer.models import WeightsUnavailableError, build_model

    with pytest.raises(WeightsUnavailableError, match="do not exist"):
        build_model("faceres", (48, 48, 1), 7, weights=str(tmp_path / "absent.weights.h5"))


@pytest.mark.realdata
def test_real_faceres_deep_says_the_jaffe_women_are_women(shared_data):
    """The converted weights do what their authors trained them for: JAFFE's ten subjects are all women."""
    import cv2

    from fer.faces import detect_faces, to_rgb

    try:
        network = backbones.load_faceres_network(backbones.FACERES_SIZE)
        graph = TfjsGraph(backbones.human_models_dir() / "models" / backbones.FACERES_JSON)
    except backbones.BackboneWeightsError as exc:
        pytest.skip(f"face backbone not available offline: {exc}")
    photos = sorted((shared_data / "jaffe").glob("*.tiff"))[::7]
    crops = []
    for path in photos:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        boxes = detect_faces(image, "haar")
        if not boxes:
            continue
        x, y, w, h = boxes[0]
        m = w // 4
        crop = to_rgb(image)[max(0, y - m):y + h + m, max(0, x - m):x + w + m]
        crops.append(cv2.resize(crop, (224, 224)).astype(np.float32))
    assert len(crops) >= 20
    x = np.stack(crops)
    out = network.predict_on_batch(x)
    reference = graph.run("global_pooling/Mean", {"input_1": x})
    np.testing.assert_allclose(out["features"], reference, atol=1e-3)
    p_male = out["gender"][:, 0]
    assert np.mean(p_male < 0.5) >= 0.9, p_male
    ages = (out["age"] * np.arange(backbones.FACERES_AGE_BINS)).sum(axis=1)
    assert 15 < np.median(ages) < 45, ages


def test_cli_reports_a_missing_package_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(backbones, "CACHE_ROOT", tmp_path / "cache")
    assert backbones.main(["--package", str(tmp_path / "absent.tgz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --package") and "no such file" in err and len(err.strip().splitlines()) == 1


def test_cli_check_reads_photos_like_fer_predict_and_exits_1_for_unreadable_ones(tmp_path, monkeypatch, capsys):
    """--check goes through core.images.read_image: a missing file and a text file are named on stderr, the
    readable photo is still checked, and the exit code says something failed."""
    import cv2

    class Network:
        def predict_on_batch(self, x):
            assert x.shape == (1, backbones.FACERES_SIZE, backbones.FACERES_SIZE, 3)
            age = np.zeros((1, backbones.FACERES_AGE_BINS), np.float32)
            age[0, 30] = 1.0
            return {"gender": np.array([[0.2]]), "age": age}

    class Graph:
        def __init__(self, path):
            pass

        def run(self, name, feeds):
            return np.array([[0.25]])

    monkeypatch.setattr(backbones, "faceres_weights_file", lambda package=None: tmp_path / "w.weights.h5")
    monkeypatch.setattr(backbones, "load_faceres_network", lambda size: Network())
    monkeypatch.setattr(backbones, "human_models_dir", lambda package=None: tmp_path)
    monkeypatch.setattr("fer.tfjs.TfjsGraph", Graph)
    photo = tmp_path / "face.png"
    cv2.imwrite(str(photo), np.full((60, 50, 3), 128, np.uint8))
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    assert backbones.main(["--check", str(tmp_path / "absent.jpg"), str(text), str(photo)]) == 1
    out, err = capsys.readouterr()
    assert "face.png: P(male) 0.20 (TF.js graph 0.25), age 30" in out
    assert "absent.jpg: no such file" in err and "notes.jpg" in err and "not a readable image" in err
    assert "WARN" not in err
