"""The training dataset manifest and EfficientNetB3 retraining, launched through Dagster Pipes."""

import io
from collections import Counter

import dagster as dg
import pandas as pd
from pydantic import Field

from orchestration.defs.ingestion.assets import load_validation_results, validated_batch
from orchestration.defs.training.resources import TrainingLauncherResource
from orchestration.metadata import table_metadata
from orchestration.resources import MLflowResource, S3Resource
from tumor_model.dataset import build_manifest, dataset_version
from tumor_model.duplicates import DEFAULT_MAX_DISTANCE
from tumor_model.splits import SPLITS

LATEST_MANIFEST_KEY = "datasets/manifests/latest.json"


class DatasetConfig(dg.Config):
    """How images are grouped and how much class imbalance is tolerated before warning."""

    near_duplicate_distance: int = Field(
        default=DEFAULT_MAX_DISTANCE, description="perceptual-hash bits for near-duplicates"
    )
    max_class_imbalance: float = Field(
        default=3.0, description="warn when the largest class has more than this many times the smallest"
    )


@dg.asset(
    group_name="training",
    deps=[validated_batch],
    kinds={"pandas", "s3"},
    check_specs=[
        dg.AssetCheckSpec(
            "class_balance",
            asset="training_dataset",
            blocking=False,
            description="largest class / smallest class stays under the configured ratio (warning only)",
        )
    ],
)
def training_dataset(context: dg.AssetExecutionContext, config: DatasetConfig, s3: S3Resource) -> dg.MaterializeResult:
    """Manifest of every accepted image with its group (exact + near-duplicates) and leakage-free split.

    Existing images keep their groups and splits from the previous manifest; a new image whose near-duplicates
    sit in two splits is left out and listed. Written to `datasets/manifests/<dataset_version>.parquet`;
    `datasets/manifests/latest.json` is updated last.
    """
    store = s3.store()
    accepted = [row for result in load_validation_results(s3) for row in result["accepted"]]
    if not accepted:
        raise dg.Failure("no accepted images yet: ingest a batch first (tumorops ingest PATH)")
    previous = None
    if store.exists(LATEST_MANIFEST_KEY):
        previous = pd.read_parquet(io.BytesIO(store.get_bytes(store.get_json(LATEST_MANIFEST_KEY)["manifest"])))
    manifest, excluded = build_manifest(
        pd.DataFrame(accepted), previous=previous, max_distance=config.near_duplicate_distance
    )
    version = dataset_version(manifest)
    key = f"datasets/manifests/{version}.parquet"
    if not store.exists(key):
        buffer = io.BytesIO()
        manifest.to_parquet(buffer, index=False)
        store.put_bytes(key, buffer.getvalue())
    store.put_json(LATEST_MANIFEST_KEY, {"dataset_version": version, "manifest": key, "images": len(manifest)})
    counts = Counter(zip(manifest["label"], manifest["split"], strict=True))
    per_class = Counter(manifest["label"])
    labels = sorted(per_class)
    imbalance = max(per_class.values()) / min(per_class.values()) if per_class else 0.0
    context.log.info(f"dataset {version}: {len(manifest)} images, {len(excluded)} left out (bridging splits)")
    return dg.MaterializeResult(
        metadata={
            "dataset_version": version,
            "manifest": dg.MetadataValue.path(s3.console_url(key)),
            "images": len(manifest),
            "groups": int(manifest["group"].nunique()),
            "left_out_bridging_splits": len(excluded),
            "batches": int(manifest["source_batch"].nunique()),
            "images_per_class_and_split": table_metadata(
                [{"label": label, **{s: counts.get((label, s), 0) for s in SPLITS}} for label in labels],
                [("label", "string")] + [(s, "int") for s in SPLITS],
            ),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="class_balance",
                passed=imbalance <= config.max_class_imbalance,
                severity=dg.AssetCheckSeverity.WARN,
                description=f"largest/smallest class = {imbalance:.2f} (limit {config.max_class_imbalance})",
                metadata={
                    "imbalance_ratio": round(imbalance, 3),
                    "images_per_class": dg.MetadataValue.json(dict(per_class)),
                },
            )
        ],
    )


class TrainingRunConfig(dg.Config):
    """Training recipe for this run: a named profile, and single fields overriding it (unset: the profile's)."""

    profile: str | None = Field(
        default=None,
        description="demo (minutes, small images) | cpu (60 min on 2 CPU cores, no pretrained weights) | "
        "gpu (ImageNet transfer learning at 300 px); unset: TUMOROPS_TRAINING_PROFILE",
    )
    image_size: int | None = Field(default=None, description="input side in pixels (B3 native: 300)")
    epochs: int | None = Field(default=None, description="most epochs (may stop sooner)")
    warmup_epochs: int | None = Field(default=None, description="head-only epochs on a frozen backbone")
    fine_tune_blocks: int | None = Field(default=None, description="top EfficientNet blocks fine-tuned (0: all)")
    batch_size: int | None = Field(default=None, description="images per step per replica")
    learning_rate: float | None = Field(default=None, description="peak learning rate")
    weights: str | None = Field(default=None, description="imagenet | none | weights file path | s3:// URI")
    time_budget_minutes: float | None = Field(default=None, description="stop training before this much time")
    early_stopping_patience: int | None = Field(default=None, description="epochs without a better val loss")
    seed: int | None = Field(default=None, description="initialisation, shuffling and augmentation seed")


