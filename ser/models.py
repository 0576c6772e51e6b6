"""The five speech emotion models: one small builder each, all sharing the same CNN front end.

Input: (max_frames, n_features) normalised MFCC+ZCR+RMS frames (see ser.features).
Output: softmax over the 7 schema emotions.
"""
from __future__ import annotations

from typing import Callable

import keras
from keras import layers

from core.labels import NUM_CLASSES
from ser.layers import AttentionPooling, FeatureMasking, LayerWeightedSum, MaskedStatsPooling, StepMask

CONV_FILTERS = (64, 128)
CONV2D_FILTERS = (32, 64, 128, 128)
KERNEL_SIZE = 5
DROPOUT = 0.3


def model_input(input_shape: tuple[int, int], spec_augment: bool = False):
    """The features input, followed by SpecAugment-style masking when asked (a no-op at inference)."""
    inputs = keras.Input(input_shape, name="features")
    x = FeatureMasking(name="spec_augment")(inputs) if spec_augment else inputs
    return inputs, x


def cnn_front_end(inputs: keras.KerasTensor, filters: tuple[int, ...] = CONV_FILTERS) -> keras.KerasTensor:
    """Conv1D blocks over time: local spectral patterns, 4x shorter sequence for the recurrent heads."""
    x = inputs
    for i, f in enumerate(filters, start=1):
        x = layers.Conv1D(f, KERNEL_SIZE, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = layers.BatchNormalization(name=f"conv{i}_bn")(x)
        x = layers.Activation("relu", name=f"conv{i}_relu")(x)
        x = layers.MaxPooling1D(2, name=f"conv{i}_pool")(x)
        x = layers.SpatialDropout1D(0.1, name=f"conv{i}_dropout")(x)
    return x


def classifier_head(x: keras.KerasTensor, num_classes: int, units: tuple[int, ...] = (128,)) -> keras.KerasTensor:
    for i, u in enumerate(units, start=1):
        x = layers.Dense(u, activation="relu", name=f"dense{i}")(x)
        x = layers.Dropout(DROPOUT, name=f"dense{i}_dropout")(x)
    return layers.Dense(num_classes, activation="softmax", name="emotion")(x)


def build_cnn(input_shape: tuple[int, int], num_classes: int = NUM_CLASSES,
              spec_augment: bool = False) -> keras.Model:
    inputs, x = model_input(input_shape, spec_augment)
    x = cnn_front_end(x, CONV_FILTERS + (256,))
    x = layers.GlobalAveragePooling1D(name="pool")(x)
    return keras.Model(inputs, classifier_head(x, num_classes), name="ser_cnn")


def build_lstm(input_shape: tuple[int, int], num_classes: int = NUM_CLASSES,
              spec_augment: bool = False) -> keras.Model:
    inputs, x = model_input(input_shape, spec_augment)
    x = cnn_front_end(x)
    x = layers.LSTM(128, name="lstm")(x)
    return keras.Model(inputs, classifier_head(x, num_classes), name="ser_lstm")


def build_bilstm(input_shape: tuple[int, int], num_classes: int = NUM_CLASSES,
              spec_augment: bool = False) -> keras.Model:
    inputs, x = model_input(input_shape, spec_augment)
    x = cnn_front_end(x)
    x = layers.Bidirectional(layers.LSTM(64), name="bilstm")(x)
    return keras.Model(inputs, classifier_head(x, num_classes), name="ser_bilstm")


def build_gru(input_shape: tuple[int, int], num_classes: int = NUM_CLASSES,
              spec_augment: bool = False) -> keras.Model:
    inputs, x = model_input(input_shape, spec_augment)
    x = cnn_front_end(x)
    x = layers.GRU(128, name="gru")(x)
    return keras.Model(inputs, classifier_head(x, num_classes, units=(128, 64)), name="ser_gru")


def build_attention(input_shape: tuple[int, int], num_classes: int = NUM_CLASSES,
              spec_augment: bool = False) -> keras.Model:
    """CNN + one transformer-style self-attention block, mean-pooled over time."""
    inputs, x = model_input(input_shape, spec_augment)
    x = cnn_front_end(x)
    attended = layers.MultiHeadAttention(num_heads=4, key_dim=32, dropout=0.1, name="self_attention")(x, x)
    x = layers.LayerNormalization(name="attention_norm")(layers.Add(name="attention_residual")([x, attended]))
    ff = layers.Dense(256, activation="relu", name="ff1")(x)
    ff = layers.Dense(CONV_FILTERS[-1], name="ff2")(ff)
    x = layers.LayerNormalization(name="ff_norm")(layers.Add(name="ff_residual")([x, ff]))
    x = layers.GlobalAveragePooling1D(name="pool")(x)
    return keras.Model(inputs, classifier_head(x, num_classes), name="ser_attention")


def build_cnn2d(input_shape: tuple[int, int], num_classes: int = NUM_CLASSES,
                spec_augment: bool = False) -> keras.Model:
    """2-D CNN over the (time, feature) plane, for log-mel input: its filters slide along frequency too, so a
    pattern is recognised at any pitch (voices differ in pitch more than in emotion cues)."""
    inputs, x = model_input(input_shape, spec_augment)
    x = layers.Reshape((*input_shape, 1), name="to_image")(x)
    for i, f in enumerate(CONV2D_FILTERS, start=1):
        x = layers.Conv2D(f, 3, padding="same", use_bias=False, name=f"conv{i}")(x)
        x = layers.BatchNormalization(name=f"conv{i}_bn")(x)
        x = layers.Activation("relu", name=f"conv{i}_relu")(x)
        x = layers.MaxPooling2D(2, padding="same", name=f"conv{i}_pool")(x)  # "same": short inputs never shrink to 0
        x = layers.SpatialDropout2D(0.1, name=f"conv{i}_dropout")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, classifier_head(x, num_classes), name="ser_cnn2d")


