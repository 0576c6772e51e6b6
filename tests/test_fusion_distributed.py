"""fusion.train under MultiWorkerMirroredStrategy (2 worker processes on 127.0.0.1) and MirroredStrategy
(2 logical CPU devices), on synthetic MELD-layout clips with the audio branch only (distribution is what is
tested here; the full model is trained in test_fusion_train.py). Each run is a subprocess so TensorFlow's
cluster / logical-device setup cannot clash with other tests."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from core.config import parse_config
from core.io import read_json
from tests.synth_video import make_meld

TIMEOUT_S = 300
ARGS = ["--corpus", "meld", "--workers", "1", "--modalities", "audio", "--n-mels", "16", "--audio-filters", "4",
        "--audio-lstm-units", "8", "--dense-units", "8", "--batch-size", "2", "--max-seconds", "1",
        "--weights", "none", "--patience", "0", "--image-size", "32", "--face-size", "32", "--fps", "5"]


@pytest.fixture(scope="module")
def meld(tmp_path_factory):
    """MELD layout with one no-audio, one corrupt clip and one CSV row without a clip; features cached once."""
    from fusion.train import TrainConfig, prepare_data

    base = tmp_path_factory.mktemp("meld_dist")
    root = make_meld(base / "MELD.Raw", {"train": 12, "dev": 4, "test": 4}, seconds=0.5, size=(48, 48),
                     no_audio=1, corrupt=1, missing=1)
    args = ARGS + ["--data-dir", str(root), "--cache-dir", str(base / "cache")]
    prepare_data(parse_config(TrainConfig, args, ""))  # the subprocesses then only read the cache
    return base, args


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _env(repo_root: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(repo_root), "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _wait(procs: list[subprocess.Popen]) -> list[tuple[int, str]]:
    results = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=TIMEOUT_S)
            results.append((p.returncode, out))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        logs = [p.communicate()[0][-3000:] for p in procs]
        pytest.fail("training subprocess timed out:\n" + "\n-----\n".join(logs))
    return results


def test_multi_worker_mirrored_two_processes_end_with_identical_weights(meld, repo_root):
    from fusion.models import load_model

    base, args = meld
    out = base / "mwms"
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "fusion.train", *args, "--output", str(out), "--epochs", "2",
             "--save-all-workers", "true"],
            cwd=repo_root, env=_env(repo_root, TF_CONFIG=tf_config), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True))
    results = _wait(procs)
    for rc, log in results:
        assert rc == 0, log[-3000:]
    config = read_json(out / "config.json")
    assert config["strategy"] == "MultiWorkerMirroredStrategy" and config["workers"] == 2
    assert config["replicas"] == 2
    # 10 usable training clips, global batch 2 x 2 = 4 -> 3 steps per epoch, 2 epochs.
    assert config["optimizer_steps"]["tune"] == 6
    chief, worker = load_model(out / "model.keras"), load_model(out / "worker_1" / "model.keras")
    # Each worker read a different shard of the data; equal weights mean the gradients were all-reduced.
    for a, b in zip(chief.get_weights(), worker.get_weights()):
        np.testing.assert_array_equal(a, b)
    report = read_json(out / "data_report.json")
    assert report["skipped"] == {"no_audio": 1, "corrupt": 1, "missing": 1, "error": 0}
    assert report["split"] == "official MELD train/dev/test"


MIRRORED_SCRIPT = """
import sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from fusion.train import main
args = sys.argv[1:] + ["--devices", "/cpu:0,/cpu:1", "--epochs", "2"]
# Interrupted right after epoch 1's checkpoint (a power cut); the same command must resume there and run epoch 2 only.
save = tf.train.CheckpointManager.save
def save_then_stop(self, *a, **k):
    save(self, *a, **k)
    raise KeyboardInterrupt
tf.train.CheckpointManager.save = save_then_stop
try:
    main(args)
except KeyboardInterrupt:
    pass
tf.train.CheckpointManager.save = save
sys.exit(main(args))
"""


def test_mirrored_two_logical_cpus_and_resume(meld, repo_root):
    base, args = meld
    out = base / "mirrored"
    proc = subprocess.Popen([sys.executable, "-c", MIRRORED_SCRIPT, *args, "--output", str(out)], cwd=repo_root,
                            env=_env(repo_root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    (rc, log), = _wait([proc])
    assert rc == 0, log[-3000:]
    config = read_json(out / "config.json")
    assert config["strategy"] == "MirroredStrategy" and config["replicas"] == 2
    assert "resumed from" in log and "at epoch 1" in log
    history = pd.read_csv(out / "history.csv")
    assert history["epoch"].tolist() == [0, 1]
    # Optimizer state came back from the checkpoint: 3 steps per epoch over both invocations.
    assert config["optimizer_steps"]["tune"] == 6
    for name in ("model.keras", "metrics.json", "val_metrics.json", "confusion_matrix.png", "curve_loss.png"):
        assert (out / name).is_file(), name
