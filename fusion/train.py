"""Train the audio-visual model: ``python -m fusion.train --corpus ravdess --data-dir DATA``.

Distribution: ``tf.distribute.MirroredStrategy`` over all local GPUs (or the CPU, or ``--devices``) by
default; ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` lists more than one worker. Both run the same
custom ``strategy.run`` loop (Keras 3 ``fit`` fails under MultiWorkerMirroredStrategy, keras#20585).
``--batch-size`` is per replica. Training is staged: with pretrained backbones they stay frozen for
``--frozen-epochs``, then are fine-tuned at ``--fine-tune-learning-rate``. With ``--face-encoder`` /
``--audio-encoder`` (``fusion.encoders``) the branches read cached outputs of frozen pretrained encoders
(face embeddings per frame, Whisper hidden states) instead of pixels and log-mel; the encoders stay outside
the graph, so there is nothing to unfreeze and the run is one stage. Every epoch ends with a
``tf.train.CheckpointManager`` checkpoint, so re-running the same command resumes an interrupted run.

Run folder (``--output``): model.keras, config.json, metrics.json (test split), val_metrics.json,
confusion_matrix.png, val_confusion_matrix.png, curve_*.png, history.csv, split.csv, data_report.json,
run_settings.json (checkpoints/ while it trains). A finished run's command re-run keeps it; other settings, on a
finished or an interrupted run, are refused before any data is read.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from core.cli import progress, quiet_tensorflow
from core.config import config_parser, parse_config
from core.io import atomic_write, save_model, write_json
from core.labels import EMOTIONS, NUM_CLASSES
from core.reports import compute_metrics, format_summary, plot_history, write_report
from core.training import check_resume, class_weights, finished_run, read_history, record_run_settings, set_seed

log = logging.getLogger("fusion.train")


@dataclass
class TrainConfig:
    corpus: str = "ravdess"
    data_dir: str | None = None
    slug: str | None = None
    train_folder: str = "train_splits"
    dev_folder: str = "dev_splits_complete"
    test_folder: str = "output_repeated_splits_test"
    include_song: bool = True
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    val_actors: str = ""
    test_actors: str = ""
    limit: int = 0
    output: str = "runs/fusion"
    cache_dir: str = "cache/fusion"
    workers: int = 2
    # preprocessing (fusion.preprocess.PreprocessConfig)
    fps: float = 10.0
    sample_rate: int = 16_000
    image_size: int = 112
    face_size: int = 112
    n_mels: int = 64
    cache_seconds: float = 10.0
    detector: str = "blazeface"
    detect_every: int = 2
    face_encoder: str = ""
    audio_encoder: str = ""
    temporal: str = "lstm"
    # input pipeline
    max_seconds: float = 4.0
    # model (fusion.models.ModelConfig)
    modalities: str = "frame,face,audio"
    alpha: float = 0.35
    weights: str = "imagenet"
    lstm_units: int = 128
    audio_filters: int = 32
    audio_lstm_units: int = 128
    dense_units: int = 128
    dropout: float = 0.3
    aux_weight: float = 0.3
    # optimisation
    epochs: int = 30
    frozen_epochs: int = 5
    batch_size: int = 8
    learning_rate: float = 1e-3
    fine_tune_learning_rate: float = 1e-4
    clipnorm: float = 1.0
    patience: int = 8
    steps_per_epoch: int = 0
    seed: int = 42
    devices: str = ""
    save_all_workers: bool = False

    def preprocess_config(self):
        from fusion.preprocess import PreprocessConfig

        return PreprocessConfig(fps=self.fps, sample_rate=self.sample_rate, image_size=self.image_size,
                                face_size=self.face_size, n_mels=self.n_mels, max_seconds=self.cache_seconds,
                                detector=self.detector, detect_every=self.detect_every,
                                face_encoder=self.face_encoder, audio_encoder=self.audio_encoder)

    @property
    def pretrained(self) -> bool:
        return bool(self.face_encoder or self.audio_encoder)

    def model_config(self, pcfg=None):
        """The model settings; with pretrained encoders ``pcfg`` (resolved) gives their output sizes."""
        from fusion.models import ModelConfig

        sizes = {"pretrained": True, "face_dim": pcfg.face_dim, "audio_states": pcfg.audio_states,
                 "audio_dim": pcfg.audio_dim, "temporal": self.temporal} if self.pretrained and pcfg is not None else {}
        return ModelConfig(image_size=self.image_size, face_size=self.face_size, n_mels=self.n_mels,
                           alpha=self.alpha, weights=self.weights, lstm_units=self.lstm_units,
                           audio_filters=self.audio_filters, audio_lstm_units=self.audio_lstm_units,
                           dense_units=self.dense_units, dropout=self.dropout, modalities=self.modalities, **sizes)


HELP = {
    "corpus": "meld | ravdess (RAVDESS audio-visual mp4 clips)",
    "data_dir": "folder holding the corpus (or a root with meld/ or ravdess_video/); default $EMOTION_DATA_DIR, "
                "else kagglehub",
    "slug": "Kaggle slug to download instead of the default",
    "train_folder": "MELD clip folder of the train split (relative to the corpus root, or absolute)",
    "dev_folder": "MELD clip folder of the dev split, used for validation (relative to the corpus root, or absolute)",
    "test_folder": "MELD clip folder of the test split (relative to the corpus root, or absolute)",
    "include_song": "RAVDESS: also use the sung clips (vocal channel 02)",
    "val_actors": "RAVDESS actors held out for validation, e.g. 19,20 (default: a fraction, by actor)",
    "test_actors": "RAVDESS actors held out for testing, e.g. 21,22,23,24",
    "limit": "at most this many clips per split (quick experiments); 0 = all",
    "output": "run folder; re-running with the same folder resumes",
    "cache_dir": "preprocessing cache (one .npz per clip; reused and resumable)",
    "workers": "preprocessing processes",
    "cache_seconds": "longest span of a clip that is cached",
    "fps": "video frames sampled per second",
    "sample_rate": "audio is resampled to this rate (Hz)",
    "image_size": "full frames are resized to this many pixels square",
    "face_size": "face crops are resized to this many pixels square",
    "n_mels": "log-mel bands of the audio branch",
    "detect_every": "run the face detector on every n-th sampled frame and reuse the face in between",
    "detector": "face detector: blazeface (default), blazeface-full, haar or mtcnn",
    "face_encoder": "frozen pretrained face encoder whose per-frame embeddings feed the face LSTM: auto (the "
                    "shipped face model's faceres backbone, else the pinned one), fer, faceres, tiny (tests) or a fer "
                    "run folder; empty = MobileNetV2 on pixels. Needs --modalities face,audio (or one of them)",
    "audio_encoder": "frozen pretrained speech encoder whose hidden states (layer-weighted) feed the audio LSTM: "
                     "whisper, tiny (tests); empty = the log-mel CNN",
    "temporal": "with pretrained encoders, how each branch reads time: lstm, or stats (mean and standard deviation "
                "over the real steps, then a dense layer of --lstm-units / --audio-lstm-units)",
    "max_seconds": "clips are cut to this many seconds in the input pipeline (random window when training)",
    "modalities": "comma-separated subset of frame,face,audio",
    "weights": "imagenet | none | PATH to MobileNetV2 no-top weights (.h5)",
    "alpha": "MobileNetV2 width multiplier (0.35, 0.5, 0.75, 1.0, ...; ImageNet weights exist for the usual ones)",
    "lstm_units": "units of the LSTMs over the frame and face embeddings",
    "audio_filters": "filters of the first conv block of the audio CNN (doubled in the second)",
    "audio_lstm_units": "units of the LSTM over the audio CNN's output",
    "dense_units": "units of the dense layer after the three embeddings are joined",
    "dropout": "dropout before the classifier",
    "aux_weight": "loss weight of the per-modality auxiliary heads",
    "frozen_epochs": "epochs with frozen pretrained backbones before fine-tuning (ignored with --weights none)",
    "batch_size": "per replica; the global batch is this times the number of replicas",
    "learning_rate": "learning rate (Adam) while the pretrained backbones are frozen, or throughout with --weights none",
    "fine_tune_learning_rate": "learning rate once the pretrained backbones are unfrozen",
    "clipnorm": "gradients are clipped to this global norm",
    "steps_per_epoch": "0 = one pass over the training clips",
    "devices": "MirroredStrategy devices, e.g. /gpu:0,/gpu:1 (default: all GPUs, else the CPU)",
    "save_all_workers": "non-chief workers also save their final model under OUTPUT/worker_N/ (consistency checks)",
}


DESCRIPTION = "Train the audio-visual emotion model (MELD or RAVDESS video)."


def build_parser() -> argparse.ArgumentParser:
    return config_parser(TrainConfig, DESCRIPTION, HELP)


# ---------------------------------------------------------------- distribution


def cluster_spec() -> tuple[int, int, bool]:
    """(number of workers, this task's index, whether this task is the chief) from ``TF_CONFIG``.

    The chief is the ``chief`` task, or worker 0 when the cluster has no ``chief`` entry.
    """
    config = json.loads(os.environ.get("TF_CONFIG", "") or "{}")
    cluster = config.get("cluster", {})
    n = len(cluster.get("chief", [])) + len(cluster.get("worker", []))
    task = config.get("task", {})
    task_type, index = task.get("type", "worker"), int(task.get("index", 0))
    chief = task_type == "chief" or (task_type == "worker" and index == 0 and not cluster.get("chief"))
    return max(1, n), index, chief


def make_strategy(devices: str = ""):
    """MultiWorkerMirroredStrategy for a multi-worker TF_CONFIG, else MirroredStrategy."""
    import tensorflow as tf

    n_workers, _, _ = cluster_spec()
    if n_workers > 1:
        return tf.distribute.MultiWorkerMirroredStrategy()
    names = [d.strip() for d in devices.split(",") if d.strip()]
    return tf.distribute.MirroredStrategy(devices=names or None)


def strategy_name(strategy) -> str:
    # MultiWorkerMirroredStrategy's class is CollectiveAllReduceStrategy; report the public name.
    import tensorflow as tf

    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "MultiWorkerMirroredStrategy"
    return type(strategy).__name__


def make_vote(strategy):
    """``vote(flag) -> bool``: True when the flag is set on any worker (e.g. early stopping), so every worker
    takes the same branch and none is left waiting in a collective."""
    import tensorflow as tf

    if cluster_spec()[0] == 1:
        return bool

    @tf.function
    def count(flag):
        per_replica = strategy.run(lambda f: f, args=(flag,))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    return lambda flag: float(count(tf.constant(float(flag)))) > 0


# ---------------------------------------------------------------- data


def prepare_data(cfg: TrainConfig) -> tuple[Any, dict, Any]:
    """List clips, split them, cache their features; returns (table with cache paths, data report, pcfg)."""
    from fusion.data import assign_splits, class_counts, corpus_root, limit_per_split, load_index, parse_groups
    from fusion.preprocess import cache_folder, cache_size_bytes, preprocess_clips, summarize

    root = corpus_root(cfg.corpus, cfg.data_dir, cfg.slug)
    folders = {"train": cfg.train_folder, "dev": cfg.dev_folder, "test": cfg.test_folder}
    frame, loader_report = load_index(cfg.corpus, root, folders, cfg.include_song)
    frame = assign_splits(frame, cfg.val_fraction, cfg.test_fraction, cfg.seed,
                          parse_groups(cfg.val_actors, "actor_"), parse_groups(cfg.test_actors, "actor_"))
    frame = limit_per_split(frame, cfg.limit, cfg.seed)
    from fusion.preprocess import resolve_encoders

    pcfg = resolve_encoders(cfg.preprocess_config())
    folder = cache_folder(cfg.cache_dir, cfg.corpus, pcfg)
    started = time.time()
    statuses = preprocess_clips(frame["path"].tolist(), frame["relpath"].tolist(), folder, pcfg,
                                workers=cfg.workers, progress=True)
    elapsed = time.time() - started
    frame = frame.assign(cache=[s["cache"] for s in statuses], status=[s["status"] for s in statuses])
    counts = summarize(statuses)
    usable = frame[frame["status"].isin(["ok", "cached"])].reset_index(drop=True)
    size = cache_size_bytes(statuses)
    report = {
        "corpus": cfg.corpus, "root": str(root), "loader": loader_report, "clips_listed": int(len(frame)),
        "clips_usable": int(len(usable)), "preprocess": counts,
        "skipped": {"no_audio": counts.get("no_audio", 0), "corrupt": counts.get("corrupt", 0),
                    "missing": counts.get("missing", 0) + int(loader_report.get("missing_clip", 0)),
                    "error": counts.get("error", 0)},
        "bad_files": [{"path": s["path"], "status": s["status"], "reason": s.get("reason", "")}
                      for s in statuses if s["status"] not in ("ok", "cached")][:200],
        "split": "official MELD train/dev/test" if cfg.corpus == "meld" else "speaker-independent by RAVDESS actor",
        "groups": {split: sorted(part["group"].unique().tolist()) for split, part in usable.groupby("split")}
        if cfg.corpus == "ravdess" else {},
        "counts": class_counts(usable),
        "cache_dir": str(folder), "cache_bytes": int(size),
        "cache_mb_per_1000_clips": round(size / max(1, len(usable)) * 1000 / 2**20, 1),
        "preprocess_seconds": round(elapsed, 2),
        "preprocess_clips_per_s": round(counts.get("ok", 0) / elapsed, 3) if counts.get("ok") else None,
    }
    return frame, report, pcfg


def write_split(out: Path, frame) -> None:
    cols = ["path", "relpath", "group", "speaker", "emotion", "label", "split", "status", "cache"]
    atomic_write(out / "split.csv", lambda tmp: frame[cols].to_csv(tmp, index=False))


# ---------------------------------------------------------------- training loop


class Trainer:
    """The custom distributed loop: one ``strategy.run`` step per batch, one checkpoint per epoch."""

    def __init__(self, cfg: TrainConfig, strategy, model, train_labels: np.ndarray, output: Path,
                 chief: bool, worker_index: int):
        import keras
        import tensorflow as tf

        from fusion.models import resolve_weights, set_backbones_trainable

        self.cfg, self.strategy, self.model, self.output, self.chief = cfg, strategy, model, output, chief
        self.global_batch = cfg.batch_size * strategy.num_replicas_in_sync
        self.aux_keys = [k for k in model.output if k != "emotion"] if isinstance(model.output, dict) else []
        # Frozen encoders (cfg.pretrained) run outside the graph: no backbone inside it to stage.
        pretrained = not cfg.pretrained and resolve_weights(cfg.weights, cfg.alpha, cfg.image_size) is not None
        self.staged = pretrained and cfg.frozen_epochs > 0
        weights = class_weights(train_labels, NUM_CLASSES)
        self.class_weight = tf.constant([weights[i] for i in range(NUM_CLASSES)], tf.float32)
        with strategy.scope():
            self.optimizers = {
                "frozen": keras.optimizers.Adam(cfg.learning_rate, clipnorm=cfg.clipnorm),
                "tune": keras.optimizers.Adam(cfg.fine_tune_learning_rate if self.staged else cfg.learning_rate,
                                              clipnorm=cfg.clipnorm),
            }
            # Build both optimizers now so a checkpoint from either stage restores into existing slots.
            if self.staged:
                set_backbones_trainable(model, False)
                self.optimizers["frozen"].build(model.trainable_variables)
            set_backbones_trainable(model, True)
            self.optimizers["tune"].build(model.trainable_variables)
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
            self.best_score = tf.Variable(-1.0, dtype=tf.float64, trainable=False, name="best_score")
            self.stale = tf.Variable(0, dtype=tf.int64, trainable=False, name="stale_epochs")
            self.done = tf.Variable(False, trainable=False, name="done")
        # Best weights live in the checkpoint too, so a resumed run still ends on the best epoch.
        self.best = [tf.Variable(w, trainable=False) for w in model.get_weights()]
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer_frozen=self.optimizers["frozen"],
                                              optimizer_tune=self.optimizers["tune"], epoch=self.epoch,
                                              best_score=self.best_score, stale=self.stale, done=self.done,
                                              best=self.best)
        self.ckpt_dir = output / "checkpoints"
        # Non-chief workers write their own copy (each save is collective); all restore the chief's.
        own_dir = self.ckpt_dir if chief else output / f"checkpoints_worker{worker_index}"
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(own_dir), max_to_keep=2)
        self._steps: dict[str, Any] = {}
        self.predict = None
        self.vote = make_vote(strategy)

    def restore(self) -> int:
        import tensorflow as tf

        latest = tf.train.latest_checkpoint(str(self.ckpt_dir)) or self.manager.latest_checkpoint
        if latest:
            self.checkpoint.restore(latest).expect_partial()
            log.info("resumed from %s at epoch %d", latest, int(self.epoch.numpy()))
        return int(self.epoch.numpy())

    def stage_of(self, epoch: int) -> str:
        return "frozen" if self.staged and epoch < self.cfg.frozen_epochs else "tune"

    def _train_step(self, stage: str):
        """A tf.function for the stage; traced once (the iterator's element spec has None time axes)."""
        import keras
        import tensorflow as tf

        if stage in self._steps:
            return self._steps[stage]
        model, optimizer = self.model, self.optimizers[stage]
        variables = model.trainable_variables
        aux_keys, aux_weight = self.aux_keys, self.cfg.aux_weight
        class_weight, global_batch = self.class_weight, self.global_batch

        def step_fn(inputs, labels):
            with tf.GradientTape() as tape:
                outputs = model(inputs, training=True)
                per_example = keras.losses.sparse_categorical_crossentropy(labels, outputs["emotion"])
                if aux_keys:
                    aux = tf.add_n([keras.losses.sparse_categorical_crossentropy(labels, outputs[k])
                                    for k in aux_keys]) / len(aux_keys)
                    per_example = per_example + aux_weight * aux
                per_example = per_example * tf.gather(class_weight, labels)
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
            grads = tape.gradient(loss, variables)
            optimizer.apply_gradients(zip(grads, variables))
            correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(outputs["emotion"], -1, output_type=tf.int32),
                                                     tf.cast(labels, tf.int32)), tf.float32))
            return loss, correct, tf.cast(tf.shape(labels)[0], tf.float32)

        strategy = self.strategy

        @tf.function
        def train_step(iterator):
            inputs, labels = next(iterator)
            loss, correct, count = strategy.run(step_fn, args=(inputs, labels))
            total = tf.distribute.ReduceOp.SUM
            return (strategy.reduce(total, loss, axis=None), strategy.reduce(total, correct, axis=None),
                    strategy.reduce(total, count, axis=None))

        self._steps[stage] = train_step
        return train_step

    def fit(self, train_dist, steps_per_epoch: int, val_ds, history_path: Path) -> None:
        from fusion.models import set_backbones_trainable

        cfg = self.cfg
        start = self.restore()
        iterator = iter(train_dist)
        current_stage = None
        for epoch in range(start, cfg.epochs):
            if bool(self.done.numpy()):
                break
            stage = self.stage_of(epoch)
            if stage != current_stage:
                set_backbones_trainable(self.model, stage == "tune")
                current_stage = stage
                log.info("epoch %d: %s stage, %d trainable tensors", epoch + 1, stage,
                         len(self.model.trainable_variables))
            step = self._train_step(stage)
            started, loss_sum, correct, seen = time.time(), 0.0, 0.0, 0.0
            for _ in progress(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step",
                              log_every=60):
                loss, c, n = step(iterator)
                loss_sum, correct, seen = loss_sum + float(loss), correct + float(c), seen + float(n)
            self.predict = self.predict or predict_function(self.model, val_ds)
            val = evaluate(self.model, val_ds, self.predict)
            row = {"epoch": epoch, "loss": loss_sum / steps_per_epoch, "accuracy": correct / max(seen, 1.0),
                   "val_loss": val["loss"], "val_accuracy": val["metrics"]["accuracy"],
                   "val_f1_macro": val["metrics"]["f1_macro"],
                   "learning_rate": float(self.optimizers[stage].learning_rate.numpy())}
            log.info("epoch %d/%d (%s, %.1fs): loss %.4f acc %.4f | val loss %.4f acc %.4f macro-F1 %.4f",
                     epoch + 1, cfg.epochs, stage, time.time() - started, row["loss"], row["accuracy"],
                     row["val_loss"], row["val_accuracy"], row["val_f1_macro"])
            if self.chief:
                append_history(history_path, row)
            score = row["val_f1_macro"]
            if score > float(self.best_score.numpy()):
                self.best_score.assign(score)
                self.stale.assign(0)
                for var, value in zip(self.best, self.model.get_weights()):
                    var.assign(value)
            else:
                self.stale.assign_add(1)
            stop = cfg.patience > 0 and int(self.stale.numpy()) >= cfg.patience
            if self.vote(stop):
                log.info("early stop: validation macro-F1 has not improved for %d epochs", cfg.patience)
                self.done.assign(True)
            self.epoch.assign(epoch + 1)
            self.manager.save()
        if float(self.best_score.numpy()) >= 0:
            self.model.set_weights([v.numpy() for v in self.best])


