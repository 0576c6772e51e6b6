"""Benchmark of fusion/ on a paired audio-visual proxy built from real data (needs ../shared/data).

There is no real audio-visual emotion corpus here beyond one RAVDESS video, so each RAVDESS speech recording
(real audio) is paired with a real CK+48 face sequence of the *same emotion* and rendered as an mp4 clip (the
sequence's frames in order, drifting slightly over a noisy background, the speech as the AAC track).
Everything is then measured through the real paths: ``fusion.late.LateFusion`` (decode, detect, align, the
shipped ``ser`` and ``fer`` models) and ``fusion.train`` / ``FusionPredictor`` (the joint model on frozen
pretrained encoders).

Splits, so that no model is scored on a voice or a face it learned from:
- voices: the RAVDESS actors the shipped speech model never heard (its ``split.csv`` test speakers: 10, 15, 16
  today); the first third of them is validation (late-fusion weights, early stopping), the rest test. The
  joint model trains on the other actors (its Whisper encoder is frozen and never saw RAVDESS).
- faces: CK+ subjects split 50 / 20 / 30 % into train / validation / test pools (the shipped face models never
  saw CK+). CK+ has no neutral class and RAVDESS calm is a neutral variant, so the set has 6 classes.
- each validation / test recording is paired with ``--faces-per-clip`` different faces (2): more pairs for the
  same voices; the bootstrap resamples recordings with all their pairs, so the CI is not narrowed by that.

Reports audio-only (shipped ``ser``), face-only (shipped ``fer``), late fusion (weights and rule fitted on
validation, ``fusion.late.fit_late_fusion``), the joint model and its audio-only / face-only twins, each with
test macro-F1 and a bootstrap 95 % CI, the paired gain over the better single modality, how often the two
modalities err together, and per-clip latency on one core. ``--ship`` writes the validation-fitted weights to
``saved_models/fusion/late_fusion.json`` (what ``fusion.predict`` and the server read).

    python bench/bench_fusion.py --ship --out bench/results     # ~40 min on 2 shared cores
    python bench/bench_fusion.py --quick                         # a smoke run of the whole script
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.cli import CLIParser, add_verbose_flag, quiet_tensorflow  # noqa: E402
from core.io import read_json, write_json  # noqa: E402
from core.labels import EMOTIONS, map_label  # noqa: E402

SHARED = Path(os.environ.get("EMOTION_SHARED_DATA", REPO.parent / "shared" / "data"))
WORK = REPO / "runs" / "bench_fusion"
DEFAULT_OUT = WORK / "results"
SER_DIR, FER_DIR = REPO / "saved_models" / "ser", REPO / "saved_models" / "fer"
SHIP_DIR = REPO / "saved_models" / "fusion"
REAL_CLIP = SHARED / "ravdess_video" / "Actor_01" / "01-01-01-01-01-01-01.mp4"
RAVDESS_NAME = re.compile(r"^03-01-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})$")
RENDER_FPS = 10.0
FRAME_SIZE, FACE_PIXELS = 160, 96   # BlazeFace finds every rendered CK+ face at these sizes (60/60 checked)
FACE_POOLS = {"train": 0.5, "val": 0.2, "test": 0.3}
SEED = 7
# Small and strongly regularised: 816 training clips reuse ~170 face sequences, and at 64 units / dropout 0.3 /
# 1e-3 the joint model fit its training set in 2 epochs (test macro-F1 0.626 against 0.691 with these settings).
JOINT_ARGS = ["--fps", "5", "--max-seconds", "4", "--cache-seconds", "6", "--face-encoder", "auto",
              "--audio-encoder", "whisper", "--lstm-units", "32", "--audio-lstm-units", "32", "--dense-units", "32",
              "--dropout", "0.5", "--batch-size", "16", "--learning-rate", "5e-4", "--workers", "2"]
# name -> (modalities, how each branch reads time). The LSTM is the design; mean + std pooling was added
# after a logistic regression on the same cached statistics beat the LSTM branches on this data (audio 0.80 vs
# 0.30-0.58 test macro-F1 in exploration runs).
JOINT_VARIANTS = {"joint (LSTM)": ("face,audio", "lstm"), "joint (stats)": ("face,audio", "stats"),
                  "joint audio-only (stats)": ("audio", "stats"), "joint face-only (stats)": ("face", "stats")}


# ---------------------------------------------------------------- pairs and clips


def held_out_actors(ser_dir: Path = SER_DIR) -> list[int]:
    """RAVDESS actors in the speech model's test split: the only voices it never heard."""
    import pandas as pd

    split = ser_dir / "split.csv"
    if not split.is_file():
        raise FileNotFoundError(f"{split} is missing: the benchmark needs the speech model's split to know which "
                                "RAVDESS actors it never heard")
    frame = pd.read_csv(split)
    test = frame[(frame["split"] == "test") & frame["speaker"].str.startswith("ravdess_")]
    actors = sorted({int(s.rsplit("_", 1)[1]) for s in test["speaker"]})
    if len(actors) < 2:
        raise ValueError(f"{split}: {len(actors)} held-out RAVDESS actor(s); need at least 2 (validation + test)")
    return actors


