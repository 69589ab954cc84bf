"""How the training process is launched: the Pipes command line, the GPU pod spec, the compute plan."""

import pytest

from orchestration.defs.training.assets import TrainingRunConfig, training_command
from orchestration.defs.training.resources import TrainingLauncherResource
from tumor_model.distribution import plan_compute, use_mixed_precision
from tumor_model.train_entry import default_checkpoint_key
from tumor_model.training_config import training_config


def test_training_command_always_resumes_and_passes_only_set_options() -> None:
    config = TrainingRunConfig(profile="cpu", epochs=5, time_budget_minutes=12.5)
    command = training_command(
        entrypoint=["tumorops"],
        manifest_key="datasets/manifests/v1.parquet",
        config=config,
        checkpoint_key="dagster-r1",
    )
    assert command == [
        "tumorops", "train", "--manifest", "datasets/manifests/v1.parquet", "--resume", "--checkpoint-key",
        "dagster-r1", "--profile", "cpu", "--epochs", "5", "--time-budget-minutes", "12.5",
    ]  # fmt: skip


def test_the_command_line_accepts_what_the_launchpad_sends(monkeypatch) -> None:
    from infra.cli import build_parser
    from infra.settings import load_settings
    from tumor_model.train_entry import resolve_config

    config = TrainingRunConfig(profile="gpu", warmup_epochs=1, fine_tune_blocks=2, weights="none", seed=3)
    command = training_command(entrypoint=["tumorops"], manifest_key="m.parquet", config=config, checkpoint_key="k")
    args = build_parser().parse_args(command[1:])
    for name in ("TUMOROPS_TRAINING_PROFILE", "TUMOROPS_IMAGE_SIZE", "TUMOROPS_EPOCHS", "TUMOROPS_WEIGHTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TUMOROPS_EPOCHS", "7")
    resolved = resolve_config(args, load_settings())
    assert (resolved.profile, resolved.warmup_epochs, resolved.fine_tune_blocks, resolved.seed) == ("gpu", 1, 2, 3)
    assert resolved.epochs == 7 and resolved.weights == "none" and resolved.image_size == 300
    assert args.resume and args.checkpoint_key == "k"


def test_checkpoint_key_changes_with_the_configuration() -> None:
    a = default_checkpoint_key("v1", training_config("cpu"))
    assert a == default_checkpoint_key("v1", training_config("cpu"))
    assert a != default_checkpoint_key("v1", training_config("cpu", epochs=3))
    assert a != default_checkpoint_key("v2", training_config("cpu"))


def test_gpu_pod_spec_requests_gpus_and_is_a_valid_pipes_pod() -> None:
    from dagster_k8s.pipes import build_pod_body

    launcher = TrainingLauncherResource(
        mode="k8s", image="registry.example/tumorops:1.2", gpus=2, secret_env_from=["tumorops-s3"], service_account="t"
    )
    spec = launcher.pod_spec()
    container = spec["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert spec["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert spec["node_selector"] == {"nvidia.com/gpu.present": "true"}
    assert container["env_from"] == [{"secret_ref": {"name": "tumorops-s3"}}]
    pod = build_pod_body(
        pod_name="train-1",
        image=None,
        command=["tumorops", "train", "--manifest", "m.parquet"],
        env_vars={"DAGSTER_PIPES_CONTEXT": "x", "TUMOROPS_S3_BUCKET": "b"},
        base_pod_meta={"labels": {"tumorops/role": "training"}},
        base_pod_spec=spec,
    )
    built = pod.spec.containers[0]
    assert built.image == "registry.example/tumorops:1.2" and built.command[:2] == ["tumorops", "train"]
    assert built.resources.limits["nvidia.com/gpu"] == "2"
    assert {e.name for e in built.env} >= {"TUMOROPS_HOME", "DAGSTER_PIPES_CONTEXT", "TUMOROPS_S3_BUCKET"}
    assert pod.spec.restart_policy == "Never" and pod.spec.service_account_name == "t"
    assert pod.metadata.labels["tumorops/role"] == "training"

    cpu_pod = TrainingLauncherResource(mode="k8s", image="i", gpus=0).pod_spec()
    assert "nvidia.com/gpu" not in cpu_pod["containers"][0]["resources"]["limits"] and "tolerations" not in cpu_pod
    with pytest.raises(Exception, match="image must be set"):
        TrainingLauncherResource(mode="k8s").pod_spec()
    assert TrainingLauncherResource(mode="k8s", image="i").entrypoint() == ["tumorops"]


def test_mixed_precision_is_on_exactly_for_gpus_unless_forced() -> None:
    assert use_mixed_precision("auto", gpus=1) and not use_mixed_precision("auto", gpus=0)
    assert use_mixed_precision("on", gpus=0) and not use_mixed_precision("off", gpus=8)
    with pytest.raises(ValueError, match="auto, on or off"):
        use_mixed_precision("fp8", gpus=1)


def test_cpu_plan_is_one_float32_replica() -> None:
    import keras

    plan = plan_compute(mixed_precision="auto")
    assert (plan.replicas, plan.gpus, plan.mixed_precision) == (1, 0, False)
    assert keras.mixed_precision.global_policy().name == "float32"
    assert "CPU" in plan.description
