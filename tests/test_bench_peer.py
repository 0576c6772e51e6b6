"""The peer adapter of bench/bench_fer_peer.py: input scaling and the FER2013 -> schema label order."""
import sys

import keras
import numpy as np

from core.labels import EMOTION_INDEX


def test_peer_adapter_rescales_resizes_and_reorders_labels(tmp_path, repo_root):
    sys.path.insert(0, str(repo_root / "bench"))
    import bench_fer_peer as bench

    # A stand-in peer: 64x64x1 in [-1, 1]; its logits favour FER2013 class 3 (happy) for bright faces
    # and class 0 (angry) for dark ones.
    inputs = keras.Input((64, 64, 1))
    mean = keras.layers.GlobalAveragePooling2D()(inputs)
    logits = keras.layers.Dense(7, kernel_initializer=keras.initializers.Constant(
        np.array([[-20, 0, 0, 20, 0, 0, 0]], np.float32)), bias_initializer="zeros")(mean)
    keras.Model(inputs, keras.layers.Softmax()(logits)).save(tmp_path / "peer.keras")
    peer = bench.Peer(str(tmp_path / "peer.keras"))
    faces = np.stack([np.full((48, 48), 250, np.uint8), np.full((48, 48), 5, np.uint8)])
    probs = peer.predict(faces)
    assert probs.shape == (2, 7) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert probs[0].argmax() == EMOTION_INDEX["happy"] and probs[1].argmax() == EMOTION_INDEX["angry"]


def test_hold_out_images_with_a_copy_elsewhere_are_flagged(repo_root):
    sys.path.insert(0, str(repo_root / "bench"))
    import bench_fer_peer as bench

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 48, 48), dtype=np.uint8)
    images[4] = images[0]  # a test image repeated in training
    images[5] = images[3]  # a training image repeated in training only
    part = np.array([True, True, False, False, False, False])
    np.testing.assert_array_equal(bench.has_copy_outside(images, part), [True, False, False, False, False, False])


def test_models_refit_on_all_of_fer2013_training_are_marked(repo_root):
    # Their hold-out numbers are training-set numbers, like the peer's.
    sys.path.insert(0, str(repo_root / "bench"))
    import bench_fer_peer as bench

    assert bench.trained_on_holdout({"dataset": "fer2013", "refit": True, "test_fraction": 0.0})
    assert not bench.trained_on_holdout({"dataset": "fer2013", "refit": True, "test_fraction": 0.2})
    assert not bench.trained_on_holdout({"dataset": "fer2013", "refit": False, "test_fraction": 0.2})
    assert not bench.trained_on_holdout({"dataset": "jaffe", "refit": True, "test_fraction": 0.0})
    assert bench.Peer.trained_on_holdout
