"""Training checkpoints in S3: `checkpoints/<model name>/<checkpoint key>/` (see `tumor_model.checkpoints`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from infra.storage import ObjectNotFoundError, ObjectStore

CHECKPOINT_PREFIX = "checkpoints"


def checkpoint_prefix(model_name: str, key: str) -> str:
    """The S3 folder of one training run's checkpoints."""
    if not key or "/" in key or key.startswith("."):
        raise ValueError(f"invalid checkpoint key {key!r}: use letters, digits, '-' and '_'")
    return f"{CHECKPOINT_PREFIX}/{model_name}/{key}"


class S3CheckpointStore:
    """A `tumor_model.checkpoints.CheckpointStore` on an S3 prefix."""

    def __init__(self, store: ObjectStore, prefix: str) -> None:
        self.store = store
        self.prefix = prefix.rstrip("/")

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def put_file(self, name: str, path: Path) -> None:
        self.store.put_file(self._key(name), path)

    def get_file(self, name: str, path: Path) -> None:
        try:
            self.store.download_file(self._key(name), path)
        except ObjectNotFoundError as error:
            raise FileNotFoundError(f"checkpoint file {self.store.uri(self._key(name))} is missing") from error

    def read_json(self, name: str) -> Any | None:
        try:
            return json.loads(self.store.get_bytes(self._key(name)))
        except ObjectNotFoundError:
            return None

    def write_json(self, name: str, value: Any) -> None:
        self.store.put_bytes(self._key(name), json.dumps(value, indent=2).encode(), content_type="application/json")

    def delete(self, name: str) -> None:
        self.store.client.delete_object(Bucket=self.store.bucket, Key=self._key(name))

    def describe(self) -> str:
        return self.store.uri(self.prefix)
