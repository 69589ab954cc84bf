"""Gates, approval, release, crash safety, rollback and audit against the real S3 and MLflow servers."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import mlflow
import pandas as pd
import pytest

from infra.cli import main as cli
from infra.failpoints import FAILPOINT_EXIT_CODE
from infra.promotion import Registry
from infra.release import download_release, read_audit, read_pointer, release_prefix
from infra.settings import Settings
from infra.storage import ObjectStore, sha256_bytes
from orchestration.defs.promotion.assets import production_model, promotion_gate, promotion_job
from orchestration.defs.promotion.sensors import approval_sensor, release_audit_sensor
from orchestration.defs.training.assets import LATEST_MANIFEST_KEY
from orchestration.resources import MLflowResource, PromotionPolicyResource, S3Resource
from tests.images import jpeg_bytes
from tumor_model.labels import CLASS_NAMES
from tumor_model.preprocessing import PREPROCESSING_ID

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

LENIENT = """
[approval]
policy = "{policy}"
[gates]
min_test_images = 10
min_accuracy = 0.0
min_macro_f1 = 0.0
max_ece = 1.0
max_regression = 1.0
[gates.min_sensitivity]
glioma = 0.0
"""
STRICT = """
[approval]
policy = "auto"
[gates]
min_accuracy = 0.99
"""


@dataclass
class World:
    """One isolated deployment: its own bucket and model name on the shared test servers."""

    settings: Settings
    store: ObjectStore
    registry: Registry
    tmp: Path

    def resources(self, config: str, policy: str = "auto") -> dict[str, object]:
        path = self.tmp / f"promotion-{uuid.uuid4().hex[:6]}.toml"
        path.write_text(config.format(policy=policy))
        return {
            "s3": S3Resource.for_settings(self.settings),
            "mlflow": MLflowResource(tracking_uri=self.settings.mlflow_tracking_uri, model_name=self.model_name),
            "promotion_policy": PromotionPolicyResource(config_path=str(path)),
        }

    @property
    def model_name(self) -> str:
        return self.settings.model_name

    def register(self, seed: int) -> str:
        """Register a tiny Keras classifier as the next version, tagged as training tags it; alias candidate."""
        import keras

        keras.utils.set_random_seed(seed)
        model = keras.Sequential(
            [
                keras.Input((32, 32, 3)),
                keras.layers.Rescaling(1 / 255),
                keras.layers.Conv2D(4, 3, activation="relu"),
                keras.layers.GlobalAveragePooling2D(),
                keras.layers.Dense(len(CLASS_NAMES), activation="softmax"),
            ]
        )
        mlflow.set_tracking_uri(self.settings.mlflow_tracking_uri)
        mlflow.set_experiment(self.model_name)
        with mlflow.start_run():
            mlflow.log_params({"image_size": 32, "seed": seed})
            mlflow.log_metric("test_accuracy", 0.5)
            info = mlflow.keras.log_model(
                model, name="model", registered_model_name=self.model_name, pip_requirements=["keras"]
            )
        version = str(info.registered_model_version)
        self.registry.set_tags(
            version,
            {
                "labels": json.dumps(list(CLASS_NAMES)),
                "image_size": "32",
                "preprocessing": PREPROCESSING_ID,
                "dataset_version": "ds-test",
                "test_accuracy": "0.5000",
            },
        )
        self.registry.client.set_registered_model_alias(self.model_name, "candidate", version)
        return version

    def materialize(self, assets: list, resources: dict, config: dict) -> dg.ExecuteInProcessResult:
        return dg.materialize(assets, resources=resources, run_config={"ops": config}, raise_on_error=True)


@pytest.fixture
def world(stack_env: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    suffix = uuid.uuid4().hex[:8]
    settings = stack_env.model_copy(
        update={"s3_bucket": f"promo-{suffix}", "model_name": f"promo-{suffix}", "home": tmp_path / "home"}
    )
    for key, value in settings.service_env().items():
        monkeypatch.setenv(key, value)
    store = ObjectStore.from_settings(settings)
    store.ensure_bucket()
    # A test split of 40 synthetic images in the content-addressed store, named by the latest manifest.
    rows = []
    for label in CLASS_NAMES:
        for index in range(10):
            data = jpeg_bytes(label, index, size=48)
            digest = sha256_bytes(data)
            store.put_bytes(f"datasets/images/{digest}.jpg", data)
            rows.append({"sha256": digest, "ext": "jpg", "label": label, "split": "test", "group": digest})
    buffer = io.BytesIO()
    pd.DataFrame(rows).to_parquet(buffer, index=False)
    store.put_bytes("datasets/manifests/ds-test.parquet", buffer.getvalue())
    store.put_json(
        LATEST_MANIFEST_KEY, {"dataset_version": "ds-test", "manifest": "datasets/manifests/ds-test.parquet"}
    )
    yield World(settings, store, Registry(settings.mlflow_tracking_uri, settings.model_name), tmp_path)


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The command line, in process (fast), or in its own process when failpoints are set (a real crash)."""
    if env is None:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli(list(args))
        return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_gates_compare_candidate_and_champion_on_the_same_images(world: World) -> None:
    v1 = world.register(seed=1)
    lenient = world.resources(LENIENT, policy="auto")
    first = world.materialize([promotion_gate, production_model], lenient, {})
    gate_meta = first.asset_materializations_for_node("promotion_gate")[0].metadata
    assert gate_meta["gates_passed"].value is True and gate_meta["champion_version"].value == "none"
    assert gate_meta["test_images"].value == 40
    assert read_pointer(world.store, world.model_name)["version"] == v1
    card = world.store.get_bytes(release_prefix(world.model_name, v1) + "model_card.md").decode()
    assert f"version {v1}" in card and "| glioma | 0 | 0 | 10 |" in card
    model_json = world.store.get_json(release_prefix(world.model_name, v1) + "model.json")
    assert set(model_json["files"]) == {
        "model.keras",
        "model_card.md",
        "openvino/model.xml",
        "openvino/model.bin",
        "onnx/model.onnx",
    }
    # Each export was judged against the Keras model on the same 40 test images at release time.
    for runtime in ("openvino-fp32", "onnxruntime-fp32"):
        fp32 = model_json["runtimes"][runtime]
        assert fp32["images"] == 40 and fp32["passed"] and fp32["top1_agreement"] == 1.0, fp32
        assert fp32["max_probability_diff"] <= 1e-4
        assert fp32["accuracy"] == model_json["runtimes"]["keras"]["accuracy"]
        assert f"Runtime `{runtime}` may serve" in card
    assert model_json["evaluation"]["n"] == 40 and model_json["approval"]["by"] == "policy:auto"

    v2 = world.register(seed=2)
    second = world.materialize([promotion_gate, production_model], world.resources(STRICT), {})
    gate_meta = second.asset_materializations_for_node("promotion_gate")[0].metadata
    assert gate_meta["gates_passed"].value is False and gate_meta["champion_version"].value == v1
    check = second.get_asset_check_evaluations()[0]
    assert check.check_name == "candidate_passes_gates" and not check.passed
    tags = world.registry.version(v2).tags
    assert tags["gate.passed"] == "false" and tags["gate.accuracy.passed"] == "false"
    assert tags["approval.status"] == "gates_failed" and tags["gate.champion_version"] == v1

    # Both models were scored on exactly the same images; the champion's figures are its own.
    evaluation_path = mlflow.artifacts.download_artifacts(
        run_id=world.registry.version(v2).run_id,
        artifact_path="promotion/gate_evaluation.json",
        tracking_uri=world.settings.mlflow_tracking_uri,
    )
    evaluation = json.loads(Path(evaluation_path).read_text())
    assert evaluation["candidate"]["images_sha256"] == evaluation["champion"]["images_sha256"]
    assert float(tags["gate.accuracy.champion"]) == pytest.approx(evaluation["champion"]["accuracy"], abs=1e-4)

    promoted = second.asset_materializations_for_node("production_model")[0].metadata
    assert promoted["promoted"].value is False and promoted["serving_version"].value == v1
    assert read_pointer(world.store, world.model_name)["version"] == v1, "a failed candidate never serves"
    actions = [(line["action"], line["version"]) for line in read_audit(world.store, world.model_name)]
    assert actions == [("approve", v1), ("promote", v1), ("reject", v2)]


