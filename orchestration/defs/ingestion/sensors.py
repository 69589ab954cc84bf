"""Picks up complete incoming batches (those with `_READY`), once each, as dynamic partitions."""

import json

import dagster as dg

from orchestration.defs.ingestion.assets import READY_MARKER, incoming_prefix, ingest_job
from orchestration.defs.ingestion.partitions import batch_partitions
from orchestration.resources import S3Resource


@dg.sensor(
    job=ingest_job,
    minimum_interval_seconds=10,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Starts ingest_job once for every batch under incoming/ whose _READY marker exists. A batch still "
        "uploading (no _READY) waits; a batch re-sent under an id already processed is reported, not re-run."
    ),
)
def incoming_batch_sensor(context: dg.SensorEvaluationContext, s3: S3Resource) -> dg.SensorResult:
    store = s3.store()
    known = set(context.instance.get_dynamic_partitions(batch_partitions.name))
    markers: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
    new: list[str] = []
    waiting = 0
    for batch in sorted(store.list_prefixes("incoming/")):
        etag = store.etag(incoming_prefix(batch) + READY_MARKER)
        if etag is None:
            waiting += 1
            continue
        if batch not in known:
            new.append(batch)
        elif markers.get(batch) not in (None, etag):
            context.log.warning(
                f"batch {batch!r} was re-sent (its _READY marker changed) after it had been processed; it is not "
                "processed again. Upload changed data as a new batch id."
            )
        markers[batch] = etag
    return dg.SensorResult(
        run_requests=[dg.RunRequest(partition_key=b, run_key=b, tags={"tumorops/batch": b}) for b in new],
        dynamic_partitions_requests=[batch_partitions.build_add_request(new)] if new else [],
        cursor=json.dumps(markers, sort_keys=True),
        skip_reason=None if new else dg.SkipReason(f"no new complete batch ({waiting} still uploading)"),
    )
