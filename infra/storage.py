"""A small typed wrapper over an S3 bucket (boto3): the only way TumorOps code touches object storage."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from infra.settings import Settings


class ObjectNotFoundError(KeyError):
    """The key does not exist in the bucket."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class ObjectStore:
    """One bucket, addressed by keys relative to it."""

    def __init__(self, *, bucket: str, client: Any) -> None:
        self.bucket = bucket
        self.client = client

    @classmethod
    def from_settings(cls, settings: Settings) -> ObjectStore:
        config = Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=5, read_timeout=60)
        client = boto3.client("s3", config=config, **settings.s3_client_kwargs())
        return cls(bucket=settings.s3_bucket, client=client)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def ensure_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)

    def put_bytes(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def put_json(self, key: str, value: Any) -> None:
        body = json.dumps(value, indent=2, sort_keys=True, default=str).encode()
        self.put_bytes(key, body, content_type="application/json")

    def put_file(self, key: str, path: Path) -> None:
        self.client.upload_file(str(path), self.bucket, key)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                raise ObjectNotFoundError(self.uri(key)) from error
            raise

    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return False
            raise
        return True

    def download_file(self, key: str, path: Path) -> None:
        """Download to `path` through a temporary name, so a partial download is never seen under `path`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        try:
            self.client.download_file(self.bucket, key, str(partial))
        except ClientError as error:
            partial.unlink(missing_ok=True)
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                raise ObjectNotFoundError(self.uri(key)) from error
            raise
        partial.replace(path)

    def list_keys(self, prefix: str) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield item["Key"]

    def list_prefixes(self, prefix: str) -> list[str]:
        """Immediate 'sub-folders' of `prefix` (which should end with '/'), without the prefix."""
        paginator = self.client.get_paginator("list_objects_v2")
        names: list[str] = []
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/"):
            for common in page.get("CommonPrefixes", []):
                names.append(common["Prefix"][len(prefix) :].rstrip("/"))
        return names

    def append_jsonl(self, key: str, record: dict[str, Any]) -> None:
        """Append one JSON line (read-modify-write: S3 has no append; one writer at a time)."""
        try:
            existing = self.get_bytes(key)
        except ObjectNotFoundError:
            existing = b""
        line = json.dumps(record, sort_keys=True, default=str).encode() + b"\n"
        self.put_bytes(key, existing + line, content_type="application/x-ndjson")

    def copy(self, source_key: str, target_key: str) -> None:
        """Server-side copy within the bucket (the source is left as it is)."""
        self.client.copy_object(
            Bucket=self.bucket, Key=target_key, CopySource={"Bucket": self.bucket, "Key": source_key}
        )

    def presigned_url(self, key: str, *, expires_seconds: int = 7 * 24 * 3600) -> str:
        """A time-limited HTTP link to one object, for people clicking from the Dagster UI."""
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_seconds
        )

    def etag(self, key: str) -> str | None:
        """The object's ETag (changes when it is rewritten), or None when it does not exist."""
        try:
            return str(self.client.head_object(Bucket=self.bucket, Key=key)["ETag"]).strip('"')
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise
