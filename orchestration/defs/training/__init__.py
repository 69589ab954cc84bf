import dagster as dg

from infra.settings import load_settings
from orchestration.defs.training import assets, schedules

defs = dg.Definitions(
    assets=[assets.training_dataset, assets.candidate_model],
    jobs=[assets.retrain_job],
    sensors=[schedules.retrain_after_ingest],
    schedules=[schedules.retrain_schedule(load_settings().retrain_cron)],
)
