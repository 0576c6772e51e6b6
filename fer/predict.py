"""Tell the emotion of every face in photos (or of pre-cropped faces).

    python -m fer.predict photo.jpg holiday/ --json
    python -m fer.predict crops/ --no-detect --json
    python -m fer.predict photo.jpg --annotate annotated/ --detector blazeface-full

``--json`` prints one object per line: ``{"path", "faces": [{"box", "label", "probabilities"}]}``, or with
``--no-detect`` ``{"path", "label", "probabilities"}``. Images without a face give ``"faces": []`` and a
message on stderr; unreadable files are reported and skipped, and the exit code is 1 at the end. An image no
larger than ``CROPPED_FACE_SIDE`` on either side is a face crop already (FER2013 and CK+48 are 48 x 48): it is
read whole, as one face whose box is the whole image, not searched for faces, once BlazeFace agrees that it looks
like a face (``fer.faces.crop_face_score``); a small picture of something else has no face. ``--no-detect``
reads every image whole without that check.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import cv2
import numpy as np

from core.cli import CLIParser, add_verbose_flag, echo, module_prog, path_arg, progress, quiet_tensorflow
from core.io import load_keras_model, read_model_config
from core.labels import EMOTIONS
from fer.data import IMAGE_EXTENSIONS, list_images
from fer.faces import (CROP_FACE_MIN_SCORE, DEFAULT_DETECTOR, DETECTORS, FACE_MARGIN, crop_face_score, detect_and_align,
                       draw_faces, to_bgr, to_gray)

DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[1] / "saved_models" / "fer"
WRITABLE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Images this small are face crops (FER2013 / CK+48 48 x 48, RAF-DB 100 x 100). A detector finds no face in 20 %
# of FER2013's and frames the rest unlike the training crops: on 600 validation faces, 0.593 accuracy searched
# against 0.733 read whole (docs/fer.md).
CROPPED_FACE_SIDE = 100
# A crop whose gray levels spread less than this (standard deviation, 0..255) is blank, not a face: FER2013
# train holds 12 such images (std <= 0.7), and its faintest real face has std 9.
BLANK_CROP_STD = 4.0


class ModelNotFoundError(FileNotFoundError):
    """No trained model where one was expected."""


class FERPredictor:
    """A trained face model plus a detector; loads once, predicts fast (one compiled graph call per batch)."""

    def __init__(self, model_dir: str | os.PathLike | None = None, detector: str = DEFAULT_DETECTOR,
                 margin: float | None = None, tflite: str | None = None) -> None:
        """``tflite``: None for the Keras model, or ``float16`` / ``int8`` for an exported file (fer.export)."""
        import tensorflow as tf

        import fer.models  # noqa: F401  registers the custom layers a saved model may hold (HorizontalFlip)

        if detector not in DETECTORS:
            raise ValueError(f"unknown face detector {detector!r}; choose one of {DETECTORS}")
        self.model_dir = Path(model_dir) if model_dir else DEFAULT_MODEL_DIR
        model_path = self.model_dir / "model.keras"
        if not model_path.is_file():
            raise ModelNotFoundError(
                f"no FER model at {model_path}. Train one with `python -m fer.train --dataset fer2013 "
                f"--data-dir PATH --output {self.model_dir}` or pass --model-dir RUN_DIR.")
        config_path = self.model_dir / "config.json"
        self.config: dict[str, Any] = read_model_config(config_path, "fer") if config_path.is_file() else {}
        self.class_names: tuple[str, ...] = tuple(self.config.get("class_names", EMOTIONS))
        self.model = load_keras_model(model_path)
        self.face_size = int(self.model.input_shape[1])
        self.margin = float(margin if margin is not None else self.config.get("face_margin", FACE_MARGIN))
        self.detector = detector
        spec = tf.TensorSpec([None, self.face_size, self.face_size, 1], tf.float32)
        # model.predict costs tens of ms per call; a traced function with a fixed signature costs ~1 ms.
        self._forward = tf.function(lambda x: self.model(x, training=False), input_signature=[spec])
        self._forward(tf.zeros([1, self.face_size, self.face_size, 1]))  # trace now, not on the first request
        if tflite:
            from core.export import TFLiteModel

            self._forward = TFLiteModel(self.model_dir / f"model_{tflite}.tflite",
                                        export_command=f"python -m fer.export --model-dir {self.model_dir}")

    def predict_crops(self, crops: np.ndarray) -> np.ndarray:
        """Probabilities (n, 7) for gray faces (n, size, size) (or one (size, size)); resized if needed."""
        crops = np.asarray(crops)
        if crops.ndim == 2:
            crops = crops[None]
        if crops.ndim == 4 and crops.shape[-1] == 1:
            crops = crops[..., 0]
        if crops.ndim != 3:
            raise ValueError(f"expected gray faces of shape (n, h, w), got {crops.shape}")
        if len(crops) == 0:
            return np.zeros((0, len(self.class_names)), np.float32)
        if crops.shape[1:] != (self.face_size, self.face_size):
            crops = np.stack([cv2.resize(np.asarray(c, np.float32), (self.face_size, self.face_size),
                                         interpolation=cv2.INTER_AREA) for c in crops])
        batch = crops.astype(np.float32)[..., None]
        return np.asarray(self._forward(batch))

    def predict_image(self, image_bgr: np.ndarray) -> list[dict[str, Any]]:
        """Every detected face: ``{"box": [x, y, w, h], "label", "probabilities"}``, largest face first.

        Faces are cut by ``fer.faces.detect_and_align`` (eyes level, FER2013's framing, when the detector gives
        landmarks), the same crops the JAFFE loader and fusion make. An image no larger than ``CROPPED_FACE_SIDE``
        on either side is one face crop already: the whole image, box and all, when it looks like a face
        (``looks_like_face_crop``), else no face.
        """
        height, width = image_bgr.shape[:2]
        if max(height, width) <= CROPPED_FACE_SIDE:
            if not looks_like_face_crop(image_bgr):
                return []
            return [{"box": [0, 0, int(width), int(height)], **self.predict_face(image_bgr)}]
        faces, crops = detect_and_align(image_bgr, method=self.detector, size=self.face_size, margin=self.margin)
        if not faces:
            return []
        return [{"box": [int(v) for v in face.box], **self.as_result(p)}
                for face, p in zip(faces, self.predict_crops(crops))]

    def predict_face(self, image: np.ndarray) -> dict[str, Any]:
        """The whole image as one already-cropped face (FER2013-style input)."""
        gray = to_gray(image)
        return self.as_result(self.predict_crops(gray[None])[0])

    def as_result(self, probs: np.ndarray) -> dict[str, Any]:
        return {"label": self.class_names[int(np.argmax(probs))],
                "probabilities": {name: round(float(p), 6) for name, p in zip(self.class_names, probs)}}


def is_blank(image: np.ndarray) -> bool:
    """A flat image (one colour, or nearly): nothing to read an expression from."""
    return float(np.std(to_gray(image).astype(np.float32))) < BLANK_CROP_STD


def no_face_hint(image: np.ndarray, detector: str) -> str:
    """What to try when an image has no face: reading a small one whole, or the detector for small faces."""
    if max(image.shape[:2]) <= CROPPED_FACE_SIDE:
        return " (a face crop? --no-detect reads it whole)"
    if detector == "blazeface":
        return " (small faces in a large picture? --detector blazeface-full finds them down to 1/16 of its side)"
    return ""


def looks_like_face_crop(image: np.ndarray) -> bool:
    """Whether a small image read whole is a face crop: not blank, and BlazeFace scores a face in it
    (``fer.faces.crop_face_score`` >= ``CROP_FACE_MIN_SCORE``). Holds for 98.7 % of FER2013's validation
    crops (the rest are mostly faces turned away or covered, and a few drawings and signs FER2013 holds) and
    2.6 % of small non-face pictures (docs/fer.md)."""
    return not is_blank(image) and crop_face_score(image) >= CROP_FACE_MIN_SCORE


def read_image(path: str | os.PathLike) -> np.ndarray:
    """BGR uint8; raises ValueError (core.images.ImageReadError) when the file is not a readable image.

    The server's reader too (webapp.media.decode_image), so both refuse the same files (a truncated JPEG).
    """
    from core.images import read_image as read

    return read(path)


def media_hint(path: Path) -> str:
    """For a sound or video file given to the photo tool: which tool reads it."""
    from core.media_types import AUDIO_EXTENSIONS, VIDEO_EXTENSIONS

    suffix = path.suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        return " (a video: `python -m fusion.predict` reads its faces and voice)"
    if suffix in AUDIO_EXTENSIONS:
        return " (a sound file: `python -m ser.predict` reads it)"
    return ""


def iter_inputs(paths: Iterable[str]) -> Iterable[tuple[Path, Path | None, str | None]]:
    """(file, folder it came from or None, error or None) for files and folders given on the command line."""
    for arg in paths:
        path = Path(arg)
        if path.is_dir():
            files = list_images(path)
            if not files:
                yield path, None, f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {path}"
            for f in files:
                yield f, path, None
        elif path.is_file():
            yield path, None, None
        elif path.exists():
            yield path, None, f"{path}: not a regular file"
        else:
            yield path, None, f"{path}: no such file or folder"


def annotation_path(out_dir: Path, path: Path, folder: Path | None, used: set[Path]) -> Path:
    """Where the annotated copy of ``path`` goes: its place under ``out_dir``, with ``_1``, ``_2``, ... when that
    is taken. ``used`` holds the resolved paths already taken; start it with the input files, so that
    ``--annotate`` pointing at the photos' own folder never writes over a photo."""
    rel = path.relative_to(folder) if folder else Path(path.name)
    if rel.suffix.lower() not in WRITABLE_EXTENSIONS:
        rel = rel.with_suffix(".png")
    target, n = out_dir / rel, 1
    while target.resolve() in used:
        target = out_dir / rel.with_name(f"{rel.stem}_{n}{rel.suffix}")
        n += 1
    used.add(target.resolve())
    return target


