"""The ingest job (Dagster assets in process) against the real S3 server: quarantine, Data Docs, blocking check."""

import uuid
from pathlib import Path

import dagster as dg
import pytest

from infra.ingest import ingest_folder
from infra.settings import Settings
from infra.storage import ObjectStore
from orchestration.defs.ingestion.assets import incoming_batch, validated_batch
from orchestration.resources import S3Resource
from tests.images import jpeg_bytes, write

pytestmark = pytest.mark.integration


def _resource(settings: Settings) -> S3Resource:
    return S3Resource.for_settings(settings)


def _materialize(batch: str, settings: Settings) -> dg.ExecuteInProcessResult:
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("batches", [batch])
        return dg.materialize(
            [incoming_batch, validated_batch],
            partition_key=batch,
            instance=instance,
            resources={"s3": _resource(settings)},
            raise_on_error=False,
        )


def test_a_mostly_broken_batch_is_quarantined_and_stops_the_pipeline(
    s3_settings: Settings, store: ObjectStore, tmp_path: Path
) -> None:
    batch = f"broken-{uuid.uuid4().hex[:8]}"
    root = tmp_path / "batch"
    write(root / "glioma" / "good.jpg", jpeg_bytes("glioma", 1))
    write(root / "glioma" / "text.jpg", b"hello")
    write(root / "meningioma" / "empty.png", b"")
    write(root / "oligodendroglioma" / "x.jpg", jpeg_bytes("glioma", 2))
    ingest_folder(store, root, batch=batch)

    result = _materialize(batch, s3_settings)
    assert not result.success, "more than 20% rejected must stop the run"
    check = next(e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION")
    assert not check.passed and check.metadata["rejected"].value == 3

    reasons = {
        r["file"]: {x["reason"] for x in r["reasons"]} for r in store.get_json(f"quarantine/{batch}/reasons.json")
    }
    assert reasons == {
        "glioma/text.jpg": {"undecodable"},
        "meningioma/empty.png": {"undecodable", "file_size_out_of_bounds"},
        "oligodendroglioma/x.jpg": {"unknown_label"},
    }
    assert store.get_bytes(f"quarantine/{batch}/glioma/text.jpg") == b"hello"
    assert store.get_bytes(f"incoming/{batch}/glioma/text.jpg") == b"hello", "originals stay in incoming/"
    summary = store.get_json(f"reports/validation/{batch}/result.json")
    assert summary["passed"] is False and len(summary["accepted"]) == 1
    assert store.exists(summary["data_docs"]) and summary["data_docs"].endswith("data_docs/index.html")


def test_a_clean_batch_is_accepted_into_the_content_addressed_store(
    s3_settings: Settings, store: ObjectStore, tmp_path: Path
) -> None:
    batch = f"clean-{uuid.uuid4().hex[:8]}"
    root = tmp_path / "batch"
    for i in range(3):
        write(root / "pituitary_tumor" / f"p{i}.jpg", jpeg_bytes("pituitary", 100 + i))
    write(root / "pituitary_tumor" / "p0-copy.jpg", jpeg_bytes("pituitary", 100))
    ingest_folder(store, root, batch=batch)

    result = _materialize(batch, s3_settings)
    assert result.success
    metadata = result.asset_materializations_for_node("validated_batch")[0].metadata
    assert metadata["accepted"].value == 4 and metadata["rejected"].value == 0
    assert metadata["exact_duplicate_groups"].value == 1
    summary = store.get_json(f"reports/validation/{batch}/result.json")
    keys = {f"datasets/images/{row['sha256']}.jpg" for row in summary["accepted"]}
    assert len(keys) == 3, "exact duplicates collapse onto one stored image"
    assert all(store.exists(key) for key in keys)
    assert {row["label"] for row in summary["accepted"]} == {"pituitary"}
