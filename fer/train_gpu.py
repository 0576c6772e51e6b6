"""Fine-tune the face models on an accelerator machine that has Keras 3 (JAX or PyTorch backend) and no TensorFlow.

``fer.train`` reads images through tf.data and runs on CPU: a full fine-tune of faceres there takes hours per
epoch at 160 px. This recipe reads a packed copy of one fixed split and augments on the accelerator, so the whole
face backbone trains at 160 px in minutes, and the mini-Xception is distilled from it with the teacher seeing the
same augmented faces as the student.

    # here, with the toolkit installed: pack the split a fer.train run chose (train + val; the hold-out stays home)
    python -m fer.train_gpu pack --run runs/fer_faceres112 --output gpu_data/fer2013
    # on the GPU machine (Keras 3 + JAX or torch; no TensorFlow needed)
    KERAS_BACKEND=jax python -m fer.train_gpu fit --data gpu_data/fer2013 \
        --weights ~/.cache/emotion-toolkit/faceres-deep.weights.h5 --output gpu_out --budget 480
    # back here: run folders (model.keras, config, metrics on val and hold-out, confusion matrices, curves)
    python -m fer.train_gpu collect --weights gpu_out/faceres160.weights.h5 --run runs/fer_faceres112 \
        --output runs/fer_faceres160_gpu

Every phase is bounded by a wall-clock budget (the cosine schedule is sized to the epochs that fit after the
first one is timed) and keeps the weights of its best validation epoch, so a run cut short still returns a model.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from core.labels import NUM_CLASSES

MOSAIC_COLUMNS = 64  # faces per mosaic row; 64 x 64 faces per JPEG file
MOSAIC_ROWS = 64
JPEG_QUALITY = 95  # FER2013's own JPEGs sit on the same 8x8 grid: re-encoding at 95 changes 0.05 grey levels on average
FACE = 48
KD_TEMPERATURE = 2.0
PACKED_WEIGHTS = "backbone.f16.weights.h5"  # pack --weights: the backbone's float16 copy inside the packed folder


@dataclass
class Phase:
    """One training phase: a model, its size and schedule, and the most wall-clock time it may take."""
    name: str
    kind: str  # "faceres" (full fine-tune of the face backbone) or "distill" (mini-Xception from a faceres teacher)
    image_size: int = 160
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 1e-4
    warmup_epochs: int = 1
    head_epochs: int = 1  # faceres: epochs with the base frozen first (a random head's gradients wreck the features)
    head_learning_rate: float = 1e-3
    label_smoothing: float = 0.1
    erasing: float = 0.0  # share of training faces with one rectangle blanked (fer.train --erasing)
    degrade: float = 0.0  # share of training faces given a poor camera's contrast, gain, resolution, noise (--degrade)
    distill_weight: float = 0.7
    seconds: float = 200.0
    seed: int = 42


# Sized for one H200 lease of ~8 minutes. Input size: frozen probes gave 96 px 0.41, 112 px 0.47, 160 px 0.53
# (val), so the backbone is fine-tuned at 160 px and at its native 224 px; the student is distilled from whichever
# scores higher on val; 112 px (the CPU-friendly size) gets the time that is left.
# The faceres phases blank a rectangle in a quarter of the faces: on CPU, once the 160 px network fitted its training
# faces (0.73 against 0.66 on val), random erasing 0.25 was the one regulariser that still paid (docs/results.md).
# The mini-Xception degrades half of its faces as a poor camera would, as the shipped fer_tiny trained (exp52: the
# same clean validation accuracy, +6.8 points under camera and room changes; its teacher answers for the same
# degraded faces); the faceres phases do not: at 160 px it cost a point of clean validation accuracy (exp54).
DEGRADE = 0.5
PHASES = (
    Phase("faceres160", "faceres", image_size=160, epochs=30, learning_rate=1e-4, erasing=0.25, seconds=150),
    Phase("faceres224", "faceres", image_size=224, epochs=30, learning_rate=1e-4, erasing=0.25, seconds=150),
    Phase("tiny_kd", "distill", epochs=120, batch_size=128, learning_rate=2e-3, warmup_epochs=2, degrade=DEGRADE,
          seconds=130),
    Phase("faceres112", "faceres", image_size=112, epochs=30, learning_rate=1e-4, seconds=120),
)


# ---------------------------------------------------------------------------------------------------- packing


def to_mosaics(faces: np.ndarray) -> list[bytes]:
    """JPEG mosaics of MOSAIC_ROWS x MOSAIC_COLUMNS faces (the last one padded with black faces)."""
    import cv2

    per_file = MOSAIC_ROWS * MOSAIC_COLUMNS
    out = []
    for start in range(0, len(faces), per_file):
        chunk = faces[start:start + per_file]
        pad = (-len(chunk)) % MOSAIC_COLUMNS
        chunk = np.concatenate([chunk, np.zeros((pad, FACE, FACE), np.uint8)])
        mosaic = chunk.reshape(-1, MOSAIC_COLUMNS, FACE, FACE).transpose(0, 2, 1, 3).reshape(-1, MOSAIC_COLUMNS * FACE)
        ok, buf = cv2.imencode(".jpg", mosaic, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        out.append(buf.tobytes())
    return out


def from_mosaics(blobs: Sequence[bytes], count: int) -> np.ndarray:
    import cv2

    faces = []
    for blob in blobs:
        mosaic = cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_GRAYSCALE)
        rows = mosaic.shape[0] // FACE
        faces.append(mosaic.reshape(rows, FACE, MOSAIC_COLUMNS, FACE).transpose(0, 2, 1, 3).reshape(-1, FACE, FACE))
    faces = np.concatenate(faces)
    if len(faces) < count:
        raise ValueError(f"the mosaics hold {len(faces)} faces, the manifest says {count}")
    return faces[:count]


def half_precision_copy(weights: str | os.PathLike, output: str | os.PathLike) -> None:
    """A ``.weights.h5`` with every float32 array stored as float16 (same layout: ``load_weights`` casts back).
    Half the bytes to carry to an accelerator; a starting point for fine-tuning, off by ~1e-3 relative."""
    import h5py

    def copy(name: str, item) -> None:
        if isinstance(item, h5py.Dataset):
            data = item[()]
            dst.create_dataset(name, data=data.astype(np.float16) if data.dtype == np.float32 else data)
        else:
            dst.require_group(name)
        dst[name].attrs.update(item.attrs)

    with h5py.File(weights, "r") as src, h5py.File(output, "w") as dst:
        dst.attrs.update(src.attrs)
        src.visititems(copy)


def pack(run_dir: str | os.PathLike, output: str | os.PathLike, data_dir: str | None = None,
         parts: Sequence[str] = ("train", "val"), weights: str | os.PathLike | None = None) -> dict:
    """Write the ``parts`` of a fer.train run's split (re-created from its config.json, exactly as fer.train and
    fer.ensemble do) as JPEG mosaics + labels.npy + split.npy + manifest.json into ``output``; with ``weights``
    (faceres-deep.weights.h5) also their float16 copy, ``PACKED_WEIGHTS``: all an accelerator needs, smaller."""
    from core.io import atomic_write, write_json
    from core.weights import sha256_of
    from fer.train import load_split, run_config

    config = chosen_split_config(run_dir)
    data, splits = load_split(run_config(config, data_dir))
    keep = np.isin(splits, list(parts))
    if not keep.any():
        raise ValueError(f"{run_dir}'s split has no faces in {', '.join(parts)}")
    faces, labels, splits = data.images[keep], data.labels[keep].astype(np.int8), splits[keep]
    if faces.shape[1:] != (FACE, FACE):
        raise ValueError(f"{run_dir} was trained on {faces.shape[1]} px faces; packing needs {FACE} px")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    extra = []
    if weights is not None:  # first: a file that is not HDF5 fails before the faces are written
        try:
            atomic_write(out / PACKED_WEIGHTS, lambda tmp: half_precision_copy(weights, tmp), suffix=".weights.h5")
        except OSError as exc:
            raise ValueError(f"--weights {weights}: not a Keras .weights.h5 file ({exc})") from exc
        extra = [PACKED_WEIGHTS]
    names = []
    for i, blob in enumerate(to_mosaics(faces)):
        name = f"faces_{i:02d}.jpg"
        atomic_write(out / name, lambda tmp, blob=blob: Path(tmp).write_bytes(blob), suffix=".jpg")
        names.append(name)
    np.save(out / "labels.npy", labels)
    np.save(out / "split.npy", splits.astype(str))
    decoded = from_mosaics([(out / n).read_bytes() for n in names], len(faces))
    manifest = {"run": str(run_dir), "dataset": config.get("dataset"), "seed": config.get("seed"),
                "parts": list(parts), "count": int(len(faces)),
                "counts": {p: int((splits == p).sum()) for p in parts}, "mosaics": names,
                "jpeg_quality": JPEG_QUALITY, "mean_abs_change": float(np.abs(decoded.astype(int) - faces).mean()),
                "sha256": {n: sha256_of(out / n) for n in names + ["labels.npy", "split.npy"] + extra}}
    if weights is not None:
        manifest["weights"] = {"file": PACKED_WEIGHTS, "from": str(weights), "from_sha256": sha256_of(weights)}
    write_json(out / "manifest.json", manifest)
    return manifest


def load_packed(folder: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{"train": (faces N x 48 x 48 x 1 float32 0..255, labels), "val": ...} from a packed folder."""
    folder = Path(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    faces = from_mosaics([(folder / n).read_bytes() for n in manifest["mosaics"]], manifest["count"])
    labels = np.load(folder / "labels.npy").astype(np.int32)
    splits = np.load(folder / "split.npy")
    x = faces[..., None].astype(np.float32)
    return {p: (x[splits == p], labels[splits == p]) for p in manifest["parts"]}


# ---------------------------------------------------------------------------------------------------- training


def make_augmenter(seed: int, erasing: float = 0.0, degrade: float = 0.0):
    """fer.train's augmentation (flip, rotation, zoom, brightness, its default 10 % shift; ``erasing`` and
    ``degrade`` as its --erasing and --degrade), run on the accelerator."""
    from fer.data import make_augmenter as augmenter  # Keras layers only: no TensorFlow needed

    return augmenter(seed, shift=0.1, erasing=erasing, degrade=degrade)


class PhaseClock:
    """Sizes a phase to its budget: after the first (compiling) epoch and the second (steady) one, the planned
    number of epochs becomes what fits in the time left; the cosine schedule follows the plan."""

    def __init__(self, phase: Phase, deadline: float):
        self.phase, self.deadline = phase, deadline
        self.planned = phase.epochs
        self.started = time.time()
        self.epoch_started = self.started
        self.durations: list[float] = []

    def rate(self, epoch: int) -> float:
        p = self.phase
        if epoch < p.warmup_epochs:
            return p.learning_rate * (epoch + 1) / (p.warmup_epochs + 1)
        span = max(1, self.planned - p.warmup_epochs)
        progress = min(1.0, (epoch - p.warmup_epochs) / span)
        return p.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))

    def epoch_done(self, epoch: int) -> bool:
        """Record an epoch; True when the phase must stop (plan reached or no time for another epoch)."""
        now = time.time()
        self.durations.append(now - self.epoch_started)
        self.epoch_started = now
        left = self.deadline - now
        if len(self.durations) == 1:  # the first epoch also compiled: it says nothing about the next ones
            return epoch + 1 >= self.planned or left <= 0
        steady = self.durations[-1]
        if len(self.durations) == 2:
            self.planned = max(epoch + 1, min(self.phase.epochs, epoch + 1 + int(left / steady)))
        return epoch + 1 >= self.planned or left < steady


