"""Model releases in S3: `models/<name>/<version>/` files, `model.json`, and the `production.json` pointer.

A release is published in an order that never exposes a half-written one: every file is uploaded and read back
against its sha256, then `model.json`, and only then the pointer. A reader that follows the pointer therefore
always finds complete, verifiable files.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
from pathlib import Path
from typing import Any

from infra.storage import ObjectNotFoundError, ObjectStore, sha256_bytes, sha256_file


class ReleaseVerificationError(RuntimeError):
    """A release file does not match the sha256 recorded for it."""


def release_prefix(model_name: str, version: str) -> str:
    return f"models/{model_name}/{version}/"


def pointer_key(model_name: str) -> str:
    return f"models/{model_name}/production.json"


def audit_key(model_name: str) -> str:
    return f"models/{model_name}/audit.jsonl"


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def upload_release(
    store: ObjectStore, *, model_name: str, version: str, files: dict[str, Path], model_info: dict[str, Any]
) -> dict[str, Any]:
    """Upload a release's files and its `model.json`, verifying each by reading it back; return `model.json`.

    Args:
        store: the bucket.
        model_name: registered model name.
        version: model version being released.
        files: release-relative name -> local file.
        model_info: labels, image size, preprocessing, metrics, dataset version, ... (sha256s are added here).
    """
    prefix = release_prefix(model_name, version)
    checksums: dict[str, str] = {}
    for name, path in sorted(files.items()):
        checksums[name] = sha256_file(path)
        store.put_file(prefix + name, path)
        if sha256_bytes(store.get_bytes(prefix + name)) != checksums[name]:
            raise ReleaseVerificationError(f"{store.uri(prefix + name)} does not read back as uploaded")
    manifest = {**model_info, "model_name": model_name, "version": version, "files": checksums}
    store.put_json(prefix + "model.json", manifest)
    return manifest


def write_pointer(
    store: ObjectStore,
    *,
    model_name: str,
    version: str,
    approved_by: str,
    reason: str,
    previous_version: str | None = None,
    action: str = "promote",
) -> dict[str, Any]:
    """Point production at an uploaded release (the last write of a promotion or rollback).

    Args:
        store: the bucket.
        model_name: registered model name.
        version: the version to serve; its `model.json` must already be uploaded.
        approved_by: who approved (a person, or `policy:auto`).
        reason: why.
        previous_version: what served before (the target of a plain `tumorops rollback`).
        action: `promote` or `rollback`.
    """
    prefix = release_prefix(model_name, version)
    try:
        model_json = store.get_bytes(prefix + "model.json")
    except ObjectNotFoundError as error:
        raise ReleaseVerificationError(f"{store.uri(prefix)} has no model.json: not a complete release") from error
    pointer = {
        "model_name": model_name,
        "version": version,
        "prefix": prefix,
        "model_json_sha256": sha256_bytes(model_json),
        "promoted_at": now_iso(),
        "approved_by": approved_by,
        "reason": reason,
        "previous_version": previous_version,
        "action": action,
    }
    store.put_json(pointer_key(model_name), pointer)
    return pointer


def read_pointer(store: ObjectStore, model_name: str) -> dict[str, Any] | None:
    """The current production pointer, or None when nothing has been promoted yet."""
    try:
        return store.get_json(pointer_key(model_name))
    except ObjectNotFoundError:
        return None


def download_release(store: ObjectStore, pointer: dict[str, Any], destination: Path) -> dict[str, Any]:
    """Download the release a pointer names into `destination`, verifying every sha256; return `model.json`."""
    prefix = pointer["prefix"]
    model_json_bytes = store.get_bytes(prefix + "model.json")
    if sha256_bytes(model_json_bytes) != pointer["model_json_sha256"]:
        raise ReleaseVerificationError(f"{store.uri(prefix + 'model.json')} does not match production.json")
    info = json.loads(model_json_bytes)
    destination.mkdir(parents=True, exist_ok=True)
    for name, expected in info["files"].items():
        target = destination / name
        store.download_file(prefix + name, target)
        if sha256_file(target) != expected:
            target.unlink(missing_ok=True)
            raise ReleaseVerificationError(f"{store.uri(prefix + name)} does not match its sha256 in model.json")
    (destination / "model.json").write_bytes(model_json_bytes)
    return info


def verify_release(store: ObjectStore, model_name: str, version: str) -> dict[str, Any]:
    """Check that every file of an uploaded release matches its sha256 in `model.json`; return `model.json`.

    Raises:
        ReleaseVerificationError: `model.json` or a file is missing or does not match.
    """
    prefix = release_prefix(model_name, version)
    try:
        info = store.get_json(prefix + "model.json")
    except ObjectNotFoundError as error:
        raise ReleaseVerificationError(f"{store.uri(prefix)} holds no release (no model.json)") from error
    for name, expected in info["files"].items():
        try:
            actual = sha256_bytes(store.get_bytes(prefix + name))
        except ObjectNotFoundError as error:
            raise ReleaseVerificationError(f"{store.uri(prefix + name)} is missing from the release") from error
        if actual != expected:
            raise ReleaseVerificationError(f"{store.uri(prefix + name)} does not match its sha256 in model.json")
    return info


def read_audit(store: ObjectStore, model_name: str) -> list[dict[str, Any]]:
    """Every line of `models/<name>/audit.jsonl`, oldest first (empty when nothing happened yet)."""
    try:
        text = store.get_bytes(audit_key(model_name)).decode()
    except ObjectNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def append_audit(store: ObjectStore, model_name: str, *, action: str, version: str, **details: Any) -> dict[str, Any]:
    """Append one line to `models/<name>/audit.jsonl`."""
    record = {"at": now_iso(), "action": action, "model_name": model_name, "version": version, **details}
    record.setdefault("by", getpass.getuser())
    store.append_jsonl(audit_key(model_name), record)
    return record
