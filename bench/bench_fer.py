"""Benchmark of the face models on the real corpora (needs ../shared/data; skips without it).

    python bench/bench_fer.py                        # default budget (about 20 min on 2 CPU cores)
    python bench/bench_fer.py --cnn-epochs 30 --max-train-per-class 0 --resnet-epochs 10   # full run

Trains ``cnn`` and ``resnet50`` on FER2013's training images with fer.train (a stratified validation part
and a stratified test part are held out of them: the shared copy has no test images), then reports for
each model: test accuracy and macro-F1, parameters, model file size, ms per face on one CPU core, ms per
640x480 frame with face detection (haar and mtcnn) on one core with faces found, and cross-dataset
accuracy on JAFFE and CK+48. Writes bench/results/fer.md and bench/results/fer.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from core.cli import CLIParser, add_verbose_flag, quiet_tensorflow  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "bench" / "results"
RUNS = REPO / "runs" / "bench_fer"
FRAME_SIZE = (480, 640)
N_FRAMES = 20
FACE_REPEATS = 200


def build_parser() -> argparse.ArgumentParser:
    p = CLIParser(prog="python bench/bench_fer.py", description=__doc__.split("\n")[0])
    p.add_argument("--data-root", default=os.environ.get("EMOTION_SHARED_DATA", str(DEFAULT_DATA)),
                   help="folder holding fer2013/, jaffe/, ckplus48/ ($EMOTION_SHARED_DATA, default: %(default)s)")
    p.add_argument("--cnn-epochs", type=int, default=4, help="epochs of the cnn model (default: %(default)s)")
    p.add_argument("--resnet-epochs", type=int, default=2, help="epochs of the resnet50 model (default: %(default)s)")
    p.add_argument("--max-train-per-class", type=int, default=500,
                   help="training images per class (0 = all 25k); validation / test stay complete")
    p.add_argument("--resnet-max-train-per-class", type=int, default=200,
                   help="resnet50: training images per class (0 = all; default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=32, help="small batches: more steps for a short budget")
    p.add_argument("--resnet-size", type=int, default=48,
                   help="size faces are resized to inside resnet50 (default: %(default)s)")
    p.add_argument("--resnet-weights", default="imagenet",
                   help="imagenet, none or a local .h5; imagenet falls back to none when it cannot be fetched")
    p.add_argument("--val-fraction", type=float, default=0.05,
                   help="stratified part of FER2013 train held out for validation (default: %(default)s)")
    p.add_argument("--test-fraction", type=float, default=0.1,
                   help="stratified part of FER2013 train held out for testing (default: %(default)s)")
    p.add_argument("--models", default="cnn,resnet50", help="comma-separated fer.train models (default: %(default)s)")
    p.add_argument("--skip-training", action="store_true", help="reuse the run folders in runs/bench_fer/")
    p.add_argument("--latency", metavar="MODEL_DIR", help=argparse.SUPPRESS)  # internal: one-core subprocess
    p.add_argument("--latency-out", help=argparse.SUPPRESS)
    add_verbose_flag(p)
    return p


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


# ----------------------------------------------------------------------------- one-core latency (subprocess)

def make_frames(data_root: Path, n: int = N_FRAMES, seed: int = 0) -> list[tuple[np.ndarray, list]]:
    """640x480 BGR frames with 1-2 JAFFE photos (real faces) pasted on a textured background.

    Returns (frame, [region of each pasted photo]) so detections can be matched to faces present.
    """
    import cv2

    from fer.data import read_gray

    rng = np.random.default_rng(seed)
    photos = sorted((data_root / "jaffe").glob("*.tiff"))
    frames = []
    h, w = FRAME_SIZE
    for _ in range(n):
        background = cv2.GaussianBlur(rng.integers(60, 200, (h // 8, w // 8), dtype=np.uint8), (5, 5), 0)
        frame = cv2.cvtColor(cv2.resize(background, (w, h)), cv2.COLOR_GRAY2BGR)
        regions = []
        count = int(rng.integers(1, 3))
        for k in range(count):
            photo = read_gray(photos[int(rng.integers(len(photos)))])
            side = int(rng.integers(180, 240))
            photo = cv2.resize(photo, (side, side), interpolation=cv2.INTER_AREA)
            x = int(rng.integers(0, w // count - side)) + k * (w // count)
            y = int(rng.integers(0, h - side))
            frame[y:y + side, x:x + side] = photo[..., None]
            regions.append((x, y, side, side))
        frames.append((frame, regions))
    return frames


def latency(model_dir: str, data_root: Path) -> dict:
    import cv2
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    cv2.setNumThreads(1)
    from fer.data import load_corpus
    from fer.predict import FERPredictor

    predictor = FERPredictor(model_dir)
    faces = load_corpus("ckplus", data_root, max_per_class=5).images
    for _ in range(10):
        predictor.predict_crops(faces[:1])
    times, cpu = [], []
    for i in range(FACE_REPEATS):
        start, start_cpu = time.perf_counter(), time.process_time()
        predictor.predict_crops(faces[i % len(faces)][None])
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    # CPU time is what one core spends; wall time also counts waiting for a core on a shared machine.
    out = {"ms_per_face": 1000 * float(np.median(cpu)), "ms_per_face_wall": 1000 * float(np.median(times))}
    frames = make_frames(data_root)
    for detector in ("haar", "mtcnn"):
        predictor.detector = detector
        predictor.predict_image(frames[0][0])  # load the detector, trace its graphs
        times, cpu, found, present, false_pos = [], [], 0, 0, 0
        for frame, regions in frames:
            start, start_cpu = time.perf_counter(), time.process_time()
            result = predictor.predict_image(frame)
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
            present += len(regions)
            hits = set()
            for face in result:
                x, y, w, h = face["box"]
                cx, cy = x + w / 2, y + h / 2
                inside = [i for i, (rx, ry, rw, rh) in enumerate(regions)
                          if rx <= cx <= rx + rw and ry <= cy <= ry + rh]
                if inside:
                    hits.add(inside[0])
                else:
                    false_pos += 1
            found += len(hits)
        out[detector] = {"ms_per_frame": 1000 * float(np.median(cpu)),
                         "ms_per_frame_wall": 1000 * float(np.median(times)),
                         "faces_found": found,
                         "faces_present": present, "false_positives": false_pos}
    return out


def run_latency_subprocess(model_dir: Path, data_root: Path) -> dict:
    out_file = model_dir / "latency.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--latency", str(model_dir), "--latency-out", str(out_file),
           "--data-root", str(data_root)]
    # taskset pins to one core where available, so "one core" is literal.
    if sys.platform.startswith("linux") and subprocess.run(["which", "taskset"], capture_output=True).returncode == 0:
        cmd = ["taskset", "-c", "0", *cmd]
    subprocess.run(cmd, check=True, env=env)
    return json.loads(out_file.read_text())


# ----------------------------------------------------------------------------- training and evaluation

def train_model(name: str, args: argparse.Namespace, data_root: Path) -> tuple[dict, float, str]:
    from fer.models import WeightsUnavailableError, resolve_weights
    from fer.train import TrainConfig, train

    weights = args.resnet_weights
    note = ""
    if name == "resnet50":
        try:
            resolve_weights(weights)
        except WeightsUnavailableError:
            note = ("ImageNet weights could not be fetched (no network to storage.googleapis.com, no cached file): "
                    "resnet50 was trained from scratch (--weights none, whole base trainable), so its numbers say "
                    "nothing about the transfer model with pretrained weights")
            print(f"note: {note}", flush=True)
            weights = "none"
    cfg = TrainConfig(
        model=name, dataset="fer2013", data_dir=str(data_root), output=str(RUNS / name),
        epochs=args.cnn_epochs if name == "cnn" else args.resnet_epochs,
        max_train_per_class=args.max_train_per_class if name == "cnn" else args.resnet_max_train_per_class,
        val_fraction=args.val_fraction, test_fraction=args.test_fraction, weights=weights,
        base_size=args.resnet_size, batch_size=args.batch_size, patience=100)
    start = time.perf_counter()
    metrics = train(cfg)
    return metrics, time.perf_counter() - start, note


def cross_dataset(model_dir: Path, data_root: Path) -> dict:
    from fer.evaluate import EvaluateConfig, evaluate

    out = {}
    for corpus in ("jaffe", "ckplus"):
        m = evaluate(EvaluateConfig(model_dir=str(model_dir), dataset=corpus, data_dir=str(data_root),
                                    output=str(model_dir / f"eval_{corpus}")))
        out[corpus] = {"accuracy": m["accuracy"], "f1_macro": m["f1_macro"], "n": m["n"]}
    return out


def write_results(results: dict) -> None:
    from core.io import atomic_write, write_json

    write_json(RESULTS / "fer.json", results)
    b = results["budget"]
    lines = [
        "| model | test accuracy | test macro-F1 | params | file size | ms / face (1 core) | "
        "ms / 640x480 frame haar (1 core) | faces found haar | ms / frame mtcnn (1 core) | faces found mtcnn | "
        "JAFFE accuracy | CK+48 accuracy | train time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["models"].items():
        lat = r["latency"]
        lines.append(
            f"| {name} | {r['test']['accuracy']:.3f} | {r['test']['f1_macro']:.3f} | {r['params'] / 1e6:.2f} M | "
            f"{r['file_mb']:.1f} MB | {lat['ms_per_face']:.1f} | {lat['haar']['ms_per_frame']:.0f} | "
            f"{lat['haar']['faces_found']}/{lat['haar']['faces_present']} (+{lat['haar']['false_positives']} false) | "
            f"{lat['mtcnn']['ms_per_frame']:.0f} | "
            f"{lat['mtcnn']['faces_found']}/{lat['mtcnn']['faces_present']} "
            f"(+{lat['mtcnn']['false_positives']} false) | "
            f"{r['cross']['jaffe']['accuracy']:.3f} | {r['cross']['ckplus']['accuracy']:.3f} | "
            f"{r['train_seconds'] / 60:.1f} min |")
    notes = [
        f"Split: FER2013 `train/` only (the shared copy has no test images): a stratified "
        f"{b['test_fraction']:.0%} test part (n={next(iter(results['models'].values()))['test']['n']}) and "
        f"{b['val_fraction']:.0%} validation part held out of it, natural class distribution; "
        f"seed 42. Not the official PrivateTest split, so not comparable to published FER2013 numbers.",
        f"Budget: batch size {b['batch_size']}; cnn {b['cnn_epochs']} epochs on at most "
        f"{b['max_train_per_class'] or 'all'} training images per "
        f"class; resnet50 {b['resnet_epochs']} epochs on at most {b['resnet_max_train_per_class'] or 'all'} per "
        f"class at {b['resnet_size']} px. CPU only ({results['machine']}), shared with other jobs; total "
        f"{results['total_minutes']:.1f} min. These are budget numbers, not converged models.",
        "Cross-dataset: the FER2013 models applied to every usable JAFFE image (faces cropped with the haar "
        "detector) and CK+48 image (contempt dropped; CK+48 has no neutral class).",
        "Frames: 20 synthetic 640x480 frames with 1-2 JAFFE photos (real faces) pasted on a textured "
        "background; time = detection + crop + classification. Times are the median CPU time of one thread "
        "pinned to one core (wall-clock medians, which include waiting for the shared core, are in fer.json).",
    ]
    notes += [f"Note: {n}" for n in results.get("notes", []) if n]
    text = "# FER benchmark\n\n" + "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    atomic_write(RESULTS / "fer.md", lambda tmp: Path(tmp).write_text(text))
    print(text)


def main(argv=None) -> int:
    args = parse_args(argv)
    data_root = Path(args.data_root)
    if args.latency:
        result = latency(args.latency, data_root)
        Path(args.latency_out).write_text(json.dumps(result))
        return 0
    if not (data_root / "fer2013").is_dir():
        print(f"skipped: real data folder {data_root} with fer2013/ is absent")
        return 0
    total_start = time.perf_counter()
    results = {"budget": {k: getattr(args, k) for k in ("cnn_epochs", "resnet_epochs", "max_train_per_class",
                                                         "batch_size",
                                                         "resnet_max_train_per_class", "resnet_size",
                                                         "val_fraction", "test_fraction")},
               "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               "models": {}, "notes": []}
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        run_dir = RUNS / name
        if args.skip_training and (run_dir / "model.keras").exists():
            from core.io import read_json

            metrics, seconds, note = read_json(run_dir / "metrics.json"), float("nan"), ""
            seconds = read_json(run_dir / "bench_train.json")["seconds"] if (run_dir / "bench_train.json").exists() \
                else seconds
        else:
            metrics, seconds, note = train_model(name, args, data_root)
            (run_dir / "bench_train.json").write_text(json.dumps({"seconds": seconds, "note": note}))
        if not note and (run_dir / "bench_train.json").exists():
            note = json.loads((run_dir / "bench_train.json").read_text()).get("note", "")
        results["notes"].append(note)
        results["models"][name] = {
            "test": {k: metrics[k] for k in ("accuracy", "f1_macro", "f1_weighted", "n")},
            "params": metrics.get("params"),
            "file_mb": (run_dir / "model.keras").stat().st_size / 1e6,
            "train_seconds": seconds,
            "latency": run_latency_subprocess(run_dir, data_root),
            "cross": cross_dataset(run_dir, data_root),
        }
    results["total_minutes"] = (time.perf_counter() - total_start) / 60
    write_results(results)
    return 0


if __name__ == "__main__":
    quiet_tensorflow()
    sys.exit(main())
