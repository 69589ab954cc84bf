"""When retraining runs: after every successful ingest, and on a cron schedule."""

import dagster as dg

from orchestration.defs.ingestion.assets import ingest_job
from orchestration.defs.training.assets import retrain_job


@dg.run_status_sensor(
    run_status=dg.DagsterRunStatus.SUCCESS,
    monitored_jobs=[ingest_job],
    request_job=retrain_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=10,
    description="Retrains once a batch has been ingested and validated successfully.",
)
def retrain_after_ingest(context: dg.RunStatusSensorContext) -> dg.RunRequest:
    run = context.dagster_run
    batch = run.tags.get("dagster/partition", "")
    return dg.RunRequest(
        run_key=f"after-ingest-{run.run_id}", tags={"tumorops/trigger": "ingest", "tumorops/batch": batch}
    )


def retrain_schedule(cron: str) -> dg.ScheduleDefinition:
    """The periodic retraining schedule (cron from TUMOROPS_RETRAIN_CRON; default Mondays 03:00)."""
    return dg.ScheduleDefinition(
        name="retrain_schedule",
        job=retrain_job,
        cron_schedule=cron,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Periodic retraining on every image accepted so far.",
    )
