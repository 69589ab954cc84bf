"""Per-image profile rows: what the validation suite, duplicate detection and the UI look at.

Profiling never raises for bad image data: every problem becomes a value in the row, so that one broken upload is
reported with its reason instead of stopping the batch.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tumor_model.labels import canonical_label
from tumor_model.preprocessing import MAX_IMAGE_PIXELS, ImageDecodeError, open_image, to_rgb

# Intensity below which a pixel counts as background (near-black) on the 0-255 scale.
DARK_LEVEL = 10
# Statistics and the perceptual hash do not need full resolution: JPEGs are decoded at a reduced DCT scale.
STATS_SIDE = 128
_BIT_DEPTH = {
    "1": 1,
    "L": 8,
    "P": 8,
    "RGB": 8,
    "RGBA": 8,
    "LA": 8,
    "CMYK": 8,
    "YCbCr": 8,
    "I;16": 16,
    "I;16B": 16,
    "I;16L": 16,
    "I": 32,
    "F": 32,
}


@dataclass(frozen=True)
class ImageProfile:
    """One row of the image-metadata table."""

    path: str
    label_folder: str
    label: str | None
    file_size: int
    sha256: str
    format: str | None = None
    mode: str | None = None
    bit_depth: int | None = None
    width: int | None = None
    height: int | None = None
    pixels: int | None = None
    exif_orientation: int | None = None
    phash: str | None = None
    mean_intensity: float | None = None
    std_intensity: float | None = None
    dark_fraction: float | None = None
    truncated: bool = False
    decode_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _dct_matrix(n: int) -> np.ndarray:
    k, i = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    return 2.0 * np.cos(np.pi * k * (2 * i + 1) / (2 * n))


_DCT32 = _dct_matrix(32)


def perceptual_hash(gray: Image.Image) -> str:
    """64-bit perceptual hash (pHash) as 16 hex digits, bit-identical to `imagehash.phash`.

    The 8x8 lowest frequencies of the 32x32 DCT-II, thresholded at their median. Written with numpy so that
    worker processes need not import scipy.
    """
    pixels = np.asarray(gray.convert("L").resize((32, 32), Image.Resampling.LANCZOS), dtype=np.float64)
    low = (_DCT32 @ pixels @ _DCT32.T)[:8, :8]
    bits = (low > np.median(low)).flatten()
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


def _is_truncation(error: Exception) -> bool:
    message = str(error).lower()
    return "truncat" in message or "eof" in message or "premature end" in message


def profile_image_bytes(
    data: bytes, *, path: str, label_folder: str, max_pixels: int = MAX_IMAGE_PIXELS
) -> ImageProfile:
    """Profile one image given its bytes.

    Args:
        data: the file's bytes.
        path: where the file came from (relative path or S3 key), the row's identity.
        label_folder: the name of the folder the file was found in.
        max_pixels: images declaring more pixels are not decoded (decompression bombs).
    """
    common: dict[str, Any] = {
        "path": path,
        "label_folder": label_folder,
        "label": canonical_label(label_folder),
        "file_size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    try:
        image = open_image(data)
    except ImageDecodeError as error:
        if data and _is_truncation(error):  # cut off inside the header
            return ImageProfile(**common, truncated=True)
        return ImageProfile(**common, decode_error=str(error))
    header = {
        "format": image.format,
        "mode": image.mode,
        "bit_depth": image.info.get("bits_stored") or _BIT_DEPTH.get(image.mode),
        "width": image.width,
        "height": image.height,
        "pixels": image.width * image.height,
    }
    if image.width * image.height > max_pixels:
        # Not decoded at all (a decompression bomb); the pixel-count expectation rejects it.
        return ImageProfile(**common, **header)
    try:
        orientation = image.getexif().get(0x0112) if hasattr(image, "getexif") else None
        if image.format == "JPEG":
            image.draft(image.mode, (STATS_SIDE, STATS_SIDE))
        image.load()
    except Exception as error:  # PIL raises many unrelated types for bad bytes
        if _is_truncation(error):
            return ImageProfile(**common, **header, truncated=True)
        return ImageProfile(**common, **header, decode_error=f"{type(error).__name__}: {error}")
    gray_image = to_rgb(image).convert("L")
    gray = np.asarray(gray_image, dtype=np.float32)
    return ImageProfile(
        **common,
        **header,
        exif_orientation=int(orientation) if orientation else None,
        phash=perceptual_hash(gray_image),
        mean_intensity=round(float(gray.mean()), 3),
        std_intensity=round(float(gray.std()), 3),
        dark_fraction=round(float((gray < DARK_LEVEL).mean()), 4),
    )


def find_images(root: Path) -> list[tuple[Path, str]]:
    """Every file below `root` laid out as `<label>/<file>` (hidden files skipped), with its folder name."""
    found: list[tuple[Path, str]] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for file in sorted(folder.rglob("*")):
            if file.is_file() and not any(part.startswith(".") for part in file.relative_to(root).parts):
                found.append((file, folder.name))
    return found


def _profile_file(item: tuple[str, str, str]) -> ImageProfile:
    file, relative, label_folder = item
    return profile_image_bytes(Path(file).read_bytes(), path=relative, label_folder=label_folder)


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def parallel_map(
    function: Callable[[Any], Any],
    items: list[Any],
    *,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Any]:
    """`map` over processes (one per core by default), in order, reporting progress; serial for one worker."""
    workers = workers or default_workers()
    results: list[Any] = []
    stream: Iterable[Any]
    if workers == 1 or len(items) < 2:
        stream = map(function, items)
        for result in stream:
            results.append(result)
            if progress:
                progress(len(results), len(items))
        return results
    chunk = max(1, min(64, len(items) // (workers * 8) or 1))
    # spawn, not fork: callers (Dagster runs, servers) have threads, and forking a threaded process can deadlock.
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for result in pool.map(function, items, chunksize=chunk):
            results.append(result)
            if progress:
                progress(len(results), len(items))
    return results


def profile_folder(
    root: Path, *, workers: int | None = None, progress: Callable[[int, int], None] | None = None
) -> list[ImageProfile]:
    """Profile every image of a local `<label>/<file>` folder, one process per core.

    Args:
        root: folder laid out as `<label>/<file>`.
        workers: processes (default: the usable cores).
        progress: called with (done, total) as images are profiled.
    """
    items = [(str(file), file.relative_to(root).as_posix(), label) for file, label in find_images(root)]
    return parallel_map(_profile_file, items, workers=workers, progress=progress)


def _profile_payload(item: tuple[bytes, str, str]) -> ImageProfile:
    data, path, label_folder = item
    return profile_image_bytes(data, path=path, label_folder=label_folder)


def profile_payloads(payloads: list[tuple[bytes, str, str]], *, workers: int | None = None) -> list[ImageProfile]:
    """Profile (bytes, path, label folder) triples already in memory, one process per core."""
    return parallel_map(_profile_payload, payloads, workers=workers)