def face_sequences(seed: int) -> dict[str, dict[str, list[list[Path]]]]:
    """split -> emotion -> CK+ sequences (each a list of frames in order), pools disjoint by subject."""
    rng = np.random.default_rng(seed)
    files = sorted((SHARED / "ckplus48").glob("*/*.png"))
    subjects = sorted({f.name.split("_")[0] for f in files})
    rng.shuffle(subjects)
    cut1, cut2 = int(FACE_POOLS["train"] * len(subjects)), int((FACE_POOLS["train"] + FACE_POOLS["val"]) * len(subjects))
    split_of = {s: "train" if i < cut1 else "val" if i < cut2 else "test" for i, s in enumerate(subjects)}
    sequences: dict[tuple[str, str, str], list[Path]] = {}
    for f in files:
        emotion = map_label("ckplus", f.parent.name)
        if emotion:
            subject, seq = f.name.split("_")[:2]
            sequences.setdefault((subject, seq, emotion), []).append(f)
    pools: dict[str, dict[str, list[list[Path]]]] = {s: {} for s in FACE_POOLS}
    for (subject, _, emotion), frames in sorted(sequences.items()):
        pools[split_of[subject]].setdefault(emotion, []).append(sorted(frames))
    return pools


def make_pairs(actors: list[int], val_actors: list[int], pools: dict, faces_per_clip: int, per_actor: int,
               seed: int) -> list[dict[str, Any]]:
    """One row per (recording, face sequence) pair with its split; val/test recordings get several faces."""
    rng = np.random.default_rng(seed)
    pairs = []
    for actor_dir in sorted((SHARED / "ravdess").glob("Actor_*")):
        rows = []
        for path in sorted(actor_dir.glob("*.flac")):
            m = RAVDESS_NAME.match(path.stem)
            if not m:
                continue
            actor, emotion = int(m.group(5)), map_label("ravdess", m.group(1))
            split = "val" if actor in val_actors else "test" if actor in actors else "train"
            if emotion in pools[split]:  # CK+ has no neutral: neutral / calm recordings are left out
                rows.append((path, m, emotion, split))
        if per_actor and len(rows) > per_actor:
            rows = [rows[i] for i in sorted(rng.choice(len(rows), per_actor, replace=False))]
        for path, m, emotion, split in rows:
            pool = pools[split][emotion]
            k = 1 if split == "train" else min(faces_per_clip, len(pool))
            for j, index in enumerate(rng.choice(len(pool), k, replace=False)):
                name = f"01-01-{m.group(1)}-{m.group(2)}-{m.group(3)}-{m.group(4)}-{m.group(5)}.mp4"
                pairs.append({"audio": str(path), "faces": [str(f) for f in pool[index]], "emotion": emotion,
                              "label": EMOTIONS.index(emotion), "split": split, "actor": int(m.group(5)),
                              "recording": path.stem, "pairing": j,
                              "clip": f"k{j}/{actor_dir.name}/{name}", "seed": int(rng.integers(1 << 30))})
    return pairs


