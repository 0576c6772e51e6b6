"""TFLite export (float16 and int8) and a small runner, shared by ``ser.export`` and ``fer.export``.

The pip TensorFlow has no Flex ops, so models are exported with a fixed batch size of 1
(recurrent layers need it). Full-integer calibration of recurrent layers crashes the
converter (segfault seen with TF 2.21), so for models with LSTM/GRU layers ``int8``
means dynamic-range quantisation: int8 weights, float activations.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np

RECURRENT = ("LSTM", "GRU", "Bidirectional", "RNN")
MODES = ("float16", "int8")


def has_recurrent_layers(model) -> bool:
    def walk(layer):
        yield layer
        for sub in getattr(layer, "layers", []):
            yield from walk(sub)
    return any(type(layer).__name__ in RECURRENT for layer in walk(model))


def to_tflite(model, mode: str, representative: Iterable[np.ndarray] | None = None) -> bytes:
    """Convert a Keras model (batch fixed to 1) to TFLite ``float16`` or ``int8`` bytes."""
    import keras
    import tensorflow as tf

    from core.cli import without_library_notices

    if mode not in MODES:
        raise ValueError(f"unknown TFLite mode {mode!r}; choose from {MODES}")
    inputs = keras.Input(batch_shape=(1, *model.input_shape[1:]), name="input")
    fixed = keras.Model(inputs, model(inputs, training=False))
    with contextlib.redirect_stdout(io.StringIO()):  # Keras prints the temporary SavedModel's signature here
        converter = tf.lite.TFLiteConverter.from_keras_model(fixed)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if mode == "float16":
            converter.target_spec.supported_types = [tf.float16]
        elif representative is not None and not has_recurrent_layers(model):
            samples = [np.asarray(x, np.float32)[None] for x in representative]
            converter.representative_dataset = lambda: ([s] for s in samples)
        with without_library_notices():  # the calibrator prints its settings on stderr
            return converter.convert()


class TFLiteModel:
    """Batch-of-one TFLite interpreter with a ``predict_on_batch``-like call."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None, export_command: str = ""):
        import tensorflow as tf

        from core.cli import without_library_notices

        if not Path(path).is_file():
            how = f"`{export_command}`" if export_command else "the package's export command"
            raise FileNotFoundError(f"{path}: no TFLite model; create it with {how}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tf.lite.Interpreter's deprecation notice
            self.interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=threads)
        with without_library_notices():  # the runtime notes on stderr that it made an XNNPACK delegate
            self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = []
        for item in np.asarray(x, np.float32):
            self.interpreter.set_tensor(self.input["index"], item[None])
            self.interpreter.invoke()
            out.append(self.interpreter.get_tensor(self.output["index"])[0].astype(np.float32))
        return np.stack(out)


def export_model_dir(model, model_dir: str | os.PathLike, modes: Iterable[str], representative: np.ndarray,
                     test: tuple[np.ndarray, np.ndarray] | None = None, split: str = "the run's test split") -> dict:
    """Write ``model_<mode>.tflite`` files and ``export.json`` (sizes; accuracy change on ``test`` when given,
    named by ``split`` in the report: every number names its split). ``test`` labels of None (a run refit on every
    item keeps no test split) measure only the exports' agreement with the Keras model on the given items."""
    from core.io import atomic_write, write_json

    model_dir = Path(model_dir)
    report: dict = {"keras_size_kb": round((model_dir / "model.keras").stat().st_size / 1024, 1), "exports": {}}
    labelled = test is not None and test[1] is not None
    if test is not None:
        x_test, y_test = test
        keras_pred = model.predict(x_test, batch_size=256, verbose=0).argmax(1)
        report.update(split=split, test_n=len(x_test))
        if labelled:
            report["keras_accuracy"] = float((keras_pred == y_test).mean())
    for mode in modes:
        path = model_dir / f"model_{mode}.tflite"
        data = to_tflite(model, mode, representative)
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
        entry = {"file": path.name, "size_kb": round(len(data) / 1024, 1)}
        if test is not None:
            pred = TFLiteModel(path)(x_test).argmax(1)
            if labelled:
                accuracy = float((pred == y_test).mean())
                entry.update(accuracy=accuracy, accuracy_change=accuracy - report["keras_accuracy"])
            entry["agreement_with_keras"] = float((pred == keras_pred).mean())
        report["exports"][mode] = entry
        print(f"{mode}: {entry}")
    write_json(model_dir / "export.json", report)
    return report


def refuse_export_without_data(model_dir: str | os.PathLike, data_dir: str | None, missing: str) -> str | None:
    """Why an export that found none of the run's data must not go ahead (an error message), or None.

    A ``--data-dir`` that holds none of the run's data is a mistake to report, not a request for stand-in
    calibration; and without ``--data-dir``, exports that were measured on data (export.json names a split) are
    not replaced by unmeasured ones. Either way nothing is written."""
    from core.io import read_json

    if data_dir is not None:
        return f"{missing} (--data-dir {data_dir}): nothing was exported (leave --data-dir out to export without data)"
    report_path = Path(model_dir) / "export.json"
    try:
        measured = read_json(report_path).get("split") if report_path.is_file() else None
    except (OSError, ValueError, AttributeError):
        measured = None
    if measured:
        return (f"{model_dir} holds exports measured on {measured}; exporting without data would replace them with "
                f"unmeasured ones: give --data-dir with the run's data (or delete {report_path} to replace them anyway)")
    return None


def parse_modes(text: str) -> list[str]:
    """argparse ``type`` for ``--modes``: ``"float16,int8"`` -> ``["float16", "int8"]``, refused while parsing
    (before a model or corpus loads) when empty or when a mode is unknown."""
    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if not modes or unknown:
        raise argparse.ArgumentTypeError(f"{text!r}: choose one or more of {', '.join(MODES)}, comma-separated")
    return modes


def export_parser(module: str, what: str, default_model_dir: str | os.PathLike, data_help: str) -> argparse.ArgumentParser:
    """The options every ``<task>.export`` CLI shares: --model-dir, --data-dir, --modes, --verbose."""
    from core.cli import CLIParser, add_verbose_flag, module_prog

    parser = CLIParser(prog=module_prog(module), description=f"Export a {what} to TFLite (float16, int8).")
    parser.add_argument("--model-dir", default=str(default_model_dir),
                        help="run folder to export; the .tflite files and export.json are written next to "
                             "model.keras (default: %(default)s)")
    parser.add_argument("--data-dir", default=None, help=data_help)
    parser.add_argument("--modes", default="float16,int8", type=parse_modes,
                        help="comma-separated TFLite variants: float16, int8 (default: %(default)s)")
    add_verbose_flag(parser)
    return parser
