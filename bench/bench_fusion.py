"""Benchmark of fusion/ on a paired audio-visual set built from real data (needs ../shared/data).

There is no real audio-visual emotion corpus in the workplace beyond one RAVDESS video, so each RAVDESS
speech recording (real audio, 16 kHz FLAC) is paired with a real face image of the *same emotion* (CK+48 by
default, FER2013 train optionally) and rendered as a short mp4 clip (the face moves slightly over a noisy
background at 10 fps, the speech as the AAC track) in RAVDESS audio-visual naming. Face images are split by
CK+ subject (FER2013: by image) into pools disjoint between train / val / test, and the clips are split by
RAVDESS actor (speaker-independent: test actors 17-20, validation 15-16). CK+48 has no neutral class and
RAVDESS calm is a neutral variant, so the CK+ set has 6 classes (neutral / calm clips are left out).

Then ``fusion.train`` trains three variants on the same clips and split: audio-only, visual-only (frame +
face) and fused, and reports the fusion gain, preprocessing throughput (clips/s), cache size per 1000
clips (bench settings and default settings), and milliseconds per 4 s clip end to end on one core.

    python bench/bench_fusion.py                   # 17 minutes on 2 heavily shared CPU cores, less when idle
    python bench/bench_fusion.py --quick           # a smoke run of the whole script
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.cli import add_verbose_flag, quiet_tensorflow  # noqa: E402
from core.io import read_json, write_json  # noqa: E402
from core.labels import EMOTIONS, map_label  # noqa: E402

SHARED = Path(os.environ.get("EMOTION_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "bench" / "results"
WORK = REPO / "runs" / "bench_fusion"
REAL_CLIP = SHARED / "ravdess_video" / "Actor_01" / "01-01-01-01-01-01-01.mp4"

VAL_ACTORS, TEST_ACTORS = (15, 16), (17, 18, 19, 20)
RENDER_FPS = 10.0
FRAME_SIZE = 112       # rendered frame side
FACE_PIXELS = 64       # rendered face side (Haar finds 96 % of CK+48 faces at this size)
SEED = 7
# Bench model / preprocessing: small enough that 3 variants train in ~10 CPU minutes.
BENCH_ARGS = ["--fps", "4", "--image-size", "48", "--face-size", "48", "--n-mels", "64", "--max-seconds", "3",
              "--cache-seconds", "4", "--alpha", "0.35", "--weights", "none", "--lstm-units", "64",
              "--audio-lstm-units", "64", "--dense-units", "64", "--batch-size", "16", "--learning-rate", "2e-3",
              "--val-actors", ",".join(map(str, VAL_ACTORS)), "--test-actors", ",".join(map(str, TEST_ACTORS)),
              "--detect-every", "2", "--workers", "2"]
VARIANTS = {"audio-only": "audio", "visual-only": "frame,face", "fused": "frame,face,audio"}


def split_of_actor(actor: int) -> str:
    return "test" if actor in TEST_ACTORS else "val" if actor in VAL_ACTORS else "train"


def face_pools(source: str, seed: int) -> dict[str, dict[str, list[Path]]]:
    """split -> emotion -> face image files; pools are disjoint between splits (CK+: by subject)."""
    rng = np.random.default_rng(seed)
    pools: dict[str, dict[str, list[Path]]] = {s: {} for s in ("train", "val", "test")}
    if source == "ckplus":
        root = SHARED / "ckplus48"
        files = sorted(root.glob("*/*.png"))
        subjects = sorted({f.name.split("_")[0] for f in files})
        rng.shuffle(subjects)
        n = len(subjects)
        split_of = {s: "test" if i < 0.2 * n else "val" if i < 0.3 * n else "train" for i, s in enumerate(subjects)}
        for f in files:
            emotion = map_label("ckplus", f.parent.name)
            if emotion:
                pools[split_of[f.name.split("_")[0]]].setdefault(emotion, []).append(f)
    else:
        root = SHARED / "fer2013" / "train"
        for folder in sorted(p for p in root.iterdir() if p.is_dir()):
            files = sorted(folder.glob("*"))
            rng.shuffle(files)
            n = len(files)
            emotion = map_label("fer2013", folder.name)
            pools["test"][emotion], pools["val"][emotion] = files[: n // 5], files[n // 5: 3 * n // 10]
            pools["train"][emotion] = files[3 * n // 10:]
    return pools


def render_one(job: tuple[str, str, str, int]) -> str:
    """One paired clip: the face image drifting slightly over a noisy background, the speech as audio."""
    import cv2

    from fusion.media import encode_clip
    from ser.audio import load_audio

    audio_path, face_path, out_path, seed = job
    if Path(out_path).exists():
        return out_path
    rng = np.random.default_rng(seed)
    audio = load_audio(audio_path, 16_000)
    face = cv2.resize(cv2.imread(face_path, cv2.IMREAD_GRAYSCALE), (FACE_PIXELS, FACE_PIXELS),
                      interpolation=cv2.INTER_LINEAR)
    n = max(1, int(np.ceil(len(audio) / 16_000 * RENDER_FPS)))
    background = rng.integers(90, 170) + rng.normal(0, 8, (FRAME_SIZE, FRAME_SIZE))
    frames = np.empty((n, FRAME_SIZE, FRAME_SIZE, 3), np.uint8)
    x0, y0 = rng.integers(8, FRAME_SIZE - FACE_PIXELS - 8, size=2)
    for i in range(n):
        frame = background + rng.normal(0, 3, background.shape)
        dx, dy = int(round(3 * np.sin(i / 4.0 + seed))), int(round(2 * np.cos(i / 5.0)))
        frame[y0 + dy:y0 + dy + FACE_PIXELS, x0 + dx:x0 + dx + FACE_PIXELS] = face
        frames[i] = np.repeat(np.clip(frame, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    encode_clip(out_path, frames, RENDER_FPS, audio)
    return out_path


def build_corpus(work: Path, source: str, per_actor: int, seed: int) -> tuple[Path, dict]:
    """RAVDESS-named mp4 clips (modality 01 = audio-video) under work/ravdess_video/Actor_XX/."""
    pools = face_pools(source, seed)
    rng = np.random.default_rng(seed)
    corpus = work / "ravdess_video"
    jobs = []
    name = re.compile(r"^03-01-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})$")
    for actor_dir in sorted((SHARED / "ravdess").glob("Actor_*")):
        clips = []
        for path in sorted(actor_dir.glob("*.flac")):
            m = name.match(path.stem)
            if not m:
                continue
            emotion = map_label("ravdess", m.group(1))
            actor = int(m.group(5))
            pool = pools[split_of_actor(actor)].get(emotion)
            if not pool:  # e.g. no neutral faces in CK+48: the class is left out
                continue
            clips.append((path, m, emotion, pool))
        if per_actor:
            clips = [clips[i] for i in sorted(rng.choice(len(clips), min(per_actor, len(clips)), replace=False))]
        for path, m, emotion, pool in clips:
            face = pool[int(rng.integers(len(pool)))]
            out = corpus / actor_dir.name / (f"01-01-{m.group(1)}-{m.group(2)}-{m.group(3)}-{m.group(4)}-"
                                              f"{m.group(5)}.mp4")
            jobs.append((str(path), str(face), str(out), int(rng.integers(1 << 30))))
    started = time.time()
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(render_one, jobs, chunksize=8))
    info = {"clips": len(jobs), "render_seconds": round(time.time() - started, 1), "face_source": source,
            "face_pool_sizes": {s: {e: len(v) for e, v in p.items()} for s, p in pools.items()}}
    return corpus, info


def train_variant(name: str, modalities: str, work: Path, epochs: int, extra: list[str]) -> dict:
    out = work / "runs" / name
    args = [sys.executable, "-m", "fusion.train", "--corpus", "ravdess", "--data-dir", str(work),
            "--cache-dir", str(work / "cache"), "--output", str(out), "--modalities", modalities,
            "--epochs", str(epochs), "--seed", str(SEED), *BENCH_ARGS, *extra]
    started = time.time()
    proc = subprocess.run(args, cwd=REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-4000:]}")
    metrics = read_json(out / "metrics.json")
    return {"modalities": modalities, "run_dir": str(out), "train_seconds": round(time.time() - started, 1),
            "test": {k: metrics[k] for k in ("accuracy", "f1_macro", "f1_weighted", "n")},
            "val": {k: read_json(out / "val_metrics.json")[k] for k in ("accuracy", "f1_macro")},
            "parameters": read_json(out / "config.json")["parameters"],
            "data_report": read_json(out / "data_report.json")}


def late_fusion_of_runs(audio_dir: str, visual_dir: str) -> dict:
    """Late fusion of the audio-only and visual-only runs: weight fitted on validation, scored on test."""
    import pandas as pd

    from core.reports import compute_metrics
    from fusion.late import fit_weights, fuse
    from fusion.predict import FusionPredictor
    from fusion.preprocess import load_cached

    audio, visual = FusionPredictor(audio_dir), FusionPredictor(visual_dir)
    split = pd.read_csv(Path(audio_dir) / "split.csv")
    probs, labels = {}, {}
    for name in ("val", "test"):
        part = split[(split["split"] == name) & split["status"].isin(["ok", "cached"])]
        probs[name] = []
        for cache in part["cache"]:
            arrays = load_cached(cache)
            probs[name].append({"audio": audio.predict_arrays(arrays)["emotion"],
                                "face": visual.predict_arrays(arrays)["emotion"]})
        labels[name] = part["label"].to_numpy(int)
    weights, val_f1, _ = fit_weights(probs["val"], labels["val"])
    test = compute_metrics(labels["test"], [int(np.argmax(fuse(p, weights))) for p in probs["test"]])
    return {"weights": {"audio": weights["audio"], "visual": weights["face"]}, "val_f1_macro": round(val_f1, 4),
            "test": {k: test[k] for k in ("accuracy", "f1_macro", "f1_weighted", "n")}}


def default_settings_cache(corpus: Path, work: Path, sample: int) -> dict:
    """Cache size and throughput at the default settings (112 px, 10 fps) on a sample of clips."""
    from fusion.preprocess import PreprocessConfig, cache_size_bytes, preprocess_clips, summarize

    files = sorted(corpus.rglob("*.mp4"))[:sample]
    folder = work / "cache_default"
    started = time.time()
    statuses = preprocess_clips(files, [f.relative_to(corpus).as_posix() for f in files], folder,
                                PreprocessConfig(), workers=2)
    elapsed = time.time() - started
    ok = [s for s in statuses if s["status"] in ("ok", "cached")]
    seconds = [len(np.load(s["cache"])["mel"]) / 100.0 for s in ok]
    real = preprocess_clips([REAL_CLIP], ["real.mp4"], folder, PreprocessConfig())
    return {"clips": len(ok), "counts": summarize(statuses), "seconds": round(elapsed, 1),
            "clips_per_s": round(summarize(statuses).get("ok", 0) / elapsed, 2),
            "mean_clip_seconds": round(float(np.mean(seconds)), 2),
            "mb_per_1000_clips": round(cache_size_bytes(ok) / len(ok) * 1000 / 2**20, 1),
            "real_720p_clip_kb": round(cache_size_bytes(real) / 1024, 1)}


LATENCY_SCRIPT = r"""
import json, os, sys, time
import numpy as np
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
import cv2
cv2.setNumThreads(1)
sys.path.insert(0, sys.argv[1])
from fusion.predict import FusionPredictor
from fusion.preprocess import preprocess_file
predictor = FusionPredictor(sys.argv[2])
out = {}
for name, clip in (("synthetic_4s_720p", sys.argv[3]), ("real_ravdess_3.3s_720p", sys.argv[4])):
    predictor.predict_clip(clip)  # warm-up: first-call costs (librosa, graph) are not per-clip costs
    total, prep = [], []
    for _ in range(int(sys.argv[5])):
        t0 = time.perf_counter(); arrays = preprocess_file(clip, predictor.preprocess, 60.0); t1 = time.perf_counter()
        predictor.predict_arrays(arrays); t2 = time.perf_counter()
        total.append(t2 - t0); prep.append(t1 - t0)
    out[name] = {"ms_total_median": round(1000 * float(np.median(total)), 1),
                 "ms_preprocess_median": round(1000 * float(np.median(prep)), 1),
                 "ms_model_median": round(1000 * float(np.median(np.array(total) - np.array(prep))), 1)}