def _callbacks(phase: Phase, clock: PhaseClock, save, monitor: str, log):
    import keras

    class Control(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.best = -1.0
            self.best_epoch = -1

        def on_epoch_begin(self, epoch, logs=None):
            self.model.optimizer.learning_rate = clock.rate(epoch)

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            score = float(logs.get(monitor, -1.0))
            if score > self.best:
                self.best, self.best_epoch = score, epoch
                save()
            stop = clock.epoch_done(epoch)
            log(f"{phase.name} epoch {epoch + 1}/{clock.planned} {clock.durations[-1]:.1f}s lr {clock.rate(epoch):.2e} "
                + " ".join(f"{k} {v:.4f}" for k, v in logs.items()) + (" *" if self.best_epoch == epoch else ""))
            if stop:
                self.model.stop_training = True

    return Control()


def unfreeze_backbone(model) -> int:
    """Every convolution of the faceres backbone trainable, batch norm frozen (fer.models.unfreeze_top)."""
    from fer.models import unfreeze_top

    return unfreeze_top(model, len(model.get_layer("faceres_backbone").layers))


def fit_faceres(phase: Phase, data, weights: str, out: Path, deadline: float, log) -> dict:
    """fer.train's faceres recipe on the whole network: the head alone first (base frozen), then every
    convolution unfrozen with a linear warm-up and cosine decay; batch norm stays on the converted statistics."""
    import keras

    from core.training import class_weights
    from fer.models import SmoothedSparseCrossentropy, build_faceres

    keras.utils.set_random_seed(phase.seed)
    model = build_faceres(weights=weights, image_size=phase.image_size, freeze_base=True)
    augment = make_augmenter(phase.seed, phase.erasing, phase.degrade)
    trainer = keras.Sequential([keras.Input((FACE, FACE, 1)), augment, model], name="trainer")
    loss = SmoothedSparseCrossentropy(phase.label_smoothing)
    if phase.head_epochs:
        started = time.time()
        trainer.compile(optimizer=keras.optimizers.Adam(phase.head_learning_rate), loss=loss, metrics=["accuracy"])
        (x, y), val = data["train"], data["val"]
        history = trainer.fit(x, y, batch_size=phase.batch_size, epochs=phase.head_epochs, validation_data=val,
                              class_weight=class_weights(y, NUM_CLASSES), verbose=0).history
        log(f"{phase.name} head only: {time.time() - started:.1f}s val_accuracy {history['val_accuracy'][-1]:.4f}")
    unfrozen = unfreeze_backbone(model)
    log(f"{phase.name}: {unfrozen} base layers unfrozen")
    trainer.compile(optimizer=keras.optimizers.Adam(phase.learning_rate), loss=loss, metrics=["accuracy"])
    result = _fit_phase(phase, trainer, model, "val_accuracy", data, out, deadline, log)
    model.load_weights(out / result["weights"])
    return result | {"model": model}


def _fit_phase(phase: Phase, trainer, saved, monitor: str, data, out: Path, deadline: float, log) -> dict:
    """Fit ``trainer`` on the packed train part, scored on val each epoch; ``saved`` (the model inside it that
    ships) is written to PHASE.weights.h5 whenever ``monitor`` improves."""
    from core.training import class_weights

    (x, y), (xv, yv) = data["train"], data["val"]
    target = out / f"{phase.name}.weights.h5"
    clock = PhaseClock(phase, deadline)
    control = _callbacks(phase, clock, lambda: saved.save_weights(target), monitor, log)
    history = trainer.fit(x, y, batch_size=phase.batch_size, epochs=phase.epochs, validation_data=(xv, yv),
                          class_weight=class_weights(y, NUM_CLASSES), callbacks=[control], verbose=0)
    return {"phase": asdict(phase), "history": _plain(history.history), "best_epoch": control.best_epoch + 1,
            "best_val_accuracy": control.best, "epoch_seconds": clock.durations, "weights": target.name}


def kd_loss(weight: float, smoothing: float, temperature: float = KD_TEMPERATURE):
    """(1 - weight) x smoothed cross-entropy with the labels + weight x T^2 x cross-entropy with the teacher's
    softened probabilities. y_pred is [student probabilities | teacher probabilities]."""
    from keras import ops
    from keras.losses import categorical_crossentropy

    def loss(y_true, y_pred):
        student, teacher = y_pred[:, :NUM_CLASSES], y_pred[:, NUM_CLASSES:]
        one_hot = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), NUM_CLASSES)
        hard = categorical_crossentropy(one_hot, student, label_smoothing=smoothing)

        def soften(p):
            return ops.softmax(ops.log(p + 1e-7) / temperature, axis=-1)

        soft = categorical_crossentropy(soften(teacher), soften(student))
        return ops.mean((1 - weight) * hard + weight * temperature ** 2 * soft)

    return loss


