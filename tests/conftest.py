"""Shared fixtures: real SeaweedFS and MLflow servers on free loopback ports, started once per test session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from infra.settings import Settings
from infra.stack import ManagedProcess, free_port, start_mlflow, start_seaweedfs
from infra.storage import ObjectStore

BUCKET = "tumorops-test"
ACCESS_KEY = "test-access"
SECRET_KEY = "test-secret-key-123"


@pytest.fixture(scope="session")
def stack_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stack")


@pytest.fixture(scope="session")
def s3_server(stack_dir: Path) -> Iterator[ManagedProcess]:
    server = start_seaweedfs(
        data_dir=stack_dir / "s3",
        log_path=stack_dir / "logs" / "s3.log",
        host="127.0.0.1",
        port=free_port(),
        bucket=BUCKET,
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mlflow_server(stack_dir: Path, s3_server: ManagedProcess) -> Iterator[ManagedProcess]:
    server = start_mlflow(
        state_dir=stack_dir / "mlflow",
        log_path=stack_dir / "logs" / "mlflow.log",
        host="127.0.0.1",
        port=free_port(),
        bucket=BUCKET,
        s3_endpoint=s3_server.url,
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_settings(stack_dir: Path, s3_server: ManagedProcess) -> Settings:
    return Settings(
        home=stack_dir / "home",
        s3_endpoint_url=s3_server.url,
        s3_bucket=BUCKET,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SecretStr(SECRET_KEY),
        _env_file=None,
    )


@pytest.fixture(scope="session")
def stack_settings(s3_settings: Settings, mlflow_server: ManagedProcess) -> Settings:
    return s3_settings.model_copy(update={"mlflow_tracking_uri": mlflow_server.url})


@pytest.fixture
def store(s3_settings: Settings) -> ObjectStore:
    return ObjectStore.from_settings(s3_settings)


@pytest.fixture
def stack_env(stack_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Export the test stack's settings to the environment (child processes such as training inherit them)."""
    for key, value in stack_settings.service_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    assert os.environ["TUMOROPS_S3_BUCKET"] == BUCKET
    return stack_settings
