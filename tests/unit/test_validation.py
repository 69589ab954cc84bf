"""The validation rules on a corpus of good and broken files, offline (no servers)."""

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from infra.cli import main as cli_main
from tests.images import jpeg_bytes, png_bytes, write
from tumor_model.duplicates import duplicate_groups, label_conflicts
from tumor_model.profiling import profile_folder, profile_image_bytes
from tumor_model.validation import ValidationRules, validate_profiles


def _bomb_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (9000, 9000)).save(buffer, "PNG")  # 81 Mpx declared, a few kB on disk
    return buffer.getvalue()


def _resized_jpeg(data: bytes, size: int) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(data)).resize((size, size)).save(buffer, "JPEG", quality=80)
    return buffer.getvalue()


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "batch"
    ramp16 = (np.add.outer(np.arange(96), np.arange(96)) * 340).astype(np.uint16)
    rgba = np.dstack([np.asarray(Image.open(io.BytesIO(jpeg_bytes("meningioma", 4)))), np.full((96, 96), 255)])
    original = jpeg_bytes("pituitary", 7, size=256)
    write(root / "glioma_tumor" / "g1.jpg", jpeg_bytes("glioma", 1))
    write(root / "glioma_tumor" / "g1-copy.jpg", jpeg_bytes("glioma", 1))  # exact duplicate, same label
    write(
        root / "meningioma" / "gray.png",
        png_bytes(np.asarray(Image.open(io.BytesIO(jpeg_bytes("meningioma", 2))).convert("L"))),
    )
    write(root / "meningioma" / "rgba.png", png_bytes(rgba.astype(np.uint8)))
    write(root / "meningioma" / "sixteen.png", png_bytes(ramp16))
    write(root / "pituitary" / "p7.jpg", original)
    write(root / "pituitary" / "p7-small.jpg", _resized_jpeg(original, 200))  # near-duplicate
    write(root / "pituitary" / "truncated.jpg", jpeg_bytes("pituitary", 1)[:400])
    write(root / "pituitary" / "text.jpg", b"definitely not an image\n")
    write(root / "pituitary" / "empty.jpg", b"")
    write(root / "pituitary" / "blank.png", png_bytes(np.full((128, 128), 37, np.uint8)))
    write(root / "pituitary" / "tiny.png", png_bytes(np.random.default_rng(0).integers(0, 255, (16, 16), np.uint8)))
    write(root / "pituitary" / "bomb.png", _bomb_png())
    write(root / "notumor" / "n1.jpg", jpeg_bytes("no_tumor", 1))
    write(root / "glioma_tumor" / "n1-again.jpg", jpeg_bytes("no_tumor", 1))  # same bytes, other label
    write(root / "astrocytoma" / "a1.jpg", jpeg_bytes("glioma", 3))
    return root


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def test_each_file_lands_where_the_rules_say(corpus: Path, tmp_path: Path) -> None:
    before = _digests(corpus)
    table = pd.DataFrame([p.to_dict() for p in profile_folder(corpus, workers=2)])
    outcome = validate_profiles(table, rules=ValidationRules(), docs_dir=tmp_path / "docs")

    reasons = {path: {r["reason"] for r in rs} for path, rs in outcome.rejected.items()}
    assert reasons == {
        "pituitary/truncated.jpg": {"truncated"},
        "pituitary/text.jpg": {"undecodable"},
        "pituitary/empty.jpg": {"undecodable", "file_size_out_of_bounds"},
        "pituitary/blank.png": {"blank_or_constant"},
        "pituitary/tiny.png": {"width_out_of_bounds", "height_out_of_bounds"},
        "pituitary/bomb.png": {"width_out_of_bounds", "height_out_of_bounds", "too_many_pixels"},
        "notumor/n1.jpg": {"label_conflict"},
        "glioma_tumor/n1-again.jpg": {"label_conflict"},
        "astrocytoma/a1.jpg": {"unknown_label"},
    }
    assert sorted(outcome.accepted) == [
        "glioma_tumor/g1-copy.jpg",
        "glioma_tumor/g1.jpg",
        "meningioma/gray.png",
        "meningioma/rgba.png",
        "meningioma/sixteen.png",
        "pituitary/p7-small.jpg",
        "pituitary/p7.jpg",
    ]
    for rejected in outcome.rejected.values():
        assert all(r["expectation"].startswith("expect_") for r in rejected)
    assert not outcome.success
    assert (tmp_path / "docs" / "index.html").exists()
    assert list((tmp_path / "docs" / "validations").rglob("*.html")), "Data Docs must hold the validation page"
    assert _digests(corpus) == before, "validation must never modify the originals"

    groups = duplicate_groups(table)
    assert ["glioma_tumor/g1-copy.jpg", "glioma_tumor/g1.jpg"] in groups["exact"]
    assert ["pituitary/p7-small.jpg", "pituitary/p7.jpg"] in groups["near"]


def test_an_image_accepted_earlier_under_another_label_is_a_conflict() -> None:
    table = pd.DataFrame([{"path": "glioma/x.jpg", "sha256": "ab" * 32, "label": "glioma"}])
    assert label_conflicts(table, {"ab" * 32: "meningioma"}) == {"glioma/x.jpg"}
    assert label_conflicts(table, {"ab" * 32: "glioma"}) == set()


def test_profile_row_describes_the_image() -> None:
    row = profile_image_bytes(jpeg_bytes("glioma", 5, size=80), path="glioma/x.jpg", label_folder="glioma_tumor")
    assert (row.format, row.width, row.height, row.label, row.bit_depth) == ("JPEG", 80, 80, "glioma", 8)
    assert row.decode_error is None and len(row.sha256) == 64 and len(row.phash) == 16
    assert 0 < row.mean_intensity < 255 and row.std_intensity > 0 and 0 < row.dark_fraction < 1
    sixteen = profile_image_bytes(png_bytes(np.zeros((70, 70), np.uint16)), path="a.png", label_folder="glioma")
    assert sixteen.bit_depth == 16


def test_decompression_bomb_is_refused_without_decoding() -> None:
    row = profile_image_bytes(_bomb_png(), path="glioma/bomb.png", label_folder="glioma")
    assert row.pixels == 81_000_000 and row.phash is None and row.std_intensity is None


def test_dicom_pixels_are_profiled_and_patient_tags_are_not_kept() -> None:
    dicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "SECRET-123"
    pixels = (np.add.outer(np.arange(80), np.arange(80)) * 20).astype(np.uint16)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    buffer = io.BytesIO()
    dicom.dcmwrite(buffer, ds, enforce_file_format=True)
    row = profile_image_bytes(buffer.getvalue(), path="glioma/x.dcm", label_folder="glioma")
    assert (row.format, row.width, row.height, row.bit_depth) == ("DICOM", 80, 80, 12)
    assert row.decode_error is None and row.std_intensity > 10
    assert "SECRET-123" not in json.dumps(row.to_dict()) and "Doe" not in json.dumps(row.to_dict())


def test_validate_command_writes_a_json_report(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    report_path = tmp_path / "report.json"
    assert cli_main(["validate", str(corpus), "--report", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["images"] == 16
    assert len(report["accepted"]) == 7 and len(report["rejected"]) == 9
    assert ["glioma_tumor/g1-copy.jpg", "glioma_tumor/g1.jpg"] in report["duplicate_groups"]
    assert ["pituitary/p7-small.jpg", "pituitary/p7.jpg"] in report["near_duplicate_groups"]
    assert report["class_counts"] == {"glioma": 2, "meningioma": 3, "pituitary": 2}
    assert "profiling [" in capsys.readouterr().err, "a progress bar is shown"
