"""Scoring a saved model on the test split of a dataset manifest (what the promotion gates compare)."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tumor_model.evaluation import classification_metrics
from tumor_model.labels import CLASS_NAMES, class_index
from tumor_model.preprocessing import preprocess_bytes


def model_input_size(model: Any) -> int:
    """Side of the square input a Keras model expects."""
    shape = model.inputs[0].shape
    if len(shape) != 4 or shape[1] is None or shape[1] != shape[2]:
        raise ValueError(f"model input shape {tuple(shape)} is not (batch, side, side, 3)")
    return int(shape[1])


def decode_rows(
    rows: pd.DataFrame, *, image_path: Callable[[Any], Path], image_size: int, workers: int = 4
) -> np.ndarray:
    """Decode manifest rows through the shared preprocessing into a float32 batch, in row order."""

    def decode(row: Any) -> np.ndarray:
        return preprocess_bytes(image_path(row).read_bytes(), image_size=image_size)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        images = list(pool.map(decode, rows.itertuples()))
    if not images:
        return np.zeros((0, image_size, image_size, 3), np.float32)
    return np.stack(images).astype(np.float32)


def score_model_file(
    model_file: Path, *, rows: pd.DataFrame, image_path: Callable[[Any], Path], batch_size: int = 32
) -> dict[str, Any]:
    """`classification_metrics` of the Keras model in `model_file` on manifest `rows`, at the model's input size.

    Args:
        model_file: a `.keras` archive.
        rows: manifest rows (`sha256`, `ext`, `label`), typically the test split.
        image_path: where the local copy of a row's image is.
        batch_size: images per prediction batch.
    """
    import keras

    if rows.empty:
        raise ValueError("no images to score: the test split is empty")
    model = keras.saving.load_model(model_file, compile=False)
    image_size = model_input_size(model)
    rows = rows.sort_values("sha256")
    images = decode_rows(rows, image_path=image_path, image_size=image_size)
    probabilities = np.asarray(model.predict(images, batch_size=batch_size, verbose=0))
    labels = np.array([class_index(label) for label in rows["label"]], dtype=int)
    metrics = classification_metrics(y_true=labels, probabilities=probabilities, class_names=CLASS_NAMES)
    metrics["image_size"] = image_size
    metrics["images_sha256"] = list(rows["sha256"])
    return metrics
