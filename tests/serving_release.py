"""Releases of a tiny EfficientNetB3 for serving tests: built once, published in the real release format."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from infra.release import release_prefix, upload_release, write_pointer
from infra.runtime_release import measure_runtimes
from infra.storage import ObjectStore
from tumor_model.labels import CLASS_NAMES
from tumor_model.preprocessing import PREPROCESSING_ID

IMAGE_SIZE = 32


@dataclass(frozen=True)
class TinyRelease:
    """Files of one tiny model (Keras, OpenVINO, ONNX) and its measured runtime parity."""

    files: dict[str, Path]
    runtimes: dict[str, Any]


def build_tiny_release(directory: Path, *, seed: int = 0) -> TinyRelease:
    """A 32-pixel EfficientNetB3 classifier with random weights, its exports and their parity on random images."""
    import keras

    from tumor_model.model import build_classifier
    from tumor_model.runtimes import write_exports

    keras.utils.set_random_seed(seed)
    model = build_classifier(num_classes=len(CLASS_NAMES), image_size=IMAGE_SIZE)
    directory.mkdir(parents=True, exist_ok=True)
    keras_file = directory / "model.keras"
    model.save(keras_file)
    exports = write_exports(model, directory)
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (48, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32)
    runtimes = measure_runtimes(model, directory, images, rng.integers(0, len(CLASS_NAMES), 48), log=lambda _: None)
    files = {"model.keras": keras_file, **exports}
    return TinyRelease(files=files, runtimes=runtimes)


def publish(
    store: ObjectStore,
    release: TinyRelease,
    *,
    model_name: str,
    version: str,
    referral_confidence: float = 0.5,
    point: bool = True,
    image_size: int = IMAGE_SIZE,
) -> dict[str, Any]:
    """Upload `release` as `version` and, when `point`, make it production; return model.json."""
    model_json = upload_release(
        store,
        model_name=model_name,
        version=version,
        files=release.files,
        model_info={
            "labels": list(CLASS_NAMES),
            "image_size": image_size,
            "preprocessing": PREPROCESSING_ID,
            "dataset_version": "ds-test",
            "metrics": {"test_accuracy": 0.25},
            "referral_confidence": referral_confidence,
            "model_file": "model.keras",
            "runtimes": release.runtimes,
        },
    )
    if point:
        write_pointer(store, model_name=model_name, version=version, approved_by="test", reason="serving test")
    return model_json


def corrupt(store: ObjectStore, *, model_name: str, version: str) -> None:
    """Replace the release's Keras file with other bytes, so its sha256 no longer matches model.json."""
    store.put_bytes(release_prefix(model_name, version) + "model.keras", b"not the released model")