print(json.dumps(out))
"""


def latency_one_core(work: Path, repeats: int) -> dict:
    """End-to-end ms per 4 s clip (decode, faces, log-mel, model) with 1 thread, default-size model."""
    from core.io import save_model
    from fusion.models import ModelConfig, build_model
    from fusion.preprocess import PreprocessConfig
    from tests.synth_video import render_audio, render_frames

    model_dir = work / "latency_model"
    if not (model_dir / "model.keras").exists():
        cfg = ModelConfig(weights="none")
        save_model(build_model(cfg), model_dir / "model.keras")
        write_json(model_dir / "config.json", {
            "task": "fusion", "class_names": list(EMOTIONS), "modalities": cfg.modality_list, "max_seconds": 4.0,
            "preprocess": asdict(PreprocessConfig()), "model": asdict(cfg)})
    clip = work / "latency_4s_720p.mp4"
    if not clip.exists():
        from fusion.media import encode_clip

        frames = render_frames(120, (1280, 720), emotion=1)
        encode_clip(clip, frames, 30.0, render_audio(4.0, 16_000, emotion=1))
    proc = subprocess.run([sys.executable, "-c", LATENCY_SCRIPT, str(REPO), str(model_dir), str(clip),
                           str(REAL_CLIP), str(repeats)], env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                          capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["model"] = "MobileNetV2 alpha 0.35, 112 px frames + faces, 64 mel, LSTM 128 (untrained, same cost)"
    return result


def real_clip_prediction(run_dir: str) -> dict:
    from fusion.media import decode_clip
    from fusion.predict import FusionPredictor

    clip = decode_clip(REAL_CLIP, fps=10.0)
    result = FusionPredictor(run_dir).predict_clip(REAL_CLIP)
    return {"frames_at_10fps": int(len(clip.frames)), "audio_seconds": round(clip.audio.size / 16_000, 2),
            "label": result["label"], "face_frames": result["face_frames"], "frames": result["frames"],
            "true_label": "neutral (not among the CK+ bench classes)"}


def write_markdown(path: Path, r: dict) -> None:
    v = r["variants"]
    lines = [
        "# Fusion benchmark (`bench/bench_fusion.py`)", "",
        f"Paired audio-visual set: {r['corpus']['clips']} clips, real RAVDESS speech (16 kHz FLAC) + real "
        f"{r['corpus']['face_source'].upper()} face images of the same emotion, rendered as mp4 clips. "
        f"**Split: speaker-independent by RAVDESS actor** (train actors 1-14, validation {VAL_ACTORS}, test "
        f"{TEST_ACTORS}); face images come from disjoint pools per split (CK+: by subject). "
        f"Classes: {', '.join(r['classes'])}.", "",
        "| variant | modalities | test accuracy | test macro-F1 | val macro-F1 | parameters | train s |",
        "|---|---|---|---|---|---|---|"]
    for name, x in v.items():
        lines.append(f"| {name} | {x['modalities']} | {x['test']['accuracy']:.3f} | {x['test']['f1_macro']:.3f} | "
                     f"{x['val']['f1_macro']:.3f} | {x['parameters']:,} | {x['train_seconds']} |")
    late = r["late_fusion"]
    lines.append(f"| late fusion of audio-only + visual-only | weights {late['weights']} (fitted on val) | "
                 f"{late['test']['accuracy']:.3f} | {late['test']['f1_macro']:.3f} | "
                 f"{late['val_f1_macro']:.3f} | - | 0 |")
    g, gl = r["fusion_gain"], r["late_fusion_gain"]
    lines += ["", f"**Fusion gain** (test, fused minus best single modality): macro-F1 {g['f1_macro']:+.3f}, "
                  f"accuracy {g['accuracy']:+.3f}; late fusion: macro-F1 {gl['f1_macro']:+.3f}, accuracy "
                  f"{gl['accuracy']:+.3f}; n = {v['fused']['test']['n']} test clips, {r['epochs']} epochs each.", "",
              "## Preprocessing and cache", "",
              f"- Bench settings ({r['bench_settings']}): {r['preprocess']['clips_per_s']} clips/s with 2 worker "
              f"processes on 2 shared cores; cache {r['preprocess']['mb_per_1000_clips']} MB per 1000 clips.",
              f"- Default settings (112 px frames and faces, 10 fps, 64 mel): {r['default_cache']['clips_per_s']} "
              f"clips/s (2 workers, {r['default_cache']['clips']} rendered clips of "
              f"{r['default_cache']['mean_clip_seconds']} s mean); cache "
              f"**{r['default_cache']['mb_per_1000_clips']} MB per 1000 clips**; the real 720p RAVDESS clip "
              f"(3.3 s) takes {r['default_cache']['real_720p_clip_kb']} KB.",
              f"- Skipped / corrupt / no-audio clips: {r['variants']['fused']['data_report']['skipped']}.", "",
              "## Latency, one CPU core (default-size model, end to end: decode, faces, log-mel, model)", ""]
    for name, x in r["latency_one_core"].items():
        if isinstance(x, dict):
            lines.append(f"- {name}: {x['ms_total_median']} ms per clip (preprocessing "
                         f"{x['ms_preprocess_median']} ms, model {x['ms_model_median']} ms)")
    rc = r["real_clip"]
    lines += ["", f"Real RAVDESS clip `{REAL_CLIP.name}`: {rc['frames_at_10fps']} frames at 10 fps, "
                  f"{rc['audio_seconds']} s audio, face in {rc['face_frames']}/{rc['frames']} frames "
                  f"(bench frame rate), predicted `{rc['label']}` by the fused bench model "
                  f"(true: {rc['true_label']}).", "",
              f"Total benchmark time {r['total_seconds']} s on {os.cpu_count()} shared CPU cores."]
    if r.get("load_note"):
        lines += ["", r["load_note"]]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python bench/bench_fusion.py", description=__doc__.split("\n")[0])
    parser.add_argument("--faces", choices=("ckplus", "fer2013"), default="ckplus",
                        help="face images paired with the RAVDESS speech (default: %(default)s)")
    parser.add_argument("--per-actor", type=int, default=24, help="clips per actor (0 = all 48)")
    parser.add_argument("--epochs", type=int, default=8, help="fusion.train epochs per variant (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (4 clips per actor, 1 epoch)")
    parser.add_argument("--work", default=str(WORK),
                        help="rendered clips, caches and runs go here (default: runs/bench_fusion)")
    add_verbose_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} is absent (the benchmark needs the real corpora)")
        return 0
    started = time.time()
    work = Path(args.work) / (args.faces + ("_quick" if args.quick else ""))
    per_actor, epochs = (4, 1) if args.quick else (args.per_actor, args.epochs)
    # Fresh runs and caches: the numbers are measurements (rendered clips are deterministic and reused).
    for folder in ("runs", "cache", "cache_default"):
        shutil.rmtree(work / folder, ignore_errors=True)
    corpus, corpus_info = build_corpus(work, args.faces, per_actor, SEED)
    print(f"corpus: {corpus_info['clips']} clips rendered in {corpus_info['render_seconds']} s", flush=True)
    variants = {}
    for name, modalities in VARIANTS.items():
        variants[name] = train_variant(name, modalities, work, epochs, ["--patience", str(max(3, epochs // 3))])
        print(f"{name}: test {variants[name]['test']} ({variants[name]['train_seconds']} s)", flush=True)
    report = variants["audio-only"]["data_report"]  # the first run preprocessed every clip
    fused, singles = variants["fused"]["test"], [variants[k]["test"] for k in ("audio-only", "visual-only")]
    results = {
        "corpus": corpus_info, "split": "speaker-independent by RAVDESS actor",
        "val_actors": VAL_ACTORS, "test_actors": TEST_ACTORS,
        "classes": sorted({e for part in report["counts"].values() for e in part}, key=EMOTIONS.index),
        "bench_settings": "48 px frames and faces, 4 fps, 64 mel, clips cut to 3 s, MobileNetV2 alpha 0.35 "
                          "from scratch", "epochs": epochs, "variants": variants,
        "fusion_gain": {k: round(fused[k] - max(s[k] for s in singles), 4) for k in ("accuracy", "f1_macro")},
        "preprocess": {"clips_per_s": report["preprocess_clips_per_s"],
                       "mb_per_1000_clips": report["cache_mb_per_1000_clips"]},
        "late_fusion": late_fusion_of_runs(variants["audio-only"]["run_dir"], variants["visual-only"]["run_dir"]),
        "default_cache": default_settings_cache(corpus, work, 20 if args.quick else 60),
        "latency_one_core": latency_one_core(work, 2 if args.quick else 3),
        "real_clip": real_clip_prediction(variants["fused"]["run_dir"]),
    }
    results["late_fusion_gain"] = {k: round(results["late_fusion"]["test"][k] - max(s[k] for s in singles), 4)
                                   for k in ("accuracy", "f1_macro")}
    results["total_seconds"] = round(time.time() - started, 1)
    suffix = "_quick" if args.quick else ""
    write_json(RESULTS / f"fusion{suffix}.json", results)
    write_markdown(RESULTS / f"fusion{suffix}.md", results)
    print((RESULTS / f"fusion{suffix}.md").read_text())
    return 0


if __name__ == "__main__":
    quiet_tensorflow()
    sys.exit(main())
