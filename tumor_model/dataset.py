"""Dataset manifests: every accepted image with its label, group and split, under a content-derived version.

An image's group is its exact hash merged with its near-duplicates (perceptual hash). Groups, once assigned, are
kept from the previous manifest, so adding data never moves an existing image to another split. A new image
whose near-duplicates already sit in two different splits would leak between them; it is left out of the
manifest and reported instead.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

import pandas as pd

from tumor_model.duplicates import DEFAULT_MAX_DISTANCE, near_duplicate_pairs, phash_array
from tumor_model.splits import assign_split

MANIFEST_COLUMNS = ["sha256", "ext", "label", "split", "group", "source_batch", "width", "height", "phash"]


def image_key(sha256: str, ext: str) -> str:
    """S3 key of an accepted image in the content-addressed store."""
    return f"datasets/images/{sha256}.{ext}"


def build_manifest(
    accepted: pd.DataFrame,
    *,
    previous: pd.DataFrame | None = None,
    max_distance: int = DEFAULT_MAX_DISTANCE,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One row per distinct image with its group and split, and the rows left out because they bridge splits.

    Args:
        accepted: rows with columns sha256, ext, label, source_batch, width, height, phash.
        previous: the previous manifest; its images keep their groups (and therefore their splits).
        max_distance: perceptual-hash bits within which two images are near-duplicates.
    """
    if accepted.empty:
        return pd.DataFrame(columns=MANIFEST_COLUMNS), pd.DataFrame(columns=MANIFEST_COLUMNS)
    rows = accepted.sort_values(["source_batch", "sha256"]).drop_duplicates("sha256", keep="first")
    rows = rows.reset_index(drop=True).copy()
    known = dict(zip(previous["sha256"], previous["group"], strict=True)) if previous is not None else {}

    neighbours: dict[int, list[int]] = defaultdict(list)
    with_hash = rows.index[rows["phash"].notna()].to_numpy()
    pairs = near_duplicate_pairs(phash_array(list(rows.loc[with_hash, "phash"])), max_distance=max_distance)
    for i, j in pairs:
        a, b = int(with_hash[i]), int(with_hash[j])
        neighbours[a].append(b)
        neighbours[b].append(a)

    groups: dict[int, str] = {i: known[sha] for i, sha in enumerate(rows["sha256"]) if sha in known}
    bridging: list[int] = []
    for i in range(len(rows)):
        if i in groups:
            continue
        joined = {groups[j] for j in neighbours[i] if j in groups}
        if not joined:
            groups[i] = rows.loc[i, "sha256"]
        elif len({assign_split(g) for g in joined}) == 1:
            groups[i] = min(joined)
        else:
            bridging.append(i)
    rows["group"] = [groups.get(i) for i in range(len(rows))]
    rows["split"] = [assign_split(g) if g is not None else None for g in rows["group"]]
    excluded = rows.loc[bridging, MANIFEST_COLUMNS].reset_index(drop=True)
    manifest = rows.drop(index=bridging)[MANIFEST_COLUMNS].sort_values("sha256").reset_index(drop=True)
    return manifest, excluded


def dataset_version(manifest: pd.DataFrame) -> str:
    """A version id that changes whenever an image, a label or a split changes."""
    digest = hashlib.sha256()
    for sha256, label, split in manifest[["sha256", "label", "split"]].itertuples(index=False):
        digest.update(f"{sha256}:{label}:{split}\n".encode())
    return f"ds-{digest.hexdigest()[:12]}"
