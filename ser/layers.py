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
