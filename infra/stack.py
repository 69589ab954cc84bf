"""The embedded local stack: SeaweedFS (S3), MLflow, Dagster and BentoML as child processes on 127.0.0.1.

Every process is started in its own session (process group) with its pid recorded under `TUMOROPS_HOME/run/`,
so `down` stops exactly the processes `up` started, children included. Logs go to `TUMOROPS_HOME/logs/`.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from infra.settings import Settings

SERVICES = ("s3", "mlflow", "dagster", "bentoml")
STACK_FILE = "stack.json"


class StackError(RuntimeError):
    """A service of the stack failed to start or stop."""


_HANDED_OUT_PORTS: set[int] = set()


def _ephemeral_port_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port(host: str = "127.0.0.1") -> int:
    """A port that is free now, was not handed out before by this process, and is outside the ephemeral range.

    The kernel may give the same ephemeral port to two binds in a row once the first socket is closed, and a
    service with a dozen ports (SeaweedFS) then fails with "address already in use". Ports from the ephemeral
    range are also what every outgoing loopback connection (boto3, MLflow, Dagster's gRPC) binds to, so a service
    that starts a few seconds after its port was chosen could find it taken; ports below that range are not.
    """
    low, _ = _ephemeral_port_range()
    candidates = range(20000, low) if low > 21000 else range(1024, 65536)
    rng = random.Random()
    for _ in range(200):
        port = rng.choice(candidates)
        if port in _HANDED_OUT_PORTS:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _HANDED_OUT_PORTS.add(port)
        return port
    raise StackError(f"no free port on {host} after 200 tries")


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def venv_bin(name: str) -> str:
    """A console script of the environment this Python runs in (falls back to PATH)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise StackError(f"{name!r} is not installed in this environment; run `make install`")
    return found


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 500
    except urllib.error.HTTPError as error:
        return error.code < 500
    except (OSError, ValueError):
        return False


@dataclass
class ManagedProcess:
    """A started service: its process and where it logs."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    url: str

    def stop(self, timeout: float = 20.0) -> None:
        stop_process_group(self.process.pid, timeout=timeout, interrupt=self.name == "dagster")
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


def _reset_sigint() -> None:
    # Dagster handles SIGINT for a clean shutdown; a shell started in the background may have it ignored.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_process(
    *,
    name: str,
    command: list[str],
    env: dict[str, str],
    log_path: Path,
    cwd: Path | None = None,
    pid_file: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a service in its own process group, logging to `log_path`; its pid goes to `pid_file` at once."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "ab")  # noqa: SIM115 - the child owns it from here
    log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name}: {' '.join(command)}\n".encode())
    log.flush()
    process = subprocess.Popen(
        command,
        env=env,
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_reset_sigint,
    )
    if pid_file is not None:
        pid_file.parent.mkdir(parents=True, exist_ok=True)
        pid_file.write_text(str(process.pid))
    return process


def wait_healthy(
    *, name: str, process: subprocess.Popen[bytes], check: Callable[[], bool], log_path: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StackError(f"{name} exited with code {process.returncode} while starting; see its log: {log_path}")
        if check():
            return
        time.sleep(0.5)
    stop_process_group(process.pid, timeout=10)
    raise StackError(f"{name} did not become healthy within {timeout:.0f}s; see its log: {log_path}")


def stop_process_group(pid: int, *, timeout: float = 20.0, interrupt: bool = False) -> bool:
    """Stop a process group started by `start_process`; return False when it was already gone."""
    try:
        os.killpg(pid, signal.SIGINT if interrupt else signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        _reap(pid)
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    _reap(pid)
    return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


# --- the services ---------------------------------------------------------------------------------------------


def start_seaweedfs(
    *,
    data_dir: Path,
    log_path: Path,
    host: str,
    port: int,
    bucket: str,
    access_key: str,
    secret_key: str,
    timeout: float = 60.0,
    pid_file: Path | None = None,
) -> ManagedProcess:
    """`weed mini` serving S3 on host:port, every other port it opens on a free loopback port."""
    data_dir.mkdir(parents=True, exist_ok=True)
    internal = [
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "s3.port.grpc",
        "admin.port",
        "admin.port.grpc",
        "metricsPort",
        "s3.metricsPort",
        "webdav.port",
    ]
    command = [
        venv_bin("weed"),
        "mini",
        f"-dir={data_dir}",
        f"-ip={host}",
        f"-ip.bind={host}",
        f"-bucket={bucket}",
        "-webdav=false",
        "-admin.ui=false",
        f"-s3.port={port}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        *[f"-{flag}={free_port(host)}" for flag in internal],
    ]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    process = start_process(name="s3", command=command, env=env, log_path=log_path, cwd=data_dir, pid_file=pid_file)
    url = f"http://{host}:{port}"

    def bucket_ready() -> bool:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError

        client = boto3.client(
            "s3",
            endpoint_url=url,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name="us-east-1",
            config=Config(connect_timeout=1, read_timeout=2, retries={"max_attempts": 0}),
        )
        try:
            client.head_bucket(Bucket=bucket)
        except (BotoCoreError, ClientError):
            return False
        return True

    wait_healthy(name="s3 (SeaweedFS)", process=process, check=bucket_ready, log_path=log_path, timeout=timeout)
    return ManagedProcess(name="s3", process=process, log_path=log_path, url=url)


def start_mlflow(
    *,
    state_dir: Path,
    log_path: Path,
    host: str,
    port: int,
    bucket: str,
    s3_endpoint: str,
    access_key: str,
    secret_key: str,
    timeout: float = 120.0,
    pid_file: Path | None = None,
) -> ManagedProcess:
    """MLflow tracking server: SQLite backend, artifacts proxied to `s3://<bucket>/mlflow`."""
    state_dir.mkdir(parents=True, exist_ok=True)
    command = [
        venv_bin("mlflow"),
        "server",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{state_dir / 'mlflow.db'}",
        "--artifacts-destination",
        f"s3://{bucket}/mlflow",
    ]
    env = {
        **os.environ,
        "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
        # The job runner (GenAI evaluation jobs) would spawn busy worker processes that TumorOps never uses.
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "AWS_ACCESS_KEY_ID": access_key,
        "AWS_SECRET_ACCESS_KEY": secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    process = start_process(
        name="mlflow", command=command, env=env, log_path=log_path, cwd=state_dir, pid_file=pid_file
    )
    url = f"http://{host}:{port}"
    wait_healthy(
        name="mlflow", process=process, check=lambda: http_ok(f"{url}/health"), log_path=log_path, timeout=timeout
    )
    return ManagedProcess(name="mlflow", process=process, log_path=log_path, url=url)


def _dagster_home(home: Path) -> Path:
    dagster_home = home / "dagster"
    dagster_home.mkdir(parents=True, exist_ok=True)
    config = dagster_home / "dagster.yaml"
    if not config.exists():
        config.write_text("telemetry:\n  enabled: false\n")
    return dagster_home


def start_dagster(
    *,
    home: Path,
    log_path: Path,
    host: str,
    port: int,
    env: dict[str, str],
    timeout: float = 180.0,
    pid_file: Path | None = None,
) -> ManagedProcess:
    """`dagster dev` (webserver and daemon) over `orchestration.definitions`."""
    command = [venv_bin("dagster"), "dev", "-m", "orchestration.definitions", "-h", host, "-p", str(port)]
    env = {**env, "DAGSTER_HOME": str(_dagster_home(home))}
    process = start_process(
        name="dagster", command=command, env=env, log_path=log_path, cwd=project_root(), pid_file=pid_file
    )
    url = f"http://{host}:{port}"
    wait_healthy(
        name="dagster",
        process=process,
        check=lambda: http_ok(f"{url}/server_info"),
        log_path=log_path,
        timeout=timeout,
    )
    return ManagedProcess(name="dagster", process=process, log_path=log_path, url=url)


def start_bentoml(
    *, log_path: Path, host: str, port: int, env: dict[str, str], timeout: float = 180.0, pid_file: Path | None = None
) -> ManagedProcess:
    """`bentoml serve` of the classifier service; it becomes live at once and ready once a model is loaded."""
    command = [
        venv_bin("bentoml"),
        "serve",
        "serving.service:TumorClassifier",
        "--host",
        host,
        "--port",
        str(port),
        "--working-dir",
        str(project_root()),
    ]
    env = {**env, "BENTOML_DO_NOT_TRACK": "true", "BENTOML_HOME": str(Path(env["TUMOROPS_HOME"]) / "bentoml")}
    process = start_process(
        name="bentoml", command=command, env=env, log_path=log_path, cwd=project_root(), pid_file=pid_file
    )
    url = f"http://{host}:{port}"
    wait_healthy(
        name="bentoml", process=process, check=lambda: http_ok(f"{url}/livez"), log_path=log_path, timeout=timeout
    )
    return ManagedProcess(name="bentoml", process=process, log_path=log_path, url=url)


def project_root() -> Path:
    return Path(__file__).resolve().parent.parent


# --- the whole stack ------------------------------------------------------------------------------------------


def read_stack_file(home: Path) -> dict[str, object]:
    path = home / STACK_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def local_credentials(home: Path) -> tuple[str, str]:
    """The local S3 server's key pair, made once per TUMOROPS_HOME and kept private to the user."""
    path = home / "s3-credentials.json"
    if not path.exists():
        home.mkdir(parents=True, exist_ok=True)
        value = {"access_key": "tumorops-" + secrets.token_hex(4), "secret_key": secrets.token_urlsafe(24)}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(value, handle)
    value = json.loads(path.read_text())
    return value["access_key"], value["secret_key"]


def _pid_file(home: Path, name: str) -> Path:
    return home / "run" / f"{name}.pid"


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def running_pid(home: Path, name: str) -> int | None:
    path = _pid_file(home, name)
    if not path.exists():
        return None
    pid = int(path.read_text().strip())
    return pid if _alive(pid) else None


def stack_settings(settings: Settings) -> Settings:
    """Settings pointing at the local stack of `settings.home` (endpoint, credentials, MLflow URI)."""
    from pydantic import SecretStr

    access_key, secret_key = local_credentials(settings.home_dir)
    return settings.model_copy(
        update={
            "s3_endpoint_url": f"http://{settings.host}:{settings.s3_port}",
            "aws_access_key_id": access_key,
            "aws_secret_access_key": SecretStr(secret_key),
            "mlflow_tracking_uri": f"http://{settings.host}:{settings.mlflow_port}",
        }
    )


def up(settings: Settings, *, echo: Callable[[str], None] = print) -> dict[str, str]:
    """Start every service that is not running yet, in dependency order; return their URLs."""
    home = settings.home_dir
    local = stack_settings(settings)
    access_key, secret_key = local_credentials(home)
    env = {**os.environ, **local.service_env(), "PYTHONUNBUFFERED": "1"}
    host = settings.host
    urls = {
        "s3": f"http://{host}:{settings.s3_port}",
        "mlflow": f"http://{host}:{settings.mlflow_port}",
        "dagster": f"http://{host}:{settings.dagster_port}",
        "bentoml": f"http://{host}:{settings.bentoml_port}",
    }
    ports = {
        "s3": settings.s3_port,
        "mlflow": settings.mlflow_port,
        "dagster": settings.dagster_port,
        "bentoml": settings.bentoml_port,
    }
    starters: dict[str, Callable[[Path], ManagedProcess]] = {
        "s3": lambda pid_file: start_seaweedfs(
            data_dir=home / "s3",
            log_path=home / "logs" / "s3.log",
            host=host,
            port=settings.s3_port,
            bucket=settings.s3_bucket,
            access_key=access_key,
            secret_key=secret_key,
            pid_file=pid_file,
        ),
        "mlflow": lambda pid_file: start_mlflow(
            state_dir=home / "mlflow",
            log_path=home / "logs" / "mlflow.log",
            host=host,
            port=settings.mlflow_port,
            bucket=settings.s3_bucket,
            s3_endpoint=urls["s3"],
            access_key=access_key,
            secret_key=secret_key,
            pid_file=pid_file,
        ),
        "dagster": lambda pid_file: start_dagster(
            home=home,
            log_path=home / "logs" / "dagster.log",
            host=host,
            port=settings.dagster_port,
            env=env,
            pid_file=pid_file,
        ),
        "bentoml": lambda pid_file: start_bentoml(
            log_path=home / "logs" / "bentoml.log", host=host, port=settings.bentoml_port, env=env, pid_file=pid_file
        ),
    }
    (home / "run").mkdir(parents=True, exist_ok=True)
    for name in SERVICES:
        if running_pid(home, name) is not None:
            echo(f"{name:8s} already running at {urls[name]}")
            continue
        if port_in_use(host, ports[name]):
            raise StackError(
                f"cannot start {name}: port {ports[name]} on {host} is already in use by another program; "
                f"set TUMOROPS_{name.upper()}_PORT to a free port"
            )
        echo(f"{name:8s} starting on {urls[name]} ...")
        started = time.monotonic()
        managed = starters[name](_pid_file(home, name))
        echo(f"{name:8s} healthy after {time.monotonic() - started:.0f}s (log: {managed.log_path})")
    (home / STACK_FILE).write_text(json.dumps({"urls": urls, "bucket": settings.s3_bucket}, indent=2))
    return urls


def down(settings: Settings, *, echo: Callable[[str], None] = print) -> None:
    """Stop exactly the processes `up` started, in reverse order."""
    home = settings.home_dir
    for name in reversed(SERVICES):
        path = _pid_file(home, name)
        if not path.exists():
            continue
        pid = int(path.read_text().strip())
        if stop_process_group(pid, interrupt=name == "dagster"):
            echo(f"{name:8s} stopped (pid {pid})")
        else:
            echo(f"{name:8s} was not running")
        path.unlink(missing_ok=True)


def status(settings: Settings) -> dict[str, dict[str, object]]:
    """For each service: pid (None when not running) and whether its health endpoint answers."""
    home = settings.home_dir
    host = settings.host
    health = {
        "s3": f"http://{host}:{settings.s3_port}/",
        "mlflow": f"http://{host}:{settings.mlflow_port}/health",
        "dagster": f"http://{host}:{settings.dagster_port}/server_info",
        "bentoml": f"http://{host}:{settings.bentoml_port}/readyz",
    }
    report: dict[str, dict[str, object]] = {}
    for name in SERVICES:
        pid = running_pid(home, name)
        report[name] = {"pid": pid, "healthy": pid is not None and http_ok(health[name]), "url": health[name]}
    return report
