"""Clinical gates for the candidate, human or policy approval, and the release to S3 for the BentoML service."""

import dagster as dg
from pydantic import Field

from infra.promotion import (
    APPROVED,
    CANDIDATE,
    PromotionError,
    approval_of,
    audit_tail,
    decide,
    evaluate_candidate,
    promote,
    record_gate_verdict,
)
from infra.release import read_pointer
from infra.settings import load_settings
from infra.storage import ObjectNotFoundError, ObjectStore
from orchestration.defs.training.assets import LATEST_MANIFEST_KEY, candidate_model
from orchestration.metadata import table_metadata
from orchestration.resources import MLflowResource, PromotionPolicyResource, S3Resource


class GateRunConfig(dg.Config):
    version: str | None = Field(default=None, description="model version to evaluate (default: alias candidate)")


def _resolve_version(mlflow: MLflowResource, version: str | None) -> str:
    if version:
        return str(version)
    candidate = mlflow.registry().aliases().get(CANDIDATE)
    if candidate is None:
        raise dg.Failure(f"model {mlflow.model_name} has no version with alias {CANDIDATE}: train one first")
    return candidate


def _fmt(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)


@dg.asset(
    group_name="promotion",
    deps=[candidate_model],
    kinds={"mlflow"},
    check_specs=[
        dg.AssetCheckSpec(
            "candidate_passes_gates",
            asset="promotion_gate",
            blocking=False,
            description="the candidate meets every clinical gate (a failure keeps the champion serving)",
        )
    ],
)
def promotion_gate(
    context: dg.AssetExecutionContext,
    config: GateRunConfig,
    s3: S3Resource,
    mlflow: MLflowResource,
    promotion_policy: PromotionPolicyResource,
) -> dg.MaterializeResult:
    """Score the candidate and the serving champion on the same test images and apply the clinical gates.

    Gates (thresholds in the promotion config file): accuracy, macro F1, sensitivity per tumour class, expected
    calibration error, and no regression against the champion beyond a margin. Each gate's value and verdict become
    model-version tags `gate.*`; the approval policy then sets `approval.*` (`auto`: approved by the policy;
    `manual`: pending until a named human decides). Every verdict is appended to the audit log.
    """
    policy = promotion_policy.load()
    registry = mlflow.registry()
    version = _resolve_version(mlflow, config.version)
    store = s3.store()
    try:
        latest = store.get_json(LATEST_MANIFEST_KEY)
    except ObjectNotFoundError as error:
        raise dg.Failure(
            description=f"no dataset manifest ({store.uri(LATEST_MANIFEST_KEY)}): materialize training_dataset first"
        ) from error
    try:
        report, evaluation = evaluate_candidate(
            registry,
            store,
            version=version,
            manifest_key=latest["manifest"],
            cache_dir=load_settings().home_dir / "cache" / "images",
            thresholds=policy.gates,
            log=context.log.info,
        )
        approval = record_gate_verdict(
            registry, store, version=version, report=report, policy=policy.approval.policy, evaluation=evaluation
        )
    except PromotionError as error:
        raise dg.Failure(description=str(error)) from error
    context.log.info(f"version {version}: {report.summary()}; approval {approval['status']} by {approval['by']}")
    rows = [
        {
            "gate": r.name,
            "candidate": _fmt(r.candidate),
            "champion": _fmt(r.champion),
            "threshold": f"{r.comparison} {r.threshold:.3f}",
            "passed": r.passed,
        }
        for r in report.results
    ]
    candidate = evaluation["candidate"]
    return dg.MaterializeResult(
        metadata={
            "model_version": version,
            "champion_version": report.champion_version or "none",
            "dataset_version": evaluation["dataset_version"],
            "test_images": candidate["n"],
            "gates_passed": report.passed,
            "gates": table_metadata(
                rows,
                [
                    ("gate", "string"),
                    ("candidate", "float"),
                    ("champion", "float"),
                    ("threshold", "string"),
                    ("passed", "bool"),
                ],
            ),
            "approval_status": approval["status"],
            "approval_by": approval["by"],
            "approval_policy": policy.approval.policy,
            "promotion_config": policy.source,
            "next_step": (
                f"tumorops approve {version} --by NAME --reason TEXT (or launch promotion_job with decision=approve)"
                if approval["status"] == "pending"
                else "promotion in this run"
                if approval["status"] == APPROVED
                else "champion keeps serving"
            ),
            "mlflow_model_version": dg.MetadataValue.url(mlflow.model_version_url(version)),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="candidate_passes_gates",
                passed=report.passed,
                severity=dg.AssetCheckSeverity.WARN,
                description=report.summary(),
                metadata={"failed_gates": dg.MetadataValue.json([r.name for r in report.failed])},
            )
        ],
    )


