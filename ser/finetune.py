"""Fine-tune the whole Whisper encoder with an emotion head: an accelerator job (it runs on CPU too, slowly).

Heads on the frozen Whisper-base states level off near 0.77 in the speaker cross-validation (docs/whisper.md);
training the encoder itself is the next step. The job needs only Keras 3 (JAX or PyTorch backend) and NumPy,
and reads one packed file of log-mels plus the encoder's weights, small enough to travel to a GPU machine:

    # here: the Whisper front end of every clip (trim, level, first 3 s, 80-band log-mel), 8-bit, + the encoder
    python -m ser.finetune pack --data-dir ../shared/data --output .gpu/ser_pack
    # on the accelerator: speaker cross-validation, then the model on every speaker
    KERAS_BACKEND=torch python -m ser.finetune cv --pack .gpu/ser_pack --output out/cv --folds 4
    KERAS_BACKEND=torch python -m ser.finetune fit --pack .gpu/ser_pack --output out/fit
    # back here: the fine-tuned encoder is an ordinary CTranslate2 folder, so the usual head and tools apply
    python -m ser.train --model whisper --encoder-dir out/fit/encoder --data-dir ../shared/data --refit true

Recipe (LP-FT, Kumar et al. 2022): the head is first fitted as a logistic regression on the frozen states'
statistics (what ``--model whisper`` ships), then the encoder's layers and the head train together at a small
learning rate, so the random-head phase never reaches the pretrained features. The convolutions and positions
stay frozen. Clips are batched by length (cut down to a multiple of ``BUCKET`` frames) instead of padded, so
the encoder sees what it sees at inference: a clip at its own length, followed by ``pad_seconds`` of Whisper's
silence (``ser.train``'s default of 30 s; the statistics read only the clip's own steps).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Sequence

import numpy as np

from core.config import parse_bool
from core.labels import EMOTIONS, NUM_CLASSES

BUCKET = 25  # mel frames (0.25 s): training batches hold clips cut to the same multiple of this
FROZEN = ("conv1", "conv2", "positions")


@dataclass
class FinetuneConfig:
    epochs: int = 6
    batch_size: int = 16
    learning_rate: float = 2e-5
    weight_decay: float = 0.01
    head_c: float = 0.02      # the logistic regression's C in the linear-probe stage (as --model whisper)
    dropout: float = 0.1
    spec_augment: bool = True  # two frequency and two time masks per training clip (SpecAugment, Park et al. 2019)
    seed: int = 42
    folds: int = 4
    fold: int = -1            # run one fold only (-1: all)
    exclude: str = ""         # speakers left out entirely, e.g. the default split's test actors for recipe choice
    fold_corpus: str = "ravdess"
    pad_seconds: float = 30.0  # each clip inside Whisper's trailing silence, as ser.train --model whisper encodes it


# ---------------------------------------------------------------- pack (here, with the toolkit installed)

def pack(data_dir: str, output: Path, corpora: Sequence[str] = ("ravdess",), encoder_dir: str = "") -> dict:
    """Write ``mels.npz`` (8-bit log-mels, labels, speakers) and ``encoder/model.bin`` (encoder weights only)."""
    from ser.audio import load_audio
    from ser.corpora import load_clips
    from ser.whisper.ct2 import read_model_bin, write_model_bin
    from ser.whisper.encoder import whisper_feature_config
    from ser.whisper.preprocessor import log_mel
    from ser.whisper.weights import resolve_encoder_dir

    folder = resolve_encoder_dir(encoder_dir or None)  # a missing encoder fails before minutes of audio
    _, variables = read_model_bin(folder / "model.bin", prefix="encoder/")
    n_mels = variables["encoder/conv1/weight"].shape[1]
    fcfg = whisper_feature_config(encoder_dir)
    clips, _ = load_clips(corpora, data_dir)
    mels, kept, skipped = [], [], 0
    for i, clip in enumerate(clips):
        try:
            mels.append(log_mel(fcfg.prepare(load_audio(clip.path)), n_mels))
            kept.append(clip)
        except Exception as err:  # one unreadable file is counted, not fatal
            skipped += 1
            print(f"skipped {clip.path}: {err}", file=sys.stderr)
        if (i + 1) % 200 == 0:
            print(f"pack: {i + 1}/{len(clips)} clips", file=sys.stderr)
    if not mels:
        raise RuntimeError(f"no readable clips among {len(clips)} (see the messages above)")
    lo = float(min(m.min() for m in mels))
    hi = float(max(m.max() for m in mels))
    frames = np.concatenate(mels)
    output.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(output / "mels.npz",
                        mel=np.round((frames - lo) / (hi - lo) * 255).astype(np.uint8), lo=lo, hi=hi,
                        offsets=np.cumsum([0] + [len(m) for m in mels]),
                        label=np.array([EMOTIONS.index(c.label) for c in kept], np.int32),
                        speaker=np.array([c.speaker for c in kept]), path=np.array([Path(c.path).name for c in kept]))
    variables.pop("encoder/position_encodings/encodings", None)  # sinusoids: rebuilt, not carried
    (output / "encoder").mkdir(exist_ok=True)
    write_model_bin(output / "encoder" / "model.bin", variables)
    info = {"clips": len(kept), "skipped": skipped, "corpora": list(corpora), "frames": int(len(frames)),
            "quantisation_step": (hi - lo) / 255, "feature_config": asdict(fcfg)}
    (output / "pack.json").write_text(json.dumps(info, indent=2))
    return info


def load_pack(folder: Path) -> dict:
    d = np.load(folder / "mels.npz")
    mel = d["mel"].astype(np.float32) * ((float(d["hi"]) - float(d["lo"])) / 255) + float(d["lo"])
    offsets = d["offsets"]
    return {"mels": [mel[a:b] for a, b in zip(offsets[:-1], offsets[1:])], "label": d["label"],
            "speaker": d["speaker"].astype(str), "path": d["path"].astype(str)}


# ---------------------------------------------------------------- model (Keras 3, any backend)

def load_encoder(folder: Path):
    from ser.whisper.backbone import (MAX_FRAMES, build_whisper_encoder, config_from_variables,
                                      load_ct2_encoder_weights, sinusoids)
    from ser.whisper.ct2 import read_model_bin

    _, variables = read_model_bin(folder / "model.bin", prefix="encoder/")
    if "encoder/position_encodings/encodings" not in variables:  # packed without the sinusoid table
        hidden = variables["encoder/conv1/weight"].shape[0]
        variables["encoder/position_encodings/encodings"] = sinusoids(MAX_FRAMES // 2, hidden)
    cfg = config_from_variables(variables)
    encoder = build_whisper_encoder(cfg)
    load_ct2_encoder_weights(encoder, variables, cfg)
    return encoder, cfg


def build_model(encoder, dropout: float):
    """log-mel -> every state's mean and std over time -> fixed standardisation -> dropout -> softmax."""
    import keras
    from keras import layers, ops

    mel = keras.Input((None, encoder.input_shape[-1]), name="log_mel")
    mask = keras.Input((None,), name="clip_steps")  # 1 on the clip's own encoder steps, 0 on the padding's
    states = ops.stack(encoder(mel), axis=2)  # (batch, steps, states, dim)
    weight = mask[:, :, None, None]
    count = ops.sum(weight, axis=1)
    mean = ops.sum(states * weight, axis=1) / count
    std = ops.sqrt(ops.sum(ops.square(states - mean[:, None]) * weight, axis=1) / count + 1e-6)
    stats = layers.Flatten(name="flatten")(ops.concatenate([mean, std], axis=-1))
    x = layers.Normalization(name="standardise")(stats)
    x = layers.Dropout(dropout, name="dropout")(x)
    out = layers.Dense(NUM_CLASSES, activation="softmax", name="emotion")(x)
    return (keras.Model([mel, mask], out, name="whisper_finetune"),
            keras.Model([mel, mask], stats, name="statistics"))


