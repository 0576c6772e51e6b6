"""Does encoding a clip inside Whisper's usual trailing silence help emotion recognition, and what does it cost?

    python bench/bench_ser_whisper_padding.py --data-dir ../shared/data --pads 0,5,10,20,30,30r

For every RAVDESS clip (actors 01-20) and every padding (seconds; 0 = the clip alone), the shipped front end
(``WhisperFeatureConfig(pad_seconds=...)``: trim, level, first 3 s, log-mel, Whisper-base, the clip's own
80 ms steps) gives all 7 hidden states; their mean and standard deviation over the clip are the statistics
``--model whisper``'s head reads. Scored with that head's recipe (``ser.whisper.head.fit_logistic``, C 0.02)
by 4-fold speaker cross-validation, RAVDESS only:
- the **choice CV**: the 17 actors that are not the default split's test actors (10, 15, 16), n = 1020;
- the 20-actor CV of the benchmark, n = 1200 (reported, not used to choose).
Also per-state probes (one state's statistics alone) for the smallest and largest padding, and ms per 3 s
clip on one core for the encoder call at each padding.

Hidden states go through the toolkit's feature cache (``--cache-dir``): resumable, and free for a padding a
training run has already used. Extraction takes ~0.6 s per clip on 2 cores for 30 s of padding. Writes OUT/ser_whisper_padding.md / .json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.cli import CLIParser, add_verbose_flag, quiet_tensorflow  # noqa: E402

CHOICE_EXCLUDE = ("ravdess_10", "ravdess_15", "ravdess_16")  # the default split's test actors
HEAD_C = 0.02


def parse_padding(text: str) -> tuple[float, str]:
    """"30" -> (30.0, "encoded"); "30r" -> (30.0, "reference"): the padding's states from ser.whisper.silence."""
    return (float(text[:-1]), "reference") if text.endswith("r") else (float(text), "encoded")


def padding_label(text: str) -> str:
    pad, states = parse_padding(text)
    return "alone" if not pad else f"{pad:g} s, reference padding" if states == "reference" else f"{pad:g} s"


def padded_statistics(paths: list[str], padding: str, cache_dir: Path | None) -> np.ndarray:
    """(clips, states, 2 * dim): each hidden state's mean and std over the clip's own 80 ms steps.

    The states come through the toolkit's feature cache, so a padding ``ser.train`` already used costs nothing."""
    from ser.features import extract_many
    from ser.whisper.encoder import whisper_feature_config

    pad_seconds, pad_states = parse_padding(padding)
    cfg = whisper_feature_config("", pad_seconds=pad_seconds, pad_states=pad_states)
    frames, errors = extract_many(paths, cfg, cache_dir, desc=f"{padding_label(padding)} padding")
    if errors:
        raise SystemExit(f"{len(errors)} unreadable clips, e.g. {next(iter(errors.items()))}")
    return np.stack([np.concatenate([f.astype(np.float32).mean(0), f.astype(np.float32).std(0)], -1)
                     for f in frames])


def speaker_cv(stats: np.ndarray, labels: np.ndarray, speakers: np.ndarray, exclude: tuple[str, ...]) -> dict:
    """Pooled accuracy / macro-F1 of the shipped head recipe over 4 speaker folds of the kept actors."""
    from sklearn.metrics import accuracy_score, f1_score

    from core.labels import NUM_CLASSES
    from ser.corpora import speaker_folds
    from ser.whisper.head import fit_logistic

    keep = ~np.isin(speakers, exclude)
    x, y, spk = stats[keep].reshape(keep.sum(), -1), labels[keep], speakers[keep]
    pred = np.zeros_like(y)
    folds = speaker_folds(sorted(set(spk)), 4)
    for test in folds:
        te = np.isin(spk, test)
        scaler, coef, intercept = fit_logistic(x[~te], y[~te], HEAD_C, NUM_CLASSES)
        pred[te] = (scaler.transform(x[te]) @ coef.T + intercept).argmax(1)
    return {"n": int(keep.sum()), "accuracy": round(float(accuracy_score(y, pred)), 4),
            "f1_macro": round(float(f1_score(y, pred, average="macro")), 4),
            "fold_accuracy": [round(float(accuracy_score(y[np.isin(spk, f)], pred[np.isin(spk, f)])), 3)
                              for f in folds]}


