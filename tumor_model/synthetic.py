"""Deterministic synthetic brain MRI slices with a class-dependent lesion.

No download is ever needed for the demo or the tests: each image is a pure function of (label, index, seed).
The lesion's place carries the class, as in real scans: pituitary tumours sit at the sella (midline, low),
meningiomas grow from the meningeal surface (just inside the skull), gliomas inside the parenchyma with a
heterogeneous rim, and `no_tumor` slices have none.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from tumor_model.labels import CLASS_NAMES


def _seed_for(label: str, index: int, seed: int) -> int:
    digest = hashlib.sha256(f"{seed}:{label}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _blob(yy: np.ndarray, xx: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    """Soft-edged ellipse in [0, 1]."""
    d = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
    return np.clip(1.5 - d, 0.0, 1.0) ** 1.5


def synthetic_slice(*, label: str, index: int, size: int = 256, seed: int = 0) -> np.ndarray:
    """One synthetic axial slice as a uint8 grayscale array of shape (size, size).

    Args:
        label: canonical class name (see `CLASS_NAMES`).
        index: image number within the class; different numbers give different anatomy.
        size: width and height in pixels.
        seed: dataset seed; the same (label, index, seed) always gives the same pixels.
    """
    if label not in CLASS_NAMES:
        raise ValueError(f"unknown label {label!r}; expected one of {CLASS_NAMES}")
    rng = np.random.default_rng(_seed_for(label, index, seed))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size

    cy, cx = 0.5 + rng.normal(0, 0.02), 0.5 + rng.normal(0, 0.02)
    ry, rx = rng.uniform(0.36, 0.42), rng.uniform(0.30, 0.36)
    head = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
    skull = np.exp(-(((np.sqrt(head) - 1.0) / 0.035) ** 2))
    brain = (head < 0.86**2).astype(np.float32)

    # Parenchyma with low-frequency texture (grey/white matter) and two dark ventricles.
    texture = np.zeros_like(yy)
    for _ in range(6):
        fy, fx, ph = rng.uniform(4, 14), rng.uniform(4, 14), rng.uniform(0, 2 * np.pi)
        texture += np.sin(fy * yy * np.pi + ph) * np.cos(fx * xx * np.pi + ph) / 6
    image = brain * (0.42 + 0.08 * texture)
    for side in (-1, 1):
        image -= 0.25 * _blob(yy, xx, cy - 0.02, cx + side * 0.05, 0.09, 0.03) * brain
    image += 0.85 * skull

    ls = rng.uniform(0.8, 1.2)  # lesion scale
    if label == "pituitary":
        ly, lx = cy + ry * rng.uniform(0.35, 0.5), cx + rng.normal(0, 0.01)
        image += 0.55 * _blob(yy, xx, ly, lx, 0.05 * ls, 0.06 * ls)
    elif label == "meningioma":
        angle = rng.uniform(0, 2 * np.pi)
        ly, lx = cy + 0.8 * ry * np.sin(angle), cx + 0.8 * rx * np.cos(angle)
        image += 0.6 * _blob(yy, xx, ly, lx, 0.07 * ls, 0.07 * ls)
    elif label == "glioma":
        angle, radius = rng.uniform(0, 2 * np.pi), rng.uniform(0.15, 0.45)
        ly, lx = cy + radius * ry * np.sin(angle), cx + radius * rx * np.cos(angle)
        outer = _blob(yy, xx, ly, lx, 0.09 * ls, 0.08 * ls)
        inner = _blob(yy, xx, ly, lx, 0.05 * ls, 0.045 * ls)
        image += 0.45 * outer - 0.5 * inner  # enhancing rim around a necrotic core

    image *= rng.uniform(0.85, 1.15)
    image += rng.normal(0, 0.03, image.shape)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def write_synthetic_dataset(
    root: Path | str,
    *,
    images_per_class: int = 60,
    size: int = 256,
    seed: int = 0,
    labels: tuple[str, ...] = CLASS_NAMES,
) -> dict[str, int]:
    """Write `<root>/<label>/<label>_<index>.jpg` for every class; return the count per label.

    Args:
        root: destination folder (created if needed).
        images_per_class: how many slices per class.
        size: width and height in pixels.
        seed: dataset seed.
        labels: which classes to write.
    """
    root = Path(root)
    counts: dict[str, int] = {}
    for label in labels:
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(images_per_class):
            pixels = synthetic_slice(label=label, index=index, size=size, seed=seed)
            Image.fromarray(pixels).convert("RGB").save(folder / f"{label}_{index:04d}.jpg", quality=92)
        counts[label] = images_per_class
    return counts
