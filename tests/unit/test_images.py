import io

import numpy as np
import pytest
from PIL import Image

from tests.images import jpeg_bytes, png_bytes
from tumor_model.preprocessing import (
    ImageDecodeError,
    ImageTooLargeError,
    decode_image,
    preprocess_bytes,
    preprocess_image,
)
from tumor_model.synthetic import synthetic_slice, write_synthetic_dataset


def test_synthetic_slices_are_deterministic_and_class_dependent() -> None:
    a = synthetic_slice(label="pituitary", index=3, size=64)
    assert np.array_equal(a, synthetic_slice(label="pituitary", index=3, size=64))
    assert not np.array_equal(a, synthetic_slice(label="pituitary", index=4, size=64))
    with pytest.raises(ValueError):
        synthetic_slice(label="astrocytoma", index=0)


def test_pituitary_lesion_brightens_the_sella_region() -> None:
    # The sella sits on the midline below the centre; with a lesion it is brighter than without.
    region = (slice(150, 200), slice(108, 148))
    with_lesion = np.mean([synthetic_slice(label="pituitary", index=i)[region].mean() for i in range(8)])
    without = np.mean([synthetic_slice(label="no_tumor", index=i)[region].mean() for i in range(8)])
    assert with_lesion > without + 15


def test_write_synthetic_dataset_lays_out_label_folders(tmp_path) -> None:
    counts = write_synthetic_dataset(tmp_path, images_per_class=2, size=48)
    assert counts == {"glioma": 2, "meningioma": 2, "no_tumor": 2, "pituitary": 2}
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.jpg"))
    assert files[0] == "glioma/glioma_0000.jpg" and len(files) == 8
    assert Image.open(tmp_path / files[0]).size == (48, 48)


@pytest.mark.parametrize(
    "data",
    [
        png_bytes(np.full((40, 30), 120, np.uint8)),  # grayscale
        png_bytes(np.full((40, 30, 4), 200, np.uint8)),  # RGBA
        png_bytes(np.linspace(0, 65535, 1200, dtype=np.uint16).reshape(40, 30)),  # 16-bit
        jpeg_bytes(size=50),
    ],
    ids=["grayscale", "rgba", "16bit", "jpeg"],
)
def test_every_supported_image_becomes_an_rgb_square(data: bytes) -> None:
    pixels = preprocess_bytes(data, image_size=32)
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.float32
    assert pixels.min() >= 0.0 and pixels.max() <= 255.0


def test_sixteen_bit_contrast_is_kept() -> None:
    ramp = np.linspace(0, 65535, 1200, dtype=np.uint16).reshape(40, 30)
    pixels = preprocess_bytes(png_bytes(ramp), image_size=30)
    assert pixels.max() - pixels.min() > 200


def test_exif_orientation_is_applied() -> None:
    array = np.zeros((20, 40, 3), np.uint8)
    array[:, :20] = 255  # left half white
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif.tobytes())
    pixels = preprocess_image(decode_image(buffer.getvalue()), image_size=40)
    # After rotation the white half is on top.
    assert pixels[:10].mean() > 200 and pixels[-10:].mean() < 50


@pytest.mark.parametrize("data", [b"", b"this is text", jpeg_bytes()[:300]], ids=["empty", "text", "truncated"])
def test_bad_bytes_raise_a_decode_error(data: bytes) -> None:
    with pytest.raises(ImageDecodeError):
        decode_image(data)


def test_decompression_bomb_is_refused_before_decoding() -> None:
    buffer = io.BytesIO()
    Image.new("L", (8000, 8000)).save(buffer, "PNG")
    with pytest.raises(ImageTooLargeError, match="8000x8000"):
        decode_image(buffer.getvalue())