def append_history(path: Path, row: dict[str, float]) -> None:
    import pandas as pd

    frame = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=list(row))
    frame = frame[frame["epoch"] < row["epoch"]] if len(frame) else frame
    frame = pd.concat([frame, pd.DataFrame([row])], ignore_index=True) if len(frame) else pd.DataFrame([row])
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def predict_function(model, dataset):
    """A traced inference call with open batch / time axes: traced once, reused for every evaluation."""
    import tensorflow as tf

    return tf.function(lambda x: model(x, training=False), input_signature=[dataset.element_spec[0]])


def evaluate(model, dataset, predict=None) -> dict[str, Any]:
    """Probabilities of every output, labels, mean cross-entropy and metrics of the fused output."""
    predict = predict or predict_function(model, dataset)
    probs: dict[str, list[np.ndarray]] = {}
    labels = []
    for inputs, y in dataset:
        for key, value in predict(inputs).items():
            probs.setdefault(key, []).append(value.numpy())
        labels.append(y.numpy())
    y_true = np.concatenate(labels)
    out = {k: np.concatenate(v) for k, v in probs.items()}
    p_true = out["emotion"][np.arange(len(y_true)), y_true]
    return {"probs": out, "y_true": y_true, "loss": float(-np.mean(np.log(np.clip(p_true, 1e-7, 1.0)))),
            "metrics": compute_metrics(y_true, out["emotion"].argmax(1))}


