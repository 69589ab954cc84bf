"""Deterministic, leakage-free split assignment.

The split of an image is a pure function of its group key, so a group never spans two splits and adding data
never moves an existing image to another split.
"""

from __future__ import annotations

import hashlib

SPLITS = ("train", "val", "test")


def assign_split(group_key: str, *, val_fraction: float = 0.15, test_fraction: float = 0.15) -> str:
    """Split name for a group key.

    Args:
        group_key: the group's identity (an exact hash, or the representative of near-duplicates).
        val_fraction: share of groups in validation.
        test_fraction: share of groups in test.
    """
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError("val_fraction and test_fraction must be >= 0 and sum to less than 1")
    digest = hashlib.sha256(f"split-v1:{group_key}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    if position < test_fraction:
        return "test"
    if position < test_fraction + val_fraction:
        return "val"
    return "train"
