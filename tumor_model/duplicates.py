"""Exact and near-duplicate detection, and label conflicts, over profile tables.

Near-duplicates are images whose 64-bit perceptual hashes differ in at most `max_distance` bits: the same slice
re-encoded, resized or lightly edited. They are grouped transitively (union-find), so a chain of small edits
lands in one group.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd

DEFAULT_MAX_DISTANCE = 4


def phash_array(hashes: list[str]) -> np.ndarray:
    """Hex perceptual hashes as uint64."""
    return np.array([int(h, 16) for h in hashes], dtype=np.uint64)


def near_duplicate_pairs(
    hashes: np.ndarray, *, max_distance: int = DEFAULT_MAX_DISTANCE, block: int = 2048
) -> list[tuple[int, int]]:
    """Index pairs (i < j) whose hashes are within `max_distance` bits, computed in blocks to bound memory."""
    pairs: list[tuple[int, int]] = []
    n = len(hashes)
    for start in range(0, n, block):
        rows = hashes[start : start + block]
        distances = np.bitwise_count(rows[:, None] ^ hashes[None, :])
        i, j = np.nonzero(distances <= max_distance)
        i = i + start
        keep = i < j
        pairs.extend(zip(i[keep].tolist(), j[keep].tolist(), strict=True))
    return pairs


class UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def duplicate_groups(table: pd.DataFrame, *, max_distance: int = DEFAULT_MAX_DISTANCE) -> dict[str, list[list[str]]]:
    """Exact duplicate groups (same sha256) and near-duplicate groups (distinct files within the hash distance).

    Args:
        table: profile rows with `path`, `sha256` and `phash` (rows without a hash are ignored).
        max_distance: largest Hamming distance between perceptual hashes that counts as a near-duplicate.

    Returns:
        `exact`: lists of paths with identical bytes; `near`: lists of paths of two or more distinct images
        (by sha256) that are near-duplicates of each other.
    """
    exact = [sorted(paths) for _, paths in table.groupby("sha256")["path"] if len(paths) > 1]
    hashed = table[table["phash"].notna()].drop_duplicates("sha256").reset_index(drop=True)
    groups = UnionFind(len(hashed))
    for i, j in near_duplicate_pairs(phash_array(list(hashed["phash"])), max_distance=max_distance):
        groups.union(i, j)
    members: dict[int, list[int]] = defaultdict(list)
    for index in range(len(hashed)):
        members[groups.find(index)].append(index)
    by_sha = table.groupby("sha256")["path"].apply(sorted).to_dict()
    near = []
    for indexes in members.values():
        if len(indexes) > 1:
            near.append(sorted(path for i in indexes for path in by_sha[hashed.loc[i, "sha256"]]))
    return {"exact": sorted(exact), "near": sorted(near)}


def label_conflicts(table: pd.DataFrame, known_labels: dict[str, str] | None = None) -> set[str]:
    """Paths whose exact content appears under another label, in this table or among `known_labels` (sha -> label)."""
    known_labels = known_labels or {}
    labelled = table[table["label"].notna()]
    labels_by_sha: dict[str, set[str]] = defaultdict(set)
    for sha, label in zip(labelled["sha256"], labelled["label"], strict=True):
        labels_by_sha[sha].add(label)
    for sha, label in known_labels.items():
        if sha in labels_by_sha:
            labels_by_sha[sha].add(label)
    conflicted = {sha for sha, labels in labels_by_sha.items() if len(labels) > 1}
    return set(table.loc[table["sha256"].isin(conflicted), "path"])
