"""Training hyper-parameters (a light module: the command line imports it without TensorFlow or pandas)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class TrainingConfig:
    """Hyper-parameters of one training run.

    Args:
        image_size: side of the square input (300 is B3's native size; small sizes train fast on CPU).
        epochs: passes over the training split.
        batch_size: images per step.
        learning_rate: Adam learning rate.
        weights: `imagenet`, `none`, or a local backbone weights file.
        batchnorm_momentum: momentum of the backbone's BatchNorm layers; 0.9 lets their moving statistics
            catch up within a short from-scratch run (Keras' 0.99 leaves them near their initial values).
        seed: seed for weights initialisation and shuffling.
    """

    image_size: int = 64
    epochs: int = 16
    batch_size: int = 16
    learning_rate: float = 2e-3
    weights: str = "none"
    batchnorm_momentum: float = 0.9
    seed: int = 0

    def to_params(self) -> dict[str, Any]:
        return asdict(self)
