"""Averaging trained models into one Keras model (used by ser.ensemble and fer.ensemble)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence


def check_member_count(run_dirs: Sequence) -> None:
    """ValueError unless at least two different runs are given (the same folder twice is one model)."""
    if len(run_dirs) < 2:
        raise ValueError("an ensemble needs at least two runs")
    seen: dict = {}
    for d in run_dirs:
        key = Path(d).resolve()
        if key in seen:
            raise ValueError(f"{d} is given twice (as {seen[key]} too): an ensemble needs different runs")
        seen[key] = d


def average_models(models: Sequence, input_name: str, name: str):
    """One model whose output is the mean of ``models``' outputs on a shared input (same input shape)."""
    import keras

    shapes = {tuple(m.input_shape[1:]) for m in models}
    if len(shapes) != 1:
        raise ValueError(f"models to average need one input shape, got {sorted(shapes)}")
    inputs = keras.Input(models[0].input_shape[1:], name=input_name)
    outputs = []
    for i, model in enumerate(models):
        model.name = f"member{i}_{model.name}"  # unique names inside the ensemble
        out = model(inputs)
        outputs.append(out[0] if isinstance(out, (list, tuple)) else out)  # a reloaded model returns a list
    return keras.Model(inputs, keras.layers.Average(name="emotion")(outputs), name=name)