def student_accuracy(y_true, y_pred):
    from keras import ops

    predicted = ops.cast(ops.argmax(y_pred[:, :NUM_CLASSES], axis=-1), "int32")
    return ops.cast(ops.equal(predicted, ops.cast(ops.reshape(y_true, (-1,)), "int32")), "float32")


def fit_distilled(phase: Phase, data, teacher, out: Path, deadline: float, log) -> dict:
    """The mini-Xception trained on the labels and a faceres teacher's answers for the same augmented faces."""
    import keras
    from keras import ops

    from fer.models import build_tiny

    keras.utils.set_random_seed(phase.seed)
    student = build_tiny()
    teacher.trainable = False
    augment = make_augmenter(phase.seed, phase.erasing, phase.degrade)

    class Distiller(keras.Model):
        # The three must be attributes: Keras only trains and carries the state of layers a model tracks.
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.student, self.teacher, self.augment = student, teacher, augment

        def call(self, x, training=False):
            if training:
                x = self.augment(x, training=True)
            return ops.concatenate([self.student(x, training=training),
                                    ops.stop_gradient(self.teacher(x, training=False))], axis=-1)

    distiller = Distiller(name="distiller")
    distiller.compile(optimizer=keras.optimizers.Adam(phase.learning_rate),
                      loss=kd_loss(phase.distill_weight, phase.label_smoothing), metrics=[student_accuracy])
    return _fit_phase(phase, distiller, student, "val_student_accuracy", data, out, deadline, log)


