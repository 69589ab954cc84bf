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


def is_dicom(data: bytes) -> bool:
    """DICOM Part 10 files carry `DICM` after a 128-byte preamble."""
    return len(data) >= 132 and data[128:132] == b"DICM"


def dicom_image(data: bytes) -> Image.Image:
    """The pixel data of a DICOM file as an 8-bit grayscale image (the middle frame of a multi-frame file).

    Only pixel data is read: patient and study tags are never returned, stored or logged. Values are rescaled by
    their own range, like 16-bit PNGs, and MONOCHROME1 (inverted) images are flipped to MONOCHROME2.
    """
    import pydicom

    try:
        dataset = pydicom.dcmread(io.BytesIO(data))
        pixels = np.asarray(dataset.pixel_array, dtype=np.float64)
    except Exception as error:  # pydicom raises many types for malformed files and missing codecs
        raise ImageDecodeError(f"cannot decode DICOM pixel data: {type(error).__name__}") from error
    if pixels.ndim == 3 and pixels.shape[-1] not in (3, 4):
        pixels = pixels[pixels.shape[0] // 2]
    if pixels.ndim == 3:
        pixels = pixels[..., :3].mean(axis=-1)
    if getattr(dataset, "PhotometricInterpretation", "") == "MONOCHROME1":
        pixels = pixels.max() - pixels
    low, high = float(pixels.min()), float(pixels.max())
    scaled = (pixels - low) / (high - low) * 255.0 if high > low else np.zeros_like(pixels)
    image = Image.fromarray(scaled.astype(np.uint8))
    image.format = "DICOM"
    image.info["bits_stored"] = int(getattr(dataset, "BitsStored", 16))
    return image


def open_image(data: bytes) -> Image.Image:
    """Open image bytes (JPEG, PNG, DICOM, or anything else PIL reads) without decoding PIL pixel data yet."""
    if not data:
        raise ImageDecodeError("the file is empty")
    if is_dicom(data):
        return dicom_image(data)
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise ImageTooLargeError(str(error)) from error
    except Exception as error:  # PIL raises many unrelated types for bad bytes
        raise ImageDecodeError(f"not an image: {error}") from error


def decode_image(data: bytes, *, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode image bytes fully (a truncated file fails here, not later).

    Raises `ImageTooLargeError` when the header declares more than `max_pixels` pixels (checked before any pixel
    is decoded) and `ImageDecodeError` for anything else that is not a decodable image.
    """
    image = open_image(data)
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
