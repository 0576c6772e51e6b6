"""The small-image face check of fer.predict: how many real face crops it keeps and how many non-faces it lets by.

    python bench/bench_fer_crop_check.py          # needs ../shared/data (fer2013, ckplus48); prints "skipped" without

An image of at most fer.predict.CROPPED_FACE_SIDE px a side is read whole as one face crop when
fer.predict.looks_like_face_crop holds (not blank, fer.faces.crop_face_score >= CROP_FACE_MIN_SCORE). Measured:
- FER2013: the validation and test crops of fer.train's default split (seed 42, 10 % / 20 %); the threshold
  was chosen on 1000 of the validation crops (runs exp39, docs/fer.md), the test crops only confirm it;
- CK+48: every crop (a corpus the threshold never saw);
- non-faces: 25 patches of 40-100 px from each of bench_fer_detect's textures (skimage pictures without a
  person or an animal) and 100 squares of pixel noise (half of them blurred), seed 3;
- whole small pictures of objects: each of those textures' pictures (a clock, a logo, a coffee cup, coins, a
  colour wheel, ...) resized whole to 48 and 90 px, the harder case (a round object can look like a face);
- ms per image for the check, on one core (median over the FER2013 validation crops).
Writes bench/results/fer_crop_check.md and .json.
"""
from __future__ import annotations

import os
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
PATCHES_PER_TEXTURE = 25
NOISE_SQUARES = 100
SEED = 3


def build_parser() -> CLIParser:
    p = CLIParser(prog="python bench/bench_fer_crop_check.py", description=__doc__.split("\n")[0])
    p.add_argument("--data-root", default=os.environ.get("EMOTION_SHARED_DATA", str(DEFAULT_DATA)),
                   help="folder holding fer2013/ and ckplus48/ ($EMOTION_SHARED_DATA, default: %(default)s)")
    p.add_argument("--out", default=str(RESULTS), help="folder for fer_crop_check.md / .json (default: %(default)s)")
    add_verbose_flag(p)
    return p


def non_face_patches(rng: np.random.Generator) -> list[np.ndarray]:
    import cv2
    from bench_fer_detect import _texture_images

    patches = []
    for image in _texture_images().values():
        for _ in range(PATCHES_PER_TEXTURE):
            side = int(rng.integers(40, min(101, min(image.shape[:2]) // 2)))
            y, x = int(rng.integers(0, image.shape[0] - side)), int(rng.integers(0, image.shape[1] - side))
            patches.append(image[y:y + side, x:x + side])
    for k in range(NOISE_SQUARES):
        noise = rng.integers(0, 256, (90, 90), dtype=np.uint8)
        if k % 2:
            noise = cv2.normalize(cv2.GaussianBlur(noise, (0, 0), float(rng.uniform(1, 6))), None, 0, 255,
                                  cv2.NORM_MINMAX)
        patches.append(noise)
    return patches


def object_pictures() -> list[np.ndarray]:
    import cv2
    from bench_fer_detect import _texture_images

    return [cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
            for image in _texture_images().values() for side in (48, 90)]


def kept(images, check) -> dict:
    flags = [bool(check(image)) for image in images]
    return {"n": len(flags), "kept": int(sum(flags)), "fraction": round(float(np.mean(flags)), 4)}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    data_root = Path(args.data_root)
    if not (data_root / "fer2013").is_dir() or not (data_root / "ckplus48").is_dir():
        print(f"skipped: real data folder {data_root} with fer2013/ and ckplus48/ is absent")
        return 0
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    import cv2

    cv2.setNumThreads(1)
    from core.io import atomic_write, write_json
    from fer.ckplus import load_ckplus
    from fer.faces import CROP_FACE_MIN_SCORE, crop_face_score
    from fer.predict import looks_like_face_crop
    from fer.train import TrainConfig, load_split

    faces, splits = load_split(TrainConfig(dataset="fer2013", data_dir=str(data_root)))
    val, test = faces.images[splits == "val"], faces.images[splits == "test"]
    crop_face_score(val[0])  # load the detector before timing
    times = []
    for image in val:
        start = time.process_time()
        crop_face_score(image)
        times.append(time.process_time() - start)
    results = {
        "threshold": CROP_FACE_MIN_SCORE,
        "fer2013_val": kept(val, looks_like_face_crop),
        "fer2013_test": kept(test, looks_like_face_crop),
        "ckplus48": kept(load_ckplus(data_root).images, looks_like_face_crop),
        "non_faces": kept(non_face_patches(np.random.default_rng(SEED)), looks_like_face_crop),
        "objects": kept(object_pictures(), looks_like_face_crop),
        "ms_per_image": round(1000 * float(np.median(times)), 2),
    }
    write_json(Path(args.out) / "fer_crop_check.json", results)
    rows = [("FER2013 validation (default split)", "fer2013_val"), ("FER2013 test (default split)", "fer2013_test"),
            ("CK+48, all", "ckplus48"), ("non-faces: texture patches and noise", "non_faces"),
            ("non-faces: whole pictures of objects at 48 and 90 px", "objects")]
    text = ("# Small images read whole: the face check\n\n`python bench/bench_fer_crop_check.py`\n\n"
            f"Kept = read as a face crop (not blank, BlazeFace score >= {CROP_FACE_MIN_SCORE} with the image at 64 px "
            "in its 128 px input).\n\n| images | n | kept | fraction kept |\n|---|---|---|---|\n"
            + "".join(f"| {name} | {results[key]['n']} | {results[key]['kept']} | {results[key]['fraction']:.3f} |\n"
                      for name, key in rows)
            + f"\nThe check costs {results['ms_per_image']} ms per image (median CPU time, one core).\n")
    atomic_write(Path(args.out) / "fer_crop_check.md", lambda tmp: Path(tmp).write_text(text))
    print(text)
    return 0


if __name__ == "__main__":
    quiet_tensorflow()
    sys.exit(main())
