"""Typed Dagster resources for every external system TumorOps talks to."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from infra.promotion import Registry
from infra.settings import Settings
from infra.storage import ObjectStore
from tumor_model.gates import PromotionConfig, load_promotion_config


class S3Resource(dg.ConfigurableResource):
    """The TumorOps bucket (SeaweedFS locally, AWS S3 or any S3 store in production)."""

    bucket: str = Field(description="bucket holding incoming batches, datasets, reports and models")
    endpoint_url: str | None = Field(default=None, description="S3 endpoint; unset for AWS S3")
    region: str = "us-east-1"
    access_key_id: str | None = Field(default=None, description="unset to use the standard AWS credential chain")
    secret_access_key: str | None = Field(default=None, description="unset to use the standard AWS credential chain")

    @classmethod
    def for_settings(cls, settings: Settings) -> S3Resource:
        """The bucket of `settings` with its credentials as plain values (tests and scripts; deployments pass
        secrets as `dg.EnvVar`, see `orchestration/definitions.py`)."""
        secret = settings.aws_secret_access_key
        return cls(
            bucket=settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.aws_access_key_id,
            secret_access_key=secret.get_secret_value() if secret else None,
        )

    def settings(self) -> Settings:
        return Settings(
            s3_bucket=self.bucket,
            s3_endpoint_url=self.endpoint_url,
            s3_region=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
        )

    def store(self) -> ObjectStore:
        return ObjectStore.from_settings(self.settings())

    def env(self) -> dict[str, str]:
        """Environment that hands this bucket to a child process."""
        return {k: v for k, v in self.settings().service_env().items() if "S3" in k or "AWS" in k}

    def console_url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"


class MLflowResource(dg.ConfigurableResource):
    """The MLflow tracking server and model registry."""

    tracking_uri: str = Field(description="MLflow tracking server URI")
    model_name: str = Field(description="registered model name (one MLflow experiment of the same name)")

    def client(self):  # noqa: ANN201 - mlflow is imported lazily to keep definitions light
        import mlflow

        return mlflow.MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def registry(self) -> Registry:
        """The registry entry of `model_name`, for approval, promotion and rollback."""
        return Registry(tracking_uri=self.tracking_uri, model_name=self.model_name, client=self.client())

    def model_version_url(self, version: str) -> str:
        return f"{self.tracking_uri}/#/models/{self.model_name}/versions/{version}"

    def run_url(self, experiment_id: str, run_id: str) -> str:
        return f"{self.tracking_uri}/#/experiments/{experiment_id}/runs/{run_id}"


class PromotionPolicyResource(dg.ConfigurableResource):
    """The deployment's promotion gates and approval policy (one TOML file; see `tumor_model/promotion.toml`)."""

    config_path: str | None = Field(default=None, description="TOML file; unset for the packaged defaults")
    policy: str | None = Field(default=None, description="auto | manual; overrides the file's approval.policy")

    def load(self) -> PromotionConfig:
        return load_promotion_config(self.config_path, policy=self.policy)
