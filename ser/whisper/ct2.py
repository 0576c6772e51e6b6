"""Read the weights of a CTranslate2 model folder (``model.bin``) into numpy arrays.

CTranslate2 writes ``model.bin`` as: binary version, spec name, spec revision, then each variable as
(name, rank, dims, dtype id, byte count, raw bytes), then aliases (``ctranslate2.specs.model_spec``).
Reading it directly keeps ``ctranslate2`` optional: it is only needed to check our encoder against its own.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np

# Order of include/ctranslate2/types.h's DataType enum.
DTYPES = ("float32", "int8", "int16", "int32", "float16", "bfloat16")
SUPPORTED_VERSIONS = (5, 6)


class CT2FormatError(ValueError):
    """Not a CTranslate2 model.bin this reader understands; the message says why."""


def _read(f: BinaryIO, fmt: str):
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise CT2FormatError("file ends early (truncated model.bin?)")
    return struct.unpack(fmt, data)[0]


def _read_string(f: BinaryIO) -> str:
    length = _read(f, "H")
    data = f.read(length)
    if len(data) != length:
        raise CT2FormatError("file ends early (truncated model.bin?)")
    return data[:-1].decode("utf-8")


def read_model_bin(path: str | os.PathLike, prefix: str = "") -> tuple[str, dict[str, np.ndarray]]:
    """``(spec_name, {variable name: array})``, only variables whose name starts with ``prefix``.

    float16 stays float16; bfloat16 is widened to float32 (numpy has no bfloat16).
    """
    path = Path(path)
    variables: dict[str, np.ndarray] = {}
    with open(path, "rb") as f:
        version = _read(f, "I")
        if version not in SUPPORTED_VERSIONS:
            raise CT2FormatError(f"{path}: CTranslate2 binary version {version}, expected one of {SUPPORTED_VERSIONS}")
        spec = _read_string(f)
        _read(f, "I")  # spec revision
        for _ in range(_read(f, "I")):
            name = _read_string(f)
            shape = tuple(_read(f, "I") for _ in range(_read(f, "B")))
            type_id = _read(f, "B")
            num_bytes = _read(f, "I")
            if type_id >= len(DTYPES):
                raise CT2FormatError(f"{path}: {name} has unknown dtype id {type_id}")
            if not name.startswith(prefix):
                f.seek(num_bytes, os.SEEK_CUR)
                continue
            raw = f.read(num_bytes)
            if len(raw) != num_bytes:
                raise CT2FormatError(f"{path}: file ends inside {name} (truncated model.bin?)")
            dtype = DTYPES[type_id]
            if dtype == "bfloat16":
                array = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
            else:
                array = np.frombuffer(raw, dtype)
            variables[name] = array.reshape(shape)
    return spec, variables


def write_model_bin(path: str | os.PathLike, variables: dict[str, np.ndarray], spec: str = "WhisperSpec",
                    revision: int = 3) -> None:
    """Write ``variables`` in CTranslate2's layout (version 6, no aliases): tests build tiny encoders with it."""
    def string(f: BinaryIO, text: str) -> None:
        data = text.encode("utf-8")
        f.write(struct.pack("H", len(data) + 1) + data + b"\0")

    with open(path, "wb") as f:
        f.write(struct.pack("I", 6))
        string(f, spec)
        f.write(struct.pack("I", revision))
        f.write(struct.pack("I", len(variables)))
        for name, value in variables.items():
            value = np.asarray(value, order="C")  # ascontiguousarray would make scalars 1-d
            string(f, name)
            f.write(struct.pack("B", value.ndim))
            for dim in value.shape:
                f.write(struct.pack("I", dim))
            f.write(struct.pack("B", DTYPES.index(value.dtype.name)))
            f.write(struct.pack("I", value.nbytes))
            f.write(value.tobytes())
        f.write(struct.pack("I", 0))
