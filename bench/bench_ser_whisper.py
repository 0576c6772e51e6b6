"""Cost and behaviour of the Whisper encoder front end.

    python bench/bench_ser_whisper.py --data-dir ../shared/data --model-dir saved_models/ser

Writes OUT/ser_whisper.md and .json (``--out``, default bench/results):
- ms per 3 s clip on one CPU core through ``SERPredictor`` (speech check, log-mel, encoder, head), for each
  ``--model-dir`` given (median of 30 calls after a warm-up, in a fresh process pinned to one core);
- hidden-state extraction time for RAVDESS + TESS, cold (empty cache) and cached (``--extract true``; the
  cold pass takes several minutes on 2 cores);
- the effect of not padding to 30 s: cosine similarity, per hidden state, between the states of a 3 s clip
  encoded alone and the first 3 s of the same clip padded to 30 s as Whisper does (``--pad-clips`` clips);
  and the same for the padding taken from the reference (``--pad-states reference``, ser.whisper.silence),
  the default's approximation of that window.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.cli import CLIParser, add_verbose_flag, progress, quiet_tensorflow  # noqa: E402
from core.config import parse_bool  # noqa: E402

def latency_ms(run: str, clip: str) -> float:
    """Median ms per 3 s clip through SERPredictor, pinned to one core (bench_ser's measurement)."""
    from bench_ser import latency_one_core  # bench/ is on sys.path when this script runs

    return round(latency_one_core(Path(run), clip), 1)


def padding_effect(paths: list[str]) -> dict[str, list[float]]:
    """Cosine similarity per hidden state (per 20 ms step, averaged over the clip) with the same 3 s inside 30 s of
    encoded padding: of the clip encoded alone, and of the clip with the reference padding (mean and worst clip)."""
    from ser.audio import load_audio
    from ser.frontend import normalize_level
    from ser.whisper.encoder import get_encoder
    from ser.whisper.preprocessor import log_mel
    from ser.whisper.weights import SHA256

    encoder = get_encoder()
    reference = encoder.silence_reference(SHA256)

    def cosine(a, b):
        return ((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))).mean(axis=1)

    alone_sims, reference_sims = [], []
    for path in progress(paths, desc="30 s padding", unit="clip"):
        y = normalize_level(load_audio(path)[: 3 * 16000])
        alone = encoder.hidden_states(log_mel(y)[None])[0]
        padded = encoder.hidden_states(log_mel(y, pad_to_seconds=30.0)[None])[0][:, : alone.shape[1]]
        alone_sims.append(cosine(alone, padded))
        reference_sims.append(cosine(reference.hidden_states(y), padded))
    as_list = lambda values: [round(float(s), 4) for s in values]  # noqa: E731
    return {"alone": as_list(np.mean(alone_sims, 0)), "reference": as_list(np.mean(reference_sims, 0)),
            "reference_worst_clip": as_list(np.min(reference_sims, 0))}


def extraction_time(paths: list[str]) -> dict:
    from ser.features import extract_many
    from ser.train import TrainConfig

    cfg = TrainConfig(model="whisper").feature_config()  # what ser.train --model whisper extracts by default
    cache = Path(tempfile.mkdtemp(prefix="ser-whisper-bench-"))
    try:
        start = time.perf_counter()
        extract_many(paths, cfg, cache)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        extract_many(paths, cfg, cache)
        cached = time.perf_counter() - start
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return {"clips": len(paths), "cold_s": round(cold, 1), "cached_s": round(cached, 1), "cores": os.cpu_count()}


def build_parser() -> argparse.ArgumentParser:
    parser = CLIParser(prog="python bench/bench_ser_whisper.py", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"), help="corpora folder")
    parser.add_argument("--model-dir", action="append", default=None,
                        help="model folder to time on one core; repeat for several (default: saved_models/ser)")
    parser.add_argument("--extract", type=parse_bool, default=False,
                        help="also time cold and cached hidden-state extraction of RAVDESS + TESS (minutes)")
    parser.add_argument("--pad-clips", type=int, default=20, help="clips for the 30 s padding comparison")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"), help="folder for ser_whisper.md / .json")
    add_verbose_flag(parser)
    return parser


def main() -> int:
    args = build_parser().parse_args()
    quiet_tensorflow(args.verbose)
    from ser.corpora import load_clips, parse_corpus_list

    clips, _ = load_clips(parse_corpus_list("ravdess,tess"), args.data_dir)
    ravdess = sorted(c.path for c in clips if c.corpus == "ravdess")
    rng = np.random.default_rng(0)
    load = os.getloadavg()[0]  # other jobs on a 2-core machine slow a one-thread timing by up to 3x
    results: dict = {"machine": f"{os.cpu_count()} cores, 1-minute load average {load:.1f} at the start; "
                                f"latency in a one-thread process"}
    results["latency_ms_per_3s_clip"] = {d: latency_ms(d, ravdess[0]) for d in (args.model_dir or ["saved_models/ser"])}
    results["padding_cosine_per_state"] = padding_effect(list(rng.choice(ravdess, args.pad_clips, replace=False)))
    if args.extract:
        results["extraction"] = extraction_time([c.path for c in clips])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ser_whisper.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# Whisper encoder front end", "", f"Machine: {results['machine']}.", "",
             "| model folder | ms per 3 s clip, 1 core (speech check + log-mel + encoder + head) |", "|---|---|"]
    lines += [f"| `{d}` | {ms} |" for d, ms in results["latency_ms_per_3s_clip"].items()]
    cos = results["padding_cosine_per_state"]
    as_text = lambda values: ", ".join(f"{s:.3f}" for s in values)  # noqa: E731
    lines += ["", f"Cosine similarity of each hidden state (embeddings, layers 1-6; per 20 ms step, averaged) with the "
              f"same 3 s RAVDESS clip encoded inside Whisper's usual 30 s of padding, mean over {args.pad_clips} clips:",
              "", f"- the clip encoded alone: {as_text(cos['alone'])};",
              f"- the padding from the reference (`--pad-states reference`, the default): {as_text(cos['reference'])} "
              f"(worst clip: {as_text(cos['reference_worst_clip'])})."]
    if "extraction" in results:
        e = results["extraction"]
        lines += ["", f"Hidden-state extraction, RAVDESS + TESS ({e['clips']} clips, {e['cores']} cores): cold "
                      f"{e['cold_s']} s, cached {e['cached_s']} s."]
    (out / "ser_whisper.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