class PromotionRunConfig(dg.Config):
    """Which version to release, and optionally a named human's decision to record first."""

    version: str | None = Field(default=None, description="model version (default: alias candidate)")
    decision: str | None = Field(
        default=None, description="approve | reject: record this decision before promoting (needs by and reason)"
    )
    by: str | None = Field(default=None, description="who decides (a person's name)")
    reason: str | None = Field(default=None, description="why")
    override: bool = Field(default=False, description="approve although the gates failed (recorded as an override)")


def _audit_table(store: ObjectStore, model_name: str) -> dg.TableMetadataValue:
    rows = [
        {
            "at": item.get("at", ""),
            "action": item.get("action", ""),
            "version": str(item.get("version", "")),
            "by": str(item.get("by", "")),
            "reason": str(item.get("reason", ""))[:200],
        }
        for item in reversed(audit_tail(store, model_name, 20))
    ]
    return table_metadata(rows, [(c, "string") for c in ("at", "action", "version", "by", "reason")])


@dg.asset(group_name="promotion", deps=[promotion_gate], kinds={"s3", "bentoml"})
def production_model(
    context: dg.AssetExecutionContext,
    config: PromotionRunConfig,
    s3: S3Resource,
    mlflow: MLflowResource,
    promotion_policy: PromotionPolicyResource,
) -> dg.MaterializeResult:
    """The release the BentoML service serves: `models/<name>/<version>/`, then `production.json` written last.

    Releases an approved version: exports it from MLflow, uploads the model, its model card and `model.json` (with
    the sha256 of every file), reads each back, writes the pointer, sets alias `champion` and appends to
    `models/<name>/audit.jsonl`. An unapproved version leaves the current release in force. Launch `promotion_job`
    with `decision: approve`, `by` and `reason` to approve from here.
    """
    registry = mlflow.registry()
    store = s3.store()
    version = _resolve_version(mlflow, config.version)
    try:
        if config.decision:
            if not config.by or not config.reason:
                raise PromotionError("a decision needs `by` (a person's name) and `reason`")
            approval = decide(
                registry,
                store,
                version=version,
                decision=config.decision,
                by=config.by,
                reason=config.reason,
                override=config.override,
            )
            context.log.info(f"version {version}: {approval['status']} by {approval['by']} ({approval['reason']})")
        approval = approval_of(registry.version(version))
        current = read_pointer(store, mlflow.model_name)
        if approval["status"] != APPROVED:
            context.log.warning(f"version {version} is {approval['status']}, not approved: production stays as it is")
            return dg.MaterializeResult(
                metadata={
                    "promoted": False,
                    "model_version": version,
                    "approval_status": approval["status"],
                    "serving_version": current["version"] if current else "none",
                    "reason": approval["reason"] or "not approved",
                    "audit_log": _audit_table(store, mlflow.model_name),
                }
            )
        outcome = promote(
            registry,
            store,
            version=version,
            referral_confidence=promotion_policy.load().release.referral_confidence,
            log=context.log.info,
        )
    except PromotionError as error:
        raise dg.Failure(description=str(error)) from error
    metadata: dict = {
        "promoted": outcome.promoted,
        "model_version": version,
        "serving_version": outcome.version,
        "previous_version": outcome.previous_version or "none",
        "message": outcome.message,
        "approved_by": approval["by"],
        "override": approval["override"],
        "audit_log": _audit_table(store, mlflow.model_name),
        "mlflow_model_version": dg.MetadataValue.url(mlflow.model_version_url(version)),
    }
    if outcome.pointer:
        metadata["release"] = dg.MetadataValue.path(store.uri(outcome.pointer["prefix"]))
    if outcome.model_json:
        metadata["files"] = dg.MetadataValue.json(outcome.model_json["files"])
    if outcome.model_card:
        metadata["model_card"] = dg.MetadataValue.md(outcome.model_card)
    return dg.MaterializeResult(metadata=metadata)


promotion_job = dg.define_asset_job(
    "promotion_job",
    selection=[production_model],
    description="Release a version: launch with production_model config (version, decision, by, reason, override).",
)
