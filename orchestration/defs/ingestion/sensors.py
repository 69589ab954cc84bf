"""Picks up complete incoming batches (those with `_READY`), once each, as dynamic partitions."""

import dagster as dg

from orchestration.defs.ingestion.assets import READY_MARKER, incoming_prefix, ingest_job
from orchestration.defs.ingestion.partitions import batch_partitions
from orchestration.resources import S3Resource


@dg.sensor(
    job=ingest_job,
    minimum_interval_seconds=10,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Starts ingest_job for every new batch under incoming/ whose _READY marker exists.",
)
def incoming_batch_sensor(context: dg.SensorEvaluationContext, s3: S3Resource) -> dg.SensorResult | dg.SkipReason:
    store = s3.store()
    known = set(context.instance.get_dynamic_partitions(batch_partitions.name))
    ready = [
        batch
        for batch in sorted(store.list_prefixes("incoming/"))
        if batch not in known and store.exists(incoming_prefix(batch) + READY_MARKER)
    ]
    if not ready:
        return dg.SkipReason("no new complete batch under incoming/")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(partition_key=batch, run_key=batch, tags={"tumorops/batch": batch}) for batch in ready
        ],
        dynamic_partitions_requests=[batch_partitions.build_add_request(ready)],
    )
