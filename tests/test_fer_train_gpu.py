"""fer.train_gpu on synthetic faces with the TensorFlow backend (the same code runs on JAX or torch on a GPU
machine): packing a run's split, the phase clock, the distillation loss, a short fit and its collection into an
ordinary run folder; and, where torch or JAX is installed, the lease's fit on that backend without TensorFlow."""
from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest

from core.io import read_json, write_json
from fer import train_gpu
from fer.train import load_split, run_config
from synth_faces import write_fer2013_csv


@pytest.fixture(scope="module")
def fer_run(tmp_path_factory):
    """A run folder as fer.train leaves it, as far as packing needs: config.json names the corpus and the seed."""
    root = tmp_path_factory.mktemp("gpu_data")
    write_fer2013_csv(root / "fer2013" / "fer2013.csv", per_class=8)
    run = tmp_path_factory.mktemp("runs") / "source"
    run.mkdir()
    write_json(run / "config.json", {"model": "tiny", "dataset": "fer2013", "data_dir": str(root), "seed": 42})
    return run


@pytest.fixture(scope="module")
def converted_weights(tmp_path_factory):
    """faceres-deep.weights.h5 converted from a synthetic graph of faceres-deep's layout (a random Keras init
    passes no gradient back)."""
    from fer.backbones import build_faceres_network, load_tfjs_faceres
    from fer.tfjs import TfjsGraph
    from tests.synth_tfjs import write_faceres_graph

    folder = tmp_path_factory.mktemp("converted")
    network = build_faceres_network(32)
    load_tfjs_faceres(network, TfjsGraph(write_faceres_graph(folder / "tfjs", alpha=1.0)))
    weights = folder / "faceres-deep.weights.h5"
    network.save_weights(weights)
    return weights


@pytest.fixture(scope="module")
def packed(fer_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("packed")
    manifest = train_gpu.pack(fer_run, out)
    return out, manifest


def test_pack_holds_train_and_val_of_the_runs_split(fer_run, packed):
    out, manifest = packed
    assert manifest["counts"] == {"train": 28, "val": 14}  # fer2013.csv's Training / PublicTest rows
    assert set(manifest["sha256"]) == set(manifest["mosaics"]) | {"labels.npy", "split.npy"}
    data, splits = load_split(run_config(read_json(fer_run / "config.json")))
    faces = train_gpu.load_packed(out)
    for part in ("train", "val"):
        x, y = faces[part]
        assert x.shape == ((splits == part).sum(), 48, 48, 1) and x.dtype == np.float32
        np.testing.assert_array_equal(y, data.labels[splits == part])
        assert np.abs(x[..., 0] - data.images[splits == part]).mean() < 3.0  # JPEG at quality 95
    assert "test" not in faces  # the hold-out never leaves


def test_a_refit_run_packs_the_split_its_recipe_was_chosen_on(fer_run, packed, tmp_path):
    """The shipped saved_models/fer is a refit (its validation faces joined training): packed from it, a fresh
    machine gets the same train and val parts as from the run the recipe was chosen with, val kept apart."""
    refit = tmp_path / "refit"
    refit.mkdir()
    write_json(refit / "config.json", read_json(fer_run / "config.json") | {"refit": True})
    manifest = train_gpu.pack(refit, tmp_path / "out")
    assert manifest["counts"] == packed[1]["counts"] == {"train": 28, "val": 14}
    assert manifest["sha256"] == packed[1]["sha256"]


def test_a_run_refit_on_every_face_packs_the_default_split_with_its_hold_out_apart(tmp_path):
    """The shipped face models trained on all of FER2013 Training (--refit true --test-fraction 0); their recipes were
    chosen on fer.train's default split, which is what a lease must pack: the hold-out must not go to the GPU."""
    from synth_faces import write_fer2013_folders

    write_fer2013_folders(tmp_path / "data" / "fer2013", per_class=10, splits=("train",))  # the Kaggle layout we have
    chosen, shipped = tmp_path / "chosen", tmp_path / "shipped"
    base = {"model": "faceres", "dataset": "fer2013", "data_dir": str(tmp_path / "data"), "seed": 42}
    for run, extra in ((chosen, {}), (shipped, {"refit": True, "test_fraction": 0.0})):
        run.mkdir()
        write_json(run / "config.json", base | extra)
    want = train_gpu.pack(chosen, tmp_path / "out_chosen")
    got = train_gpu.pack(shipped, tmp_path / "out_shipped")
    assert got["counts"] == want["counts"] and sum(want["counts"].values()) < 70  # the hold-out stayed home
    assert got["sha256"] == want["sha256"]


def test_mosaics_round_trip_and_padding():
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (70, 48, 48), dtype=np.uint8)
    blobs = train_gpu.to_mosaics(faces)
    back = train_gpu.from_mosaics(blobs, 70)
    assert back.shape == faces.shape
    assert np.corrcoef(back.ravel().astype(float), faces.ravel().astype(float))[0, 1] > 0.9
    with pytest.raises(ValueError, match="hold"):
        train_gpu.from_mosaics(blobs, 64 * 64 + 1)


