"""The validation rules on a corpus of good and broken files, offline (no servers)."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from infra.cli import main as cli_main
from tests.images import jpeg_bytes, png_bytes, write
from tumor_model.profiling import profile_folder, profile_image_bytes
from tumor_model.validation import ValidationRules, validate_profiles


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    root = tmp_path / "batch"
    write(root / "glioma_tumor" / "g1.jpg", jpeg_bytes("glioma", 1))
    write(root / "glioma_tumor" / "g2.jpg", jpeg_bytes("glioma", 2))
    write(root / "meningioma" / "m1.png", png_bytes(np.full((64, 64), 90, np.uint8)))
    write(root / "notumor" / "n1.jpg", jpeg_bytes("no_tumor", 1))
    write(root / "pituitary" / "truncated.jpg", jpeg_bytes("pituitary", 1)[:400])
    write(root / "pituitary" / "text.jpg", b"definitely not an image\n")
    write(root / "pituitary" / "empty.jpg", b"")
    write(root / "pituitary" / "tiny.png", png_bytes(np.full((8, 8), 50, np.uint8)))
    write(root / "astrocytoma" / "a1.jpg", jpeg_bytes("glioma", 3))
    return root


def _digests(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def test_each_broken_file_is_rejected_with_its_reason(corpus: Path) -> None:
    before = _digests(corpus)
    table = pd.DataFrame([p.to_dict() for p in profile_folder(corpus)])
    outcome = validate_profiles(table, rules=ValidationRules(min_side=32, max_side=4096))

    reasons = {path: {r["reason"] for r in rs} for path, rs in outcome.rejected.items()}
    assert reasons == {
        "pituitary/truncated.jpg": {"undecodable"},
        "pituitary/text.jpg": {"undecodable"},
        "pituitary/empty.jpg": {"undecodable"},
        "pituitary/tiny.png": {"width_out_of_bounds", "height_out_of_bounds"},
        "astrocytoma/a1.jpg": {"unknown_label"},
    }
    assert sorted(outcome.accepted) == [
        "glioma_tumor/g1.jpg",
        "glioma_tumor/g2.jpg",
        "meningioma/m1.png",
        "notumor/n1.jpg",
    ]
    assert not outcome.success
    failed = {r["expectation"] for r in outcome.expectation_results if not r["success"]}
    assert "expect_column_values_to_be_null(decode_error)" in failed
    assert _digests(corpus) == before, "validation must never modify the originals"


def test_profile_row_describes_the_image() -> None:
    row = profile_image_bytes(jpeg_bytes("glioma", 5, size=80), path="glioma/x.jpg", label_folder="glioma_tumor")
    assert (row.format, row.width, row.height, row.label) == ("JPEG", 80, 80, "glioma")
    assert row.decode_error is None and len(row.sha256) == 64 and len(row.phash) == 16
    assert 0 < row.mean_intensity < 255 and row.std_intensity > 0


def test_decompression_bomb_is_refused_without_decoding() -> None:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (8000, 8000)).save(buffer, "PNG")  # 64 Mpx, over the 40 Mpx limit
    row = profile_image_bytes(buffer.getvalue(), path="glioma/bomb.png", label_folder="glioma")
    assert row.decode_error is not None and "decompression bomb" in row.decode_error


def test_validate_command_writes_a_json_report(corpus: Path, tmp_path: Path) -> None:
    write(corpus / "notumor" / "copy-of-n1.jpg", (corpus / "notumor" / "n1.jpg").read_bytes())
    report_path = tmp_path / "report.json"
    assert cli_main(["validate", str(corpus), "--report", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert report["images"] == 10
    assert len(report["accepted"]) == 5 and len(report["rejected"]) == 5
    assert report["duplicate_groups"] == [["notumor/copy-of-n1.jpg", "notumor/n1.jpg"]]
    assert report["class_counts"] == {"glioma": 2, "meningioma": 1, "no_tumor": 2}
