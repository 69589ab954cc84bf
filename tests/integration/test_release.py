"""Releases in S3: upload with read-back, pointer written last, verified download."""

import uuid
from pathlib import Path

import pytest

from infra.release import (
    ReleaseVerificationError,
    append_audit,
    audit_key,
    download_release,
    read_pointer,
    upload_release,
    write_pointer,
)
from infra.storage import ObjectStore

pytestmark = pytest.mark.integration


def test_release_round_trip_and_tamper_detection(store: ObjectStore, tmp_path: Path) -> None:
    name = f"model-{uuid.uuid4().hex[:8]}"
    weights = tmp_path / "model.keras"
    weights.write_bytes(b"pretend keras archive" * 100)
    assert read_pointer(store, name) is None

    info = upload_release(
        store,
        model_name=name,
        version="3",
        files={"model.keras": weights},
        model_info={"labels": ["a", "b"], "image_size": 32},
    )
    assert read_pointer(store, name) is None, "uploading files must not publish the release"
    pointer = write_pointer(store, model_name=name, version="3", approved_by="policy:auto", reason="test")
    assert read_pointer(store, name) == pointer

    downloaded = download_release(store, pointer, tmp_path / "dl")
    assert downloaded == info
    assert (tmp_path / "dl" / "model.keras").read_bytes() == weights.read_bytes()

    store.put_bytes(f"models/{name}/3/model.keras", b"tampered")
    with pytest.raises(ReleaseVerificationError, match="model.keras"):
        download_release(store, pointer, tmp_path / "dl2")
    assert not (tmp_path / "dl2" / "model.keras").exists()

    append_audit(store, name, action="promote", version="3", by="alice")
    append_audit(store, name, action="rollback", version="2", by="bob")
    lines = store.get_bytes(audit_key(name)).decode().splitlines()
    assert [line.count('"action"') for line in lines] == [1, 1] and '"bob"' in lines[1]
