"""A random TF.js graph model in faceres-deep's exact layout (folded batch norm, ReLU6 as Relu/Minimum/Maximum,
fused matmul heads), at any MobileNet width: the converter's and the graph runner's test fixture."""
from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np

STRIDES = (1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1)
POINTWISE = (64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def write_faceres_graph(folder: Path, alpha: float = 0.25, seed: int = 0, quantize: str | None = None) -> Path:
    """Write ``faceres-deep.json`` + ``.bin`` into ``folder``; returns the json path.

    ``quantize="uint8"`` stores the float weights as TF.js uint8 quantised values (scale / min per weight).
    """
    rng = np.random.default_rng(seed)
    nodes, weights = [], []

    def const(name: str, value: np.ndarray) -> str:
        nodes.append({"name": name, "op": "Const", "attr": {}})
        weights.append((name, value))
        return name

    def op(name: str, kind: str, inputs: list[str], **attr) -> str:
        nodes.append({"name": name, "op": kind, "input": inputs, "attr": attr})
        return name

    def conv_attr(stride: int) -> dict:
        return {"strides": {"list": {"i": ["1", str(stride), str(stride), "1"]}}, "padding": {"s": _b64("SAME")}}

    def relu6(prefix: str, x: str) -> str:
        six = const(f"{prefix}/Cast", np.array(6.0, np.float32))
        zero = const(f"{prefix}/Const_1", np.array(0.0, np.float32))
        x = op(f"{prefix}/Relu", "Relu", [x])
        x = op(f"{prefix}/clip_by_value/Minimum", "Minimum", [x, six])
        return op(f"{prefix}/clip_by_value", "Maximum", [x, zero])

    def rand(*shape: int, scale: float) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    x = op("input_1", "Placeholder", [], shape={"shape": {"dim": [{"size": "-1"}, {"size": "224"}, {"size": "224"},
                                                                   {"size": "3"}]}})
    channels = int(32 * alpha)
    kernel = const("conv1/convolution/merged_input", rand(3, 3, 3, channels, scale=0.02))
    x = op("conv1_bn/batchnorm_1/mul_1", "Conv2D", [x, kernel], **conv_attr(2))
    x = op("conv1_bn/batchnorm_1/add_1", "Add", [x, const("conv1_bn/batchnorm_1/sub", rand(channels, scale=0.1))])
    x = relu6("conv1_relu", x)
    for block, (stride, width) in enumerate(zip(STRIDES, POINTWISE), start=1):
        dw = const(f"conv_dw_{block}/depthwise_kernel", rand(3, 3, channels, 1, scale=0.3))
        x = op(f"conv_dw_{block}/depthwise", "DepthwiseConv2dNative", [x, dw], **conv_attr(stride))
        x = op(f"conv_dw_{block}_bn/batchnorm_1/mul_1", "Mul",
               [x, const(f"conv_dw_{block}_bn/batchnorm_1/mul", rng.uniform(0.5, 1.5, channels).astype(np.float32))])
        x = op(f"conv_dw_{block}_bn/batchnorm_1/add_1", "Add",
               [x, const(f"conv_dw_{block}_bn/batchnorm_1/sub", rand(channels, scale=0.1))])
        x = relu6(f"conv_dw_{block}_relu", x)
        out = int(width * alpha)
        pw = const(f"conv_pw_{block}/convolution/merged_input", rand(1, 1, channels, out, scale=1.0 / np.sqrt(channels)))
        x = op(f"conv_pw_{block}_bn/batchnorm_1/mul_1", "Conv2D", [x, pw], **conv_attr(1))
        x = op(f"conv_pw_{block}_bn/batchnorm_1/add_1", "Add",
               [x, const(f"conv_pw_{block}_bn/batchnorm_1/sub", rand(out, scale=0.1))])
        x = relu6(f"conv_pw_{block}_relu", x)
        channels = out
    axes = const("global_pooling/Mean/reduction_indices", np.array([1, 2], np.int32))
    pooled = op("global_pooling/Mean", "Mean", [x, axes], keep_dims={"b": False})
    fused = {"fused_ops": {"list": {"s": [_b64("BiasAdd"), _b64("Relu")]}}, "num_args": {"i": "1"}}
    feats = op("feats/Relu", "_FusedMatMul", [pooled, const("feats/kernel", rand(channels, 256, scale=0.05)),
                                              const("feats/bias", rand(256, scale=0.1))], **fused)
    bias_only = {"fused_ops": {"list": {"s": [_b64("BiasAdd")]}}, "num_args": {"i": "1"}}
    gender = op("gender_pred/BiasAdd", "_FusedMatMul", [feats, const("gender_pred/kernel", rand(256, 1, scale=0.1)),
                                                        const("gender_pred/bias", rand(1, scale=0.1))], **bias_only)
    age = op("age_pred/BiasAdd", "_FusedMatMul", [feats, const("age_pred/kernel", rand(256, 100, scale=0.1)),
                                                  const("age_pred/bias", rand(100, scale=0.1))], **bias_only)
    op("gender_pred/Sigmoid", "Sigmoid", [gender])
    op("age_pred/Softmax", "Softmax", [age])

    manifest, blobs = [], []
    for name, value in weights:
        entry = {"name": name, "shape": list(value.shape), "dtype": "int32" if value.dtype == np.int32 else "float32"}
        if quantize == "uint8" and value.dtype == np.float32 and value.size > 1:
            lo, hi = float(value.min()), float(value.max())
            scale = (hi - lo) / 255 or 1.0
            entry["quantization"] = {"dtype": "uint8", "scale": scale, "min": lo}
            blobs.append(np.round((value - lo) / scale).astype(np.uint8).tobytes())
        else:
            blobs.append(value.tobytes())
        manifest.append(entry)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "faceres-deep.bin").write_bytes(b"".join(blobs))
    spec = {"format": "graph-model", "generatedBy": "tests/synth_tfjs.py",
            "modelTopology": {"node": nodes},
            "weightsManifest": [{"paths": ["faceres-deep.bin"], "weights": manifest}]}
    path = folder / "faceres-deep.json"
    path.write_text(json.dumps(spec))
    return path
