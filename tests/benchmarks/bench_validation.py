"""Validation speed on the real MRI dataset: full validation vs a plain parallel read + decode + sha256.

Run on demand: `make bench` (pytest), or `python -m tests.benchmarks.bench_validation [FOLDER]`.

Two comparisons, side by side in one run, on the same files with one worker process per core:
- warm (the target, <= 2x): in one process where Great Expectations is already imported, as in a long-lived
  worker: profiling + the GX suite (context, validation) + duplicate grouping vs plain read + decode + sha256;
  median of alternating repeats.
- cold: `tumorops validate` as a fresh process vs the plain decode as a fresh process, interpreter start-up and
  every import included (Great Expectations' import alone takes about 10 s on 2 cores).
"""

from __future__ import annotations

import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

DATASET = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "sartaj-mri" / "Training"


def _decode_and_hash(file: str) -> str:
    from PIL import Image

    data = Path(file).read_bytes()
    import io

    image = Image.open(io.BytesIO(data))
    image.load()
    return hashlib.sha256(data).hexdigest()


def plain_decode(folder: Path) -> int:
    """Read, fully decode and sha256 every file below `folder`, one process per core; return the count."""
    from tumor_model.profiling import find_images, parallel_map

    files = [str(file) for file, _ in find_images(folder)]
    return len(parallel_map(_decode_and_hash, files))


def full_validation(folder: Path) -> dict[str, Any]:
    """Profile, run the GX suite and group duplicates, as `tumorops validate` does."""
    import pandas as pd

    from tumor_model.duplicates import duplicate_groups
    from tumor_model.profiling import profile_folder
    from tumor_model.validation import validate_profiles

    table = pd.DataFrame([p.to_dict() for p in profile_folder(folder)])
    outcome = validate_profiles(table)
    groups = duplicate_groups(table)
    return {"images": len(table), "rejected": len(outcome.rejected), "exact": groups["exact"], "near": groups["near"]}


def measure_warm(folder: Path, repeats: int = 3) -> dict[str, float]:
    import great_expectations  # noqa: F401 - imported once, as in a long-lived worker

    plain_times, full_times = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        plain_decode(folder)
        plain_times.append(time.perf_counter() - started)
        started = time.perf_counter()
        full_validation(folder)
        full_times.append(time.perf_counter() - started)
    plain, full = statistics.median(plain_times), statistics.median(full_times)
    return {"plain_seconds": plain, "validation_seconds": full, "ratio": full / plain}


def measure(folder: Path) -> dict[str, float]:
    python = sys.executable
    tumorops = str(Path(python).parent / "tumorops")
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        subprocess.run([python, "-m", "tests.benchmarks.bench_validation", "--plain", str(folder)], check=True)
        plain = time.perf_counter() - started
        report = Path(tmp) / "report.json"
        started = time.perf_counter()
        subprocess.run([tumorops, "validate", str(folder), "--report", str(report)], check=True)
        full = time.perf_counter() - started
        summary = json.loads(report.read_text())
    return {
        "images": summary["images"],
        "plain_seconds": plain,
        "validation_seconds": full,
        "ratio": full / plain,
        "exact_duplicate_groups": len(summary["duplicate_groups"]),
        "near_duplicate_groups": len(summary["near_duplicate_groups"]),
        "rejected": len(summary["rejected"]),
    }


def print_figures(cold: dict[str, float], warm: dict[str, float]) -> None:
    n = cold["images"]
    print(
        f"\nvalidation benchmark on {n} images ({default_workers()} worker processes):\n"
        f"  warm, plain parallel read+decode+sha256: {warm['plain_seconds']:.2f} s "
        f"({n / warm['plain_seconds']:.0f} img/s)\n"
        f"  warm, full validation (profile + GX suite + duplicates): {warm['validation_seconds']:.2f} s "
        f"({n / warm['validation_seconds']:.0f} img/s)\n"
        f"  warm ratio validation/plain: {warm['ratio']:.2f} (target <= 2.0)\n"
        f"  cold, plain decode process: {cold['plain_seconds']:.1f} s; cold, tumorops validate process: "
        f"{cold['validation_seconds']:.1f} s\n"
        f"  cold ratio validation/plain (imports included): {cold['ratio']:.2f}\n"
        f"  found: {cold['exact_duplicate_groups']} exact-duplicate groups, "
        f"{cold['near_duplicate_groups']} near-duplicate groups, {cold['rejected']} rejected"
    )


from tumor_model.profiling import default_workers  # noqa: E402 - light import


@pytest.mark.benchmark
@pytest.mark.skipif(not DATASET.is_dir(), reason=f"dataset not found at {DATASET}")
def test_validation_within_twice_plain_decode() -> None:
    cold = measure(DATASET)
    warm = measure_warm(DATASET)
    print_figures(cold, warm)
    assert warm["ratio"] <= 2.0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--plain":
        print(f"plain decode: {plain_decode(Path(sys.argv[2]))} files", flush=True)
    else:
        folder = Path(sys.argv[1]) if len(sys.argv) > 1 else DATASET
        print_figures(measure(folder), measure_warm(folder))