def test_phase_clock_sizes_the_schedule_to_the_time_left(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(train_gpu.time, "time", lambda: now[0])
    phase = train_gpu.Phase("p", "faceres", epochs=30, learning_rate=1e-4, warmup_epochs=1)
    clock = train_gpu.PhaseClock(phase, deadline=1100.0)
    now[0] += 60  # the first epoch compiles
    assert not clock.epoch_done(0) and clock.planned == 30
    now[0] += 5
    assert not clock.epoch_done(1)
    assert clock.planned == 2 + int(35 / 5)
    rates = [clock.rate(e) for e in range(clock.planned)]
    assert rates[0] < rates[1] == pytest.approx(1e-4)  # warm-up, then the peak
    assert all(a >= b for a, b in zip(rates[1:], rates[2:])) and rates[-1] < 0.1 * rates[1]  # cosine to ~0
    now[0] += 31  # 4 s left: less than a steady epoch
    assert clock.epoch_done(2)


def test_distillation_loss():
    from keras import ops

    labels = np.array([0, 3])
    student = np.array([[0.7, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05], [0.1, 0.1, 0.1, 0.4, 0.1, 0.1, 0.1]], "float32")
    teacher = np.roll(student, 1, axis=1)
    both = np.concatenate([student, teacher], axis=1)
    hard = float(ops.convert_to_numpy(train_gpu.kd_loss(0.0, 0.1)(labels, both)))
    smoothed = np.eye(7)[labels] * 0.9 + 0.1 / 7
    assert hard == pytest.approx(np.mean(-np.sum(smoothed * np.log(student + 1e-7), axis=1)), rel=1e-5)
    soft = train_gpu.kd_loss(1.0, 0.1)
    agree = np.concatenate([student, student], axis=1)
    assert float(ops.convert_to_numpy(soft(labels, agree))) < float(ops.convert_to_numpy(soft(labels, both)))


def test_fit_then_collect_gives_a_run_folder(fer_run, packed, converted_weights, tmp_path):
    weights = converted_weights
    phases = [train_gpu.Phase("fr32", "faceres", image_size=32, epochs=2, batch_size=16, erasing=0.25, degrade=0.5,
                              seconds=600),
              train_gpu.Phase("kd", "distill", epochs=2, batch_size=16, degrade=0.5, seconds=600)]
    out = tmp_path / "gpu_out"
    results = train_gpu.fit(str(packed[0]), str(weights), str(out), budget=1200, phases=phases)
    assert [r["phase"]["name"] for r in results] == ["fr32", "kd"]
    assert results[1]["teacher"]["phase"] == "fr32"
    recorded = json.loads((out / "results.json").read_text())[0]
    assert recorded["best_epoch"] in (1, 2) and recorded["phase"]["erasing"] == 0.25  # the recipe, as it ran
    assert recorded["phase"]["degrade"] == 0.5
    log = (out / "log.txt").read_text()
    assert "fr32 head only" in log and "fr32 epoch 2/2" in log

    # The whole network trained, except batch norm: it stays on the converted statistics.
    from fer.models import build_faceres

    start = build_faceres(weights=str(weights), image_size=32).get_layer("faceres_backbone")
    tuned = build_faceres(weights=str(weights), image_size=32)
    tuned.load_weights(out / "fr32.weights.h5")
    tuned = tuned.get_layer("faceres_backbone")
    for name in ("conv1", "conv_dw_1", "conv_pw_13"):
        assert not np.array_equal(start.get_layer(name).get_weights()[0], tuned.get_layer(name).get_weights()[0]), name
    for name in ("conv1_bn", "conv_pw_13_bn"):
        for before, after in zip(start.get_layer(name).get_weights(), tuned.get_layer(name).get_weights()):
            np.testing.assert_array_equal(before, after)

    for name, model_name in (("fr32", "faceres"), ("kd", "tiny")):
        folder = tmp_path / f"run_{name}"
        metrics = train_gpu.collect(out / f"{name}.weights.h5", fer_run, folder)
        assert metrics["test"]["n"] == 14 and metrics["val"]["n"] == 14
        config = read_json(folder / "config.json")
        assert config["model"] == model_name and config["trained_with"]["phase"]["name"] == name
        for artifact in ("model.keras", "metrics.json", "val_metrics.json", "confusion_matrix.png", "history.csv",
                         "curve_accuracy.png"):
            assert (folder / artifact).is_file(), artifact
        model = keras.models.load_model(folder / "model.keras")
        assert model.output_shape == (None, 7)
    best = results[0]["best_val_accuracy"]
    # val faces were packed as JPEG: the originals may flip one of the 14
    assert read_json(tmp_path / "run_fr32" / "val_metrics.json")["accuracy"] == pytest.approx(best, abs=1 / 14 + 1e-6)


def test_probe_times_each_batch_size_with_and_without_augmentation(packed, tmp_path):
    from fer.backbones import build_faceres_network

    weights = tmp_path / "faceres-deep.weights.h5"
    build_faceres_network(32).save_weights(weights)
    assert train_gpu.main(["probe", "--data", str(packed[0]), "--weights", str(weights), "--output",
                           str(tmp_path / "probe"), "--image-size", "32", "--batch-sizes", "4,8", "--steps", "2"]) == 0
    rows = read_json(tmp_path / "probe" / "probe.json")
    assert [(r["batch_size"], r["augment"]) for r in rows] == [(4, False), (4, True), (8, False), (8, True)]
    for row in rows:
        assert row["step_ms"] > 0 and row["first_step_s"] > 0
        assert row["faces_per_s"] == pytest.approx(row["batch_size"] / (row["step_ms"] / 1000), rel=0.01)
        assert row["epoch_s_estimate"] == pytest.approx(row["step_ms"] / 1000 * -(-28 // row["batch_size"]), abs=0.06)


def test_cli_checks_arguments_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train_gpu.main(["fit", "--data", str(tmp_path), "--weights", str(tmp_path / "w.h5"), "--output",
                        str(tmp_path / "o"), "--phases", "faceres160,nope"])
    with pytest.raises(SystemExit):
        train_gpu.main(["fit", "--data", str(tmp_path), "--weights", str(tmp_path / "w.h5"), "--output",
                        str(tmp_path / "o")])
    with pytest.raises(SystemExit):
        train_gpu.main(["probe", "--data", str(tmp_path), "--weights", str(tmp_path / "w.h5"), "--output",
                        str(tmp_path / "o"), "--batch-sizes", "64,x"])
    with pytest.raises(SystemExit):
        train_gpu.main(["fit", "--data", str(tmp_path), "--weights", str(tmp_path / "w.h5"), "--output",
                        str(tmp_path / "o"), "--batch-size", "-1"])
    with pytest.raises(SystemExit):
        train_gpu.main(["fit", "--data", str(tmp_path), "--weights", str(tmp_path / "w.h5"), "--output",
                        str(tmp_path / "o"), "--degrade", "1.5"])
    assert "--degrade must be from 0 to 1, got 1.5" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_the_tiny_phase_trains_on_faces_a_poor_camera_gave_as_fer_train_degrade_does():
    # exp52's recipe for the mini-Xception: half of the faces degraded, the teacher seeing the same faces; the
    # faceres phases without (exp54: it cost the 160 px network clean accuracy).
    degrade = {p.name: p.degrade for p in train_gpu.PHASES}
    assert degrade == {"faceres160": 0.0, "faceres224": 0.0, "tiny_kd": 0.5, "faceres112": 0.0}
    names = [layer.name for layer in train_gpu.make_augmenter(0, degrade=0.5).layers]
    assert "aug_camera" in names and "aug_camera" not in [layer.name for layer in train_gpu.make_augmenter(0).layers]
    faces = np.random.default_rng(0).integers(60, 200, (64, 48, 48, 1)).astype("float32")
    changed = np.asarray(train_gpu.make_augmenter(0, degrade=1.0)(faces, training=True))
    assert changed.shape == faces.shape and not np.allclose(changed, faces)


LEASE_FIT = """
import sys
try:
    import tensorflow  # noqa: F401
except ModuleNotFoundError:
    pass
else:
    sys.exit("tensorflow is importable: this is not the lease's environment")
from fer import train_gpu
sys.exit(train_gpu.main(sys.argv[1:]))
"""


def _site_without_tensorflow(folder: Path) -> Path:
    """This interpreter's packages as links, TensorFlow's left out: a lease machine's view (Keras, JAX or torch,
    h5py, OpenCV; no TensorFlow) that ``python -S`` sees through PYTHONPATH."""
    import site

    folder.mkdir()
    for packages in map(Path, site.getsitepackages()):
        for entry in packages.iterdir() if packages.is_dir() else ():
            link = folder / entry.name
            if not entry.name.startswith(("tensorflow", "tf_keras")) and not link.exists():
                link.symlink_to(entry)
    return folder


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_the_lease_fit_runs_on_its_backend_where_tensorflow_is_not_installed(backend, fer_run, packed,
                                                                              converted_weights, tmp_path):
    # gpu_lease.sh's fit (its default phases, two epochs each) as the lease runs it: Keras on torch (the script's
    # default) or JAX and no TensorFlow. The tests above run on TensorFlow, where the distiller's augmenter (the
    # camera degradation traced for a symbolic build) worked and JAX's did not. Skips where the backend is not
    # installed (neither is in requirements.txt): `pip install torch` or `jax[cpu]` here to rehearse a lease.
    import importlib.util
    import os
    import subprocess
    import sys

    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (a GPU lease's backend)")
    repo = Path(__file__).resolve().parents[1]
    site_packages = _site_without_tensorflow(tmp_path / "site")
    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(site_packages), str(repo)])}
    out = tmp_path / "gpu_out"
    done = subprocess.run([sys.executable, "-S", "-c", LEASE_FIT, "fit", "--data", str(packed[0]), "--weights",
                           str(converted_weights), "--output", str(out), "--budget", "900", "--scale", "0.01",
                           "--phases", "faceres160,tiny_kd"],  # gpu_lease.sh's PHASES
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    log = (out / "log.txt").read_text()
    assert f"backend {backend}" in log and "tiny_kd epoch 2/2" in log
    assert [r["phase"]["name"] for r in json.loads((out / "results.json").read_text())] == ["faceres160", "tiny_kd"]
    # Back here (TensorFlow): what the lease wrote becomes ordinary run folders.
    for name in ("faceres160", "tiny_kd"):
        metrics = train_gpu.collect(out / f"{name}.weights.h5", fer_run, tmp_path / f"run_{name}")
        assert metrics["val"]["n"] == 14
        assert keras.models.load_model(tmp_path / f"run_{name}" / "model.keras").output_shape == (None, 7)


def test_pack_and_collect_name_a_missing_run_or_weights_in_one_line(tmp_path, capsys):
    assert train_gpu.main(["pack", "--run", str(tmp_path / "norun"), "--output", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --run") and "no config.json" in err and "Traceback" not in err
    assert train_gpu.main(["collect", "--weights", str(tmp_path / "w.weights.h5"), "--run", str(tmp_path),
                           "--output", str(tmp_path / "c")]) == 2
    assert capsys.readouterr().err.startswith("error: --weights")
    assert not (tmp_path / "p").exists() and not (tmp_path / "c").exists()


def test_the_lease_takes_the_batch_size_the_probe_timed_fastest_with_the_augmenter(tmp_path):
    rows = [{"batch_size": 64, "augment": False, "faces_per_s": 900.0},
            {"batch_size": 64, "augment": True, "faces_per_s": 500.0},
            {"batch_size": 256, "augment": False, "faces_per_s": 400.0},
            {"batch_size": 256, "augment": True, "faces_per_s": 700.0}]
    probe_json = tmp_path / "probe.json"
    probe_json.write_text(json.dumps(rows))
    assert train_gpu.fastest_batch_size(probe_json) == 256
    probe_json.write_text(json.dumps(rows[:1]))  # cut off before any timing with the augmenter
    with pytest.raises(ValueError, match="no timing with the augmenter"):
        train_gpu.fastest_batch_size(probe_json)


def test_pack_with_weights_carries_a_half_size_backbone_that_loads_as_the_original(fer_run, tmp_path):
    from fer.backbones import build_faceres_network
    from fer.models import build_faceres

    weights = tmp_path / "faceres-deep.weights.h5"
    build_faceres_network(32).save_weights(weights)
    out = tmp_path / "packed"
    assert train_gpu.main(["pack", "--run", str(fer_run), "--output", str(out), "--weights", str(weights)]) == 0
    manifest = read_json(out / "manifest.json")
    half = out / train_gpu.PACKED_WEIGHTS
    assert manifest["weights"]["file"] == train_gpu.PACKED_WEIGHTS and train_gpu.PACKED_WEIGHTS in manifest["sha256"]
    assert half.stat().st_size < 0.6 * weights.stat().st_size
    original = build_faceres(weights=str(weights), image_size=32).get_layer("faceres_backbone").get_weights()
    loaded = build_faceres(weights=str(half), image_size=32).get_layer("faceres_backbone").get_weights()
    assert len(loaded) == len(original)
    for a, b in zip(original, loaded):
        assert b.dtype == np.float32
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4)
    assert train_gpu.main(["pack", "--run", str(fer_run), "--output", str(tmp_path / "o2"),
                           "--weights", str(tmp_path / "missing.h5")]) == 2
    assert not (tmp_path / "o2").exists()  # refused before any face was read
    (tmp_path / "text.h5").write_text("not HDF5")
    assert train_gpu.main(["pack", "--run", str(fer_run), "--output", str(tmp_path / "o3"),
                           "--weights", str(tmp_path / "text.h5")]) == 2
    assert not list((tmp_path / "o3").glob("faces_*.jpg"))  # failed before writing the faces