def training_command(
    *, entrypoint: list[str], manifest_key: str, config: TrainingRunConfig, checkpoint_key: str
) -> list[str]:
    """The `tumorops train` command line for a run: always `--resume`, so a retry continues its checkpoint."""
    command = [*entrypoint, "train", "--manifest", manifest_key, "--resume", "--checkpoint-key", checkpoint_key]
    if config.profile:
        command += ["--profile", config.profile]
    for name, value in config.model_dump().items():
        if name != "profile" and value is not None:
            command += [f"--{name.replace('_', '-')}", str(value)]
    return command


DETERMINISTIC_TRAINING_ERRORS = frozenset({"ValueError", "RuntimeError", "FileNotFoundError", "KeyError"})


def _reported_training_error(context: dg.AssetExecutionContext) -> tuple[str | None, str | None]:
    """The exception the training process reported through Pipes before it exited (message, class name)."""
    records = context.instance.all_logs(context.run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
    for record in reversed(records):
        event = record.dagster_event
        if event is None or not (event.message or "").startswith("[pipes] external process pipes closed with exc"):
            continue
        error = event.engine_event_data.error if event.engine_event_data else None
        if error is not None:
            return error.message.strip(), error.cls_name
    return None, None


@dg.asset(
    group_name="training",
    deps=[training_dataset],
    kinds={"tensorflow", "mlflow"},
    # A retry (automatic, or "re-execute from failure" in the UI) resumes from the last epoch's checkpoint.
    retry_policy=dg.RetryPolicy(max_retries=2, delay=30),
)
def candidate_model(
    context: dg.AssetExecutionContext,
    config: TrainingRunConfig,
    s3: S3Resource,
    mlflow: MLflowResource,
    training_launcher: TrainingLauncherResource,
) -> dg.MaterializeResult:
    """EfficientNetB3 trained on the latest dataset manifest by `tumorops train`, launched through Dagster Pipes.

    The training process checkpoints to S3 after every epoch, stops early on the validation split, evaluates on
    the test split once at the end, logs params, per-epoch metrics, plots and the model (with its signature) to
    MLflow, registers a model version with alias `candidate`, and reports its metrics, plots and MLflow run id
    back here. Locally it is a subprocess; in production a GPU pod (`training_launcher.mode = k8s`).
    """
    latest = s3.store().get_json(LATEST_MANIFEST_KEY)
    # The root run id is shared by retries and re-executions: they find the checkpoint of the first attempt.
    checkpoint_key = f"dagster-{context.run.root_run_id or context.run_id}"
    command = training_command(
        entrypoint=training_launcher.entrypoint(),
        manifest_key=latest["manifest"],
        config=config,
        checkpoint_key=checkpoint_key,
    )
    env = {
        **s3.env(),
        "TUMOROPS_MLFLOW_TRACKING_URI": mlflow.tracking_uri,
        "MLFLOW_TRACKING_URI": mlflow.tracking_uri,
        "TUMOROPS_MODEL_NAME": mlflow.model_name,
    }
    context.log.info(f"training on {latest['manifest']}: {' '.join(command)}")
    try:
        invocation = training_launcher.run(context=context, command=command, env=env)
    except Exception as error:  # re-raised below as a Failure that names the training process's own error
        reason, error_class = _reported_training_error(context)
        raise dg.Failure(
            description=f"training failed: {reason or error}",
            metadata={
                "manifest": latest["manifest"],
                "checkpoint_key": checkpoint_key,
                "command": " ".join(command),
                "launcher_error": str(error),
            },
            # A killed process (no error reported) or an outage may pass on retry; a data or configuration error
            # raised by the training code would only fail again.
            allow_retries=error_class not in DETERMINISTIC_TRAINING_ERRORS,
        ) from error
    result = invocation.get_materialize_result()
    metadata = dict(result.metadata or {})
    version = metadata.get("model_version")
    if version is not None:
        metadata["mlflow_model_version"] = dg.MetadataValue.url(mlflow.model_version_url(str(version.value)))
    run_id = metadata.get("mlflow_run_id")
    if run_id is not None:
        metadata["mlflow_run"] = dg.MetadataValue.url(f"{mlflow.tracking_uri}/#/runs/{run_id.value}")
    metadata["checkpoint_key"] = checkpoint_key
    return dg.MaterializeResult(metadata=metadata)


retrain_job = dg.define_asset_job(
    "retrain_job",
    selection=dg.AssetSelection.assets(training_dataset).downstream(),
    description="Build the dataset manifest, retrain, evaluate gates, and promote when they pass.",
)
