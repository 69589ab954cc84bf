"""`tumorops train`: standalone training, the process Dagster launches through Pipes.

It downloads the manifest and its images from S3 (into a local cache), trains, evaluates on the test split only,
logs everything to MLflow, registers a model version with alias `candidate`, and reports the result to Dagster
when launched through Pipes.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tumor_model.training_config import TrainingConfig

logger = logging.getLogger("tumorops.train")


class _Reporter:
    """Sends progress to Dagster through Pipes when launched by it, else to the terminal."""

    def __init__(self) -> None:
        from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes

        self.pipes = open_dagster_pipes() if PipesEnvVarParamsLoader().is_dagster_pipes_process() else None

    def info(self, message: str) -> None:
        if self.pipes is not None:
            self.pipes.log.info(message)
        print(message, flush=True)

    def materialization(self, metadata: dict[str, Any]) -> None:
        if self.pipes is not None:
            self.pipes.report_asset_materialization(metadata=metadata)

    def close(self) -> None:
        if self.pipes is not None:
            self.pipes.close()


def _git_commit() -> str:
    """The code's git commit (TUMOROPS_GIT_COMMIT in images built without .git)."""
    if os.environ.get("TUMOROPS_GIT_COMMIT"):
        return os.environ["TUMOROPS_GIT_COMMIT"]
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = TrainingConfig()
    parser.add_argument("--manifest", required=True, help="S3 key (datasets/manifests/<version>.parquet) or local file")
    parser.add_argument("--image-size", type=int, default=None, help=f"input side (default {defaults.image_size})")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--weights", default=None, help="imagenet | none | local backbone weights file")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--model-name", default=None, help="registered model name (default from settings)")


def run(args: argparse.Namespace) -> int:
    from infra.settings import load_settings

    settings = load_settings()
    config = TrainingConfig(
        image_size=args.image_size or settings.image_size,
        epochs=args.epochs or settings.epochs,
        batch_size=args.batch_size or settings.batch_size,
        learning_rate=args.learning_rate or settings.learning_rate,
        weights=args.weights or settings.weights,
        seed=args.seed,
    )
    model_name = args.model_name or settings.model_name
    reporter = _Reporter()
    try:
        return _train(settings=settings, args=args, config=config, model_name=model_name, reporter=reporter)
    finally:
        reporter.close()


def _train(
    *, settings: Any, args: argparse.Namespace, config: TrainingConfig, model_name: str, reporter: _Reporter
) -> int:
    import pandas as pd

    from infra.image_cache import fetch_manifest_images
    from infra.storage import ObjectStore
    from tumor_model.evaluation import classification_metrics, flat_metrics
    from tumor_model.labels import CLASS_NAMES
    from tumor_model.preprocessing import PREPROCESSING_ID
    from tumor_model.training import load_split_arrays, predict_probabilities, train_classifier

    store = ObjectStore.from_settings(settings)
    if Path(args.manifest).is_file():
        manifest = pd.read_parquet(args.manifest)
    else:
        manifest = pd.read_parquet(io.BytesIO(store.get_bytes(args.manifest)))
    version = Path(args.manifest).stem
    cache = settings.home_dir / "cache" / "images"
    fetch_manifest_images(store, manifest, cache, log=reporter.info)
    started = time.monotonic()
    arrays = load_split_arrays(
        manifest, image_path=lambda row: cache / f"{row.sha256}.{row.ext}", image_size=config.image_size
    )
    sizes = {split: len(a.labels) for split, a in arrays.items()}
    reporter.info(f"dataset {version}: {sizes} images decoded in {time.monotonic() - started:.1f}s")
    if sizes["test"] == 0:
        raise RuntimeError(f"dataset {version} has an empty test split ({sizes}): ingest more images")

    import keras
    import mlflow
    import tensorflow as tf

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_experiment(model_name)
    with mlflow.start_run(run_name=f"train-{version}") as active_run:
        run_id = active_run.info.run_id
        mlflow.log_params({**config.to_params(), "dataset_version": version, **{f"n_{k}": v for k, v in sizes.items()}})
        mlflow.set_tags({"dataset_version": version, "git_commit": _git_commit()})
        dataset = mlflow.data.from_pandas(manifest, source=store.uri(args.manifest), name=version)
        mlflow.log_input(dataset, context="training")

        class EpochLogger(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
                logs = {k: float(v) for k, v in (logs or {}).items()}
                mlflow.log_metrics({f"epoch_{k}": v for k, v in logs.items()}, step=epoch)
                shown = ", ".join(f"{k}={v:.4f}" for k, v in logs.items())
                reporter.info(f"epoch {epoch + 1}/{config.epochs}: {shown}")

        fit_started = time.monotonic()
        model, history = train_classifier(
            train=arrays["train"], val=arrays["val"], config=config, callbacks=[EpochLogger()]
        )
        fit_seconds = time.monotonic() - fit_started
        probabilities = predict_probabilities(model, arrays["test"].images)
        metrics = classification_metrics(
            y_true=arrays["test"].labels, probabilities=probabilities, class_names=CLASS_NAMES
        )
        mlflow.log_metrics({**flat_metrics(metrics), "fit_seconds": fit_seconds})
        mlflow.log_dict(metrics, "evaluation/test_metrics.json")
        mlflow.log_dict(history, "evaluation/history.json")
        info = mlflow.keras.log_model(
            model,
            name="model",
            registered_model_name=model_name,
            pip_requirements=[f"keras=={keras.__version__}", f"tensorflow=={tf.__version__}"],
        )
        model_version = str(info.registered_model_version)
        client = mlflow.MlflowClient()
        tags = {
            "dataset_version": version,
            "image_size": str(config.image_size),
            "labels": json.dumps(list(CLASS_NAMES)),
            "preprocessing": PREPROCESSING_ID,
            "test_accuracy": f"{metrics['accuracy']:.4f}",
            "test_macro_f1": f"{metrics['macro_f1']:.4f}",
            "test_ece": f"{metrics['ece']:.4f}",
            "mlflow_run_id": run_id,
        }
        for key, value in tags.items():
            client.set_model_version_tag(model_name, model_version, key, value)
        client.set_registered_model_alias(model_name, "candidate", model_version)

    reporter.info(
        f"registered {model_name} version {model_version} (alias candidate): "
        f"test accuracy {metrics['accuracy']:.3f}, macro F1 {metrics['macro_f1']:.3f}"
    )
    reporter.materialization(
        {
            "model_name": model_name,
            "model_version": model_version,
            "mlflow_run_id": run_id,
            "dataset_version": version,
            "test_accuracy": metrics["accuracy"],
            "test_macro_f1": metrics["macro_f1"],
            "fit_seconds": round(fit_seconds, 1),
            # Pipes takes nested values only with an explicit metadata type.
            "images_per_split": {"raw_value": sizes, "type": "json"},
            "config": {"raw_value": config.to_params(), "type": "json"},
        }
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tumorops train", description=__doc__)
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
