"""The training dataset manifest and EfficientNetB3 retraining, launched through Dagster Pipes."""

import io
import sys
from collections import Counter

import dagster as dg
import pandas as pd
from pydantic import Field

from orchestration.defs.ingestion.assets import load_validation_results, validated_batch
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
    """Training hyper-parameters; unset values come from the TUMOROPS_* settings."""

    image_size: int | None = Field(default=None, description="input side in pixels (B3 native: 300)")
    epochs: int | None = Field(default=None, description="passes over the training split")
    batch_size: int | None = Field(default=None)
    learning_rate: float | None = Field(default=None)
    weights: str | None = Field(default=None, description="imagenet | none | local backbone weights file")
    seed: int = 0


@dg.asset(group_name="training", deps=[training_dataset], kinds={"tensorflow", "mlflow"})
def candidate_model(
    context: dg.AssetExecutionContext,
    config: TrainingRunConfig,
    s3: S3Resource,
    mlflow: MLflowResource,
    pipes_subprocess_client: dg.PipesSubprocessClient,
) -> dg.MaterializeResult:
    """EfficientNetB3 trained on the latest dataset manifest by `tumorops train`, launched through Dagster Pipes.

    The training process logs to MLflow, registers a model version with alias `candidate` and reports its test
    metrics back here.
    """
    latest = s3.store().get_json(LATEST_MANIFEST_KEY)
    command = [sys.executable, "-m", "infra.cli", "train", "--manifest", latest["manifest"], "--seed", str(config.seed)]
    for flag, value in (
        ("--image-size", config.image_size),
        ("--epochs", config.epochs),
        ("--batch-size", config.batch_size),
        ("--learning-rate", config.learning_rate),
        ("--weights", config.weights),
    ):
        if value is not None:
            command += [flag, str(value)]
    env = {
        **s3.env(),
        "TUMOROPS_MLFLOW_TRACKING_URI": mlflow.tracking_uri,
        "MLFLOW_TRACKING_URI": mlflow.tracking_uri,
        "TUMOROPS_MODEL_NAME": mlflow.model_name,
    }
    result = pipes_subprocess_client.run(command=command, context=context, env=env).get_materialize_result()
    metadata = dict(result.metadata or {})
    version = metadata.get("model_version")
    if version is not None:
        metadata["mlflow_model_version"] = dg.MetadataValue.url(mlflow.model_version_url(str(version.value)))
    return dg.MaterializeResult(metadata=metadata)


retrain_job = dg.define_asset_job(
    "retrain_job",
    selection=dg.AssetSelection.assets(training_dataset).downstream(),
    description="Build the dataset manifest, retrain, evaluate gates, and promote when they pass.",
)