def test_manual_approval_through_the_cli_and_the_sensor(world: World) -> None:
    version = world.register(seed=3)
    manual = world.resources(LENIENT, policy="manual")
    with dg.instance_for_test() as instance:
        result = dg.materialize([promotion_gate, production_model], resources=manual, instance=instance)
        assert result.asset_materializations_for_node("promotion_gate")[0].metadata["approval_status"].value == (
            "pending"
        )
        assert result.asset_materializations_for_node("production_model")[0].metadata["promoted"].value is False
        assert read_pointer(world.store, world.model_name) is None, "manual policy: nothing serves before sign-off"

        sensor_context = dg.build_sensor_context(instance=instance, resources=manual)
        assert not approval_sensor(sensor_context).run_requests, "pending is not approved"

        assert cli(["approve", version, "--by", "policy:me", "--reason", "x"]) == 1, "policy names are reserved"
        assert cli(["approve", version, "--by", "Dr Ada Obi", "--reason", "reviewed the gate table"]) == 0
        assert world.registry.version(version).tags["approval.by"] == "Dr Ada Obi"

        requests = approval_sensor(dg.build_sensor_context(instance=instance, resources=manual)).run_requests
        assert len(requests) == 1
        request = requests[0]
        assert request.run_config == {"ops": {"production_model": {"config": {"version": version}}}}
        job = dg.Definitions(assets=[promotion_gate, production_model], jobs=[promotion_job], resources=manual)
        run = job.resolve_job_def("promotion_job").execute_in_process(
            instance=instance, run_config=request.run_config, tags=request.tags
        )
        assert run.success
        assert run.asset_materializations_for_node("production_model")[0].metadata["promoted"].value is True

        pointer = read_pointer(world.store, world.model_name)
        assert pointer["version"] == version and pointer["approved_by"] == "Dr Ada Obi"
        assert world.registry.aliases()["champion"] == version
        assert not approval_sensor(dg.build_sensor_context(instance=instance, resources=manual)).run_requests

        audit = read_audit(world.store, world.model_name)
        assert [(a["action"], a["by"]) for a in audit] == [
            ("await_approval", "policy:manual"),
            ("approve", "Dr Ada Obi"),
            ("promote", "Dr Ada Obi"),
        ]
        observed = release_audit_sensor(dg.build_sensor_context(instance=instance, resources=manual))
        assert [e.metadata["action"].value for e in observed.asset_events] == ["await_approval", "approve", "promote"]
        assert observed.cursor == "3"