def _plain(history: dict) -> dict:
    return {k: [float(v) for v in values] for k, values in history.items()}


def fit(data_dir: str, weights: str, output: str, budget: float, phases: Sequence[Phase] = PHASES,
        deadline: float | None = None) -> list[dict]:
    """Run ``phases`` in order inside ``budget`` seconds (or until the absolute ``deadline``); each phase's best
    weights and a results.json land in ``output`` as soon as they exist."""
    import keras

    from core.io import write_json

    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)

    def log(line: str) -> None:
        stamped = f"[{time.strftime('%H:%M:%S')}] {line}"
        print(stamped, flush=True)
        with open(out / "log.txt", "a") as handle:  # reopened per line: a killed run keeps every line written
            handle.write(stamped + "\n")

    deadline = deadline or time.time() + budget
    log(f"keras {keras.__version__} backend {keras.backend.backend()} devices {_devices()}")
    data = load_packed(data_dir)
    log(" ".join(f"{p} {len(v[1])}" for p, v in data.items()))
    results, teacher, teacher_name, teacher_score = [], None, "", -1.0
    for phase in phases:
        left = deadline - time.time()
        if left < 0.25 * phase.seconds:
            log(f"skip {phase.name}: {left:.0f} s left")
            continue
        phase_deadline = time.time() + min(phase.seconds, left)
        if phase.kind == "faceres":
            result = fit_faceres(phase, data, weights, out, phase_deadline, log)
            model = result.pop("model")
            if result["best_val_accuracy"] > teacher_score:  # the distillation teacher: the best on val so far
                teacher, teacher_name, teacher_score = model, phase.name, result["best_val_accuracy"]
        elif teacher is None:
            log(f"skip {phase.name}: no teacher trained")
            continue
        else:
            result = fit_distilled(phase, data, teacher, out, phase_deadline, log)
            result["teacher"] = {"phase": teacher_name, "val_accuracy": teacher_score}
        log(f"{phase.name}: best val accuracy {result['best_val_accuracy']:.4f} at epoch {result['best_epoch']}")
        results.append(result)
        write_json(out / "results.json", results)
    return results