def render_one(job: tuple[str, list[str], str, int]) -> str:
    """A clip: the face sequence's frames in order, drifting over a noisy background; the speech as audio."""
    import cv2

    from fusion.media import encode_clip
    from ser.audio import load_audio

    audio_path, face_paths, out_path, seed = job
    if Path(out_path).exists():
        return out_path
    rng = np.random.default_rng(seed)
    audio = load_audio(audio_path, 16_000)
    faces = [cv2.resize(cv2.imread(p, cv2.IMREAD_GRAYSCALE), (FACE_PIXELS, FACE_PIXELS),
                        interpolation=cv2.INTER_CUBIC) for p in face_paths]
    n = max(1, int(np.ceil(len(audio) / 16_000 * RENDER_FPS)))
    background = rng.integers(90, 170) + rng.normal(0, 8, (FRAME_SIZE, FRAME_SIZE))
    x0, y0 = rng.integers(8, FRAME_SIZE - FACE_PIXELS - 8, size=2)
    frames = np.empty((n, FRAME_SIZE, FRAME_SIZE, 3), np.uint8)
    for i in range(n):
        frame = background + rng.normal(0, 3, background.shape)
        dx, dy = int(round(3 * np.sin(i / 4.0 + seed))), int(round(2 * np.cos(i / 5.0)))
        frame[y0 + dy:y0 + dy + FACE_PIXELS, x0 + dx:x0 + dx + FACE_PIXELS] = faces[min(len(faces) - 1,
                                                                                      i * len(faces) // n)]
        frames[i] = np.repeat(np.clip(frame, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    encode_clip(out_path, frames, RENDER_FPS, audio)
    return out_path


def render(pairs: list[dict], corpus: Path) -> float:
    started = time.time()
    jobs = [(p["audio"], p["faces"], str(corpus / p["clip"]), p["seed"]) for p in pairs]
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(render_one, jobs, chunksize=8))
    return time.time() - started


# ---------------------------------------------------------------- scoring


def macro_f1(y: np.ndarray, pred: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y, pred, labels=sorted(set(y.tolist())), average="macro", zero_division=0))


def bootstrap(y: np.ndarray, preds: dict[str, np.ndarray], groups: np.ndarray, reps: int, seed: int,
              diffs: dict[str, tuple[str, str]]) -> dict[str, Any]:
    """Macro-F1 and percentile 95 % CIs, resampling whole recordings (all their pairs) with replacement."""
    rng = np.random.default_rng(seed)
    unique = np.unique(groups)
    members = {g: np.flatnonzero(groups == g) for g in unique}
    samples: dict[str, list[float]] = {k: [] for k in [*preds, *diffs]}
    for _ in range(reps):
        idx = np.concatenate([members[g] for g in rng.choice(unique, len(unique), replace=True)])
        scores = {k: macro_f1(y[idx], p[idx]) for k, p in preds.items()}
        for k, v in scores.items():
            samples[k].append(v)
        for k, (a, b) in diffs.items():
            samples[k].append(scores[a] - scores[b])
    point = {k: macro_f1(y, p) for k, p in preds.items()}
    point |= {k: point[a] - point[b] for k, (a, b) in diffs.items()}
    return {k: {"f1_macro": round(point[k], 4), "ci95": [round(float(np.percentile(v, 2.5)), 4),
                                                         round(float(np.percentile(v, 97.5)), 4)]}
            for k, v in samples.items()}


def late_probabilities(pairs: list[dict], corpus: Path, work: Path) -> list[dict]:
    """Per clip: the shipped ser and fer models' probabilities through LateFusion's own path.

    Kept in ``work/late_probs/`` per pair of model fingerprints, so a rerun for the same models skips this."""
    from fusion.late import LateFusion, model_fingerprint

    store = work / "late_probs" / f"{model_fingerprint(SER_DIR)}_{model_fingerprint(FER_DIR)}.json"
    known = read_json(store) if store.is_file() else {}
    todo = [p["clip"] for p in pairs if p["clip"] not in known]
    if todo:
        late = LateFusion(SER_DIR, FER_DIR)
        for clip in todo:
            probs, info = late.modality_probs(corpus / clip)
            known[clip] = {m: None if probs[m] is None else probs[m].tolist() for m in ("audio", "face")} | {
                "face_frames": info["frames_with_face"], "frames": info["frames_sampled"]}
        write_json(store, known)
    return [{k: np.asarray(v) if k in ("audio", "face") and v is not None else v for k, v in known[p["clip"]].items()}
            for p in pairs]


def train_joint(name: str, modalities: str, temporal: str, corpus: Path, work: Path, val_actors: list[int],
                test_actors: list[int], epochs: int) -> dict[str, Any]:
    out = work / "runs" / re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    args = [sys.executable, "-m", "fusion.train", "--corpus", "ravdess", "--data-dir", str(corpus),
            "--cache-dir", str(work / "cache"), "--output", str(out), "--modalities", modalities, "--temporal", temporal,
            "--epochs", str(epochs), "--patience", str(max(3, epochs // 3)), "--seed", str(SEED),
            "--val-actors", ",".join(map(str, val_actors)), "--test-actors", ",".join(map(str, test_actors)),
            *JOINT_ARGS]
    started = time.time()
    proc = subprocess.run(args, cwd=REPO, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-4000:]}")
    config = read_json(out / "config.json")
    return {"modalities": modalities, "run_dir": str(out), "train_seconds": round(time.time() - started, 1),
            "parameters": config["parameters"], "epochs_run": len(open(out / "history.csv").readlines()) - 1,
            "face_encoder": config["preprocess"]["face_encoder"], "encoder_key": config["preprocess"]["encoder_key"],
            "data_report": read_json(out / "data_report.json")}


def joint_probabilities(run_dir: str, pairs: list[dict], corpus: Path) -> list[np.ndarray]:
    """The joint run's fused probabilities for each pair's clip, from its own cache (as its test metrics)."""
    import pandas as pd

    from fusion.predict import FusionPredictor
    from fusion.preprocess import load_cached

    predictor = FusionPredictor(run_dir)
    split = pd.read_csv(Path(run_dir) / "split.csv")
    cache = dict(zip(split["relpath"], split["cache"]))
    status = dict(zip(split["relpath"], split["status"]))
    out = []
    for p in pairs:
        rel = p["clip"]
        if status.get(rel) not in ("ok", "cached"):
            raise RuntimeError(f"{rel}: not usable in {run_dir} ({status.get(rel)})")
        out.append(predictor.predict_arrays(load_cached(cache[rel]))["emotion"])
    return out


# ---------------------------------------------------------------- latency

LATENCY_SCRIPT = r"""
import json, sys, time
import numpy as np
import tensorflow as tf
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)
import cv2
cv2.setNumThreads(1)
sys.path.insert(0, sys.argv[1])
from fusion.predict import load_predictor
mode, model_dir, repeats, clips = sys.argv[2], sys.argv[3] or None, int(sys.argv[4]), sys.argv[5:]
predictor = load_predictor(mode, model_dir)
out = {}
for clip in clips:
    predictor.predict_clip(clip)  # warm-up: first-call costs (librosa, graph tracing) are not per-clip costs
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter(); predictor.predict_clip(clip); times.append(time.perf_counter() - t0)
    out[clip] = round(1000 * float(np.median(times)), 1)
print(json.dumps(out))
"""


def latency_one_core(clips: list[Path], mode: str, model_dir: str, repeats: int) -> dict[str, float]:
    """Median ms per clip, end to end through fusion.predict's predictor, TensorFlow and OpenCV on one thread."""
    proc = subprocess.run([sys.executable, "-c", LATENCY_SCRIPT, str(REPO), mode, model_dir, str(repeats),
                           *map(str, clips)], env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
                          capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- report


def _w(weights: dict) -> str:
    return " / ".join(f"{m} {weights.get(m, 0.0):.2f}" for m in ("audio", "face"))


def _ids(values: list) -> str:
    return ", ".join(map(str, values))


def write_markdown(path: Path, r: dict) -> None:
    s, late = r["scores"], r["late_fit"]
    variants = [("audio only: shipped `ser`", "audio-only"), ("face only: shipped `fer`", "face-only"),
                (f"**late fusion of the shipped models** ({late['rule']} rule, {_w(late['weights'])}, fitted on "
                 "validation: what ships)", "late"),
                (f"late fusion, best mean-rule mix on validation ({_w(r['late_best']['mean']['weights'])})",
                 "late mean"),
                (f"late fusion, best product-rule mix on validation ({_w(r['late_best']['product']['weights'])})",
                 "late product")]
    variants += [(f"{name} (trained on the proxy)", name) for name in r.get("joint", {})]
    c = r["counts"]
    lines = [
        "# Fusion benchmark (`bench/bench_fusion.py`)", "",
        f"Paired audio-visual proxy: real RAVDESS speech + a real CK+48 face sequence of the same emotion, rendered "
        f"as mp4 clips ({FRAME_SIZE} px frames, {FACE_PIXELS} px face, {RENDER_FPS:g} fps) and run through the real "
        "paths (decode, BlazeFace, alignment, the models). Classes: "
        f"{', '.join(r['classes'])} (CK+ has no neutral).", "",
        f"**Split.** Voices: the RAVDESS actors the shipped speech model never heard ({_ids(r['held_out_actors'])}); "
        f"validation actor(s) {_ids(r['val_actors'])}, test actor(s) {_ids(r['test_actors'])}; the joint models train on the "
        f"other {len(r['train_actors'])} actors. Faces: CK+ subjects split "
        f"{'/'.join(str(int(100 * v)) for v in FACE_POOLS.values())} % into train / validation / test pools, which "
        f"the shipped face model never saw. Test: {c['test_pairs']} clips = {c['test_recordings']} recordings x "
        f"{r['faces_per_clip']} different faces; validation: {c['val_pairs']} clips; joint training: "
        f"{c['train_pairs']} clips.", "",
        f"Face model: `{r['models']['fer']}`; speech model: `{r['models']['ser']}`; joint face encoder: "
        f"`{r.get('joint_face_encoder', '-')}`.", "",
        "| variant | test macro-F1 | 95 % CI (bootstrap over recordings) | validation macro-F1 |", "|---|---|---|---|"]
    for label, key in variants:
        if key in s:
            lines.append(f"| {label} | {s[key]['f1_macro']:.3f} | {s[key]['ci95'][0]:.3f} – {s[key]['ci95'][1]:.3f} "
                         f"| {r['val_scores'].get(key, float('nan')):.3f} |")
    lines += ["", "**Gain over the better single modality** (paired, same bootstrap resamples):", ""]
    for key in r["gains"]:
        g = s[key]
        lines.append(f"- {key}: {g['f1_macro']:+.3f} macro-F1 (95 % CI {g['ci95'][0]:+.3f} – {g['ci95'][1]:+.3f})")
    e = r["errors"]
    if r.get("joint"):
        lines += ["", "The joint models are trained on the proxy: their face branch learns from CK+ faces (training "
                      "subjects), while the shipped face model never saw CK+, so the joint face-only twin is an "
                      "in-domain face model, not a better face model in general; each joint gain is measured against "
                      "the single modality (shipped or joint twin) that scored best on validation."
                  + (" Their face embeddings come from the shipped face model's own backbone (--face-encoder fer)."
                     if r.get("joint_face_encoder") == "fer" else "")]
    lines += ["", f"**How independent the modalities are here.** On the test clips audio alone is wrong on "
                  f"{e['audio_wrong']:.1%}, the face alone on {e['face_wrong']:.1%}, both at once on "
                  f"{e['both_wrong']:.1%} (if independent: {e['both_wrong_if_independent']:.1%}; error correlation "
                  f"phi = {e['phi']:+.3f}). Within an emotion the face is drawn at random, so the two err independently "
                  "given the emotion by construction, and across emotions they even err on different ones (each "
                  "model finds other emotions hard). In real video the face and the voice of one person in one "
                  "moment tend to fail together (a subtle or mixed expression is subtle in both), so this proxy is an "
                  "optimistic bound on what fusion adds, not a promise; a real audio-visual test set (e.g. MELD "
                  "video, or RAVDESS audio-video clips of unheard actors) is needed to measure it.", "",
              f"Late-fusion fit on validation ({late['clips']} clips): single modalities audio "
              f"{late['f1_macro_single_modality']['audio']:.3f}, face {late['f1_macro_single_modality']['face']:.3f}; "
              f"chosen {late['rule']} rule, {_w(late['weights'])}, at {late['f1_macro']:.3f}"
              + (f" (fallback to {late['fallback_to']}: no mix beat it)" if late["fallback"] else "") + ".", "",
              "## Latency, one CPU core (end to end per clip: decode, face detection and alignment, models)", ""]
    for name, x in r["latency_one_core"].items():
        lines.append(f"- {name}: {x} ms")
    lines += ["", f"Faces found in {r['face_found_rate']:.1%} of the sampled test frames. Total benchmark time "
                  f"{r['total_seconds']} s on {os.cpu_count()} shared CPU cores (load average at the end "
                  f"{r['load_average']})."]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_model_card(path: Path, r: dict) -> None:
    """saved_models/fusion/MODEL_CARD.md: what the late-fusion file holds, how it was fitted, what it scores."""
    from fusion.late import RULE_WORDS

    s, late = r["scores"], r["late_fit"]
    gain = s["late - better single"]
    ci = lambda k: f"{s[k]['f1_macro']:.3f} (95 % CI {s[k]['ci95'][0]:.3f} – {s[k]['ci95'][1]:.3f})"  # noqa: E731
    how = (f"fallback to {late['fallback_to']} alone: no mix beat it on validation" if late["fallback"]
           else f"{late['rule']} rule ({RULE_WORDS[late['rule']]}), weights {_w(late['weights'])}")
    text = f"""# Fusion default: late fusion of the shipped speech and face models

`late_fusion.json` holds no network: two weights and a rule that combine `saved_models/ser` (voice) and
`saved_models/fer` (face) per clip. `python -m fusion.predict clip.mp4` reads it by default, the server through
`fusion.late.load_late_fusion()`. A clip without a voice (no audio track, no speech) uses the face, an audio file or
a video where no face is found uses the voice.

| | |
|---|---|
| task | fusion (late) |
| fitted | {how}; validation macro-F1 {late['f1_macro']:.3f} (audio alone {late['f1_macro_single_modality']['audio']:.3f}, face alone {late['f1_macro_single_modality']['face']:.3f}) on {late['clips']} clips |
| fitted on | paired proxy clips: RAVDESS speech of actor(s) {_ids(r['val_actors'])} (never heard by the speech model) + CK+48 face sequences of the same emotion from validation subjects, rendered as video (bench/bench_fusion.py); 6 classes (CK+ has no neutral) |
| models | {r['models']['ser']}; {r['models']['fer']} (sha256 prefixes of model.keras; fusion.predict warns when they differ) |
| test (actors {_ids(r['test_actors'])}, CK+ test subjects, {r['counts']['test_pairs']} clips) | audio alone {ci('audio-only')}; face alone {ci('face-only')}; **late fusion {ci('late')}**; gain over the better modality {gain['f1_macro']:+.3f} (95 % CI {gain['ci95'][0]:+.3f} – {gain['ci95'][1]:+.3f}) |
| ms per clip, 1 CPU core | {'; '.join(f'{k}: {v}' for k, v in r['latency_one_core'].items() if k.startswith('late'))} |
| licence of the fitting data | RAVDESS CC BY-NC-SA 4.0, CK+ research licence (only two weights derived from them ship) |

## Limits

The proxy pairs a voice with a stranger's face of the same emotion, so the two modalities err independently
given the emotion (test error correlation phi = {r['errors']['phi']:+.3f}); in real video they tend to fail
together, and the gain measured here is an optimistic bound. The weights were fitted without neutral clips.
They are tied to the two models: after either is replaced, `fusion.predict` warns until they are refitted.

## Reproduce

```bash
python bench/bench_fusion.py --ship --out bench/results     # refit for whatever saved_models/ser and fer are now
```
"""
    path.write_text(text, encoding="utf-8")


def build_parser() -> argparse.ArgumentParser:
    parser = CLIParser(prog="python bench/bench_fusion.py", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT),
                        help="results folder for fusion.json / fusion.md (default: runs/bench_fusion/results; "
                             "bench/results updates the committed ones)")
    parser.add_argument("--work", default=str(WORK), help="rendered clips, caches and runs (default: runs/bench_fusion)")
    parser.add_argument("--faces-per-clip", type=int, default=2,
                        help="different faces paired with each validation / test recording (default: %(default)s)")
    parser.add_argument("--per-actor", type=int, default=0, help="recordings per actor (0 = all 48 of the 6 classes)")
    parser.add_argument("--epochs", type=int, default=20, help="joint-model epochs per variant (default: %(default)s)")
    parser.add_argument("--no-joint", action="store_true", help="skip training the joint models (late fusion only)")
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (default: %(default)s)")
    parser.add_argument("--ship", action="store_true",
                        help="write the validation-fitted weights to saved_models/fusion/late_fusion.json")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (4 recordings per actor, 2 epochs)")
    add_verbose_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not SHARED.is_dir():
        print(f"skipped: {SHARED} is absent (the benchmark needs the real corpora)")
        return 0
    from fusion.late import LateFusionConfig, fit_late_fusion, model_fingerprint, write_late_fusion

    started = time.time()
    work = Path(args.work) / ("quick" if args.quick else "full")
    per_actor, epochs, reps = (4, 2, 200) if args.quick else (args.per_actor, args.epochs, args.bootstrap)
    actors = held_out_actors()
    n_val = max(1, len(actors) // 3)
    val_actors, test_actors = actors[:n_val], actors[n_val:]
    pools = face_sequences(SEED)
    pairs = make_pairs(actors, val_actors, pools, args.faces_per_clip, per_actor, SEED)
    corpus = work / "clips"
    render_s = render(pairs, corpus)
    by_split = {s: [p for p in pairs if p["split"] == s] for s in ("train", "val", "test")}
    print(f"{len(pairs)} clips ({ {k: len(v) for k, v in by_split.items()} }) rendered in {render_s:.0f} s", flush=True)

    # Late fusion of the shipped models: probabilities through LateFusion's own path, weights fitted on validation.
    late_probs = {s: late_probabilities(by_split[s], corpus, work) for s in ("val", "test")}
    labels = {s: np.array([p["label"] for p in by_split[s]]) for s in ("val", "test")}
    fit = fit_late_fusion(late_probs["val"], labels["val"])
    chosen = LateFusionConfig(fit["weights"], fit["rule"])
    best = {rule: max(((f, w) for w, f, _ in fit["grid"][rule]), key=lambda t: t[0]) for rule in ("mean", "product")}
    late_best = {rule: {"weights": {"audio": w, "face": round(1 - w, 4)}, "val_f1_macro": f}
                 for rule, (f, w) in best.items()}

    def predict(probs: list[dict], cfg: LateFusionConfig) -> np.ndarray:
        return np.array([int(np.argmax(cfg.fuse(p))) for p in probs])

    configs = {"audio-only": LateFusionConfig({"audio": 1.0}), "face-only": LateFusionConfig({"face": 1.0}),
               "late": chosen, "late mean": LateFusionConfig(late_best["mean"]["weights"], "mean"),
               "late product": LateFusionConfig(late_best["product"]["weights"], "product")}
    preds = {k: predict(late_probs["test"], c) for k, c in configs.items()}
    val_scores = {k: macro_f1(labels["val"], predict(late_probs["val"], c)) for k, c in configs.items()}

    joint: dict[str, Any] = {}
    if not args.no_joint:
        train_actors = sorted({p["actor"] for p in by_split["train"]})
        for name, (modalities, temporal) in JOINT_VARIANTS.items():
            joint[name] = train_joint(name, modalities, temporal, corpus, work, val_actors, test_actors, epochs)
            print(f"{name}: trained in {joint[name]['train_seconds']} s", flush=True)
            for split in ("val", "test"):
                probs = joint_probabilities(joint[name]["run_dir"], by_split[split], corpus)
                pred = np.array([int(np.argmax(p)) for p in probs])
                if split == "test":
                    preds[name] = pred
                else:
                    val_scores[name] = macro_f1(labels["val"], pred)

    diffs = {"late - better single": ("late", max(("audio-only", "face-only"), key=lambda k: val_scores[k]))}
    if joint:
        singles = ("joint audio-only (stats)", "joint face-only (stats)", "audio-only", "face-only")
        better = max(singles, key=lambda k: val_scores[k])
        diffs["joint (LSTM) - better single"] = ("joint (LSTM)", better)
        diffs["joint (stats) - better single"] = ("joint (stats)", better)
    groups = np.array([p["recording"] for p in by_split["test"]])
    scores = bootstrap(labels["test"], preds, groups, reps, SEED, diffs)

    audio_wrong = preds["audio-only"] != labels["test"]
    face_wrong = preds["face-only"] != labels["test"]
    a, f = audio_wrong.mean(), face_wrong.mean()
    both = float((audio_wrong & face_wrong).mean())
    phi = float(np.corrcoef(audio_wrong, face_wrong)[0, 1]) if 0 < a < 1 and 0 < f < 1 else float("nan")
    frames = sum(p["frames"] for p in late_probs["test"])
    found = sum(p["face_frames"] for p in late_probs["test"])

    latency_clips = [corpus / by_split["test"][0]["clip"]] + ([REAL_CLIP] if REAL_CLIP.is_file() else [])
    latency = latency_one_core(latency_clips, "late", "", 2 if args.quick else 5)
    names = {str(latency_clips[0]): f"late fusion (fusion.predict default), rendered {FRAME_SIZE} px proxy clip",
             str(REAL_CLIP): "late fusion (fusion.predict default), the real RAVDESS 1280x720 clip (3.3 s)"}
    latency_report = {names[k]: v for k, v in latency.items()}
    if joint:
        jl = latency_one_core(latency_clips, "joint", joint["joint (stats)"]["run_dir"], 2 if args.quick else 5)
        latency_report |= {names[k].replace("late fusion (fusion.predict default)", "joint model"): v
                           for k, v in jl.items()}

    result = {
        "split": "voices: RAVDESS actors unheard by the shipped speech model (val / test by actor); faces: CK+ "
                 "subjects (train / val / test pools)",
        "held_out_actors": actors, "val_actors": val_actors, "test_actors": test_actors,
        "train_actors": sorted({p["actor"] for p in by_split["train"]}),
        "classes": [e for e in EMOTIONS if any(p["emotion"] == e for p in pairs)],
        "faces_per_clip": args.faces_per_clip,
        "counts": {"train_pairs": len(by_split["train"]), "val_pairs": len(by_split["val"]),
                   "test_pairs": len(by_split["test"]), "test_recordings": int(len(set(groups)))},
        "face_pool_sequences": {s: {e: len(v) for e, v in p.items()} for s, p in pools.items()},
        "models": {"ser": f"saved_models/ser ({model_fingerprint(SER_DIR)})",
                   "fer": f"saved_models/fer ({read_json(FER_DIR / 'config.json').get('model')}, "
                          f"{model_fingerprint(FER_DIR)})"},
        "late_fit": {k: v for k, v in fit.items() if k != "grid"}, "late_grid": fit["grid"], "late_best": late_best,
        "val_scores": {k: round(v, 4) for k, v in val_scores.items()}, "scores": scores,
        "gains": list(diffs), "errors": {"audio_wrong": float(a), "face_wrong": float(f), "both_wrong": both,
                                         "both_wrong_if_independent": float(a * f), "phi": phi},
        "face_found_rate": found / max(frames, 1), "joint": joint, "latency_one_core": latency_report,
        "bootstrap_resamples": reps, "quick": args.quick,
    }
    if joint:
        result["joint_face_encoder"] = joint["joint (stats)"]["face_encoder"]
    if args.ship and not args.quick:
        write_late_fusion(SHIP_DIR, fit, fitted_on=(
            f"paired validation clips: RAVDESS actor(s) {val_actors} (unheard by the speech model) with CK+ "
            f"validation-pool faces, {fit['clips']} clips, 6 classes (bench/bench_fusion.py)"),
            ser_model_dir=SER_DIR, fer_model_dir=FER_DIR,
            extra={"test": {k: scores[k] for k in ("audio-only", "face-only", "late")}})
        print(f"wrote {SHIP_DIR / 'late_fusion.json'}")
    result["total_seconds"] = round(time.time() - started, 1)
    if args.ship and not args.quick:
        write_model_card(SHIP_DIR / "MODEL_CARD.md", result)
    result["load_average"] = round(os.getloadavg()[0], 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "fusion.json", result)
    write_markdown(out / "fusion.md", result)
    print((out / "fusion.md").read_text())
    return 0


if __name__ == "__main__":
    quiet_tensorflow()
    sys.exit(main())
