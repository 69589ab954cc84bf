"""Gate the candidate model and release approved versions to S3 for the BentoML service."""

import json
import tempfile
from pathlib import Path

import dagster as dg
from pydantic import Field

from infra.release import append_audit, now_iso, read_pointer, upload_release, write_pointer
from orchestration.defs.training.assets import candidate_model
from orchestration.metadata import table_metadata
from orchestration.resources import MLflowResource, S3Resource


class GateConfig(dg.Config):
    min_test_accuracy: float = Field(default=0.5, description="lowest test-split accuracy that may be promoted")


@dg.asset(group_name="promotion", deps=[candidate_model], kinds={"mlflow"})
def promotion_gate(
    context: dg.AssetExecutionContext, config: GateConfig, mlflow: MLflowResource
) -> dg.MaterializeResult:
    """Evaluate the `candidate` model version against the promotion gates and record the verdict.

    The gate values and the approval (policy `auto`) become model-version tags `gate.*` and `approval.*`.
    """
    client = mlflow.client()
    candidate = client.get_model_version_by_alias(mlflow.model_name, "candidate")
    accuracy = float(candidate.tags.get("test_accuracy", "nan"))
    passed = accuracy >= config.min_test_accuracy
    tags = {
        "gate.test_accuracy.value": f"{accuracy:.4f}",
        "gate.test_accuracy.threshold": f"{config.min_test_accuracy:.4f}",
        "gate.test_accuracy.passed": str(passed).lower(),
        "gate.passed": str(passed).lower(),
        "approval.status": "approved" if passed else "rejected",
        "approval.by": "policy:auto",
        "approval.reason": (
            f"test accuracy {accuracy:.3f} {'>=' if passed else '<'} threshold {config.min_test_accuracy:.3f}"
        ),
        "approval.at": now_iso(),
    }
    for key, value in tags.items():
        client.set_model_version_tag(mlflow.model_name, candidate.version, key, value)
    context.log.info(
        f"version {candidate.version}: gates {'passed' if passed else 'failed'} ({tags['approval.reason']})"
    )
    return dg.MaterializeResult(
        metadata={
            "model_version": candidate.version,
            "gates_passed": passed,
            "gates": table_metadata(
                [{"gate": "test_accuracy", "value": accuracy, "threshold": config.min_test_accuracy, "passed": passed}],
                [("gate", "string"), ("value", "float"), ("threshold", "float"), ("passed", "bool")],
            ),
            "approval": tags["approval.status"],
            "mlflow_model_version": dg.MetadataValue.url(mlflow.model_version_url(candidate.version)),
        }
    )


@dg.asset(group_name="promotion", deps=[promotion_gate], kinds={"s3", "bentoml"})
def production_model(context: dg.AssetExecutionContext, s3: S3Resource, mlflow: MLflowResource) -> dg.MaterializeResult:
    """Release the approved candidate: export to `models/<name>/<version>/`, then write `production.json` last.

    Sets the MLflow alias `champion` and appends to `models/<name>/audit.jsonl`. A candidate that failed its gates
    leaves the current release in force.
    """
    import mlflow as mlflow_lib

    client = mlflow.client()
    candidate = client.get_model_version_by_alias(mlflow.model_name, "candidate")
    store = s3.store()
    current = read_pointer(store, mlflow.model_name)
    if candidate.tags.get("approval.status") != "approved":
        context.log.warning(f"version {candidate.version} is not approved; production stays as it is")
        return dg.MaterializeResult(
            metadata={
                "promoted": False,
                "serving_version": current["version"] if current else "none",
                "reason": candidate.tags.get("approval.reason", "not approved"),
            }
        )
    if current and current["version"] == candidate.version:
        context.log.info(f"version {candidate.version} is already in production")
        return dg.MaterializeResult(
            metadata={"promoted": False, "serving_version": candidate.version, "reason": "already in production"}
        )

    with tempfile.TemporaryDirectory() as tmp:
        local = Path(
            mlflow_lib.artifacts.download_artifacts(
                artifact_uri=f"models:/{mlflow.model_name}/{candidate.version}",
                dst_path=tmp,
                tracking_uri=mlflow.tracking_uri,
            )
        )
        keras_files = sorted(local.rglob("*.keras"))
        if not keras_files:
            raise dg.Failure(f"model version {candidate.version} has no .keras file in its MLflow artifacts")
        run = client.get_run(candidate.run_id)
        info = {
            "labels": json.loads(candidate.tags["labels"]),
            "image_size": int(candidate.tags["image_size"]),
            "preprocessing": candidate.tags["preprocessing"],
            "dataset_version": candidate.tags.get("dataset_version"),
            "metrics": {k: v for k, v in run.data.metrics.items() if k.startswith("test_")},
            "mlflow_run_id": candidate.run_id,
            "runtime": "keras",
            "model_file": "model.keras",
        }
        model_json = upload_release(
            store,
            model_name=mlflow.model_name,
            version=candidate.version,
            files={"model.keras": keras_files[0]},
            model_info=info,
        )
    pointer = write_pointer(
        store,
        model_name=mlflow.model_name,
        version=candidate.version,
        approved_by=candidate.tags.get("approval.by", "unknown"),
        reason=candidate.tags.get("approval.reason", ""),
    )
    client.set_registered_model_alias(mlflow.model_name, "champion", candidate.version)
    append_audit(
        store,
        mlflow.model_name,
        action="promote",
        version=candidate.version,
        by=pointer["approved_by"],
        reason=pointer["reason"],
        previous=current["version"] if current else None,
        metrics=info["metrics"],
    )
    context.log.info(f"version {candidate.version} is now in production ({store.uri(pointer['prefix'])})")
    return dg.MaterializeResult(
        metadata={
            "promoted": True,
            "serving_version": candidate.version,
            "previous_version": current["version"] if current else "none",
            "release": dg.MetadataValue.path(store.uri(pointer["prefix"])),
            "files": dg.MetadataValue.json(model_json["files"]),
            "mlflow_model_version": dg.MetadataValue.url(mlflow.model_version_url(candidate.version)),
        }
    )
