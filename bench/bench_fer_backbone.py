"""Face backbones on FER2013: frozen linear probes vs trained runs, every number on the same hold-out.

    python bench/bench_fer_backbone.py --data-dir ../shared/data --run faceres=runs/fer_faceres112 \
        --run tiny_distilled=runs/fer_tiny_kd --run shipped_before=saved_models/fer --out bench/results

Split: the shipped face models' split of FER2013 ``train/`` (stratified, seed 42: 70 % train, 10 % validation,
20 % test = "hold-out", n = 5742). Probes: features of the frozen backbone on every training face, a logistic
regression whose C is chosen on validation, then scored once on the hold-out. Trained runs: their own
``val_metrics.json`` / ``metrics.json`` (same split), size and one-core latency.
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

from core.cli import CLIParser, add_verbose_flag, quiet_tensorflow  # noqa: E402

C_GRID = (0.003, 0.01, 0.03, 0.1)
BATCH = 64


def parse_args(argv=None) -> argparse.Namespace:
    p = CLIParser(prog="python bench/bench_fer_backbone.py", description=__doc__,
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"), help="folder holding fer2013/")
    p.add_argument("--probe", action="append", default=None,
                   help="backbone@size to probe (default faceres@112 and mobilefacenet@112)")
    p.add_argument("--run", action="append", default=[], help="name=run folder of a trained model (repeatable)")
    p.add_argument("--cache", default=str(REPO / "runs" / "fer_backbone_features"), help="feature cache folder")
    p.add_argument("--latency-of", default=None, help=argparse.SUPPRESS)  # internal: one model's ms per face
    p.add_argument("--out", default=str(REPO / "runs" / "bench_fer_backbone"),
                   help="folder for fer_backbone.md / .json (bench/results to update the committed results)")
    add_verbose_flag(p)
    return p.parse_args(argv)


def features(name: str, size: int, images: np.ndarray) -> np.ndarray:
    import cv2

    from fer import backbones

    if name == "faceres":
        net = backbones.load_faceres_network(size).get_layer("faceres_backbone")
        run = net.predict_on_batch
    elif name == "mobilefacenet":
        graph = backbones.mobilefacenet_graph()

        def run(x):  # its own preprocessing: (x - 127.5) / 128; the embedding before L2 normalisation
            return graph.run("MobileFaceNet/Logits/SpatialSqueeze", {"img_inputs": (x - 127.5) / 128.0})
    else:
        raise ValueError(f"unknown backbone {name!r}")
    out = []
    for start in range(0, len(images), BATCH):
        batch = np.stack([cv2.resize(a, (size, size), interpolation=cv2.INTER_LINEAR)
                          for a in images[start:start + BATCH]]).astype(np.float32)
        out.append(np.asarray(run(np.repeat(batch[..., None], 3, axis=-1))))
    return np.concatenate(out)


def probe(name: str, size: int, data, splits: np.ndarray, cache: Path) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.preprocessing import StandardScaler

    path = cache / f"{name}_{size}.npy"
    start = time.perf_counter()
    if path.is_file():
        feats = np.load(path)
    else:
        feats = features(name, size, data.images)
        cache.mkdir(parents=True, exist_ok=True)
        np.save(path, feats)
    extract = time.perf_counter() - start
    x = {s: feats[splits == s] for s in ("train", "val", "test")}
    y = {s: data.labels[splits == s] for s in ("train", "val", "test")}
    scaler = StandardScaler().fit(x["train"])
    best = None
    for c in C_GRID:
        clf = LogisticRegression(C=c, max_iter=3000, class_weight="balanced").fit(scaler.transform(x["train"]), y["train"])
        val = accuracy_score(y["val"], clf.predict(scaler.transform(x["val"])))
        if best is None or val > best[0]:
            best = (val, c, clf)
    val, c, clf = best
    pred = clf.predict(scaler.transform(x["test"]))
    pv = clf.predict(scaler.transform(x["val"]))
    return {"variant": f"{name} {size} px, frozen + logistic regression (C={c})",
            "val_accuracy": val, "val_f1_macro": f1_score(y["val"], pv, average="macro"),
            "test_accuracy": accuracy_score(y["test"], pred), "test_f1_macro": f1_score(y["test"], pred, average="macro"),
            "feature_seconds": round(extract, 1)}


def run_row(name: str, folder: Path) -> dict:
    def metrics(file: str) -> dict:
        path = folder / file
        return json.loads(path.read_text()) if path.is_file() else {}

    val, test, config = metrics("val_metrics.json"), metrics("metrics.json"), metrics("config.json")
    size = sum(f.stat().st_size for f in folder.glob("model.keras"))
    tflite = folder / "model_float16.tflite"
    return {"variant": f"{name} ({config.get('model', '?')}, {folder})",
            "val_accuracy": val.get("accuracy"), "val_f1_macro": val.get("f1_macro"),
            "test_accuracy": test.get("accuracy"), "test_f1_macro": test.get("f1_macro"),
            "model_keras_mb": round(size / 1e6, 2),
            "tflite_float16_mb": round(tflite.stat().st_size / 1e6, 2) if tflite.is_file() else None,
            "ms_per_face_1core": ms_per_face(folder / "model.keras")}


def ms_per_face(path: Path) -> float | None:
    """Median CPU time of one face on one core, in a fresh process (TensorFlow's thread pools are fixed once
    this process has used them for the probes)."""
    if not path.is_file():
        return None
    import subprocess

    out = subprocess.run([sys.executable, __file__, "--latency-of", str(path)], check=True, capture_output=True,
                         text=True).stdout
    return float(out.strip().splitlines()[-1])


def _latency(path: Path) -> float:
    """Process CPU time of one face through the model, one thread pinned to one core (a compiled call)."""
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    import fer.models  # noqa: F401  (registers the custom layers of saved face models)
    import tensorflow as tf

    model = keras.models.load_model(path, compile=False)
    call = tf.function(lambda x: model(x, training=False))
    x = tf.constant(np.random.default_rng(0).uniform(0, 255, (1, *model.input_shape[1:])).astype(np.float32))
    for _ in range(5):
        call(x)
    times = []
    for _ in range(50):
        start = time.process_time()
        call(x).numpy()
        times.append(time.process_time() - start)
    return round(1000 * float(np.median(times)), 2)


def write(out: Path, rows: list[dict], meta: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "fer_backbone.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    def fmt(v, score: bool = False) -> str:
        return "–" if v is None else (f"{v:.3f}" if score else f"{v:g}")

    lines = ["# Face backbones on FER2013", "",
             "| variant | val acc / macro-F1 | hold-out acc / macro-F1 | model.keras MB | TFLite f16 MB | ms / face (1 core) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['variant']} | {fmt(r['val_accuracy'], True)} / {fmt(r['val_f1_macro'], True)} | "
                     f"{fmt(r['test_accuracy'], True)} / {fmt(r['test_f1_macro'], True)} | {fmt(r.get('model_keras_mb'))} | "
                     f"{fmt(r.get('tflite_float16_mb'))} | {fmt(r.get('ms_per_face_1core'))} |")
    lines += ["", f"- Split: {meta['split']}"]
    if meta.get("probe_sizes"):
        lines.append(f"- Input size: {meta['probe_sizes']}")
    lines += ["- ms per face: process CPU time of one 48x48 face, one thread pinned to one core, median of 50 "
              "(a compiled call).", f"- Machine: {meta['machine']}", ""]
    (out / "fer_backbone.md").write_text("\n".join(lines))


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_tensorflow(args.verbose)
    if args.latency_of:
        print(_latency(Path(args.latency_of)))
        return 0

    from fer.train import TrainConfig, load_split

    data, splits = load_split(TrainConfig(data_dir=args.data_dir))
    rows = []
    for spec in args.probe or ["faceres@112", "mobilefacenet@112"]:
        name, size = spec.split("@")
        rows.append(probe(name, int(size), data, splits, Path(args.cache)))
        print(rows[-1], flush=True)
    for spec in args.run:
        name, folder = spec.split("=", 1)
        rows.append(run_row(name, Path(folder)))
        print(rows[-1], flush=True)
    counts = {s: int((splits == s).sum()) for s in ("train", "val", "test")}
    meta = {"split": f"FER2013 train/ folders, stratified seed 42: train {counts['train']}, val {counts['val']}, "
                     f"hold-out (test) {counts['test']}; probes' C chosen on val",
            "machine": f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end"}
    write(Path(args.out), rows, meta)
    print(f"wrote {args.out}/fer_backbone.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
