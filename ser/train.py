"""Train a speech emotion model: ``python -m ser.train --model bilstm --corpora ravdess,tess``.

Every run folder gets: model.keras, config.json, normalization.npz, metrics.json (test split),
val_metrics.json, confusion_matrix.png, curve_*.png, history.csv, split.csv, data_report.json.
Re-running with the same ``--output`` resumes an interrupted run from its last epoch.
"""
from __future__ import annotations

import logging
import os
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from core.config import parse_config
from core.io import save_model, write_json
from core.labels import EMOTIONS, NUM_CLASSES
from core.reports import format_summary, plot_history, write_report
from core.training import check_refit, class_weights, learning_rate, make_callbacks, read_history, set_seed
from ser.features import DEFAULT_CACHE_DIR

log = logging.getLogger("ser.train")


@dataclass
class TrainConfig:
    model: str = "bilstm"
    corpora: str = "ravdess,tess"
    data_dir: str | None = None
    slugs: str = ""                  # kagglehub overrides, e.g. "ravdess=me/my-ravdess,tess=me/tess"
    split: str = "speaker"           # speaker | random
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    val_speakers: str = ""           # e.g. "ravdess_05,ravdess_06" (overrides the fractions for that corpus)
    test_speakers: str = ""
    epochs: int = 60
    batch_size: int = 32
    learning_rate: float = 1e-3
    label_smoothing: float = 0.0
    schedule: str = "plateau"        # plateau (ReduceLROnPlateau) | cosine (cosine decay over all epochs)
    mixup: float = 0.0               # mixup Beta(alpha, alpha); 0 disables
    spec_augment: bool = False       # SpecAugment-style time/feature masking in the model (training only)
    patience: int = 12
    augment: int = 1                 # augmented copies of each training clip (noise, pitch, stretch)
    refit: bool = False              # final fit: validation speakers join training, last weights kept
    seed: int = 42
    output: str = "runs/ser"
    cache_dir: str = str(DEFAULT_CACHE_DIR)  # "" disables the feature cache
    n_jobs: int = -1
    # feature settings (see ser.features.FeatureConfig)
    n_mfcc: int = 40
    max_seconds: float = 3.0
    trim_db: float = 30.0
    deltas: bool = False
    utterance_norm: bool = False
    features: str = "mfcc"           # mfcc | logmel
    n_mels: int = 64
    pitch: bool = False

    def feature_config(self):
        from ser.features import FeatureConfig

        return FeatureConfig(n_mfcc=self.n_mfcc, max_seconds=self.max_seconds, trim_db=self.trim_db,
                             deltas=self.deltas, utterance_norm=self.utterance_norm, kind=self.features,
                             n_mels=self.n_mels, pitch=self.pitch)


HELP = {
    "model": "cnn | lstm | bilstm | gru | attention | cnn2d",
    "features": "mfcc (40 MFCC + ZCR + RMS per frame) or logmel (n_mels log-mel bands; pairs well with cnn2d)",
    "pitch": "mfcc features: append F0 per frame (YIN), absolute and relative to the clip's median",
    "corpora": "comma-separated: ravdess, crema_d, tess, savee",
    "data_dir": "folder holding the corpora (or one corpus); default $EMOTION_DATA_DIR, else kagglehub",
    "split": "speaker (whole speakers held out) or random (leaks speakers)",
    "output": "run folder; re-running with the same folder resumes",
    "refit": "final fit once the recipe is chosen on validation: the validation speakers join training, all "
             "--epochs run and the last weights are kept (needs --schedule cosine); test speakers stay held out",
}


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _slugs(text: str) -> dict[str, str]:
    pairs = [item.split("=", 1) for item in _csv(text)]
    if any(len(p) != 2 for p in pairs):
        raise ValueError(f"--slugs must look like corpus=owner/name,...; got {text!r}")
    return dict(pairs)


