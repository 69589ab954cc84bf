"""Builders for test images: valid synthetic slices and the broken files real uploads contain."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from tumor_model.synthetic import synthetic_slice


def jpeg_bytes(label: str = "glioma", index: int = 0, size: int = 96) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(synthetic_slice(label=label, index=index, size=size)).convert("RGB").save(buffer, "JPEG")
    return buffer.getvalue()


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path
