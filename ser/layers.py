"""Custom layers for the SER models (registered so saved models load without extra arguments)."""
from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="ser")
class FeatureMasking(keras.layers.Layer):
    """SpecAugment-style masking: zero random time spans and feature bands, during training only.

    Inputs are normalised features (0 = training mean), so a zeroed span looks like "average" speech.
    """

    def __init__(self, time_masks: int = 2, time_width: int = 12, feature_masks: int = 2,
                 feature_width: int = 6, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.time_masks, self.time_width = time_masks, time_width
        self.feature_masks, self.feature_width = feature_masks, feature_width
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _masks(self, batch: int, length: int, count: int, width: int):
        positions = ops.arange(length, dtype="float32")[None, None, :]
        starts = keras.random.uniform((batch, count, 1), 0, length, seed=self.seed_generator)
        widths = keras.random.uniform((batch, count, 1), 0, width, seed=self.seed_generator)
        hit = ops.logical_and(positions >= starts, positions < starts + widths)
        return 1.0 - ops.cast(ops.any(hit, axis=1), "float32")  # (batch, length)

    def call(self, inputs, training=None):
        if not training:
            return inputs
        shape = ops.shape(inputs)
        keep_t = self._masks(shape[0], shape[1], self.time_masks, self.time_width)
        keep_f = self._masks(shape[0], shape[2], self.feature_masks, self.feature_width)
        return inputs * keep_t[:, :, None] * keep_f[:, None, :]

    def get_config(self) -> dict:
        return {**super().get_config(), "time_masks": self.time_masks, "time_width": self.time_width,
                "feature_masks": self.feature_masks, "feature_width": self.feature_width, "seed": self.seed}


@keras.saving.register_keras_serializable(package="ser")
class StepMask(keras.layers.Layer):
    """(batch, steps, ...) -> (batch, steps) bool: True where a step is not zero padding."""

    def call(self, inputs):
        axes = tuple(range(2, len(inputs.shape)))
        return ops.any(ops.not_equal(inputs, 0), axis=axes)


@keras.saving.register_keras_serializable(package="ser")
class LayerWeightedSum(keras.layers.Layer):
    """Softmax-weighted sum over the encoder's hidden states: (batch, steps, states, dim) -> (batch, steps, dim).

    The weights are learned (SUPERB-style), so the head picks the layers that carry emotion;
    ``state_weights()`` reads them back for the model card.
    """

    def build(self, input_shape):
        self.logits = self.add_weight(name="logits", shape=(input_shape[2],), initializer="zeros")

    def call(self, inputs):
        weights = ops.softmax(self.logits)
        return ops.einsum("btsd,s->btd", inputs, ops.cast(weights, inputs.dtype))

    def state_weights(self):
        return ops.convert_to_numpy(ops.softmax(self.logits))


@keras.saving.register_keras_serializable(package="ser")
class AttentionPooling(keras.layers.Layer):
    """Masked additive attention over time: [(batch, steps, dim), (batch, steps) bool] -> (batch, dim)."""

    def __init__(self, units: int = 128, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.hidden = keras.layers.Dense(units, activation="tanh", name="hidden")
        self.score = keras.layers.Dense(1, name="score")

    def build(self, input_shape):
        values_shape = input_shape[0]
        self.hidden.build(values_shape)
        self.score.build((*values_shape[:-1], self.units))

    def call(self, inputs):
        values, steps = inputs  # the step mask is an input, not a Keras mask: layers before it do not carry one
        scores = ops.squeeze(self.score(self.hidden(values)), -1)
        scores = ops.where(steps, scores, ops.full_like(scores, -1e9))
        weights = ops.softmax(scores, axis=-1)
        return ops.einsum("bt,btd->bd", weights, values)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], input_shape[0][-1])

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable(package="ser")
class MaskedStatsPooling(keras.layers.Layer):
    """Mean and standard deviation over the valid steps: [(batch, steps, ...), (batch, steps)] -> (batch, ..., 2 * last)."""

    def call(self, inputs):
        values, steps = inputs
        weights = ops.cast(steps, values.dtype)
        for _ in range(len(values.shape) - 2):
            weights = ops.expand_dims(weights, -1)
        count = ops.maximum(ops.sum(weights, axis=1), 1.0)
        mean = ops.sum(values * weights, axis=1) / count
        var = ops.sum(ops.square(values - ops.expand_dims(mean, 1)) * weights, axis=1) / count
        return ops.concatenate([mean, ops.sqrt(var + 1e-6)], axis=-1)

    def compute_output_shape(self, input_shape):
        shape = input_shape[0]
        return (shape[0], *shape[2:-1], 2 * shape[-1])
