"""Dataset manifests: every accepted image with its label, group and split, under a content-derived version."""

from __future__ import annotations

import hashlib

import pandas as pd

from tumor_model.splits import assign_split

MANIFEST_COLUMNS = ["sha256", "ext", "label", "split", "group", "source_batch", "width", "height"]


def image_key(sha256: str, ext: str) -> str:
    """S3 key of an accepted image in the content-addressed store."""
    return f"datasets/images/{sha256}.{ext}"


def build_manifest(accepted: pd.DataFrame) -> pd.DataFrame:
    """One row per distinct image, with its split.

    Exact duplicates collapse onto one row (the first batch that brought the image is its source).

    Args:
        accepted: rows with columns sha256, ext, label, source_batch, width, height.
    """
    if accepted.empty:
        return pd.DataFrame(columns=MANIFEST_COLUMNS)
    rows = accepted.sort_values(["source_batch", "sha256"]).drop_duplicates("sha256", keep="first").copy()
    rows["group"] = rows["sha256"]
    rows["split"] = [assign_split(group) for group in rows["group"]]
    return rows[MANIFEST_COLUMNS].sort_values("sha256").reset_index(drop=True)


def dataset_version(manifest: pd.DataFrame) -> str:
    """A version id that changes whenever an image, a label or a split changes."""
    digest = hashlib.sha256()
    for sha256, label, split in manifest[["sha256", "label", "split"]].itertuples(index=False):
        digest.update(f"{sha256}:{label}:{split}\n".encode())
    return f"ds-{digest.hexdigest()[:12]}"
