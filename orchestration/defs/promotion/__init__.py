import dagster as dg

from orchestration.defs.promotion import assets, sensors

defs = dg.Definitions(
    assets=[assets.promotion_gate, assets.production_model],
    jobs=[assets.promotion_job],
    sensors=[sensors.approval_sensor, sensors.release_audit_sensor],
)
