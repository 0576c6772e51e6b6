"""Does the voice model's memory keep growing in a long-running server? RSS over many live-like windows.

    python bench/bench_voice_memory.py                         # saved_models/ser, RAVDESS Actor_01, 1600 windows
    python bench/bench_voice_memory.py --calls 400 --speech my/voices --out /tmp/mem
    TF_ENABLE_ONEDNN_OPTS=0 python bench/bench_voice_memory.py --out /tmp/mem_onednn_off

Every call hands ``SERPredictor.window_results`` (what the live page's voice thread calls) 1-3 windows of
0.3-2 s cut at random from the speech files, as a stream's rolling window is after the speech check: each call
has its own batch size and length, so its input shape is often new. TensorFlow's oneDNN kernels keep state for
every input shape they see; this measures whether that settles (a bounded cache) or keeps growing (a leak).
One TensorFlow thread, as the server runs its models (``--model-threads 1``). Reported: RSS and CPU time at
checkpoints. Writes OUT/voice_memory.md and OUT/voice_memory.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.cli import CLIParser, add_verbose_flag, progress, quiet_tensorflow  # noqa: E402

DEFAULT_SPEECH = REPO.parent / "shared" / "data" / "ravdess" / "Actor_01"
SR = 16_000
MIN_SECONDS, MAX_SECONDS = 0.3, 2.0  # the live page's rolling window is 2 s
MAX_WINDOWS_PER_CALL = 3
CHECKPOINTS = 8


def build_parser() -> argparse.ArgumentParser:
    parser = CLIParser(prog="python bench/bench_voice_memory.py", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", default=str(REPO / "saved_models" / "ser"),
                        help="SER run folder (default: saved_models/ser)")
    parser.add_argument("--speech", default=str(DEFAULT_SPEECH),
                        help="folder of speech files the windows are cut from (default: ../shared/data RAVDESS "
                             "Actor_01)")
    parser.add_argument("--calls", type=int, default=1600, help="voice model calls (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the windows' lengths and places (default: %(default)s)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"),
                        help="folder for voice_memory.md and voice_memory.json (default: bench/results)")
    add_verbose_flag(parser)
    return parser


def live_windows(clips: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """1-3 windows of 0.3-2 s, each from a random place in a random clip."""
    out = []
    for _ in range(int(rng.integers(1, MAX_WINDOWS_PER_CALL + 1))):
        clip = clips[int(rng.integers(len(clips)))]
        length = min(int(rng.uniform(MIN_SECONDS, MAX_SECONDS) * SR), clip.size)
        start = int(rng.integers(0, clip.size - length + 1))
        out.append(clip[start:start + length])
    return out


def markdown(result: dict) -> str:
    lines = [f"RSS of one process running `{result['model_dir']}` on live-like voice windows "
             f"({MIN_SECONDS}-{MAX_SECONDS} s, 1-{MAX_WINDOWS_PER_CALL} per call, cut from {result['speech']}; "
             f"one TensorFlow thread; TF_ENABLE_ONEDNN_OPTS={result['onednn_opts']}).", "",
             "| calls | RSS MB | growth since the previous row MB | CPU s per call (since the previous row) |",
             "|---|---|---|---|"]
    previous = None
    for row in result["checkpoints"]:
        growth = "-" if previous is None else f"{row['rss_mb'] - previous['rss_mb']:+.0f}"
        per_call = "-" if previous is None else \
            f"{(row['cpu_seconds'] - previous['cpu_seconds']) / (row['calls'] - previous['calls']):.3f}"
        lines.append(f"| {row['calls']} | {row['rss_mb']:.0f} | {growth} | {per_call} |")
        previous = row
    return "\n".join(lines) + "\n"


def main() -> int:
    args = build_parser().parse_args()
    quiet_tensorflow(args.verbose)
    if args.calls < CHECKPOINTS:
        raise SystemExit(f"--calls must be at least {CHECKPOINTS}")
    speech = Path(args.speech)
    if not speech.is_dir():
        raise SystemExit(f"{speech}: no such folder (pass --speech with a folder of speech files)")
    import psutil
    import tensorflow as tf

    from ser.audio import load_audio
    from ser.predict import SERPredictor, expand_paths

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    clips = [load_audio(p) for p in expand_paths([str(speech)])[:20]]
    if not clips:
        raise SystemExit(f"{speech}: no audio files")
    predictor = SERPredictor(args.model_dir)
    rng = np.random.default_rng(args.seed)
    process = psutil.Process()
    marks = set(np.linspace(0, args.calls, CHECKPOINTS + 1).astype(int)[1:]) | {1}
    checkpoints = []
    cpu_start = time.process_time()
    for call in progress(range(1, args.calls + 1), total=args.calls, desc="voice calls"):
        predictor.window_results(live_windows(clips, rng))
        if call in marks:
            checkpoints.append({"calls": call, "rss_mb": round(process.memory_info().rss / 2**20, 1),
                                "cpu_seconds": round(time.process_time() - cpu_start, 2)})
    result = {"model_dir": os.path.relpath(args.model_dir, REPO), "speech": os.path.relpath(speech, REPO),
              "onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on)"), "calls": args.calls,
              "checkpoints": checkpoints}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "voice_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "voice_memory.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
