"""Where `tumorops train` runs: a local subprocess, or a Kubernetes pod with GPUs, both through Dagster Pipes."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import dagster as dg
from pydantic import Field


class TrainingLauncherResource(dg.ConfigurableResource):
    """Launches the training process through Dagster Pipes.

    `subprocess` (the local stack) runs it next to Dagster; `k8s` runs it in a pod of the configured image with
    `nvidia.com/gpu` limits, the S3 and MLflow settings passed as environment variables and secrets.
    """

    mode: str = Field(default="subprocess", description="subprocess | k8s")
    image: str | None = Field(default=None, description="k8s: training image (the repo's infra/docker/Dockerfile)")
    namespace: str = Field(default="tumorops", description="k8s: namespace of the training pods")
    gpus: int = Field(default=1, description="k8s: nvidia.com/gpu per pod (0 for a CPU pod)")
    cpu: str = Field(default="8", description="k8s: CPU request and limit")
    memory: str = Field(default="32Gi", description="k8s: memory request and limit")
    node_selector: dict[str, str] = Field(
        default_factory=lambda: {"nvidia.com/gpu.present": "true"}, description="k8s: node labels the pod needs"
    )
    service_account: str | None = Field(default=None, description="k8s: service account (e.g. IRSA for S3)")
    secret_env_from: list[str] = Field(
        default_factory=list, description="k8s: Secrets whose keys become environment variables (S3 credentials)"
    )
    cache_volume_claim: str | None = Field(
        default=None, description="k8s: PersistentVolumeClaim mounted at /cache for the image cache"
    )

    def pod_spec(self) -> dict[str, Any]:
        """The base pod spec `PipesK8sClient` starts from (image, command and Pipes env are added by it)."""
        if not self.image:
            raise dg.DagsterInvalidConfigError("training_launcher.image must be set in k8s mode", [], None)
        if self.gpus < 0:
            raise dg.DagsterInvalidConfigError("training_launcher.gpus cannot be negative", [], None)
        limits: dict[str, str] = {"cpu": self.cpu, "memory": self.memory}
        if self.gpus:
            limits["nvidia.com/gpu"] = str(self.gpus)
        container: dict[str, Any] = {
            "name": "train",
            "image": self.image,
            "resources": {"requests": {"cpu": self.cpu, "memory": self.memory}, "limits": limits},
            "env": [{"name": "TUMOROPS_HOME", "value": "/cache"}],
            "volume_mounts": [{"name": "cache", "mount_path": "/cache"}, {"name": "dshm", "mount_path": "/dev/shm"}],
        }
        if self.secret_env_from:
            container["env_from"] = [{"secret_ref": {"name": name}} for name in self.secret_env_from]
        cache_volume: dict[str, Any] = (
            {"name": "cache", "persistent_volume_claim": {"claim_name": self.cache_volume_claim}}
            if self.cache_volume_claim
            else {"name": "cache", "empty_dir": {}}
        )
        spec: dict[str, Any] = {
            "restart_policy": "Never",
            "containers": [container],
            "volumes": [cache_volume, {"name": "dshm", "empty_dir": {"medium": "Memory"}}],
        }
        if self.gpus:
            spec["node_selector"] = dict(self.node_selector)
            spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        if self.service_account:
            spec["service_account_name"] = self.service_account
        return spec

    def entrypoint(self) -> list[str]:
        """The `tumorops` command: this interpreter locally, the image's console script in a pod."""
        return [sys.executable, "-m", "infra.cli"] if self.mode == "subprocess" else ["tumorops"]

    def run(
        self, *, context: dg.AssetExecutionContext, command: Sequence[str], env: dict[str, str]
    ) -> dg.PipesClientCompletedInvocation:
        """Run `command` where the mode says, streaming its logs and Pipes messages into the run."""
        if self.mode == "subprocess":
            return dg.PipesSubprocessClient().run(command=list(command), context=context, env=env)
        if self.mode == "k8s":
            from dagster_k8s import PipesK8sClient

            return PipesK8sClient().run(
                context=context,
                command=list(command),
                namespace=self.namespace,
                env=env,
                base_pod_spec=self.pod_spec(),
                base_pod_meta={"labels": {"app.kubernetes.io/part-of": "tumorops", "tumorops/role": "training"}},
            )
        message = f"training_launcher.mode must be subprocess or k8s, not {self.mode!r}"
        raise dg.DagsterInvalidConfigError(message, [], None)
