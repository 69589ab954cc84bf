"""The Dagster definitions load, validate with Dagster's own command, and expose what the UI should show."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from orchestration.definitions import defs

ROOT = Path(__file__).resolve().parents[2]


def test_jobs_sensors_and_schedule_are_defined() -> None:
    repo = defs.get_repository_def()
    assert {"ingest_job", "retrain_job", "promotion_job"} <= set(repo.job_names)
    assert {s.name for s in repo.sensor_defs} == {
        "incoming_batch_sensor",
        "retrain_after_ingest",
        "approval_sensor",
        "release_audit_sensor",
    }
    schedule = repo.get_schedule_def("retrain_schedule")
    assert schedule.cron_schedule == os.environ.get("TUMOROPS_RETRAIN_CRON", "0 3 * * 1")
    retrain_assets = {k.to_user_string() for k in defs.resolve_job_def("retrain_job").asset_layer.executable_asset_keys}
    assert retrain_assets == {"training_dataset", "candidate_model", "promotion_gate", "production_model"}
    promotion_assets = defs.resolve_job_def("promotion_job").asset_layer.executable_asset_keys
    assert {k.to_user_string() for k in promotion_assets} == {"production_model"}


def test_every_asset_has_a_description() -> None:
    for spec in defs.resolve_all_asset_specs():
        assert spec.description, f"{spec.key.to_user_string()} has no docstring for the UI"


def test_validation_check_is_blocking() -> None:
    graph = defs.resolve_asset_graph()
    key = dg.AssetCheckKey(dg.AssetKey("validated_batch"), "rejected_fraction_within_limit")
    assert key in graph.asset_check_keys
    assert graph.get_check_spec(key).blocking


def test_dagster_definitions_validate_passes(tmp_path: Path) -> None:
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path)}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-m", "orchestration.definitions"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "All code locations passed validation" in result.stdout + result.stderr
