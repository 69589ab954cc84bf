"""Loads the production release named by `models/<name>/production.json` from S3, verified by sha256."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from infra.release import download_release, read_pointer
from infra.storage import ObjectStore

logger = logging.getLogger("tumorops.serving")


@dataclass(frozen=True)
class LoadedModel:
    """A verified, warmed-up release ready to answer requests."""

    version: str
    labels: tuple[str, ...]
    image_size: int
    info: dict[str, Any]
    pointer: dict[str, Any]
    model: Any

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict(batch, verbose=0))


def load_release(store: ObjectStore, pointer: dict[str, Any], cache_dir: Path) -> LoadedModel:
    """Download, verify, load and warm up the release a pointer names.

    The files land in a fresh folder first and are moved into the cache only once every sha256 matched.
    """
    import keras

    version = str(pointer["version"])
    final = cache_dir / version
    staging = cache_dir / f".{version}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    info = download_release(store, pointer, staging)
    shutil.rmtree(final, ignore_errors=True)
    staging.replace(final)
    model = keras.saving.load_model(final / info.get("model_file", "model.keras"), compile=False)
    image_size = int(info["image_size"])
    model.predict(np.zeros((1, image_size, image_size, 3), np.float32), verbose=0)  # warm-up
    return LoadedModel(
        version=version, labels=tuple(info["labels"]), image_size=image_size, info=info, pointer=pointer, model=model
    )


def newer_pointer(store: ObjectStore, model_name: str, current: LoadedModel | None) -> dict[str, Any] | None:
    """The production pointer when it names something other than what is loaded, else None."""
    pointer = read_pointer(store, model_name)
    if pointer is None:
        return None
    if current is not None and current.pointer.get("model_json_sha256") == pointer.get("model_json_sha256"):
        return None
    return pointer
