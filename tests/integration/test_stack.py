"""`tumorops up | status | down` on free loopback ports: every service healthy, and nothing left behind."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from infra.stack import SERVICES, free_port

pytestmark = pytest.mark.integration
TUMOROPS = str(Path(sys.executable).parent / "tumorops")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_up_status_down_leaves_no_process(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "TUMOROPS_HOME": str(tmp_path / "home"),
        "TUMOROPS_S3_PORT": str(free_port()),
        "TUMOROPS_MLFLOW_PORT": str(free_port()),
        "TUMOROPS_DAGSTER_PORT": str(free_port()),
        "TUMOROPS_BENTOML_PORT": str(free_port()),
    }
    for key in ("TUMOROPS_S3_ENDPOINT_URL", "TUMOROPS_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    try:
        up = subprocess.run([TUMOROPS, "up"], env=env, capture_output=True, text=True, timeout=600)
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"http://127.0.0.1:{env['TUMOROPS_DAGSTER_PORT']}" in up.stdout
        pids = {name: int((tmp_path / "home" / "run" / f"{name}.pid").read_text()) for name in SERVICES}

        status = subprocess.run([TUMOROPS, "status"], env=env, capture_output=True, text=True, timeout=60)
        lines = {line.split()[0]: line for line in status.stdout.splitlines() if line.strip()}
        for name in ("s3", "mlflow", "dagster"):
            assert "healthy" in lines[name], status.stdout
        # No model is promoted in this fresh stack, so BentoML runs but is not ready.
        assert "not ready" in lines["bentoml"], status.stdout
        assert status.returncode == 1

        second = subprocess.run([TUMOROPS, "up"], env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 0 and second.stdout.count("already running") == 4, second.stdout
    finally:
        down = subprocess.run([TUMOROPS, "down"], env=env, capture_output=True, text=True, timeout=180)
    assert down.returncode == 0, down.stdout + down.stderr
    assert [name for name, pid in pids.items() if _group_alive(pid)] == []
    assert not list((tmp_path / "home" / "run").glob("*.pid"))