WHISPER_PROJECTION = 256


def build_whisper(input_shape: tuple[int, int, int], num_classes: int = NUM_CLASSES,
                  spec_augment: bool = False) -> keras.Model:
    """Head on cached Whisper hidden states (steps, states, dim): mean and standard deviation of every state
    over the clip's valid steps, one softmax layer. Its weights are a logistic regression fitted by
    ``ser.whisper.head.fit_linear_head`` (not by ``fit``)."""
    if spec_augment:
        raise ValueError("--spec-augment works on MFCC / log-mel frames, not on encoder states")
    inputs = keras.Input(input_shape, name="features")
    mask = StepMask(name="step_mask")(inputs)
    x = MaskedStatsPooling(name="stats")([inputs, mask])
    x = layers.Flatten(name="flatten")(x)
    return keras.Model(inputs, layers.Dense(num_classes, activation="softmax", name="emotion")(x), name="ser_whisper")


def build_whisper_attention(input_shape: tuple[int, int, int], num_classes: int = NUM_CLASSES,
                  spec_augment: bool = False) -> keras.Model:
    """Head trained by gradient descent on cached Whisper hidden states (steps, states, dim): each state
    layer-normalised, a learned softmax mix of the states, a GELU projection, masked attention pooling
    over time, softmax. Overfits the TESS voices: below ``whisper`` on held-out speakers (docs/whisper.md)."""
    if spec_augment:
        raise ValueError("--spec-augment works on MFCC / log-mel frames, not on encoder states")
    inputs = keras.Input(input_shape, name="features")
    mask = StepMask(name="step_mask")(inputs)
    x = layers.LayerNormalization(center=False, scale=False, name="state_norm")(inputs)
    x = LayerWeightedSum(name="layer_weights")(x)
    x = layers.Dropout(0.1, name="mix_dropout")(x)
    x = layers.Dense(WHISPER_PROJECTION, activation="gelu", name="projection")(x)
    x = layers.Dropout(0.2, name="projection_dropout")(x)
    x = AttentionPooling(name="attention_pool")([x, mask])
    x = layers.Dropout(DROPOUT, name="pool_dropout")(x)
    return keras.Model(inputs, layers.Dense(num_classes, activation="softmax", name="emotion")(x), name="ser_whisper_attention")


MODELS: dict[str, Callable[..., keras.Model]] = {
    "cnn": build_cnn,
    "lstm": build_lstm,
    "bilstm": build_bilstm,
    "gru": build_gru,
    "attention": build_attention,
    "cnn2d": build_cnn2d,
    "whisper": build_whisper,
    "whisper_attention": build_whisper_attention,
}
ENCODER_MODELS = ("whisper", "whisper_attention")  # heads on a pretrained encoder's cached states
CLOSED_FORM_MODELS = ("whisper",)  # heads fitted by scikit-learn, not by Keras' fit()


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int = NUM_CLASSES,
                spec_augment: bool = False) -> keras.Model:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    return MODELS[name](input_shape, num_classes, spec_augment=spec_augment)