def run(cfg: TrainConfig) -> dict:
    import keras

    from ser.corpora import load_clips, parse_corpus_list
    from ser.dataset import extract_clips, split_clips, to_arrays
    from ser.features import Normalizer
    from ser.models import build_model

    check_refit(cfg.refit, cfg.schedule)  # before minutes of feature extraction
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    set_seed(cfg.seed)
    fcfg = cfg.feature_config()
    cache = Path(cfg.cache_dir) if cfg.cache_dir else None

    clips, corpus_reports = load_clips(parse_corpus_list(cfg.corpora), cfg.data_dir, _slugs(cfg.slugs))
    clips, feats, errors = extract_clips(clips, fcfg, cache, cfg.n_jobs)
    if not clips:
        raise RuntimeError("no readable clips: every file failed to load (see warnings)")
    splits = split_clips(clips, cfg.split, cfg.val_fraction, cfg.test_fraction, cfg.seed,
                         _csv(cfg.val_speakers), _csv(cfg.test_speakers))
    if cfg.refit:
        splits = np.where(splits == "val", "train", splits)
    _write_split(out, clips, splits, corpus_reports)
    part = {name: [i for i, s in enumerate(splits) if s == name] for name in ("train", "val", "test")}
    if not part["train"] or not (part["val"] or cfg.refit):
        raise RuntimeError(f"empty train or validation split: {({k: len(v) for k, v in part.items()})}")

    train_clips = [clips[i] for i in part["train"]]
    train_feats = [feats[i] for i in part["train"]]
    x_train, y_train, len_train = to_arrays(train_feats, train_clips, fcfg)
    normalizer = Normalizer.fit(x_train, len_train)  # original training clips only
    x_train = normalizer.transform(x_train, len_train)
    aug_x, aug_y = [x_train], [y_train]
    for variant in range(1, cfg.augment + 1):  # augmentation after the split, training clips only
        a_clips, a_feats, _ = extract_clips(train_clips, fcfg, cache, cfg.n_jobs, variant, cfg.seed)
        ax, ay, _ = to_arrays(a_feats, a_clips, fcfg, normalizer)
        aug_x.append(ax)
        aug_y.append(ay)
    x_train, y_train = np.concatenate(aug_x), np.concatenate(aug_y)
    sets = {name: to_arrays([feats[i] for i in part[name]], [clips[i] for i in part[name]], fcfg, normalizer)
            for name in ("val", "test") if part[name]}
    validation = (sets["val"][0], keras.utils.to_categorical(sets["val"][1], NUM_CLASSES)) if "val" in sets else None

    model = build_model(cfg.model, (fcfg.max_frames, fcfg.n_features), NUM_CLASSES, cfg.spec_augment)
    train_data = training_dataset(x_train, y_train, cfg)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate(cfg.schedule, cfg.learning_rate,
                                                              cfg.epochs * len(train_data))),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
                  metrics=["accuracy"])
    log.info("%s: %d parameters; train %d (with augmentation), val %d, test %d",
             cfg.model, model.count_params(), len(x_train), len(part["val"]), len(part["test"]))
    model.fit(train_data, validation_data=validation, epochs=cfg.epochs, verbose=2,
              callbacks=make_callbacks(out, cfg.patience, max(2, cfg.patience // 3),
                                       reduce_lr=cfg.schedule == "plateau", validation=validation is not None))

    save_model(model, out / "model.keras")
    normalizer.save(out / "normalization.npz")
    write_json(out / "config.json", {
        "task": "ser", "class_names": list(EMOTIONS), "model": cfg.model,
        "input_shape": [fcfg.max_frames, fcfg.n_features], "parameters": model.count_params(),
        "features": asdict(fcfg), "train": asdict(cfg)})
    write_json(out / "data_report.json", {
        "corpora": corpus_reports, "unreadable": len(errors), "unreadable_files": errors,
        "split": cfg.split, "counts": {k: dict(Counter(clips[i].label for i in v)) for k, v in part.items()}})
    plot_history(read_history(out), out)
    results = {}
    for name, prefix in (("val", "val_"), ("test", "")):
        if name not in sets:
            continue
        x, y, _ = sets[name]
        pred = np.argmax(model.predict(x, batch_size=256, verbose=0), axis=1)
        results[name] = write_report(out, y, pred, extra={"split": f"{cfg.split} ({name})", "model": cfg.model,
                                                          "corpora": cfg.corpora}, prefix=prefix)
        print(f"{name}: {format_summary(results[name])}")
    return results


def training_dataset(x: np.ndarray, y: np.ndarray, cfg: TrainConfig):
    """Shuffled batches of (features, one-hot, class weight); mixed up pairwise when ``cfg.mixup`` > 0."""
    import tensorflow as tf

    weights = class_weights(y, NUM_CLASSES)
    sample_weight = np.array([weights[int(c)] for c in y], np.float32)
    onehot = np.eye(NUM_CLASSES, dtype=np.float32)[y]
    data = (tf.data.Dataset.from_tensor_slices((x, onehot, sample_weight))
            .shuffle(len(x), seed=cfg.seed, reshuffle_each_iteration=True)
            .batch(cfg.batch_size))
    if cfg.mixup > 0:
        alpha = cfg.mixup

        def mix(xb, yb, wb):
            n = tf.shape(xb)[0]
            g1 = tf.random.gamma([n], alpha)
            g2 = tf.random.gamma([n], alpha)
            lam = g1 / (g1 + g2)
            perm = tf.random.shuffle(tf.range(n))
            mixed = lambda a: lam[:, None, None] * a + (1 - lam[:, None, None]) * tf.gather(a, perm) \
                if a.shape.rank == 3 else lam[:, None] * a + (1 - lam[:, None]) * tf.gather(a, perm)
            wb = lam * wb + (1 - lam) * tf.gather(wb, perm)
            return mixed(xb), mixed(yb), wb

        data = data.map(mix, num_parallel_calls=tf.data.AUTOTUNE)
    return data.prefetch(tf.data.AUTOTUNE)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = parse_config(TrainConfig, argv, "Train a speech emotion recognition model.", HELP)
    try:
        run(cfg)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _write_split(out: Path, clips, splits, corpus_reports) -> None:
    import pandas as pd

    from core.io import atomic_write
    from ser.corpora import clip_key

    frame = pd.DataFrame({"file": [clip_key(c, corpus_reports) for c in clips], "corpus": [c.corpus for c in clips],
                          "speaker": [c.speaker for c in clips], "label": [c.label for c in clips],
                          "split": splits})
    atomic_write(out / "split.csv", lambda tmp: frame.to_csv(tmp, index=False))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
