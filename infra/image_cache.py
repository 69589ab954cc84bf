"""A local, content-addressed cache of the dataset images a manifest names (read from S3 once)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from infra.storage import ObjectStore, sha256_file
from tumor_model.dataset import image_key


class CorruptImageStoreError(RuntimeError):
    """An image in `datasets/images/` does not match the sha256 it is stored under."""


def cached_image_path(cache: Path, row: Any) -> Path:
    return cache / f"{row.sha256}.{row.ext}"


def fetch_manifest_images(store: ObjectStore, manifest: Any, cache: Path, *, log: Callable[[str], None] = print) -> int:
    """Download every image of `manifest` (rows with `sha256`, `ext`) that the cache lacks; return how many.

    Each download is checked against its sha256 before it is kept.
    """
    missing = [row for row in manifest.itertuples() if not cached_image_path(cache, row).exists()]
    log(f"image cache {cache}: {len(manifest) - len(missing)} cached, {len(missing)} to download")
    for count, row in enumerate(missing, start=1):
        target = cached_image_path(cache, row)
        key = image_key(row.sha256, row.ext)
        store.download_file(key, target)
        if sha256_file(target) != row.sha256:
            target.unlink()
            raise CorruptImageStoreError(f"{store.uri(key)} does not match its sha256: the image store is corrupt")
        if count % 200 == 0:
            log(f"downloaded {count}/{len(missing)} images")
    return len(missing)