def writable_folder_problem(folder: Path) -> str | None:
    """Why ``folder`` cannot take output files (it is a file, or cannot be made or written), or None when it
    can. The folder is made and a file written and removed there: permission bits alone do not say (root passes
    ``os.access`` on read-only mounts and in /proc)."""
    import tempfile

    existing = folder
    while not existing.exists():  # the nearest existing ancestor says whether the folder is a file
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        return f"cannot write there ({exc.strerror or exc})"
    return None


def _format_faces(path: Path, faces: list[dict[str, Any]]) -> str:
    lines = [f"{path}: {len(faces)} face(s)"]
    for face in faces:
        lines.append(f"  box {face['box']}: {face['label']} ({face['probabilities'][face['label']]:.2f})")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = CLIParser(prog=module_prog(__name__),
                       description="Facial expression of every face in images (files or folders).",
                       epilog="exit status: 0 every image was read (one without a face is said so on stderr); 1 some "
                              "image was unreadable or its annotated copy could not be written; 2 usage error")
    parser.add_argument("paths", nargs="+", type=path_arg, help="image files or folders (searched recursively)")
    parser.add_argument("--model-dir", default=None, help=f"trained run folder (default: {DEFAULT_MODEL_DIR})")
    parser.add_argument("--detector", choices=DETECTORS, default=DEFAULT_DETECTOR,
                        help="blazeface (default): fast, landmarks, faces from 1/8 of the image side; blazeface-full: "
                             "also smaller faces (group photos); haar: OpenCV cascade, no landmarks; mtcnn: slow")
    parser.add_argument("--no-detect", action="store_true",
                        help="treat each image as an already-cropped face (FER2013-style), unchecked; images of at "
                             f"most {CROPPED_FACE_SIDE} px a side are read so anyway when they look like a face")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    parser.add_argument("--annotate", metavar="DIR", default=None, help="write copies with boxes and labels here")
    parser.add_argument("--margin", type=float, default=None, help="extra border around each face box (fraction)")
    parser.add_argument("--tflite", choices=["float16", "int8"], default=None,
                        help="run the exported TFLite file instead of the Keras model (see fer.export)")
    add_verbose_flag(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.margin is not None and not (np.isfinite(args.margin) and 0 <= args.margin <= 2):
        parser.error(f"--margin must be a number from 0 to 2 (a fraction of the face box), got {args.margin}")
    if args.annotate:
        problem = writable_folder_problem(Path(args.annotate))
        if problem:
            parser.error(f"--annotate {args.annotate}: {problem}")
    inputs = list(iter_inputs(args.paths))  # listed first: the progress bar knows the total, an empty run stops here
    if not any(problem is None for _, _, problem in inputs):  # nothing to read: said before a model loads
        for _, _, problem in inputs:
            echo(f"error: {problem}", err=True)
        return 2 if all(Path(arg).is_dir() for arg in args.paths) else 1  # only empty folders: a usage error
    try:
        predictor = FERPredictor(args.model_dir, detector=args.detector, margin=args.margin, tflite=args.tflite)
    except (ModelNotFoundError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out_dir = Path(args.annotate) if args.annotate else None
    used: set[Path] = {path.resolve() for path, _, problem in inputs if problem is None}  # never written over
    failures = 0
    for path, folder, problem in progress(inputs, desc="images", unit="image"):
        if problem:
            echo(f"error: {problem}", err=True)
            failures += 1
            continue
        try:
            image = read_image(path)
        except ValueError as exc:
            echo(f"error: {exc}{media_hint(path)}", err=True)
            failures += 1
            continue
        if args.no_detect:
            result = {"path": str(path), **predictor.predict_face(image)}
            faces = [{"box": [0, 0, image.shape[1], image.shape[0]], **result}]
            text = f"{path}: {result['label']} ({result['probabilities'][result['label']]:.2f})"
        else:
            faces = predictor.predict_image(image)
            result = {"path": str(path), "faces": faces}
            text = _format_faces(path, faces)
            if not faces:
                echo(f"{path}: no face found{no_face_hint(image, args.detector)}", err=True)
        echo(json.dumps(result) if args.json else text)
        if out_dir is not None:
            target = annotation_path(out_dir, path, folder, used)
            reason = ""
            try:  # a full disk or a folder that turned read-only: this image fails, the rest still run
                target.parent.mkdir(parents=True, exist_ok=True)
                written = cv2.imwrite(str(target), draw_faces(to_bgr(image), faces))
            except (OSError, cv2.error) as exc:
                written, reason = False, f": {getattr(exc, 'strerror', None) or exc}"
            if not written:
                echo(f"error: could not write {target}{reason}", err=True)
                failures += 1
    if failures:
        echo(f"{failures} of {len(inputs)} input(s) failed", err=True)
    return 1 if failures else 0


if __name__ == "__main__":
    quiet_tensorflow()
    sys.exit(main())
