"""Training speed: the real file pipeline vs the same model on synthetic in-memory tensors, side by side.

Run on demand: `make bench PYTEST_ARGS="-k training"` or `python -m tests.benchmarks.bench_training [FOLDER]`.

The same compiled EfficientNetB3 (the `cpu` profile's image size and batch size, or TUMOROPS_BENCH_* overrides)
trains on:
- files: `tumor_model.input_pipeline.training_dataset` over JPEG files (the real MRI folder when present, else
  synthetic 512x512 JPEGs): parallel decode through the shared preprocessing, augmentation, cache, prefetch;
  the first pass decodes (cold), later passes read the cache (warm);
- memory: the same number of images as float32 tensors already in memory, no decode, no augmentation.
Passes alternate (memory, files, memory, files, ...) so both see the same machine load; the medians of the warm
passes give the ratio. Target: files / memory >= 0.9 (the input pipeline never starves the model).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DATASET = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "sartaj-mri" / "Training"


def _files(folder: Path | None, count: int, work: Path) -> tuple[list[Path], np.ndarray]:
    from tumor_model.labels import CLASS_NAMES, canonical_label
    from tumor_model.synthetic import write_synthetic_dataset

    if folder is None or not folder.is_dir():
        write_synthetic_dataset(work, images_per_class=count // len(CLASS_NAMES) + 1, size=512)
        folder = work
    pairs = sorted((p, canonical_label(p.parent.name)) for p in folder.glob("*/*.jpg"))
    rng = np.random.default_rng(0)
    chosen = [pairs[i] for i in rng.choice(len(pairs), size=min(count, len(pairs)), replace=False)]
    return [p for p, _ in chosen], np.array([CLASS_NAMES.index(label) for _, label in chosen], np.int32)


def measure(folder: Path | None = DATASET, *, images: int | None = None, passes: int | None = None) -> dict:
    """Images/s of each pass for both inputs, on one compiled model."""
    import keras

    from tumor_model.input_pipeline import AugmentationSettings, in_memory_dataset, training_dataset
    from tumor_model.model import build_classifier
    from tumor_model.training_config import training_config

    config = training_config("cpu")
    size = int(os.environ.get("TUMOROPS_BENCH_IMAGE_SIZE", config.image_size))
    batch = int(os.environ.get("TUMOROPS_BENCH_BATCH_SIZE", config.batch_size))
    images = images or int(os.environ.get("TUMOROPS_BENCH_IMAGES", 320))
    passes = passes or int(os.environ.get("TUMOROPS_BENCH_PASSES", 3))
    with tempfile.TemporaryDirectory() as work:
        paths, labels = _files(folder, images, Path(work))
        files = training_dataset(
            paths, labels, image_size=size, batch_size=batch, seed=0, augmentation=AugmentationSettings()
        )
        rng = np.random.default_rng(0)
        memory = in_memory_dataset(
            rng.uniform(0, 255, (len(paths), size, size, 3)).astype(np.float32), labels, batch_size=batch, seed=0
        )
        keras.utils.set_random_seed(0)
        model = build_classifier(num_classes=4, image_size=size)
        model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="sparse_categorical_crossentropy")
        model.fit(memory.take(2), epochs=1, verbose=0)  # traces the train step once for both inputs

        def rate(dataset: object) -> float:
            started = time.perf_counter()
            model.fit(dataset, epochs=1, verbose=0)
            return len(paths) / (time.perf_counter() - started)

        figures: dict[str, list[float]] = {"memory": [], "files": []}
        for _ in range(passes):
            figures["memory"].append(rate(memory))
            figures["files"].append(rate(files))
    return {"image_size": size, "batch_size": batch, "images": len(paths), "real_data": folder == DATASET, **figures}


def print_figures(result: dict) -> float:
    cold = result["files"][0] / statistics.median(result["memory"])
    warm = statistics.median(result["files"][1:]) / statistics.median(result["memory"][1:])
    source = "sartaj-mri JPEGs" if result["real_data"] else "synthetic 512x512 JPEGs"
    print(
        f"\ntraining throughput, EfficientNetB3 {result['image_size']}px, batch {result['batch_size']}, "
        f"{result['images']} images ({source}), passes alternate memory/files:\n"
        f"  in-memory tensors   : {', '.join(f'{r:.1f}' for r in result['memory'])} images/s\n"
        f"  file pipeline       : {', '.join(f'{r:.1f}' for r in result['files'])} images/s "
        f"(first pass decodes, later ones read the cache)\n"
        f"  ratio files/memory, warm passes (median): {warm:.3f}  (target >= 0.9)\n"
        f"  ratio files/memory, first pass (decode) : {cold:.3f}",
        flush=True,
    )
    return warm


def test_file_pipeline_keeps_up_with_in_memory_training() -> None:
    ratio = print_figures(measure(DATASET if DATASET.is_dir() else None))
    assert ratio >= 0.9, f"the input pipeline starves the model: files/memory = {ratio:.3f}"


if __name__ == "__main__":
    print_figures(measure(Path(sys.argv[1]) if len(sys.argv) > 1 else DATASET))
