import dagster as dg

from orchestration.defs.ingestion import assets, sensors

defs = dg.Definitions(
    assets=[assets.incoming_batch, assets.validated_batch],
    jobs=[assets.ingest_job],
    sensors=[sensors.incoming_batch_sensor],
)
