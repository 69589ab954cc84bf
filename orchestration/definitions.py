"""All TumorOps Dagster definitions: `dagster dev -m orchestration.definitions`."""

from __future__ import annotations

import os

import dagster as dg

from infra.settings import load_settings
from orchestration.defs import ingestion, promotion, training
from orchestration.defs.training.resources import TrainingLauncherResource
from orchestration.resources import MLflowResource, PromotionPolicyResource, S3Resource


def _secret(name: str) -> dg.EnvVar | None:
    # Secrets reach Dagster as environment variables only; unset means the standard AWS credential chain.
    return dg.EnvVar(name) if os.environ.get(name) else None


def build_resources() -> dict[str, object]:
    settings = load_settings()
    return {
        "s3": S3Resource(
            bucket=settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=_secret("TUMOROPS_AWS_ACCESS_KEY_ID"),
            secret_access_key=_secret("TUMOROPS_AWS_SECRET_ACCESS_KEY"),
        ),
        "mlflow": MLflowResource(tracking_uri=settings.mlflow_tracking_uri, model_name=settings.model_name),
        "training_launcher": TrainingLauncherResource(
            mode=settings.training_launcher,
            image=settings.training_image,
            namespace=settings.training_namespace,
            gpus=settings.training_gpus,
        ),
        "promotion_policy": PromotionPolicyResource(
            config_path=str(settings.promotion_config) if settings.promotion_config else None,
            policy=settings.approval_policy,
        ),
    }


def build_definitions(resources: dict[str, object]) -> dg.Definitions:
    """Every domain's definitions bound to the given resources (tests bind their own servers)."""
    return dg.Definitions.merge(ingestion.defs, training.defs, promotion.defs, dg.Definitions(resources=resources))


defs = build_definitions(build_resources())
