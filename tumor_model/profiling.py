"""Per-image profile rows: what validation rules, the Great Expectations suite and the UI look at."""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import imagehash
import numpy as np
from PIL import Image

from tumor_model.labels import canonical_label
from tumor_model.preprocessing import MAX_IMAGE_PIXELS, to_rgb

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass(frozen=True)
class ImageProfile:
    """One row of the image-metadata table."""

    path: str
    label_folder: str
    label: str | None
    file_size: int
    sha256: str
    format: str | None
    mode: str | None
    width: int | None
    height: int | None
    phash: str | None
    mean_intensity: float | None
    std_intensity: float | None
    decode_error: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def profile_image_bytes(data: bytes, *, path: str, label_folder: str) -> ImageProfile:
    """Profile one image given its bytes; never raises for bad image data (the error goes into the row).

    Args:
        data: the file's bytes.
        path: where the file came from (relative path or S3 key), used as the row's identity.
        label_folder: the name of the folder the file was found in.
    """
    common = {
        "path": path,
        "label_folder": label_folder,
        "label": canonical_label(label_folder),
        "file_size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    empty = dict.fromkeys(("format", "mode", "width", "height", "phash", "mean_intensity", "std_intensity"))
    if not data:
        return ImageProfile(**common, **empty, decode_error="empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            previous_limit = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
            try:
                image = Image.open(io.BytesIO(data))
                header = {"format": image.format, "mode": image.mode, "width": image.width, "height": image.height}
                image.load()
            finally:
                Image.MAX_IMAGE_PIXELS = previous_limit
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        return ImageProfile(**common, **empty, decode_error=f"decompression bomb: {error}")
    except Exception as error:  # PIL raises many unrelated types for bad bytes
        partial = {**empty, **locals().get("header", {})}
        return ImageProfile(**common, **partial, decode_error=f"{type(error).__name__}: {error}")
    rgb = to_rgb(image)
    gray = np.asarray(rgb.convert("L"), dtype=np.float32)
    return ImageProfile(
        **common,
        **header,
        phash=str(imagehash.phash(rgb)),
        mean_intensity=round(float(gray.mean()), 3),
        std_intensity=round(float(gray.std()), 3),
        decode_error=None,
    )


def find_images(root: Path) -> list[tuple[Path, str]]:
    """Every file below `root` laid out as `<label>/<file>` (hidden files skipped), with its folder name."""
    found: list[tuple[Path, str]] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for file in sorted(folder.rglob("*")):
            if file.is_file() and not file.name.startswith((".", "_")):
                found.append((file, folder.name))
    return found


def profile_folder(
    root: Path, *, workers: int = 4, progress: Callable[[int, int], None] | None = None
) -> list[ImageProfile]:
    """Profile every image of a local `<label>/<file>` folder, in parallel (PIL and numpy release the GIL).

    Args:
        root: folder laid out as `<label>/<file>`.
        workers: decoding threads.
        progress: called with (done, total) as images are profiled.
    """
    files = find_images(root)

    def one(item: tuple[Path, str]) -> ImageProfile:
        file, label_folder = item
        return profile_image_bytes(file.read_bytes(), path=file.relative_to(root).as_posix(), label_folder=label_folder)

    profiles: list[ImageProfile] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for profile in pool.map(one, files):
            profiles.append(profile)
            if progress:
                progress(len(profiles), len(files))
    return profiles