# ---------------------------------------------------------------- main

# Options that change how fast a run goes (or which folders it reads), not what it trains.
SPEED_ONLY = frozenset({"workers", "devices", "save_all_workers"})


def run(cfg: TrainConfig) -> dict[str, Any]:
    # The strategy must exist before any other TensorFlow op (MultiWorkerMirroredStrategy requirement).
    strategy = make_strategy(cfg.devices)
    import tensorflow as tf

    from fusion.models import TEMPORAL, build_model, parse_modalities
    from fusion.pipeline import make_dataset

    n_workers, task_index, chief = cluster_spec()
    chief = chief or n_workers == 1
    modalities = parse_modalities(cfg.modalities)
    if cfg.temporal not in TEMPORAL:  # build_model checks it too, but only after the clips are preprocessed
        raise ValueError(f"--temporal must be one of {TEMPORAL}, got {cfg.temporal!r}")
    if cfg.pretrained:  # checked before minutes of preprocessing
        encoders = {"face": cfg.face_encoder, "audio": cfg.audio_encoder}
        if "frame" in modalities:
            raise ValueError("pretrained encoders feed face and audio branches only: use --modalities face,audio "
                             "(or one of them)")
        missing = [m for m in modalities if not encoders[m]]
        if missing:
            raise ValueError(f"--modalities {','.join(modalities)} with pretrained encoders also needs "
                             + " and ".join(f"--{m}-encoder" for m in missing))
    out = Path(cfg.output)
    settings = {k: v for k, v in asdict(cfg).items() if k not in SPEED_ONLY}
    done = finished_run(out, settings, lambda config: config.get("train") if config.get("task") == "fusion" else None)
    if done is not None:  # re-running a finished run's command: nothing to resume
        print(f"{out} is already finished with these settings (nothing to train; pass another --output or delete "
              f"the folder to train again); test: {format_summary(done)}")
        return {"test": done}
    check_resume(out, "fusion.train", settings)  # an interrupted run continues only as it started
    set_seed(cfg.seed)

    frame, report, pcfg = prepare_data(cfg)
    usable = frame[frame["status"].isin(["ok", "cached"])]
    parts = {s: usable[usable["split"] == s] for s in ("train", "val", "test")}
    if parts["train"].empty or parts["val"].empty:
        counts = {k: len(v) for k, v in parts.items()}
        hint = ("the corpus's own split (MELD) gave no usable clips there" if cfg.corpus != "ravdess" else
                "too few usable actors' clips for --val-fraction / --val-actors and --test-fraction / --test-actors")
        raise RuntimeError(f"empty train or validation split: {counts} ({hint}; {report['skipped']} skipped)")
    out.mkdir(parents=True, exist_ok=True)  # only now: a run refused for its data leaves no folder behind
    if chief:
        record_run_settings(out, "fusion.train", settings)
        write_split(out, frame)
        write_json(out / "data_report.json", report)
    log.info("%s: train %d, val %d, test %d clips usable; skipped %s", cfg.corpus, len(parts["train"]),
             len(parts["val"]), len(parts["test"]), report["skipped"])

    global_batch = cfg.batch_size * strategy.num_replicas_in_sync
    steps = cfg.steps_per_epoch or max(1, math.ceil(len(parts["train"]) / global_batch))
    train_files, train_labels = parts["train"]["cache"].tolist(), parts["train"]["label"].to_numpy()

    def train_fn(ctx: tf.distribute.InputContext):
        return make_dataset(train_files, train_labels, pcfg, ctx.get_per_replica_batch_size(global_batch),
                            modalities, cfg.max_seconds, training=True, repeat=True,
                            seed=cfg.seed + ctx.input_pipeline_id, input_context=ctx)

    train_dist = strategy.distribute_datasets_from_function(train_fn)
    eval_sets = {s: make_dataset(p["cache"].tolist(), p["label"].to_numpy(), pcfg, global_batch, modalities,
                                 cfg.max_seconds) for s, p in parts.items() if len(p)}
    with strategy.scope():
        model = build_model(cfg.model_config(pcfg))
    log.info("%s: %d parameters, %d replica(s) (%s), global batch %d, %d steps/epoch", model.name,
             model.count_params(), strategy.num_replicas_in_sync, strategy_name(strategy), global_batch, steps)
    trainer = Trainer(cfg, strategy, model, train_labels, out, chief, task_index)
    trainer.fit(train_dist, steps, eval_sets["val"], out / "history.csv")

    results: dict[str, Any] = {}
    if chief:
        save_model(model, out / "model.keras")
        write_json(out / "config.json", {
            "task": "fusion", "class_names": list(EMOTIONS), "modalities": modalities,
            "outputs": list(model.output.keys()), "max_seconds": cfg.max_seconds,
            "preprocess": asdict(pcfg), "model": asdict(cfg.model_config(pcfg)), "parameters": model.count_params(),
            "strategy": strategy_name(strategy), "replicas": strategy.num_replicas_in_sync, "workers": n_workers,
            "split": report["split"], "optimizer_steps": {k: int(o.iterations.numpy()) for k, o in
                                                          trainer.optimizers.items()},
            "train": asdict(cfg)})
        plot_history(read_history(out), out)
        for name, prefix in (("val", "val_"), ("test", "")):
            if name not in eval_sets:
                continue
            trainer.predict = trainer.predict or predict_function(model, eval_sets[name])
            result = evaluate(model, eval_sets[name], trainer.predict)
            per_modality = {k: compute_metrics(result["y_true"], v.argmax(1))["f1_macro"]
                            for k, v in result["probs"].items() if k != "emotion"}
            results[name] = write_report(out, result["y_true"], result["probs"]["emotion"].argmax(1), extra={
                "split": f"{report['split']} ({name})", "corpus": cfg.corpus, "modalities": modalities,
                "f1_macro_per_modality_head": per_modality}, prefix=prefix)
            print(f"{name}: {format_summary(results[name])}")
    elif cfg.save_all_workers:
        save_model(model, out / f"worker_{task_index}" / "model.keras")
    # A finished run is kept as it is (finished_run above), so its resume state goes (~100 MB with MobileNetV2).
    shutil.rmtree(trainer.manager.directory, ignore_errors=True)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = parse_config(TrainConfig, argv, DESCRIPTION, HELP)
    from fusion.encoders import EncoderUnavailableError
    from fusion.models import WeightsUnavailableError

    try:
        run(cfg)
    except (FileNotFoundError, ValueError, RuntimeError, WeightsUnavailableError, EncoderUnavailableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from core.cli import resumable_main

    quiet_tensorflow()
    sys.exit(resumable_main(main))
