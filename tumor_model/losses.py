"""Loss functions saved with the model (registered, so checkpoints load back with their compiled loss)."""

from __future__ import annotations

from typing import Any

import keras


@keras.saving.register_keras_serializable(package="tumorops")
class SparseSmoothedCrossentropy(keras.losses.Loss):
    """Categorical cross-entropy with label smoothing, taking integer labels.

    Args:
        num_classes: number of classes.
        label_smoothing: mass moved from the true class to all classes evenly.
    """

    def __init__(self, *, num_classes: int, label_smoothing: float = 0.0, name: str = "sparse_smoothed_xent", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing

    def call(self, y_true: Any, y_pred: Any) -> Any:
        labels = keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32")
        target = keras.ops.one_hot(labels, self.num_classes)
        target = target * (1.0 - self.label_smoothing) + self.label_smoothing / self.num_classes
        return keras.losses.categorical_crossentropy(target, y_pred)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_classes": self.num_classes, "label_smoothing": self.label_smoothing}
