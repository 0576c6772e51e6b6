"""Benchmark the five SER models on RAVDESS + TESS with the speaker-independent split.

    python bench/bench_ser.py --data-dir ../shared/data --epochs 40

Writes bench/results/ser.md and ser.json: accuracy, macro-F1, parameters, model file size,
ms per 3 s clip including feature extraction on one CPU core, feature extraction time cold
and cached. Each model is trained with ``ser.train`` into ``--runs/<model>`` (resumable).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.cli import CLIParser, add_verbose_flag, quiet_tensorflow  # noqa: E402

MODELS = ("cnn", "lstm", "bilstm", "gru", "attention")


def time_features(data_dir: str, corpora: str) -> dict:
    """Cold (empty cache) and cached extraction of every clip, on all cores."""
    from ser.corpora import load_clips, parse_corpus_list
    from ser.features import FeatureConfig, extract_many

    clips, _ = load_clips(parse_corpus_list(corpora), data_dir)
    paths = [c.path for c in clips]
    cache = Path(tempfile.mkdtemp(prefix="ser-bench-cache-"))
    try:
        extract_many(paths[:8], FeatureConfig(), None, n_jobs=-1)  # warm librosa/numba outside the timing
        start = time.perf_counter()
        extract_many(paths, FeatureConfig(), cache, n_jobs=-1)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        extract_many(paths, FeatureConfig(), cache, n_jobs=-1)
        cached = time.perf_counter() - start
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return {"clips": len(paths), "cold_s": round(cold, 2), "cached_s": round(cached, 2), "cores": os.cpu_count()}


LATENCY_SNIPPET = """
import os, sys, time, json
import numpy as np
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
sys.path.insert(0, {repo!r})
from ser.predict import SERPredictor
from ser.audio import load_audio
p = SERPredictor({run!r})
y = load_audio({clip!r})[: 3 * 16000]
y = np.pad(y, (0, max(0, 3 * 16000 - len(y))))
for _ in range(5):
    p.predict_waveform(y, 16000)
times = []
for _ in range(30):
    t = time.perf_counter(); p.predict_waveform(y, 16000); times.append(time.perf_counter() - t)
print(json.dumps({{"ms_per_clip": 1000 * float(np.median(times))}}))
"""


def run_on_one_core(code: str) -> dict:
    """The JSON line a Python snippet prints last, run in a fresh process pinned to one core."""
    cmd = ["taskset", "-c", "0", sys.executable, "-c", code]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def latency_one_core(run: Path, clip: str) -> float:
    """Median ms per 3 s clip (features + model), pinned to one core in a fresh process."""
    return run_on_one_core(LATENCY_SNIPPET.format(repo=str(REPO), run=str(run), clip=clip))["ms_per_clip"]


def build_parser() -> argparse.ArgumentParser:
    parser = CLIParser(prog="python bench/bench_ser.py", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"),
                        help="folder holding the corpora (default: ../shared/data)")
    parser.add_argument("--corpora", default="ravdess,tess", help="ser.train --corpora (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=40, help="ser.train --epochs (default: %(default)s)")
    parser.add_argument("--models", default=",".join(MODELS),
                        help="comma-separated ser.train models (default: %(default)s)")
    parser.add_argument("--runs", default=str(REPO / "runs" / "bench_ser"),
                        help="run folders go to RUNS/<model>; finished runs are reused (default: runs/bench_ser)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "ser"),
                        help="writes OUT.json and OUT.md (default: bench/results/ser)")
    parser.add_argument("--extra", default="", help="extra ser.train arguments, e.g. '--augment 2'")
    add_verbose_flag(parser)
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if not Path(args.data_dir).is_dir():
        sys.exit(f"no data folder {args.data_dir}: this benchmark needs the real corpora")

    from core.io import read_json, write_json

    features = time_features(args.data_dir, args.corpora)
    rows = []
    for name in args.models.split(","):
        run = Path(args.runs) / name
        if not (run / "metrics.json").exists():
            cmd = [sys.executable, "-m", "ser.train", "--model", name, "--corpora", args.corpora,
                   "--data-dir", args.data_dir, "--epochs", str(args.epochs), "--output", str(run),
                   *args.extra.split()]
            start = time.perf_counter()
            subprocess.run(cmd, check=True, cwd=REPO)
            train_s = time.perf_counter() - start
        else:
            train_s = None
        metrics = read_json(run / "metrics.json")
        config = read_json(run / "config.json")
        test_file = __import__("pandas").read_csv(run / "split.csv").query("split == 'test'")["file"].iloc[0]
        test_clip = str(Path(args.data_dir) / test_file)
        rows.append({
            "model": name, "split": "speaker (held-out RAVDESS actors)", "test_n": metrics["n"],
            "accuracy": round(metrics["accuracy"], 4), "f1_macro": round(metrics["f1_macro"], 4),
            "parameters": config["parameters"],
            "size_kb": round((run / "model.keras").stat().st_size / 1024, 1),
            "ms_per_3s_clip_1core": round(latency_one_core(run, test_clip), 2),
            "epochs_run": len(__import__("pandas").read_csv(run / "history.csv")),
            "train_s": None if train_s is None else round(train_s, 1),
        })
        print(rows[-1], flush=True)
    write_json(args.out + ".json", {"corpora": args.corpora, "features": features, "models": rows})
    lines = [f"Corpora: {args.corpora}; split: speaker-independent (whole RAVDESS actors held out for "
             f"validation and test; TESS's 2 speakers train only); test n = {rows[0]['test_n']}.", "",
             "| model | accuracy | macro-F1 | parameters | file size | ms / 3 s clip (1 core, incl. features) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['accuracy']:.3f} | {r['f1_macro']:.3f} | {r['parameters']:,} | "
                     f"{r['size_kb']:.0f} KB | {r['ms_per_3s_clip_1core']:.1f} |")
    lines += ["", f"Feature extraction of {features['clips']} clips on {features['cores']} cores: "
                  f"{features['cold_s']} s cold, {features['cached_s']} s cached."]
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    quiet_tensorflow()
    main()
