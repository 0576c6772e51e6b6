"""Fit the ``whisper`` head: a multinomial logistic regression on every hidden state's pooled statistics.

Each state's mean and standard deviation over the clip's steps (7 states x 2 x 512 = 7168 numbers for
Whisper-base) are standardised and fed to scikit-learn's ``LogisticRegression`` (L2, lbfgs). Its weights,
with the standardisation folded in, become the model's last Dense layer, so the run folder holds one
ordinary ``model.keras``. On speaker-held-out folds this beat Keras-trained heads (attention pooling
over a learned mix of states, MLPs on the same statistics), which overfit the two TESS voices
(docs/whisper.md). The regression weights every layer at once; ``state_weights`` says how much each
state contributes.
"""
from __future__ import annotations

import numpy as np

BATCH = 256


def pooled_statistics(model, x: np.ndarray) -> np.ndarray:
    """The head's input to its last layer, (n, states * 2 * dim), computed by the model's own layers."""
    import keras

    pooled = keras.Model(model.input, model.get_layer("flatten").output)
    return np.concatenate([np.asarray(pooled(x[i:i + BATCH].astype(np.float32), training=False))
                           for i in range(0, len(x), BATCH)])


def fit_logistic(stats: np.ndarray, y: np.ndarray, c: float, num_classes: int,
                 sample_weight: np.ndarray | None = None):
    """``(scaler, coef (classes, features), intercept)`` of an L2 logistic regression on standardised ``stats``;
    a class absent from ``y`` gets a -1e4 intercept, so it is never predicted.

    Classes are weighted as in every model ``ser.train`` fits (``core.training.class_weights``): with calm
    merged into neutral, RAVDESS has 1.5 times as many neutral clips as any other class. ``sample_weight``
    (e.g. ``ser.train --noise-weight`` for noise copies) multiplies the class weights."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from core.training import class_weights

    weights = class_weights(y, num_classes)
    per_clip = np.array([weights[int(k)] for k in y])
    if sample_weight is not None:
        per_clip = per_clip * np.asarray(sample_weight, np.float64)
    scaler = StandardScaler().fit(stats)
    classifier = LogisticRegression(C=c, max_iter=5000).fit(scaler.transform(stats), y, sample_weight=per_clip)
    coef = np.zeros((num_classes, stats.shape[1]))
    intercept = np.full(num_classes, -1e4)
    coef[classifier.classes_] = classifier.coef_
    intercept[classifier.classes_] = classifier.intercept_
    return scaler, coef, intercept


def fit_linear_head(model, x: np.ndarray, y: np.ndarray, c: float, num_classes: int,
                    validation: tuple[np.ndarray, np.ndarray] | None = None,
                    sample_weight: np.ndarray | None = None) -> dict[str, list[float]]:
    """Fit the last layer of ``model`` (built by ``ser.models.build_whisper``) in place; returns a one-row history."""
    from sklearn.metrics import accuracy_score, log_loss

    stats = pooled_statistics(model, x)
    scaler, coef, intercept = fit_logistic(stats, y, c, num_classes, sample_weight)
    # W (x - mu) / sd + b  ==  (W / sd) x + (b - W mu / sd): the scaler folds into the Dense layer.
    kernel = (coef / scaler.scale_).T
    bias = intercept - coef @ (scaler.mean_ / scaler.scale_)
    model.get_layer("emotion").set_weights([kernel.astype(np.float32), bias.astype(np.float32)])

    labels = list(range(num_classes))

    def scores(features, targets):
        probs = np.asarray(model.get_layer("emotion")(features.astype(np.float32)))
        return log_loss(targets, probs, labels=labels), accuracy_score(targets, probs.argmax(1))

    loss, acc = scores(stats, y)
    history = {"loss": [loss], "accuracy": [acc]}
    if validation is not None:
        val_loss, val_acc = scores(pooled_statistics(model, validation[0]), validation[1])
        history |= {"val_loss": [val_loss], "val_accuracy": [val_acc]}
    return history


def state_weights(model, num_states: int) -> np.ndarray:
    """Share of the standardised weight mass on each hidden state (sums to 1): which layers the head uses."""
    kernel = model.get_layer("emotion").get_weights()[0]  # (states * 2 * dim, classes), scaler folded in
    mass = np.abs(kernel).reshape(num_states, -1).sum(axis=1)
    return mass / mass.sum()
