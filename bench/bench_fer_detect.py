"""Face detectors on 640x480 frames: speed on one core, false faces on texture, real faces found, JAFFE accuracy.

    python bench/bench_fer_detect.py                      # needs ../shared/data/jaffe; prints "skipped" without
    python bench/bench_fer_detect.py --detectors blazeface,haar --model-dir saved_models/fer

For every detector (fer.faces.DETECTORS, plus yuface when that wheel happens to be installed):
- ms per 640x480 frame with one face: detect + align (fer.faces.detect_and_align) + classify with the model
  (FERPredictor.predict_image), on one core: the process is pinned to CPU 0, TensorFlow and OpenCV use one
  thread; the median process CPU time per frame (what the core spent; wall-clock medians in the .json);
- false faces on 20 textured 640x480 frames without a face (tiled skimage textures: brick, grass, gravel,
  coins, text, ...; never a person or an animal);
- hits on 20 frames with 1-2 real JAFFE photos pasted on such textures (bench_fer.make_frames' photos and
  places, with a textured background instead of blurred noise);
- JAFFE accuracy of the model with the crops this detector gives (all 213 photos; a centre crop where it
  finds nothing), i.e. what the crop geometry does to a FER2013 model on faces it never saw.
Also: the short-range BlazeFace's false faces on 80 separate tuning frames at score thresholds 0.5 / 0.6 / 0.7
(where fer.faces.BLAZEFACE_MIN_SCORE comes from). Writes bench/results/fer_detect.md and fer_detect.json with
the machine's load average, as the machine is shared.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import numpy as np  # noqa: E402

from core.cli import CLIParser, add_verbose_flag, quiet_tensorflow  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "bench" / "results"
FRAME_SIZE = (480, 640)
N_FRAMES = 20
N_TUNING = 80
TEXTURES = ("brick", "grass", "gravel", "coins", "text", "moon", "page", "rocket", "coffee", "hubble_deep_field",
            "immunohistochemistry", "cell", "retina", "colorwheel", "logo")
TEST_SEED, TUNING_SEED = 1, 7


def build_parser() -> argparse.ArgumentParser:
    p = CLIParser(prog="python bench/bench_fer_detect.py", description=__doc__.split("\n")[0])
    p.add_argument("--data-root", default=os.environ.get("EMOTION_SHARED_DATA", str(DEFAULT_DATA)),
                   help="folder holding jaffe/ ($EMOTION_SHARED_DATA, default: %(default)s)")
    p.add_argument("--model-dir", default=str(REPO / "saved_models" / "fer"), help="face model (default: %(default)s)")
    p.add_argument("--detectors", default="all", help="comma-separated, or all (default: %(default)s)")
    p.add_argument("--no-jaffe-accuracy", action="store_true", help="skip the JAFFE accuracy per detector")
    p.add_argument("--tflite", choices=["float16", "int8"], default=None,
                   help="classify with the model's exported TFLite file (fer.export) instead of its Keras graph")
    p.add_argument("--out", default=str(RESULTS), help="folder for fer_detect.md / .json (default: %(default)s)")
    add_verbose_flag(p)
    return p


# ----------------------------------------------------------------------------- frames

def _texture_images() -> dict[str, np.ndarray]:
    import cv2
    from skimage import data

    out = {}
    for name in TEXTURES:
        image = getattr(data, name)()
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        elif image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_RGBA2BGR)
        else:
            image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        out[name] = image
    return out


def textured_frame(rng: np.random.Generator, textures: dict[str, np.ndarray]) -> np.ndarray:
    """640x480 BGR: a 1-3 x 1-2 mosaic of textures, each scaled 0.4-1.6x and tiled from a random offset."""
    import cv2

    h, w = FRAME_SIZE
    frame = np.zeros((h, w, 3), np.uint8)
    names = list(textures)
    nx, ny = int(rng.integers(1, 4)), int(rng.integers(1, 3))
    xs, ys = np.linspace(0, w, nx + 1).astype(int), np.linspace(0, h, ny + 1).astype(int)
    for i in range(ny):
        for j in range(nx):
            tile = textures[names[int(rng.integers(len(names)))]]
            scale = float(rng.uniform(0.4, 1.6))
            tile = cv2.resize(tile, None, fx=scale, fy=scale,
                              interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
            ch, cw = ys[i + 1] - ys[i], xs[j + 1] - xs[j]
            big = np.tile(tile, (ch // tile.shape[0] + 2, cw // tile.shape[1] + 2, 1))
            oy, ox = int(rng.integers(0, tile.shape[0])), int(rng.integers(0, tile.shape[1]))
            frame[ys[i]:ys[i + 1], xs[j]:xs[j + 1]] = big[oy:oy + ch, ox:ox + cw]
    return frame


def make_sets(data_root: Path) -> dict:
    """empty (20 textured frames), faces (20 frames, 1-2 JAFFE photos on texture), one_face (the same frames
    with only their first photo), tuning (80 other textured frames)."""
    from bench_fer import make_frames

    textures = _texture_images()
    rng = np.random.default_rng(TEST_SEED)
    empty = [textured_frame(rng, textures) for _ in range(N_FRAMES)]
    faces, one_face = [], []
    for frame, regions in make_frames(data_root, N_FRAMES):
        background = textured_frame(rng, textures)
        single = background.copy()
        for k, (x, y, w, h) in enumerate(regions):
            background[y:y + h, x:x + w] = frame[y:y + h, x:x + w]
            if k == 0:
                single[y:y + h, x:x + w] = frame[y:y + h, x:x + w]
        faces.append((background, regions))
        one_face.append((single, regions[:1]))
    tuning_rng = np.random.default_rng(TUNING_SEED)
    tuning = [textured_frame(tuning_rng, textures) for _ in range(N_TUNING)]
    return {"empty": empty, "faces": faces, "one_face": one_face, "tuning": tuning}


# ----------------------------------------------------------------------------- detectors

class YuFace:
    """yuface (libfacedetection's YuNet, BSD-3) as a fer.faces-style detector, for comparison only."""

    def __init__(self) -> None:
        import yuface

        self.module = yuface

    def __call__(self, image_bgr: np.ndarray) -> list:
        from fer.faces import Face, to_bgr

        _scores, boxes, points = self.module.detect(np.ascontiguousarray(to_bgr(image_bgr)), 0.5)
        faces = []
        for box, p in zip(boxes, points):
            p = np.asarray(p, np.float32).reshape(-1, 2)  # right eye, left eye, nose, mouth right, mouth left
            landmarks = np.array([p[0], p[1], p[2], (p[3] + p[4]) / 2], np.float32)
            faces.append(Face(tuple(int(v) for v in box), landmarks))
        return sorted(faces, key=lambda f: f.box[2] * f.box[3], reverse=True)


def finder(name: str):
    """image -> list of fer.faces.Face."""
    if name == "yuface":
        return YuFace()
    from fer.faces import detect_faces_with_landmarks, load_detector

    load_detector(name)
    return lambda image: detect_faces_with_landmarks(image, name)


def matches(faces, regions) -> tuple[int, int]:
    """(pasted photos found, detections outside every photo)."""
    hits, false = set(), 0
    for face in faces:
        x, y, w, h = face.box
        cx, cy = x + w / 2, y + h / 2
        inside = [i for i, (rx, ry, rw, rh) in enumerate(regions) if rx <= cx <= rx + rw and ry <= cy <= ry + rh]
        if inside:
            hits.add(inside[0])
        else:
            false += 1
    return len(hits), false


def measure(name: str, sets: dict, predictor) -> dict:
    from fer.faces import align_face

    find = finder(name)
    size, margin = predictor.face_size, predictor.margin

    def full_frame(image):  # detect + align + classify, as FERPredictor.predict_image does
        faces = find(image)
        if faces:
            crops = np.stack([align_face(image, f, size=size, margin=margin) for f in faces])
            predictor.predict_crops(crops)
        return faces

    for image, _ in sets["one_face"][:3]:  # warm-up: load, trace, XNNPACK plans
        full_frame(image)
    cpu, wall, thread, detect_cpu = [], [], [], []
    for image, _ in sets["one_face"]:
        start_cpu, start_wall, start_thread = time.process_time(), time.perf_counter(), time.thread_time()
        full_frame(image)
        cpu.append(time.process_time() - start_cpu)
        wall.append(time.perf_counter() - start_wall)
        thread.append(time.thread_time() - start_thread)
        start = time.process_time()
        find(image)
        detect_cpu.append(time.process_time() - start)
    one_hits = sum(matches(find(image), regions)[0] for image, regions in sets["one_face"])
    false_empty = sum(len(find(image)) for image in sets["empty"])
    hits = present = false_faces = 0
    for image, regions in sets["faces"]:
        h, f = matches(find(image), regions)
        hits, false_faces, present = hits + h, false_faces + f, present + len(regions)
    ms = lambda values: round(1000 * float(np.median(values)), 2)  # noqa: E731
    return {"ms_per_frame": ms(cpu), "ms_per_frame_wall": ms(wall), "ms_per_frame_thread": ms(thread),
            "ms_detect_only": ms(detect_cpu), "one_face_frames_found": one_hits,
            "false_faces_textured": false_empty, "textured_frames": len(sets["empty"]),
            "hits": hits, "faces_present": present, "false_faces_in_face_frames": false_faces}


def jaffe_accuracy(name: str, data_root: Path, predictor) -> dict:
    """saved model on the 213 JAFFE photos cut by this detector (fer.jaffe's fallback: a centre crop)."""
    from core.labels import map_label
    from fer.data import read_gray
    from fer.faces import align_face, crop_face
    from fer.jaffe import CENTRE_BOX_FRACTION, parse_name

    find = finder(name)
    correct = total = fallbacks = 0
    for path in sorted((data_root / "jaffe").glob("*.tiff")):
        parsed = parse_name(path.name)
        label = map_label("jaffe", parsed[1]) if parsed else None
        image = read_gray(path)
        if label is None or image is None:
            continue
        faces = find(image)
        if faces:
            crop = align_face(image, faces[0], size=predictor.face_size, margin=predictor.margin)
        else:
            fallbacks += 1
            side = int(min(image.shape) * CENTRE_BOX_FRACTION)
            box = ((image.shape[1] - side) // 2, (image.shape[0] - side) // 2, side, side)
            crop = crop_face(image, box, size=predictor.face_size, margin=0.0)
        probs = predictor.predict_crops(crop[None])[0]
        correct += int(predictor.class_names[int(np.argmax(probs))] == label)
        total += 1
    return {"accuracy": round(correct / max(1, total), 4), "n": total, "centre_crop_fallbacks": fallbacks}


def tuning_thresholds(sets: dict) -> dict:
    """False faces of the short-range model on the tuning frames at several score thresholds."""
    import cv2

    from fer.blazeface import BlazeFace

    model = BlazeFace("short", min_score=0.3)
    scores = [float(s) for image in sets["tuning"]
              for _, _, s in model.detect(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))]
    return {"frames": len(sets["tuning"]), "false_faces_at": {str(t): sum(s >= t for s in scores)
                                                                for t in (0.5, 0.6, 0.7)}}


# ----------------------------------------------------------------------------- report

def write_results(results: dict, out: Path = RESULTS) -> None:
    from core.io import atomic_write, write_json

    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "fer_detect.json", results)
    lines = [
        "| detector | ms / 640x480 frame, detect + align + classify (1 core) | detect only | wall | "
        f"false faces, {N_FRAMES} textured frames | hits, {N_FRAMES} JAFFE-on-texture frames | JAFFE accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results["detectors"].items():
        j = r.get("jaffe")
        jaffe = f"{j['accuracy']:.3f} ({j['centre_crop_fallbacks']} centre crops)" if j else "-"
        lines.append(
            f"| {name} | {r['ms_per_frame']:.1f} | {r['ms_detect_only']:.1f} | {r['ms_per_frame_wall']:.1f} | "
            f"{r['false_faces_textured']} | {r['hits']}/{r['faces_present']} (+{r['false_faces_in_face_frames']} "
            f"false) | {jaffe} |")
    t = results["tuning"]
    load = results["load_average"]
    notes = [
        f"Model: `{results['model_dir']}` ({results['face_size']} px gray faces, margin {results['margin']}"
        + (f"; classified by its {results['tflite']} TFLite file" if results.get("tflite") else "; its Keras graph")
        + "). "
        "Time: median process CPU time per frame over 20 frames with one JAFFE face on texture, the process "
        "pinned to CPU 0, TensorFlow 1 intra-op / 1 inter-op thread, OpenCV 1 thread ('detect only' is the "
        "detector alone; the calling thread's own CPU time and wall-clock medians are in fer_detect.json).",
        f"Machine: {results['machine']}, shared with other jobs; load average (1/5/15 min) before "
        f"{load['before']}, after {load['after']}.",
        f"Frames: {N_FRAMES} textured 640x480 frames without a face (tiled skimage textures, seed {TEST_SEED}); "
        f"{N_FRAMES} frames with 1-2 JAFFE photos (180-240 px, so faces of about 80-110 px) pasted on such "
        "textures (bench_fer.make_frames' photos and places). A hit is a detection whose centre lies in a "
        "pasted photo; every other detection is a false face.",
        "JAFFE accuracy: the model on all 213 JAFFE photos, the face cut with this detector (aligned with "
        "landmarks, the box crop for haar; a centre crop where nothing is found), FER2013-trained model, "
        "JAFFE never seen in training.",
        f"Threshold tuning (separate {t['frames']} textured frames, seed {TUNING_SEED}): the short-range "
        f"BlazeFace's false faces at score >= 0.5 / 0.6 / 0.7: {t['false_faces_at']['0.5']} / "
        f"{t['false_faces_at']['0.6']} / {t['false_faces_at']['0.7']}; fer.faces uses 0.6.",
    ]
    notes += [f"Note: {n}" for n in results.get("notes", [])]
    text = ("# Face detectors: speed, false faces, hits (640x480 frames)\n\n"
            f"`python bench/bench_fer_detect.py{' --tflite ' + results['tflite'] if results.get('tflite') else ''}`\n\n"
            + "\n".join(lines) + "\n\n"
            + "\n".join(f"- {n}" for n in notes) + "\n")
    atomic_write(out / "fer_detect.md", lambda tmp: Path(tmp).write_text(text))
    print(text)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    data_root = Path(args.data_root)
    if not (data_root / "jaffe").is_dir():
        print(f"skipped: real data folder {data_root} with jaffe/ is absent")
        return 0
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core, literally
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import cv2
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    cv2.setNumThreads(1)
    from fer.faces import DETECTORS
    from fer.predict import FERPredictor

    load_before = [round(v, 2) for v in os.getloadavg()]
    names = list(DETECTORS) if args.detectors == "all" else [n.strip() for n in args.detectors.split(",")]
    notes = []
    if args.detectors == "all":
        try:
            import yuface  # noqa: F401

            names.append("yuface")
        except ImportError:
            notes.append("yuface (YuNet) not installed: not measured (pip install yuface==2023.5.1 to compare)")
    predictor = FERPredictor(args.model_dir, tflite=args.tflite)
    sets = make_sets(data_root)
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
               "model_dir": os.path.relpath(args.model_dir, REPO), "face_size": predictor.face_size,
               "margin": predictor.margin, "tflite": args.tflite, "detectors": {}, "notes": notes}
    for name in names:
        start = time.perf_counter()
        results["detectors"][name] = measure(name, sets, predictor)
        if not args.no_jaffe_accuracy:
            results["detectors"][name]["jaffe"] = jaffe_accuracy(name, data_root, predictor)
        print(f"{name}: {results['detectors'][name]} ({time.perf_counter() - start:.0f} s)", flush=True)
    results["tuning"] = tuning_thresholds(sets)
    results["load_average"] = {"before": load_before, "after": [round(v, 2) for v in os.getloadavg()]}
    write_results(results, Path(args.out))
    return 0


if __name__ == "__main__":
    quiet_tensorflow()
    sys.exit(main())
