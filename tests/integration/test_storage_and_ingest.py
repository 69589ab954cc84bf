"""Object storage, batch upload and the batch sensor against the real SeaweedFS S3 server."""

import json
import uuid
from pathlib import Path

import boto3
import dagster as dg
import pytest
from botocore.exceptions import ClientError

from infra.ingest import IngestError, ingest_folder
from infra.settings import Settings
from infra.storage import ObjectNotFoundError, ObjectStore
from orchestration.defs.ingestion.sensors import incoming_batch_sensor
from orchestration.resources import S3Resource
from tests.images import jpeg_bytes, write

pytestmark = pytest.mark.integration


def test_round_trip_and_missing_key(store: ObjectStore) -> None:
    key = f"tests/{uuid.uuid4().hex}/a.bin"
    store.put_bytes(key, b"\x00\x01payload")
    assert store.get_bytes(key) == b"\x00\x01payload"
    assert store.exists(key) and not store.exists(key + ".missing")
    assert list(store.list_keys(key.rsplit("/", 1)[0])) == [key]
    with pytest.raises(ObjectNotFoundError):
        store.get_bytes(key + ".missing")


def test_server_enforces_credentials(s3_settings: Settings) -> None:
    client = boto3.client(
        "s3",
        endpoint_url=s3_settings.s3_endpoint_url,
        aws_access_key_id="wrong",
        aws_secret_access_key="wrong",
        region_name="us-east-1",
    )
    with pytest.raises(ClientError):
        client.list_objects_v2(Bucket=s3_settings.s3_bucket)


def _folder(tmp_path: Path) -> Path:
    root = tmp_path / "upload"
    for i in range(3):
        write(root / "glioma_tumor" / f"g{i}.jpg", jpeg_bytes("glioma", i, size=64))
    write(root / "pituitary" / "p0.jpg", jpeg_bytes("pituitary", 0, size=64))
    return root


def test_ingest_uploads_every_file_then_ready(store: ObjectStore, tmp_path: Path) -> None:
    batch = f"b-{uuid.uuid4().hex[:8]}"
    seen: list[tuple[int, int]] = []
    name, count = ingest_folder(store, _folder(tmp_path), batch=batch, progress=lambda d, t: seen.append((d, t)))
    assert (name, count) == (batch, 4)
    keys = sorted(store.list_keys(f"incoming/{batch}/"))
    assert keys == [
        f"incoming/{batch}/_READY",
        f"incoming/{batch}/glioma_tumor/g0.jpg",
        f"incoming/{batch}/glioma_tumor/g1.jpg",
        f"incoming/{batch}/glioma_tumor/g2.jpg",
        f"incoming/{batch}/pituitary/p0.jpg",
    ]
    assert seen[-1] == (4, 4)
    assert store.get_bytes(f"incoming/{batch}/pituitary/p0.jpg") == (tmp_path / "upload/pituitary/p0.jpg").read_bytes()
    with pytest.raises(IngestError, match="already ingested"):
        ingest_folder(store, _folder(tmp_path), batch=batch)


def test_ingest_refuses_a_folder_without_label_folders(store: ObjectStore, tmp_path: Path) -> None:
    write(tmp_path / "flat" / "x.jpg", jpeg_bytes())
    with pytest.raises(IngestError, match="one folder per label"):
        ingest_folder(store, tmp_path / "flat", batch="flat-1")
    with pytest.raises(IngestError, match="invalid batch id"):
        ingest_folder(store, _folder(tmp_path), batch="../escape")


def test_sensor_starts_complete_batches_once_and_ignores_half_uploaded_ones(
    s3_settings: Settings, store: ObjectStore, tmp_path: Path
) -> None:
    complete = f"complete-{uuid.uuid4().hex[:8]}"
    half = f"half-{uuid.uuid4().hex[:8]}"
    ingest_folder(store, _folder(tmp_path), batch=complete)
    store.put_bytes(f"incoming/{half}/glioma/g0.jpg", jpeg_bytes())  # no _READY: still uploading
    resource = S3Resource.for_settings(s3_settings)
    with dg.instance_for_test() as instance:

        def evaluate(cursor: str | None) -> dg.SensorResult:
            context = dg.build_sensor_context(instance=instance, resources={"s3": resource}, cursor=cursor)
            return incoming_batch_sensor(context)

        first = evaluate(None)
        requested = {r.partition_key for r in first.run_requests}
        assert complete in requested and half not in requested
        assert first.dynamic_partitions_requests[0].partition_keys == sorted(requested)
        instance.add_dynamic_partitions("batches", sorted(requested))

        again = evaluate(first.cursor)
        assert again.run_requests == [], "a processed batch is never started twice"

        store.put_bytes(f"incoming/{complete}/_READY", b"re-sent\n")  # the producer re-sends the same batch id
        resent = evaluate(again.cursor)
        assert resent.run_requests == []
        assert json.loads(resent.cursor)[complete] != json.loads(again.cursor)[complete]

        store.put_bytes(f"incoming/{half}/_READY", b"1\n")  # the upload finishes
        finished = evaluate(resent.cursor)
        assert [r.partition_key for r in finished.run_requests] == [half]
