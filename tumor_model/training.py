"""Training an EfficientNetB3 classifier on a dataset manifest."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tumor_model.labels import CLASS_NAMES, class_index
from tumor_model.scoring import decode_rows
from tumor_model.training_config import TrainingConfig

logger = logging.getLogger(__name__)


@dataclass
class SplitArrays:
    images: np.ndarray  # uint8 (n, size, size, 3)
    labels: np.ndarray  # int (n,)
    sha256: list[str]


def load_split_arrays(
    manifest: pd.DataFrame, *, image_path: Callable[[pd.Series], Path], image_size: int, workers: int = 4
) -> dict[str, SplitArrays]:
    """Decode every manifest row through the shared preprocessing, grouped by split.

    Args:
        manifest: rows with columns `sha256`, `label`, `split`.
        image_path: where the local copy of a row's image is.
        image_size: side of the model's input.
        workers: decoding threads.
    """
    arrays: dict[str, SplitArrays] = {}
    for split in ("train", "val", "test"):
        rows = manifest[manifest["split"] == split].sort_values("sha256")
        # preprocess_bytes yields whole numbers in 0..255: uint8 holds them exactly in a quarter of the memory.
        images = decode_rows(rows, image_path=image_path, image_size=image_size, workers=workers).astype(np.uint8)
        arrays[split] = SplitArrays(
            images=images,
            labels=np.array([class_index(label) for label in rows["label"]], dtype=int),
            sha256=list(rows["sha256"]),
        )
    return arrays


def _set_batchnorm_momentum(model: Any, momentum: float) -> None:
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):  # the nested backbone
            _set_batchnorm_momentum(layer, momentum)
        elif isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum


def train_classifier(
    *,
    train: SplitArrays,
    val: SplitArrays,
    config: TrainingConfig,
    callbacks: list[Any] | None = None,
) -> tuple[Any, dict[str, list[float]]]:
    """Build and fit the classifier; return the model and its per-epoch history.

    Args:
        train: training split.
        val: validation split (may be empty: then no validation metrics are reported).
        config: hyper-parameters.
        callbacks: extra Keras callbacks (progress reporting, metric logging).
    """
    import keras

    from tumor_model.model import build_classifier

    if len(train.labels) == 0:
        raise ValueError("the training split is empty: ingest more images")
    keras.utils.set_random_seed(config.seed)
    model = build_classifier(num_classes=len(CLASS_NAMES), image_size=config.image_size, weights=config.weights)
    _set_batchnorm_momentum(model, config.batchnorm_momentum)
    model.compile(
        optimizer=keras.optimizers.Adam(config.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    counts = np.bincount(train.labels, minlength=len(CLASS_NAMES))
    class_weight = {i: float(len(train.labels) / (len(CLASS_NAMES) * c)) for i, c in enumerate(counts) if c}
    validation = (val.images.astype(np.float32), val.labels) if len(val.labels) else None
    history = model.fit(
        train.images.astype(np.float32),
        train.labels,
        validation_data=validation,
        epochs=config.epochs,
        batch_size=config.batch_size,
        class_weight=class_weight,
        shuffle=True,
        callbacks=callbacks or [],
        verbose=0,
    )
    return model, {k: [float(v) for v in values] for k, values in history.history.items()}


def predict_probabilities(model: Any, images: np.ndarray, *, batch_size: int = 32) -> np.ndarray:
    """Class probabilities for uint8 or float images, in input order."""
    if len(images) == 0:
        return np.zeros((0, len(CLASS_NAMES)), np.float32)
    return np.asarray(model.predict(images.astype(np.float32), batch_size=batch_size, verbose=0))