def _devices() -> str:
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax
        return ", ".join(str(d) for d in jax.devices())
    if backend == "torch":
        import torch
        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return backend


def probe(data_dir: str, weights: str, output: str, image_size: int = 160, batch_sizes: Sequence[int] = (64, 256),
          steps: int = 20) -> list[dict]:
    """Time the faceres phase's training step on this machine before spending a lease on phases: for each batch
    size, without and with the augmenter, the first step (compilation) and the median of ``steps`` more."""
    import keras

    from core.io import write_json
    from fer.models import SmoothedSparseCrossentropy, build_faceres

    x, y = load_packed(data_dir)["train"]
    Path(output).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows: list[dict] = []
    for batch in batch_sizes:
        for augment in (False, True):
            keras.utils.set_random_seed(0)
            model = build_faceres(weights=weights, image_size=image_size)
            unfreeze_backbone(model)
            layers = [keras.Input((FACE, FACE, 1))] + ([make_augmenter(0)] if augment else []) + [model]
            trainer = keras.Sequential(layers, name="probe")
            trainer.compile(optimizer=keras.optimizers.Adam(1e-5), loss=SmoothedSparseCrossentropy(0.1))
            times = []
            for _ in range(steps + 1):
                pick = rng.choice(len(y), batch, replace=len(y) < batch)
                started = time.perf_counter()
                trainer.train_on_batch(x[pick], y[pick])  # returns the loss as a number: the step has finished
                times.append(time.perf_counter() - started)
            step = float(np.median(times[1:]))
            rows.append({"backend": keras.backend.backend(), "image_size": image_size, "batch_size": int(batch),
                         "augment": augment, "first_step_s": round(times[0], 3), "step_ms": round(1000 * step, 2),
                         "faces_per_s": round(batch / step, 1),
                         "epoch_s_estimate": round(step * math.ceil(len(y) / batch), 1)})
            print(json.dumps(rows[-1]), flush=True)
            write_json(Path(output) / "probe.json", rows)  # after every setting: a lease that ends keeps the rows
    return rows