def pad_clips(x: np.ndarray, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Clips of one length (batch, length, bands) followed by silence up to ``frames``, and the mask of their
    own encoder steps. Silence is what ``log_mel`` gives a zero-padded waveform: the floor 80 dB below the clip's
    peak, i.e. its maximum minus 2 after Whisper's ``(x + 4) / 4``."""
    batch, length, bands = x.shape
    mask = np.zeros((batch, -(-max(length, frames) // 2)), np.float32)
    mask[:, : -(-length // 2)] = 1.0
    if frames > length:
        floor = x.max(axis=(1, 2), keepdims=True) - 2.0
        x = np.concatenate([x, np.broadcast_to(floor, (batch, frames - length, bands))], axis=1)
    return x.astype(np.float32), mask


def length_batches(mels: list[np.ndarray], labels: np.ndarray, batch_size: int, rng: np.random.Generator | None,
                   spec_augment: bool = False):
    """Batches of clips cut to a shared multiple of BUCKET frames (shuffled, and random crops, when ``rng`` is
    given; masked as well with ``spec_augment``)."""
    batches = []
    for length, idx in _buckets(mels).items():
        idx = list(rng.permutation(idx)) if rng is not None else idx
        for s in range(0, len(idx), batch_size):
            part = idx[s:s + batch_size]
            x = np.stack([_crop(mels[i], length, rng) for i in part])
            batches.append((mask_spectrogram(x, rng) if spec_augment and rng is not None else x, labels[part]))
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def _buckets(mels: list[np.ndarray]) -> dict[int, list[int]]:
    """Bucket length (frames) -> indices of the clips cut to it."""
    buckets: dict[int, list[int]] = {}
    for i, m in enumerate(mels):
        buckets.setdefault(max(BUCKET, len(m) // BUCKET * BUCKET), []).append(i)
    return buckets


def mask_spectrogram(x: np.ndarray, rng: np.random.Generator, masks: int = 2, max_bands: int = 8,
                     max_time: float = 0.1) -> np.ndarray:
    """SpecAugment on (batch, frames, bands) log-mels: bands and frame spans set to the clip's mean."""
    x = x.copy()
    frames, bands = x.shape[1:]
    for clip in x:
        fill = clip.mean()
        for _ in range(masks):
            width = int(rng.integers(0, max_bands + 1))
            start = int(rng.integers(0, bands - width + 1))
            clip[:, start:start + width] = fill
            width = int(rng.integers(0, int(max_time * frames) + 1))
            start = int(rng.integers(0, frames - width + 1))
            clip[start:start + width] = fill
    return x


def _crop(mel: np.ndarray, length: int, rng: np.random.Generator | None) -> np.ndarray:
    if len(mel) < length:  # only clips shorter than one bucket: pad with the clip's quietest frame
        return np.concatenate([mel, np.repeat(mel.min(0, keepdims=True), length - len(mel), 0)])
    start = int(rng.integers(0, len(mel) - length + 1)) if rng is not None else 0
    return mel[start:start + length]


def predict(model, mels: list[np.ndarray], frames: int = 0) -> np.ndarray:
    """``model``'s outputs, each clip at its own full length inside ``frames`` of silence (clips of equal length
    share a call)."""
    out = None
    by_length: dict[int, list[int]] = {}
    for i, m in enumerate(mels):
        by_length.setdefault(len(m), []).append(i)
    for idx in by_length.values():
        for s in range(0, len(idx), 64):
            part = idx[s:s + 64]
            values = np.asarray(model.predict_on_batch(list(pad_clips(np.stack([mels[i] for i in part]), frames))))
            out = np.zeros((len(mels), values.shape[1]), np.float32) if out is None else out
            out[part] = values
    return out


def padded_frames(cfg: FinetuneConfig, encoder_cfg) -> int:
    """Mel frames every clip is padded to: ``pad_seconds`` (10 ms frames), at most the encoder's window."""
    return min(int(round(cfg.pad_seconds * 100)), 2 * encoder_cfg.max_positions)


def train(pack_dir: Path, mels, labels, cfg: FinetuneConfig, log=print, watch=None):
    """The LP-FT recipe on the given clips; returns (model, encoder, per-epoch history).

    ``watch(model)`` -> dict of scores, called after the linear probe (epoch 0) and after every epoch: the
    cross-validation records its held-out fold's accuracy by epoch with it."""
    import keras

    from ser.whisper.head import fit_logistic

    keras.utils.set_random_seed(cfg.seed)
    encoder, encoder_cfg = load_encoder(pack_dir / "encoder")
    frames = padded_frames(cfg, encoder_cfg)
    model, statistics = build_model(encoder, cfg.dropout)
    stats = predict(statistics, mels, frames)
    scaler, coef, bias = fit_logistic(stats, labels, cfg.head_c, NUM_CLASSES)
    norm = model.get_layer("standardise")
    shape = norm.get_weights()[0].shape
    norm.set_weights([scaler.mean_.reshape(shape), (scaler.scale_ ** 2).reshape(shape)] + norm.get_weights()[2:])
    norm.finalize_state()
    norm.trainable = False
    model.get_layer("emotion").set_weights([coef.T.astype(np.float32), bias.astype(np.float32)])
    for name in FROZEN:
        encoder.get_layer(name).trainable = False
    rng = np.random.default_rng(cfg.seed)
    steps = cfg.epochs * sum(-(-len(idx) // cfg.batch_size) for idx in _buckets(mels).values())
    schedule = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, max(1, steps))
    model.compile(optimizer=keras.optimizers.AdamW(schedule, weight_decay=cfg.weight_decay),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = [{"epoch": 0, **(watch(model) if watch else {})}]
    for epoch in range(1, cfg.epochs + 1):
        start = time.time()
        losses, accs = [], []
        for x, y in length_batches(mels, labels, cfg.batch_size, rng, cfg.spec_augment):
            loss, acc = model.train_on_batch(list(pad_clips(x, frames)), y)
            losses.append(loss)
            accs.append(acc)
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "accuracy": float(np.mean(accs)),
                        "seconds": round(time.time() - start, 1), **(watch(model) if watch else {})})
        log(f"epoch {epoch}/{cfg.epochs}: " + ", ".join(f"{k} {v:.3f}" for k, v in history[-1].items() if k != "epoch"))
    return model, encoder, history


# ---------------------------------------------------------------- commands

def crossval(pack_dir: Path, output: Path, cfg: FinetuneConfig) -> dict:
    from sklearn.metrics import accuracy_score, f1_score

    from ser.corpora import speaker_folds

    data = load_pack(pack_dir)
    speakers = data["speaker"]
    excluded = [s for s in cfg.exclude.split(",") if s]
    keep = ~np.isin(speakers, excluded)
    pool = [s for s in speakers[keep] if s.startswith(cfg.fold_corpus)]
    folds = speaker_folds(pool, cfg.folds)
    frames = padded_frames(cfg, load_encoder(pack_dir / "encoder")[1])
    output.mkdir(parents=True, exist_ok=True)
    for k, test in enumerate(folds):
        done = output / f"fold{k}.json"
        if done.exists() or (cfg.fold >= 0 and k != cfg.fold):
            continue
        tr = np.flatnonzero(keep & ~np.isin(speakers, test))
        te = np.flatnonzero(np.isin(speakers, test))
        print(f"fold {k}: test {','.join(test)}; train {len(tr)}, test {len(te)} clips", flush=True)
        test_mels, y = [data["mels"][i] for i in te], data["label"][te]

        def watch(model):
            return {"test_accuracy": float(accuracy_score(y, predict(model, test_mels, frames).argmax(1)))}

        model, _, history = train(pack_dir, [data["mels"][i] for i in tr], data["label"][tr], cfg,
                                  log=lambda m: print(f"fold {k} {m}", flush=True), watch=watch)
        probs = predict(model, test_mels, frames)
        result = {"fold": k, "speakers": test, "accuracy": float(accuracy_score(y, probs.argmax(1))),
                  "macro_f1": float(f1_score(y, probs.argmax(1), average="macro")), "history": history,
                  "y_true": y.tolist(), "y_pred": probs.argmax(1).tolist(), "paths": data["path"][te].tolist()}
        print(f"fold {k}: accuracy {result['accuracy']:.3f}, macro-F1 {result['macro_f1']:.3f}", flush=True)
        done.write_text(json.dumps(result))
    results = [json.loads((output / f"fold{k}.json").read_text()) for k in range(len(folds))
               if (output / f"fold{k}.json").exists()]
    summary = {"config": asdict(cfg), "folds": [{k: r[k] for k in ("fold", "speakers", "accuracy", "macro_f1")}
                                                for r in results]}
    if len(results) == len(folds):
        y = np.concatenate([r["y_true"] for r in results])
        p = np.concatenate([r["y_pred"] for r in results])
        summary |= {"accuracy": float(accuracy_score(y, p)), "macro_f1": float(f1_score(y, p, average="macro")),
                    "clips": int(len(y))}
        print(f"pooled over {len(y)} clips: accuracy {summary['accuracy']:.3f}, macro-F1 {summary['macro_f1']:.3f}")
    (output / "crossval.json").write_text(json.dumps(summary, indent=2))
    return summary


def fit(pack_dir: Path, output: Path, cfg: FinetuneConfig) -> dict:
    """Train on every packed clip and write the encoder as a CTranslate2 folder for ``--encoder-dir``."""
    from ser.whisper.backbone import ct2_encoder_variables
    from ser.whisper.ct2 import write_model_bin

    data = load_pack(pack_dir)
    keep = np.flatnonzero(~np.isin(data["speaker"], [s for s in cfg.exclude.split(",") if s]))
    _, encoder, history = train(pack_dir, [data["mels"][i] for i in keep], data["label"][keep], cfg)
    (output / "encoder").mkdir(parents=True, exist_ok=True)
    variables = {k: v.astype(np.float16) if v.dtype == np.float32 else v
                 for k, v in ct2_encoder_variables(encoder).items()}
    write_model_bin(output / "encoder" / "model.bin", variables)
    info = {"config": asdict(cfg), "clips": int(len(keep)), "history": history}
    (output / "fit.json").write_text(json.dumps(info, indent=2))
    return info


HELP = {
    "epochs": "epochs of the whole-encoder phase, after the linear probe",
    "batch_size": "clips per step",
    "learning_rate": "peak AdamW learning rate (cosine decay to 0)",
    "weight_decay": "AdamW weight decay",
    "head_c": "the linear probe's inverse regularisation (logistic regression C)",
    "dropout": "dropout on the standardised statistics during the fine-tune",
    "spec_augment": "mask 2 mel-band and 2 time spans per training clip (true / false)",
    "seed": "random seed (initial order, crops, masks)",
    "folds": "cv: speaker folds over --fold-corpus",
    "fold": "cv: run only this fold (0-based); -1 runs every fold not yet done, then pools",
    "exclude": "comma-separated speakers left out entirely (e.g. the default split's test actors while choosing)",
    "fold_corpus": "cv: the corpus whose speakers take turns as test speakers",
    "pad_seconds": "each clip inside this much of Whisper's silence (30 = as ser.train encodes it; 0 = alone); "
                   "use the same value with ser.train --encoder-dir afterwards",
}


def build_parser() -> argparse.ArgumentParser:
    from core.cli import CLIParser, add_verbose_flag, module_prog

    parser = CLIParser(prog=module_prog(__name__), description=__doc__.split("\n\n")[0])
    add_verbose_flag(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="log-mels + encoder weights in one small folder (run where the data is)")
    p.add_argument("--data-dir", required=True, help="folder holding the corpora (as for ser.train)")
    p.add_argument("--output", required=True, help="folder for mels.npz, encoder/model.bin and pack.json")
    p.add_argument("--corpora", default="ravdess", help="comma-separated corpora to pack")
    p.add_argument("--encoder-dir", default="", help="a CTranslate2 Whisper folder (default: the pinned Whisper-base)")
    for name in ("cv", "fit"):
        p = sub.add_parser(name, help="speaker cross-validation" if name == "cv" else "train on every speaker")
        p.add_argument("--pack", required=True, help="folder written by pack")
        p.add_argument("--output", required=True, help="folder for fold<k>.json + crossval.json" if name == "cv"
                       else "folder for encoder/model.bin and fit.json")
        for f in fields(FinetuneConfig):
            p.add_argument("--" + f.name.replace("_", "-"), default=f.default, help=HELP[f.name],
                           type=parse_bool if isinstance(f.default, bool) else type(f.default))
    return parser


def check_options(cfg: FinetuneConfig) -> str | None:
    """What is wrong with the options, in one line, or None: checked before the pack is read."""
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.learning_rate <= 0 or cfg.head_c <= 0:
        return "--epochs, --batch-size, --learning-rate and --head-c must be positive"
    if cfg.weight_decay < 0 or not 0 <= cfg.dropout < 1:
        return f"--weight-decay must be >= 0 and --dropout in [0, 1), got {cfg.weight_decay:g} and {cfg.dropout:g}"
    if not 0 <= cfg.pad_seconds <= 30:
        return f"--pad-seconds {cfg.pad_seconds:g}: use 0 (clip alone) to 30 (Whisper's window)"
    if cfg.folds < 2 or not -1 <= cfg.fold < cfg.folds:
        return f"--folds must be >= 2 and --fold -1 or 0..{max(cfg.folds, 2) - 1}, got {cfg.folds} and {cfg.fold}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    from core.cli import quiet_tensorflow

    quiet_tensorflow()  # on a TensorFlow machine (pack, or cv on CPU); does nothing where there is none
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "pack":
        from core.datasets import DatasetNotFoundError
        from ser.corpora import parse_corpus_list
        from ser.whisper.weights import EncoderWeightsError

        try:  # parse_corpus_list: aliases resolved, each corpus once (ravdess,ravdess would pack every clip twice)
            info = pack(args.data_dir, Path(args.output), parse_corpus_list(args.corpora), args.encoder_dir)
        except (DatasetNotFoundError, EncoderWeightsError, RuntimeError, ValueError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(json.dumps({k: info[k] for k in ("clips", "skipped", "frames")}))
        return 0
    cfg = FinetuneConfig(**{f.name: getattr(args, f.name) for f in fields(FinetuneConfig)})
    problem = check_options(cfg)
    if problem:
        parser.error(problem)
    pack_dir = Path(args.pack)
    for needed in ("mels.npz", "encoder/model.bin"):
        if not (pack_dir / needed).is_file():
            print(f"error: --pack {pack_dir}: {needed} missing (make it with `python -m ser.finetune pack`)",
                  file=sys.stderr)
            return 2
    try:
        (crossval if args.command == "cv" else fit)(pack_dir, Path(args.output), cfg)
    except ValueError as err:  # e.g. more folds than speakers: the message names the fix
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
