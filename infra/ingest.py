"""Upload a local `<label>/<image>` folder as an incoming batch, `_READY` written last."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from infra.storage import ObjectStore

READY_MARKER = "_READY"
_BATCH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class IngestError(RuntimeError):
    """The folder or the batch id cannot be ingested."""


def default_batch_id(folder: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", folder.resolve().name).strip("-") or "batch"
    return f"{stem}-{dt.datetime.now(dt.UTC).strftime('%Y%m%d-%H%M%S')}"


def batch_files(folder: Path) -> list[Path]:
    """Files of `<folder>/<label>/...`, hidden files skipped; files directly in `folder` are an error."""
    if not folder.is_dir():
        raise IngestError(f"{folder} is not a folder")
    loose = [p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]
    if loose:
        raise IngestError(
            f"{folder} must contain one folder per label (<label>/<image>); found loose files: {', '.join(loose[:5])}"
        )
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    if not files:
        raise IngestError(f"{folder} has no files under label folders")
    return files


def ingest_folder(
    store: ObjectStore,
    folder: Path,
    *,
    batch: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    workers: int = 8,
) -> tuple[str, int]:
    """Upload every file as `incoming/<batch>/<label>/<file>`, then `_READY`; return (batch, files uploaded).

    Args:
        store: the bucket.
        folder: local folder laid out as `<label>/<image>`.
        batch: batch id; default `<folder name>-<UTC timestamp>`.
        progress: called with (done, total) as files are uploaded.
        workers: parallel uploads.
    """
    batch = batch or default_batch_id(folder)
    if not _BATCH_ID.match(batch):
        raise IngestError(f"invalid batch id {batch!r}: use letters, digits, '.', '_' and '-' (at most 128)")
    prefix = f"incoming/{batch}/"
    if store.exists(prefix + READY_MARKER):
        raise IngestError(f"batch {batch!r} was already ingested (s3://{store.bucket}/{prefix}{READY_MARKER} exists)")
    files = batch_files(folder)
    done = 0

    def upload(path: Path) -> None:
        store.put_file(prefix + path.relative_to(folder).as_posix(), path)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(upload, files):
            done += 1
            if progress:
                progress(done, len(files))
    # Written last: the batch sensor only ever sees complete batches.
    store.put_bytes(prefix + READY_MARKER, f"{len(files)}\n".encode(), content_type="text/plain")
    return batch, len(files)