def fastest_batch_size(probe_json: str | os.PathLike) -> int:
    """The batch size ``probe`` found fastest with the augmenter (as fit trains), in faces per second."""
    rows = [r for r in json.loads(Path(probe_json).read_text()) if r.get("augment")]
    if not rows:
        raise ValueError(f"{probe_json}: no timing with the augmenter (the probe did not get that far)")
    return int(max(rows, key=lambda r: r["faces_per_s"])["batch_size"])


# ---------------------------------------------------------------------------------------------------- collecting


def _run_config_path(run_dir: str | os.PathLike) -> Path:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"--run {run_dir}: not a fer.train run folder (no config.json)")
    return path


def chosen_split_config(run_dir: str | os.PathLike) -> dict:
    """A run's config.json with the split its recipe was chosen on: a refit run (such as the shipped
    ``saved_models/fer``) trained on its validation faces too, but they are packed, and scored, as validation, so a
    fresh machine can pack the shipped model's split without any run of its own. A run refit on every face
    (``--test-fraction 0``) gets fer.train's default test fraction back, so the hold-out stays home."""
    from core.io import read_json
    from fer.train import TrainConfig, refit_on_every_face

    config = read_json(_run_config_path(run_dir))
    if refit_on_every_face(config):  # the shipped face models since stop 45: their recipes were chosen on
        config = config | {"test_fraction": TrainConfig.test_fraction}  # fer.train's default split, hold-out apart
    return config | {"refit": False}