def latency_ms(pads: list[str], clip: str) -> dict[str, float]:
    """Median ms of the Whisper front end (trim, level, log-mel, encoder) on a 3 s clip per padding, in a
    one-thread process pinned to one core."""
    code = ("import sys, json, time, numpy as np, tensorflow as tf\n"
            "tf.config.threading.set_intra_op_parallelism_threads(1)\n"
            "tf.config.threading.set_inter_op_parallelism_threads(1)\n"
            f"sys.path.insert(0, {str(REPO)!r})\n"
            "from ser.audio import load_audio\n"
            "from ser.whisper.encoder import WhisperFeatureConfig\n"
            f"y = load_audio({clip!r}); out = {{}}\n"
            f"for text, pad, states in {[(text, *parse_padding(text)) for text in pads]!r}:\n"
            "    cfg = WhisperFeatureConfig(pad_seconds=pad, pad_states=states); cfg.frames(y); times = []\n"
            "    for _ in range(7):\n"
            "        t = time.perf_counter(); cfg.frames(y); times.append(time.perf_counter() - t)\n"
            "    out[text] = round(1000 * float(np.median(times)), 1)\n"
            "print(json.dumps(out))\n")
    pin = ["taskset", "-c", "0"] if sys.platform.startswith("linux") else []
    result = subprocess.run([*pin, sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env=os.environ | {"TF_CPP_MIN_LOG_LEVEL": "3"})
    return json.loads(result.stdout.strip().splitlines()[-1])


def build_parser() -> argparse.ArgumentParser:
    parser = CLIParser(prog="python bench/bench_ser_whisper_padding.py",
                       description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=None, help="folder holding ravdess/")
    parser.add_argument("--pads", default="0,5,10,20,30,30r",
                        help="comma-separated seconds of padding (0 = alone); a trailing r takes the padding's "
                             "states from the reference (ser.whisper.silence) instead of encoding them")
    parser.add_argument("--cache-dir", default=None, help="feature cache (default: the toolkit's; '' disables)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"),
                        help="folder for ser_whisper_padding.md / .json")
    add_verbose_flag(parser)
    return parser


def main() -> int:
    args = build_parser().parse_args()
    pads = [p.strip() for p in args.pads.split(",")]
    from ser.whisper.encoder import check_pad_seconds, check_pad_states

    for text in pads:  # refused before any audio is read
        try:
            pad, states = parse_padding(text)
            check_pad_seconds(pad, 3.0, "--pads")
            check_pad_states(states, pad, "--pads")
        except ValueError as e:
            raise SystemExit(f"--pads {text}: {e}")
    quiet_tensorflow(args.verbose)
    from core.labels import EMOTION_INDEX
    from ser.corpora import load_clips
    from ser.features import DEFAULT_CACHE_DIR

    clips, _ = load_clips(["ravdess"], args.data_dir)
    labels = np.array([EMOTION_INDEX[c.label] for c in clips])
    speakers = np.array([c.speaker for c in clips])
    start = time.time()
    cache = DEFAULT_CACHE_DIR if args.cache_dir is None else (Path(args.cache_dir) if args.cache_dir else None)
    paths = [str(c.path) for c in clips]
    data = {text: padded_statistics(paths, text, cache) for text in pads}
    results: dict = {"clips": len(clips), "extraction_s": round(time.time() - start, 1), "head_c": HEAD_C,
                     "choice_cv": {}, "cv_20": {}, "per_state_choice_cv": {}}
    for text in pads:
        results["choice_cv"][text] = speaker_cv(data[text], labels, speakers, CHOICE_EXCLUDE)
        results["cv_20"][text] = speaker_cv(data[text], labels, speakers, ())
    for text in dict.fromkeys((pads[0], pads[-1])):
        stats = data[text]
        results["per_state_choice_cv"][text] = [
            speaker_cv(stats[:, [s]], labels, speakers, CHOICE_EXCLUDE)["accuracy"] for s in range(stats.shape[1])]
    results["ms_per_3s_clip_one_core"] = latency_ms(pads, str(clips[0].path))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ser_whisper_padding.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# Whisper encoder: clip alone or inside trailing silence", "",
             "RAVDESS only; head: logistic regression (C 0.02) on every state's mean + std, as `--model whisper`. "
             "Choice CV: 4 speaker folds over the 17 actors that are not the default split's test actors "
             "(10, 15, 16), n = 1020; 20-actor CV: actors 01-20, n = 1200.", "",
             "| padding (s) | choice CV accuracy / macro-F1 | its folds | 20-actor CV accuracy / macro-F1 "
             "| ms per 3 s clip (trim, level, log-mel, encoder), 1 core |", "|---|---|---|---|---|"]
    for k in pads:
        c, t = results["choice_cv"][k], results["cv_20"][k]
        lines.append(f"| {padding_label(k)} | {c['accuracy']:.3f} / {c['f1_macro']:.3f} | "
                     f"{', '.join(f'{a:.3f}' for a in c['fold_accuracy'])} | {t['accuracy']:.3f} / "
                     f"{t['f1_macro']:.3f} | {results['ms_per_3s_clip_one_core'][k]} |")
    lines += ["", "One state's statistics alone (choice CV accuracy; embeddings, then layers 1-6):", ""]
    for k, accs in results["per_state_choice_cv"].items():
        lines.append(f"- {padding_label(k)}: " + ", ".join(f"{a:.3f}" for a in accs))
    (out / "ser_whisper_padding.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
