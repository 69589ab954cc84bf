"""One settings object for every component: environment variables prefixed `TUMOROPS_`, and an optional `.env`.

With no S3 endpoint set, boto3 uses the standard AWS credential chain and AWS S3; the local stack sets the
endpoint to its SeaweedFS server.
"""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """TumorOps configuration; every field is `TUMOROPS_<FIELD>` in the environment."""

    model_config = SettingsConfigDict(env_prefix="TUMOROPS_", env_file=".env", extra="ignore")

    home: Path = Field(default=Path(".tumorops"), description="state directory of the local stack")

    s3_endpoint_url: str | None = Field(default=None, description="S3 endpoint; None means AWS S3")
    s3_bucket: str = "tumorops"
    s3_region: str = "us-east-1"
    aws_access_key_id: str | None = None
    aws_secret_access_key: SecretStr | None = None

    mlflow_tracking_uri: str = "http://127.0.0.1:5000"
    model_name: str = "tumor-classifier"

    host: str = "127.0.0.1"
    s3_port: int = 8333
    mlflow_port: int = 5000
    dagster_port: int = 3000
    bentoml_port: int = 3001

    training_launcher: str = Field(default="subprocess", description="subprocess | k8s (see the README)")
    training_image: str | None = Field(default=None, description="k8s launcher: the training image")
    training_namespace: str = Field(default="tumorops", description="k8s launcher: namespace of training pods")
    training_gpus: int = Field(default=1, description="k8s launcher: nvidia.com/gpu per training pod")
    training_profile: str = Field(default="demo", description="named training recipe: demo | cpu | gpu")
    image_size: int | None = Field(default=None, description="overrides the profile's input side (B3 native: 300)")
    epochs: int | None = Field(default=None, description="overrides the profile's most epochs")
    batch_size: int | None = Field(default=None, description="overrides the profile's batch size")
    learning_rate: float | None = Field(default=None, description="overrides the profile's peak learning rate")
    weights: str | None = Field(
        default=None, description="overrides the profile's backbone weights: imagenet | none | file path | s3:// URI"
    )
    retrain_cron: str = "0 3 * * 1"
    promotion_config: Path | None = Field(
        default=None, description="promotion gates and approval policy (TOML); default: tumor_model/promotion.toml"
    )
    approval_policy: str | None = Field(default=None, description="auto | manual; overrides the config file's")
    serving_poll_seconds: float = Field(default=10.0, description="how often the service checks production.json")
    serving_runtime: str = Field(
        default="auto",
        description="auto (fastest here that passed parity) | keras | onnxruntime-fp32 | openvino-fp32 | openvino-bf16",
    )
    serving_lanes: int | None = Field(
        default=None, description="workers that run a batch's parts in parallel (default: one per core)"
    )
    serving_token: SecretStr | None = Field(
        default=None, description="bearer token required on every API call when set (admin reload: always)"
    )
    serving_max_upload_bytes: int = Field(default=20_000_000, description="larger files get 413")
    serving_max_request_bytes: int = Field(default=100_000_000, description="larger request bodies get 413")
    serving_max_image_pixels: int = Field(default=40_000_000, description="images declaring more pixels get 413")
    serving_max_batch_images: int = Field(default=32, description="most images in one /classify_batch call")

    @cached_property
    def home_dir(self) -> Path:
        return self.home.expanduser().resolve()

    def s3_client_kwargs(self) -> dict[str, str]:
        """Keyword arguments for `boto3.client("s3", ...)`; credentials only when set explicitly."""
        kwargs: dict[str, str] = {"region_name": self.s3_region}
        if self.s3_endpoint_url:
            kwargs["endpoint_url"] = self.s3_endpoint_url
        if self.aws_access_key_id and self.aws_secret_access_key:
            kwargs["aws_access_key_id"] = self.aws_access_key_id
            kwargs["aws_secret_access_key"] = self.aws_secret_access_key.get_secret_value()
        return kwargs

    def service_env(self) -> dict[str, str]:
        """Environment that hands this configuration to a child process (MLflow, Dagster, BentoML, training)."""
        env = {
            "TUMOROPS_HOME": str(self.home_dir),
            "TUMOROPS_S3_BUCKET": self.s3_bucket,
            "TUMOROPS_S3_REGION": self.s3_region,
            "TUMOROPS_MLFLOW_TRACKING_URI": self.mlflow_tracking_uri,
            "TUMOROPS_MODEL_NAME": self.model_name,
            "MLFLOW_TRACKING_URI": self.mlflow_tracking_uri,
        }
        if self.promotion_config:
            env["TUMOROPS_PROMOTION_CONFIG"] = str(self.promotion_config)
        if self.approval_policy:
            env["TUMOROPS_APPROVAL_POLICY"] = self.approval_policy
        if self.s3_endpoint_url:
            env["TUMOROPS_S3_ENDPOINT_URL"] = self.s3_endpoint_url
            env["MLFLOW_S3_ENDPOINT_URL"] = self.s3_endpoint_url
        if self.aws_access_key_id and self.aws_secret_access_key:
            env["TUMOROPS_AWS_ACCESS_KEY_ID"] = self.aws_access_key_id
            env["TUMOROPS_AWS_SECRET_ACCESS_KEY"] = self.aws_secret_access_key.get_secret_value()
            env["AWS_ACCESS_KEY_ID"] = self.aws_access_key_id
            env["AWS_SECRET_ACCESS_KEY"] = self.aws_secret_access_key.get_secret_value()
        return env


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment (and `.env`), with explicit overrides on top."""
    return Settings(**overrides)  # type: ignore[arg-type]


def child_environment(settings: Settings) -> dict[str, str]:
    """The current environment plus the settings, for launching a child process."""
    return {**os.environ, **settings.service_env()}