def collect(weights: str | os.PathLike, run_dir: str | os.PathLike, output: str | os.PathLike,
            data_dir: str | None = None, results: str | os.PathLike | None = None) -> dict:
    """A fit's weights as an ordinary fer.train run folder: model.keras, config.json (the packed run's, with the
    phase's recipe under ``trained_with``), split.csv, history.csv + curves, and reports on the run's val and
    test (hold-out) faces, re-created from the packed run's config exactly as fer.train does."""
    import pandas as pd

    from core.io import atomic_write, save_model, write_json
    from core.reports import format_summary, plot_history, write_report
    from fer.models import TINY_FILTERS, build_faceres, build_tiny
    from fer.train import load_split, predict_labels, run_config

    weights, run_dir, out = Path(weights), Path(run_dir), Path(output)
    results = Path(results) if results else weights.with_name("results.json")
    for path, what in ((weights, "--weights"), (results, "--results")):
        if not path.is_file():
            raise FileNotFoundError(f"{what} {path}: no such file (written by `python -m fer.train_gpu fit`)")
    entries = [r for r in json.loads(results.read_text()) if r["weights"] == weights.name]
    if not entries:
        raise ValueError(f"{results} has no phase that wrote {weights.name}")
    entry = entries[-1]
    phase = entry["phase"]
    if phase["kind"] == "faceres":
        model = build_faceres(weights=None, image_size=phase["image_size"])
        built = {"weights": "faceres", "image_size": phase["image_size"], "dropout": 0.5}
    else:
        model, built = build_tiny(), {"filters": list(TINY_FILTERS), "dropout": 0.0}
    config = chosen_split_config(run_dir)
    model.load_weights(weights)
    data, splits = load_split(run_config(config, data_dir))
    out.mkdir(parents=True, exist_ok=True)
    save_model(model, out / "model.keras")
    model_name = "faceres" if phase["kind"] == "faceres" else "tiny"
    write_json(out / "config.json", config | {
        "model": model_name, "output": str(out), "base_size": phase["image_size"], "epochs": len(entry["epoch_seconds"]),
        "batch_size": phase["batch_size"], "learning_rate": phase["learning_rate"], "schedule": "cosine",
        "label_smoothing": phase["label_smoothing"], "fine_tune_epochs": 0, "init_from": "", "built_with": built,
        "trained_with": {"module": "fer.train_gpu", "phase": phase, "best_epoch": entry["best_epoch"],
                         "best_val_accuracy": entry["best_val_accuracy"], "epoch_seconds": entry["epoch_seconds"],
                         "teacher": entry.get("teacher"), "packed_from": str(run_dir)}})
    for name in ("split.csv", "data_report.json"):
        if (run_dir / name).is_file():
            atomic_write(out / name, lambda tmp, name=name: Path(tmp).write_bytes((run_dir / name).read_bytes()))
    history = {k.replace("student_", ""): v for k, v in entry["history"].items()}
    atomic_write(out / "history.csv", lambda tmp: pd.DataFrame(history).rename_axis("epoch").to_csv(tmp))
    plot_history(history, out)
    extra = {"dataset": config.get("dataset"), "model": model_name, "params": int(model.count_params())}
    metrics = {}
    for which, prefix in (("val", "val_"), ("test", "")):
        mask = splits == which
        if mask.any():
            metrics[which] = write_report(out, data.labels[mask], predict_labels(model, data.images[mask]),
                                          extra=extra | {"split": which}, prefix=prefix)
            print(f"{which}: {format_summary(metrics[which])}")
    return metrics


# ---------------------------------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    from core.cli import CLIParser, add_verbose_flag, module_prog

    parser = CLIParser(prog=module_prog(__name__), description=__doc__.split("\n\n")[0])
    add_verbose_flag(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="write a fer.train run's train + val faces as JPEG mosaics")
    p.add_argument("--run", required=True, help="a fer.train run folder (its config.json re-creates the split)")
    p.add_argument("--data-dir", default=None, help="where the corpus is now, if not where the run found it")
    p.add_argument("--output", required=True, help="folder for the mosaics, labels and manifest")
    p.add_argument("--weights", default=None, help=f"also a float16 copy of these backbone weights "
                   f"(faceres-deep.weights.h5), as {PACKED_WEIGHTS}: half the bytes to carry")
    f = sub.add_parser("fit", help="train the phases on a packed folder (any Keras 3 backend)")
    f.add_argument("--data", required=True, help="folder written by pack")
    f.add_argument("--weights", required=True, help="faceres-deep.weights.h5 (python -m fer.backbones)")
    f.add_argument("--output", required=True, help="folder for each phase's weights, log.txt and results.json")
    f.add_argument("--budget", type=float, default=480.0, help="seconds for all phases")
    f.add_argument("--deadline", type=float, default=0.0, help="absolute unix time to finish by (overrides --budget)")
    f.add_argument("--phases", default=",".join(p.name for p in PHASES), help="names of the phases to run, in order")
    f.add_argument("--scale", type=float, default=1.0, help="multiply every phase's epochs (smoke tests: 0.1)")
    f.add_argument("--batch-size", type=int, default=0, help="every phase's batch size (0: each phase's own; the "
                   "learning rates stay as they are)")
    f.add_argument("--degrade", type=float, default=None, help=f"every phase's share of training faces given a "
                   f"poor camera's contrast, gain, resolution and noise (default: each phase's own: {DEGRADE} for tiny_kd, "
                   f"0 for the faceres phases)")
    b = sub.add_parser("probe", help="time training steps (batch sizes, with and without augmentation) first")
    b.add_argument("--data", required=True, help="folder written by pack")
    b.add_argument("--weights", required=True, help="faceres-deep.weights.h5 (python -m fer.backbones)")
    b.add_argument("--output", required=True, help="folder for probe.json")
    b.add_argument("--image-size", type=int, default=160, help="the faceres input size to time")
    b.add_argument("--batch-sizes", default="64,256", help="comma-separated batch sizes")
    b.add_argument("--steps", type=int, default=20, help="timed steps per setting, after the first")
    c = sub.add_parser("collect", help="turn a fit's weights into a run folder evaluated on val and the hold-out")
    c.add_argument("--weights", required=True, help="a .weights.h5 written by fit")
    c.add_argument("--results", default="", help="its results.json (default: beside the weights)")
    c.add_argument("--run", required=True, help="the fer.train run that was packed")
    c.add_argument("--data-dir", default=None, help="where the corpus is now, if not where the run found it")
    c.add_argument("--output", required=True, help="the new run folder")
    return parser


