"""`tumorops train` against the real S3 and MLflow servers: killed mid-run, resumed from its S3 checkpoint,
registered once with its lineage; failures reach Dagster with their reason."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import dagster as dg
import mlflow
import pandas as pd
import pytest

from infra.checkpoint_store import checkpoint_prefix
from infra.settings import Settings
from infra.storage import ObjectStore, sha256_bytes
from orchestration.defs.training.assets import LATEST_MANIFEST_KEY, candidate_model
from orchestration.defs.training.resources import TrainingLauncherResource
from orchestration.resources import MLflowResource, S3Resource
from tests.images import jpeg_bytes
from tumor_model.labels import CLASS_NAMES

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _manifest(store: ObjectStore, folder: Path, *, per_split: dict[str, int]) -> Path:
    """Upload synthetic images as accepted images and write a manifest for them."""
    rows = []
    for split, per_class in per_split.items():
        for label in CLASS_NAMES:
            for index in range(per_class):
                data = jpeg_bytes(label, index + 100 * len(rows), size=48)
                sha = sha256_bytes(data)
                store.put_bytes(f"datasets/images/{sha}.jpg", data)
                rows.append({"sha256": sha, "ext": "jpg", "label": label, "split": split, "group": sha})
    path = folder / f"ds-{uuid.uuid4().hex[:8]}.parquet"
    pd.DataFrame(rows).to_parquet(path, index=False)
    return path


def _train_command(manifest: Path, model_name: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "infra.cli", "train", "--manifest", str(manifest), "--profile", "demo",
        "--image-size", "32", "--epochs", "3", "--batch-size", "8", "--model-name", model_name,
        "--checkpoint-key", "resume-test", *extra,
    ]  # fmt: skip


def test_a_killed_training_resumes_from_its_checkpoint_and_registers_once(
    stack_env: Settings, store: ObjectStore, tmp_path: Path
) -> None:
    model_name = f"resume-{uuid.uuid4().hex[:6]}"
    manifest = _manifest(store, tmp_path, per_split={"train": 4, "val": 1, "test": 2})
    env = {**os.environ, "TUMOROPS_HOME": str(tmp_path / "home")}

    process = subprocess.Popen(
        _train_command(manifest, model_name), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    seen = []
    assert process.stdout is not None
    for line in process.stdout:
        seen.append(line)
        if line.startswith("checkpoint epoch 2 saved"):
            process.send_signal(signal.SIGKILL)  # no clean-up of any kind: as an OOM kill or a lost node
            break
    assert process.wait(timeout=60) == -signal.SIGKILL, "".join(seen[-20:])

    prefix = checkpoint_prefix(model_name, "resume-test")
    state = json.loads(store.get_bytes(f"{prefix}/state.json"))
    assert state["epoch"] == 2 and not state["complete"]
    assert store.exists(f"{prefix}/{state['model_file']}")
    client = mlflow.MlflowClient(stack_env.mlflow_tracking_uri)
    assert client.search_model_versions(f"name='{model_name}'") == []

    resumed = subprocess.run(
        _train_command(manifest, model_name, "--resume"), cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "after epoch 2" in resumed.stdout and "epoch 3/3" in resumed.stdout
    assert "epoch 1/3" not in resumed.stdout and "epoch 2/3" not in resumed.stdout

    versions = client.search_model_versions(f"name='{model_name}'")
    assert [v.version for v in versions] == ["1"]
    tags = versions[0].tags
    assert tags["image_size"] == "32" and tags["training_profile"] == "demo"
    assert tags["dataset_version"] == manifest.stem and json.loads(tags["labels"]) == list(CLASS_NAMES)
    assert client.get_model_version_by_alias(model_name, "candidate").version == "1"
    run = client.get_run(tags["mlflow_run_id"])
    assert run.data.tags["resumed_after_epoch"] == "2" and run.info.run_id == state["mlflow_run_id"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "epoch_loss")] == [0, 1, 2]
    assert 0.0 <= run.data.metrics["test_accuracy"] <= 1.0 and "test_recall_glioma" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert artifacts == {"plots/training_curves.png", "plots/confusion_matrix.png", "plots/reliability_diagram.png"}
    info = mlflow.models.get_model_info(f"models:/{model_name}/1")
    assert list(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 32, 32, 3]
    assert json.loads(store.get_bytes(f"{prefix}/state.json"))["complete"]

    again = subprocess.run(
        _train_command(manifest, model_name, "--resume"), cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert again.returncode == 0 and "already finished" in again.stdout
    assert len(client.search_model_versions(f"name='{model_name}'")) == 1


def test_a_training_failure_reaches_dagster_with_its_reason_and_is_not_retried(
    stack_env: Settings, store: ObjectStore, tmp_path: Path
) -> None:
    manifest = _manifest(store, tmp_path, per_split={"train": 1, "val": 1})  # no test split
    key = f"datasets/manifests/{manifest.stem}.parquet"
    store.put_file(key, manifest)
    store.put_json(LATEST_MANIFEST_KEY, {"dataset_version": manifest.stem, "manifest": key, "images": 8})
    resources = {
        "s3": S3Resource.for_settings(stack_env),
        "mlflow": MLflowResource(tracking_uri=stack_env.mlflow_tracking_uri, model_name="failing"),
        "training_launcher": TrainingLauncherResource(),
    }
    with dg.instance_for_test() as instance:
        result = dg.materialize([candidate_model], instance=instance, resources=resources, raise_on_error=False)
        assert not result.success
        failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        assert len(failures) == 1, "a data error is not retried"
        error = failures[0].event_specific_data.error
        assert "training failed" in error.message and "empty test split" in error.message, error.message
        starts = [e for e in result.all_events if e.event_type_value == "STEP_START"]
        assert len(starts) == 1