def test_rejection_and_override_from_the_dagster_launchpad_config(world: World) -> None:
    version = world.register(seed=4)
    strict = world.resources(STRICT)
    world.materialize([promotion_gate], strict, {})
    assert world.registry.version(version).tags["approval.status"] == "gates_failed"

    # Without an override the launch fails with the reason and nothing is released.
    failed = dg.materialize(
        [production_model],
        resources=strict,
        run_config={"ops": {"production_model": {"config": {"decision": "approve", "by": "Dr Lee", "reason": "ok"}}}},
        raise_on_error=False,
    )
    assert not failed.success
    assert read_pointer(world.store, world.model_name) is None
    # With one, it is released and recorded as an override.
    world.materialize(
        [production_model],
        strict,
        {"production_model": {"config": {"decision": "approve", "by": "Dr Lee", "reason": "urgent", "override": True}}},
    )
    tags = world.registry.version(version).tags
    assert tags["approval.override"] == "true" and tags["approval.by"] == "Dr Lee"
    assert read_pointer(world.store, world.model_name)["version"] == version
    assert [a["action"] for a in read_audit(world.store, world.model_name)] == ["reject", "approve_override", "promote"]
    card = world.store.get_bytes(release_prefix(world.model_name, version) + "model_card.md").decode()
    assert "with override of failed gates" in card and "**FAIL**" in card

    world.materialize(
        [production_model],
        strict,
        {"production_model": {"config": {"decision": "reject", "by": "Dr Lee", "reason": "second look: artefacts"}}},
    )
    assert world.registry.version(version).tags["approval.status"] == "rejected"
    assert read_audit(world.store, world.model_name)[-1]["action"] == "reject"


