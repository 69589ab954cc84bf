"""The one preprocessing function shared by training, evaluation and serving.

Keras' EfficientNet models rescale and normalise internally, so the model's input is an RGB image of
`image_size` x `image_size` pixels with float values in [0, 255]. Whatever reaches the model, in training or in
production, goes through `preprocess_image`.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

PREPROCESSING_ID = "rgb-exif-transposed-bilinear-square-0to255-v1"


class ImageDecodeError(ValueError):
    """The bytes are not an image that can be decoded."""


class ImageTooLargeError(ImageDecodeError):
    """The image declares more pixels than may be decoded (a decompression bomb)."""


# Far above any MRI slice, far below a decompression bomb.
MAX_IMAGE_PIXELS = 40_000_000


def to_rgb(image: Image.Image) -> Image.Image:
    """Return an 8-bit RGB copy of any PIL image (grayscale, 16-bit, palette, RGBA, CMYK).

    16-bit and float images are rescaled by their own range rather than clipped, so a 16-bit MRI export keeps its
    contrast; an alpha channel is composited over black, the background of an MRI slice.
    """
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        low, high = float(pixels.min()), float(pixels.max())
        scaled = (pixels - low) / (high - low) * 255.0 if high > low else np.zeros_like(pixels)
        image = Image.fromarray(scaled.astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def decode_image(data: bytes, *, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode image bytes fully (a truncated file fails here, not later).

    Raises `ImageTooLargeError` when the header declares more than `max_pixels` pixels (checked before any pixel
    is decoded) and `ImageDecodeError` for anything else that is not a decodable image.
    """
    try:
        image = Image.open(io.BytesIO(data))
    except Exception as error:  # PIL raises many unrelated types for bad bytes
        raise ImageDecodeError(f"cannot decode image: {error}") from error
    if image.width * image.height > max_pixels:
        raise ImageTooLargeError(
            f"image of {image.width}x{image.height} pixels is over the limit of {max_pixels} pixels"
        )
    try:
        image.load()
    except Exception as error:
        raise ImageDecodeError(f"cannot decode image: {error}") from error
    return image


def preprocess_image(image: Image.Image, *, image_size: int) -> np.ndarray:
    """Turn a decoded image into the model's input: float32 array (image_size, image_size, 3) in [0, 255].

    Args:
        image: any PIL image.
        image_size: side of the square the model expects.
    """
    rgb = to_rgb(image).resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.float32)


def preprocess_bytes(data: bytes, *, image_size: int) -> np.ndarray:
    """`decode_image` followed by `preprocess_image`."""
    return preprocess_image(decode_image(data), image_size=image_size)
