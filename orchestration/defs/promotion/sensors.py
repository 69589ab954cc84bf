"""Promotion follows human approvals; every audit-log line shows up on the `production_model` asset."""

import dagster as dg

from infra.promotion import APPROVED
from infra.release import read_audit
from orchestration.defs.promotion.assets import production_model, promotion_job
from orchestration.resources import MLflowResource, S3Resource

AUDIT_EVENTS_PER_TICK = 50


def approved_unreleased(mlflow: MLflowResource) -> list[tuple[str, dict[str, str]]]:
    """Versions a person approved that were never released, newest first, with their tags."""
    found = []
    for model_version in mlflow.registry().versions():
        tags = model_version.tags
        if (
            tags.get("approval.status") == APPROVED
            and not tags.get("approval.by", "").startswith("policy:")  # the retrain run promotes those itself
            and "release.promoted_at" not in tags
        ):
            found.append((str(model_version.version), dict(tags)))
    return found


@dg.sensor(
    job=promotion_job,
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Runs promotion_job when a person approves a version (tumorops approve) that was never released. Only the "
        "newest such version is promoted; each approval triggers at most one run."
    ),
)
def approval_sensor(context: dg.SensorEvaluationContext, mlflow: MLflowResource) -> dg.SensorResult:
    pending = approved_unreleased(mlflow)
    if not pending:
        return dg.SensorResult(skip_reason=dg.SkipReason("no approved, unreleased version"))
    version, tags = pending[0]
    for older, _ in pending[1:]:
        context.log.info(f"version {older} is approved but older than {version}: not promoted automatically")
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"approved-{version}-{tags.get('approval.at', '')}",
                run_config={"ops": {"production_model": {"config": {"version": version}}}},
                tags={
                    "tumorops/trigger": "approval",
                    "tumorops/version": version,
                    "tumorops/approved_by": tags.get("approval.by", "")[:60],
                },
            )
        ]
    )


@dg.sensor(
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    asset_selection=[production_model],
    description=(
        "Shows every line of models/<name>/audit.jsonl (approvals, rejections, overrides, promotions, rollbacks, "
        "including those made with the command line) as an observation of production_model."
    ),
)
def release_audit_sensor(
    context: dg.SensorEvaluationContext, s3: S3Resource, mlflow: MLflowResource
) -> dg.SensorResult:
    lines = read_audit(s3.store(), mlflow.model_name)
    seen = int(context.cursor) if context.cursor else 0
    if seen > len(lines):  # the log was replaced (a new bucket): start over
        seen = 0
    new = lines[seen : seen + AUDIT_EVENTS_PER_TICK]
    events = [
        dg.AssetObservation(
            asset_key=production_model.key,
            description=f"{item.get('action')} version {item.get('version')} by {item.get('by')}",
            metadata={
                "audit_line": seen + i + 1,
                "action": str(item.get("action")),
                "version": str(item.get("version")),
                "by": str(item.get("by")),
                "reason": str(item.get("reason") or ""),
                "at": str(item.get("at")),
                "previous_version": str(item.get("previous") or "none"),
                "record": dg.MetadataValue.json(item),
            },
        )
        for i, item in enumerate(new)
    ]
    return dg.SensorResult(
        asset_events=events,
        cursor=str(seen + len(new)),
        skip_reason=None if new else dg.SkipReason("no new audit line"),
    )