def test_cli_override_crash_safety_rollback_and_listing(world: World) -> None:
    lenient = world.resources(LENIENT)
    v1 = world.register(seed=5)
    world.materialize([promotion_gate, production_model], lenient, {})
    v2 = world.register(seed=6)
    world.materialize([promotion_gate], world.resources(STRICT), {})

    refused = run_cli("approve", v2, "--by", "Dr Kim", "--reason", "looks fine")
    assert refused.returncode == 1 and "--override" in refused.stderr and "gates failed" in refused.stderr
    assert run_cli("promote", v2).returncode == 1, "an unapproved version cannot be released"
    approved = run_cli("approve", v2, "--by", "Dr Kim", "--reason", "accepted risk", "--override")
    assert approved.returncode == 0 and "override" in approved.stdout

    # A crash between the upload and the pointer: the old release stays whole and in force.
    crash = run_cli("promote", v2, env={"TUMOROPS_FAILPOINTS": "promote.before_pointer"})
    assert crash.returncode == FAILPOINT_EXIT_CODE, crash.stderr
    assert world.store.exists(release_prefix(world.model_name, v2) + "model.json"), "uploaded, not published"
    pointer = read_pointer(world.store, world.model_name)
    assert pointer["version"] == v1 and world.registry.aliases()["champion"] == v1
    assert download_release(world.store, pointer, world.tmp / "still-v1")["version"] == v1
    assert not any(a["action"] == "promote" and a["version"] == v2 for a in read_audit(world.store, world.model_name))
    retried = run_cli("promote", v2)
    assert retried.returncode == 0, retried.stderr
    assert read_pointer(world.store, world.model_name)["version"] == v2
    assert world.registry.aliases()["champion"] == v2

    # A crash after the pointer, before the alias: the listing says so and promoting again repairs the alias.
    assert run_cli("rollback", "--by", "Dr Kim", "--reason", "back").returncode == 0
    crash = run_cli("promote", v2, env={"TUMOROPS_FAILPOINTS": "promote.before_alias"})
    assert crash.returncode == FAILPOINT_EXIT_CODE
    assert "differs from production.json" in run_cli("models", "list").stdout
    assert run_cli("promote", v2).returncode == 0
    assert world.registry.aliases()["champion"] == v2

    # Rollback: to the previous champion, or to a named version; unknown targets are refused clearly.
    rolled = run_cli("rollback", "--by", "Dr Kim", "--reason", "sensitivity complaints from ward 3")
    assert rolled.returncode == 0, rolled.stderr
    pointer = read_pointer(world.store, world.model_name)
    assert pointer["version"] == v1 and pointer["action"] == "rollback" and pointer["previous_version"] == v2
    assert world.registry.aliases()["champion"] == v1
    missing = run_cli("rollback", "--to", "999", "--by", "Dr Kim", "--reason", "x")
    assert missing.returncode == 1 and "no version 999" in missing.stderr
    assert run_cli("rollback", "--to", v1, "--by", "Dr Kim", "--reason", "x").returncode == 1, "already serving"

    listing = run_cli("models", "list")
    assert listing.returncode == 0
    assert f"serving version {v1}" in listing.stdout
    lines = {line.split()[0]: line for line in listing.stdout.splitlines() if line.strip()[:1].isdigit()}
    assert "champion" in lines[v1] and "*serving" in lines[v1] and "passed" in lines[v1]
    assert "FAILED" in lines[v2] and "(override)" in lines[v2]
    as_json = json.loads(run_cli("models", "list", "--json").stdout)
    assert as_json["serving"]["version"] == v1 and as_json["warning"] is None

    actions = [(a["action"], a["version"]) for a in read_audit(world.store, world.model_name)]
    assert actions == [
        ("approve", v1),
        ("promote", v1),
        ("reject", v2),
        ("approve_override", v2),
        ("promote", v2),
        ("rollback", v1),
        ("promote", v2),
        ("rollback", v1),
    ]
    tail = run_cli("audit", "--tail", "1")
    assert json.loads(tail.stdout)["reason"] == "sensitivity complaints from ward 3"