def _require_inputs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """fit and probe: the packed folder and the backbone weights exist, before anything slow starts."""
    for path in (Path(args.data) / "manifest.json", Path(args.weights)):
        if not path.is_file():
            parser.error(f"{path} does not exist")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    if args.command in ("pack", "collect"):  # the two halves that run here, next to the data
        try:
            if args.command == "collect":
                collect(args.weights, args.run, args.output, args.data_dir, args.results or None)
                return 0
            if args.weights and not Path(args.weights).is_file():
                raise FileNotFoundError(f"--weights {args.weights} does not exist")
            manifest = pack(args.run, args.output, args.data_dir, weights=args.weights)
        except (FileNotFoundError, ValueError) as exc:  # DatasetNotFoundError and FaceDataError are among them
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(json.dumps({k: manifest[k] for k in ("count", "counts", "mean_abs_change")}))
        return 0
    if args.command == "fit":
        by_name = {p.name: p for p in PHASES}
        names = [n for n in args.phases.split(",") if n]
        unknown = [n for n in names if n not in by_name]
        if unknown:
            parser.error(f"unknown phases {unknown}; choose from {sorted(by_name)}")
        if args.batch_size < 0:
            parser.error(f"--batch-size must be positive (0: each phase's own), got {args.batch_size}")
        if args.degrade is not None and not 0 <= args.degrade <= 1:
            parser.error(f"--degrade must be from 0 to 1, got {args.degrade}")
        _require_inputs(parser, args)
        phases = [Phase(**{**asdict(by_name[n]), "epochs": max(2, round(by_name[n].epochs * args.scale)),
                           "batch_size": args.batch_size or by_name[n].batch_size,
                           "degrade": by_name[n].degrade if args.degrade is None else args.degrade}) for n in names]
        fit(args.data, args.weights, args.output, args.budget, phases, args.deadline or None)
        return 0
    if args.command == "probe":
        try:
            sizes = [int(b) for b in args.batch_sizes.split(",") if b]
        except ValueError:
            parser.error(f"--batch-sizes must be comma-separated integers, got {args.batch_sizes!r}")
        if not sizes or min(sizes) < 1 or args.steps < 1 or args.image_size < 32:
            parser.error("--batch-sizes and --steps must be at least 1, --image-size at least 32")
        _require_inputs(parser, args)
        probe(args.data, args.weights, args.output, args.image_size, sizes, args.steps)
    return 0


if __name__ == "__main__":
    from core.cli import quiet_tensorflow

    quiet_tensorflow()  # quiet TensorFlow's start-up where it is installed (pack, collect); harmless without it
    sys.exit(main())
