"""Release-time exports for fast CPU serving: the OpenVINO IR and ONNX graph of a version, and their parity figures.

Promotion calls `export_runtimes` before it uploads a release. The figures are measured on the test split of the
dataset the gates used, recorded in `model.json` under `runtimes`, and read by the service to decide which runtime
may answer (`tumor_model.runtimes.choose_runtime`).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from infra.image_cache import cached_image_path, fetch_manifest_images
from infra.storage import ObjectStore

PARITY_BATCH = 16


def _timed_predict(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray) -> tuple[np.ndarray, float]:
    """Probabilities for `images` in batches of `PARITY_BATCH`, and images per second (after one warm-up batch)."""
    predict(images[:PARITY_BATCH])
    started = time.perf_counter()
    outputs = [predict(images[i : i + PARITY_BATCH]) for i in range(0, len(images), PARITY_BATCH)]
    elapsed = time.perf_counter() - started
    return np.concatenate(outputs), len(images) / elapsed if elapsed > 0 else float("inf")


def measure_runtimes(
    model: Any, exports_dir: Path, images: np.ndarray, y_true: np.ndarray, *, log: Callable[[str], None] = print
) -> dict[str, Any]:
    """Every runtime's parity with the Keras model, and its speed, on the same preprocessed images.

    Args:
        model: the Keras classifier.
        exports_dir: the folder `tumor_model.runtimes.write_exports` wrote its exports to.
        images: preprocessed images (n, side, side, 3).
        y_true: their class indices.
        log: progress messages.

    Returns:
        The `runtimes` entry of `model.json`: runtime name -> figures (exports: `ParityReport.to_dict()` plus
        images/s and the speed-up over Keras, measured on the promoting machine at batch 16).
    """
    from tumor_model.runtimes import EXPORTED_RUNTIMES, KERAS, KerasPredictor, load_predictor, parity_report

    reference, keras_speed = _timed_predict(KerasPredictor(model).predict, images)
    runtimes: dict[str, Any] = {
        KERAS: {
            "images": len(images),
            "accuracy": round(float(np.mean(reference.argmax(1) == y_true)), 6),
            "images_per_second": round(keras_speed, 2),
        }
    }
    for runtime in EXPORTED_RUNTIMES:
        predictor = load_predictor(runtime, exports_dir, keras_model=model)
        outputs, speed = _timed_predict(predictor.predict, images)
        report = parity_report(
            runtime=runtime,
            effective_precision=predictor.effective_precision,
            reference=reference,
            candidate=outputs,
            y_true=y_true,
        )
        runtimes[runtime] = {
            **report.to_dict(),
            "images_per_second": round(speed, 2),
            "speedup_over_keras": round(speed / keras_speed, 2),
        }
        log(f"{runtime}: {report.reason}; {speed:.1f} images/s ({speed / keras_speed:.2f}x Keras)")
    return runtimes


def export_runtimes(
    keras_file: Path,
    workdir: Path,
    *,
    store: ObjectStore,
    manifest_key: str | None,
    cache_dir: Path,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, Path], dict[str, Any]]:
    """Write every export of a Keras model and measure each runtime's parity on the test split.

    Args:
        keras_file: the version's `.keras` archive.
        workdir: scratch folder for the export.
        store: the bucket (test images are read through the local image cache).
        manifest_key: the dataset manifest the gates scored; None when no gate ran (no parity is measured then,
            so only Keras may serve the release).
        cache_dir: local image cache.
        log: progress messages.

    Returns:
        Release-relative file name -> local file, and the `runtimes` entry of `model.json`.
    """
    import keras
    import pandas as pd

    from tumor_model.labels import class_index
    from tumor_model.runtimes import EXPORTED_RUNTIMES, KERAS, write_exports
    from tumor_model.scoring import decode_rows, model_input_size

    model = keras.saving.load_model(keras_file, compile=False)
    log("exporting the model for OpenVINO and ONNX Runtime")
    files = write_exports(model, workdir)
    if manifest_key is None:
        runtimes: dict[str, Any] = {KERAS: {}}
        for runtime in EXPORTED_RUNTIMES:
            runtimes[runtime] = {"passed": False, "reason": "no test split to measure parity on"}
        return files, runtimes
    manifest = pd.read_parquet(io.BytesIO(store.get_bytes(manifest_key)))
    rows = manifest[manifest["split"] == "test"].sort_values("sha256")
    fetch_manifest_images(store, rows, cache_dir, log=log)
    images = decode_rows(
        rows, image_path=lambda row: cached_image_path(cache_dir, row), image_size=model_input_size(model)
    )
    y_true = np.array([class_index(label) for label in rows["label"]], dtype=int)
    log(f"measuring runtime parity on {len(rows)} test images")
    return files, measure_runtimes(model, workdir, images, y_true, log=log)
