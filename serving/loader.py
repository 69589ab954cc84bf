"""Loads the production release named by `models/<name>/production.json` from S3, verified by sha256.

A release is downloaded into a staging folder, every file checked against `model.json`, then loaded, given its
runtime (`tumor_model.runtimes.choose_runtime`) and warmed up. Only a release that passed all of that is handed to
the service, which swaps it in with one reference assignment.
"""

from __future__ import annotations

import logging
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from infra.release import download_release, read_pointer
from infra.storage import ObjectStore
from tumor_model.runtimes import (
    KERAS,
    RUNTIMES,
    Predictor,
    choose_runtime,
    cpu_supports,
    eligible_runtimes,
    load_predictor,
    time_exports,
)

logger = logging.getLogger("tumorops.serving")

# Images per timed call when the service compares runtimes: the adaptive batcher's batch size under load.
PROBE_BATCH = 8


class ReleaseLoadError(RuntimeError):
    """A release could not be made ready to serve; the service keeps what it has."""


@dataclass
class LoadedModel:
    """A verified, warmed-up release ready to answer requests."""

    version: str
    labels: tuple[str, ...]
    image_size: int
    info: dict[str, Any]
    pointer: dict[str, Any]
    keras_model: Any
    predictor: Predictor
    runtime_reason: str
    _explainer: Any = field(default=None, repr=False)
    _explainer_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def runtime(self) -> str:
        return self.predictor.name

    @property
    def referral_confidence(self) -> float:
        return float(self.info.get("referral_confidence") or 0.0)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities of a batch of preprocessed images."""
        return self.predictor.predict(batch)

    def explainer(self) -> Any:
        """Grad-CAM on the Keras model (built on first use: most deployments never call /explain)."""
        with self._explainer_lock:
            if self._explainer is None:
                from tumor_model.explain import GradCam

                self._explainer = GradCam(self.keras_model)
            return self._explainer


def load_release(
    store: ObjectStore,
    pointer: dict[str, Any],
    cache_dir: Path,
    *,
    runtime: str = "auto",
    lanes: int | None = None,
) -> LoadedModel:
    """Download, verify, load and warm up the release a pointer names.

    Args:
        store: the bucket.
        pointer: the content of `production.json`.
        cache_dir: where releases are kept locally (one folder per version).
        runtime: `auto` (the fastest here of the runtimes that passed parity, timed on this machine) or a runtime
            name (see `tumor_model.runtimes.RUNTIMES`).
        lanes: parallel workers per batch (None: one per core).

    Raises:
        ReleaseVerificationError: a file does not match its sha256.
        ReleaseLoadError: the files verify but do not load or do not answer.
    """
    import keras

    version = str(pointer["version"])
    final = cache_dir / version
    staging = cache_dir / f".{version}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    info = download_release(store, pointer, staging)
    shutil.rmtree(final, ignore_errors=True)
    staging.replace(final)
    try:
        image_size = int(info["image_size"])
        labels = tuple(info["labels"])
        keras_model = keras.saving.load_model(final / info.get("model_file", "model.keras"), compile=False)
        parity = info.get("runtimes") or {}
        supported = {name: _supported(name) for name in RUNTIMES}
        timed: dict[str, tuple[Predictor, float]] = {}
        if runtime == "auto":
            timed = time_exports(
                eligible_runtimes(parity=parity, supported=supported),
                final,
                image_size=image_size,
                batch=PROBE_BATCH,
                lanes=lanes,
                log=logger.warning,
            )
        if timed:
            speeds_here = ", ".join(f"{name} {speed:.1f} images/s" for name, (_, speed) in timed.items())
            logger.info("release %s, runtime speeds here at batch %d: %s", version, PROBE_BATCH, speeds_here)
        speeds = {name: speed for name, (_, speed) in timed.items()}
        chosen, reason = choose_runtime(requested=runtime, parity=parity, supported=supported, speeds=speeds)
        predictor = (
            timed[chosen][0] if chosen in timed else load_predictor(chosen, final, keras_model=keras_model, lanes=lanes)
        )
        warm = predictor.predict(np.zeros((1, image_size, image_size, 3), np.float32))
    except (KeyError, ValueError, OSError, RuntimeError) as error:
        raise ReleaseLoadError(f"release {version} does not load: {type(error).__name__}: {error}") from error
    if warm.shape != (1, len(labels)) or not np.all(np.isfinite(warm)):
        raise ReleaseLoadError(
            f"release {version} answers with shape {warm.shape} for {len(labels)} labels, or non-finite values"
        )
    logger.info("release %s: runtime %s (%s)", version, chosen, reason)
    return LoadedModel(
        version=version,
        labels=labels,
        image_size=image_size,
        info=info,
        pointer=pointer,
        keras_model=keras_model,
        predictor=predictor,
        runtime_reason=reason,
    )


def _supported(runtime: str) -> bool:
    try:
        return cpu_supports(runtime)
    except (ImportError, RuntimeError) as error:
        logger.warning("cannot query OpenVINO for %s: %s", runtime, error)
        return runtime == KERAS


def newer_pointer(store: ObjectStore, model_name: str, current: LoadedModel | None) -> dict[str, Any] | None:
    """The production pointer when it names something other than what is loaded, else None."""
    pointer = read_pointer(store, model_name)
    if pointer is None:
        return None
    if current is not None and current.pointer.get("model_json_sha256") == pointer.get("model_json_sha256"):
        return None
    return pointer
