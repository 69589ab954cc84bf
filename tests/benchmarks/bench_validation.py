"""Validation speed on the real MRI dataset: full validation vs a plain parallel read + decode + sha256.

Run on demand: `make bench` (pytest), or `python -m tests.benchmarks.bench_validation [FOLDER]`.
Both sides run as fresh processes on the same files with one worker process per core, side by side in one run,
so interpreter start-up and imports (Great Expectations included) count on both sides. Target: ratio <= 2.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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


def print_figures(figures: dict[str, float]) -> None:
    print(
        f"\nvalidation benchmark on {figures['images']} images:\n"
        f"  plain parallel read+decode+sha256: {figures['plain_seconds']:.1f} s "
        f"({figures['images'] / figures['plain_seconds']:.0f} img/s)\n"
        f"  full validation (tumorops validate): {figures['validation_seconds']:.1f} s "
        f"({figures['images'] / figures['validation_seconds']:.0f} img/s)\n"
        f"  ratio validation/plain: {figures['ratio']:.2f} (target <= 2.0)\n"
        f"  found: {figures['exact_duplicate_groups']} exact-duplicate groups, "
        f"{figures['near_duplicate_groups']} near-duplicate groups, {figures['rejected']} rejected"
    )


@pytest.mark.benchmark
@pytest.mark.skipif(not DATASET.is_dir(), reason=f"dataset not found at {DATASET}")
def test_validation_within_twice_plain_decode() -> None:
    figures = measure(DATASET)
    print_figures(figures)
    assert figures["ratio"] <= 2.0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--plain":
        print(f"plain decode: {plain_decode(Path(sys.argv[2]))} files", flush=True)
    else:
        print_figures(measure(Path(sys.argv[1]) if len(sys.argv) > 1 else DATASET))
