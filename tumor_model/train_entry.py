"""`tumorops train`: standalone training, the process Dagster launches through Pipes.

It downloads the manifest and its images from S3 (into a local cache), trains with a checkpoint to S3 after every
epoch, evaluates on the test split only at the end, logs everything to MLflow, registers a model version with
alias `candidate`, and reports progress, metrics, plots and the MLflow run id to Dagster when launched through
Pipes. `--resume` continues an interrupted run from its last checkpoint (same MLflow run).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import io
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tumor_model.training_config import TRAINING_PROFILES, TrainingConfig, training_config

logger = logging.getLogger("tumorops.train")


class _Reporter:
    """Sends progress to Dagster through Pipes when launched by it, and always to the terminal.

    Used as a context manager: an exception escaping training is reported to Dagster with its traceback.
    """

    def __init__(self) -> None:
        from dagster_pipes import PipesEnvVarParamsLoader, open_dagster_pipes

        self.pipes = open_dagster_pipes() if PipesEnvVarParamsLoader().is_dagster_pipes_process() else None

    def __enter__(self) -> _Reporter:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self.pipes is not None:
            self.pipes.__exit__(*exc_info)

    def info(self, message: str) -> None:
        if self.pipes is not None:
            self.pipes.log.info(message)
        print(message, flush=True)

    def materialization(self, metadata: dict[str, Any]) -> None:
        if self.pipes is not None:
            self.pipes.report_asset_materialization(metadata=metadata)


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


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


# Command-line flags that override single fields of the chosen profile.
OVERRIDE_FLAGS: dict[str, tuple[str, Any, str]] = {
    "image_size": ("--image-size", int, "input side in pixels (B3 native: 300)"),
    "epochs": ("--epochs", int, "most epochs in all (warm-up + fine-tuning)"),
    "warmup_epochs": ("--warmup-epochs", int, "head-only epochs on a frozen backbone (0: none)"),
    "fine_tune_blocks": ("--fine-tune-blocks", int, "top EfficientNet blocks trained in phase 2 (0: all)"),
    "freeze_batchnorm": ("--freeze-batchnorm", _bool, "keep BatchNorm frozen while fine-tuning (true/false)"),
    "batch_size": ("--batch-size", int, "images per step per replica"),
    "learning_rate": ("--learning-rate", float, "peak learning rate (phase 1, or the whole run without it)"),
    "fine_tune_learning_rate": ("--fine-tune-learning-rate", float, "peak learning rate of phase 2"),
    "weights": ("--weights", str, "imagenet | none | local weights file | s3:// URI of one"),
    "augment": ("--augment", _bool, "random flip/rotation/zoom/brightness/contrast (true/false)"),
    "early_stopping_patience": ("--early-stopping-patience", int, "epochs without a better val loss (0: off)"),
    "time_budget_minutes": ("--time-budget-minutes", float, "stop before training time passes this"),
    "mixed_precision": ("--mixed-precision", str, "auto | on | off"),
    "xla": ("--xla", _bool, "compile the training step with XLA (true/false)"),
    "seed": ("--seed", int, "seed for initialisation, shuffling and augmentation"),
}

# Fields the TUMOROPS_* settings may override (below the command line, above the profile).
SETTINGS_OVERRIDES = ("image_size", "epochs", "batch_size", "learning_rate", "weights")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True, help="S3 key (datasets/manifests/<version>.parquet) or local file")
    parser.add_argument(
        "--profile",
        default=None,
        choices=sorted(TRAINING_PROFILES),
        help="training recipe (default TUMOROPS_TRAINING_PROFILE or demo); the options below override its fields",
    )
    for field, (flag, kind, text) in OVERRIDE_FLAGS.items():
        parser.add_argument(flag, dest=field, type=kind, default=None, help=text)
    parser.add_argument("--model-name", default=None, help="registered model name (default from settings)")
    parser.add_argument(
        "--resume", action="store_true", help="continue from the last checkpoint of this run (fresh start if none)"
    )
    parser.add_argument(
        "--checkpoint-key",
        default=None,
        help="names the run's checkpoint folder (default: dataset version + configuration hash)",
    )


def resolve_config(args: argparse.Namespace, settings: Any) -> TrainingConfig:
    """Profile, then TUMOROPS_* settings, then command-line options."""
    overrides: dict[str, Any] = {name: getattr(settings, name) for name in SETTINGS_OVERRIDES}
    overrides.update({name: getattr(args, name) for name in OVERRIDE_FLAGS if getattr(args, name) is not None})
    return training_config(args.profile or settings.training_profile, **overrides)


def default_checkpoint_key(dataset_version: str, config: TrainingConfig) -> str:
    """The same data and configuration give the same key, so `--resume` finds the interrupted run."""
    digest = hashlib.sha256(json.dumps(config.to_params(), sort_keys=True).encode()).hexdigest()[:12]
    return f"{dataset_version}-{config.profile}-{digest}"


def run(args: argparse.Namespace) -> int:
    from infra.settings import load_settings

    settings = load_settings()
    model_name = args.model_name or settings.model_name
    with _Reporter() as reporter:
        config = resolve_config(args, settings)
        return _train(settings=settings, args=args, config=config, model_name=model_name, reporter=reporter)


def _png_markdown(title: str, png: bytes) -> str:
    return f"**{title}**\n\n![{title}](data:image/png;base64,{base64.b64encode(png).decode()})\n"


def _local_weights(weights: str, *, store: Any, cache: Path) -> str:
    """A local file for an `s3://bucket/key` weights URI (downloaded once); other values unchanged."""
    if not weights.startswith("s3://"):
        return weights
    from infra.storage import ObjectStore

    bucket, _, key = weights.removeprefix("s3://").partition("/")
    if not key:
        raise ValueError(f"weights URI {weights!r} has no object key")
    local = cache / bucket / key
    if not local.is_file():
        ObjectStore(bucket=bucket, client=store.client).download_file(key, local)
    return str(local)


def _train(
    *, settings: Any, args: argparse.Namespace, config: TrainingConfig, model_name: str, reporter: _Reporter
) -> int:
    import dataclasses

    import pandas as pd

    from infra.checkpoint_store import S3CheckpointStore, checkpoint_prefix
    from infra.image_cache import fetch_manifest_images
    from infra.storage import ObjectStore
    from tumor_model.checkpoints import STATE_FILE

    store = ObjectStore.from_settings(settings)
    if Path(args.manifest).is_file():
        manifest = pd.read_parquet(args.manifest)
    else:
        manifest = pd.read_parquet(io.BytesIO(store.get_bytes(args.manifest)))
    version = Path(args.manifest).stem
    key = args.checkpoint_key or default_checkpoint_key(version, config)
    checkpoints = S3CheckpointStore(store, checkpoint_prefix(model_name, key))
    state = checkpoints.read_json(STATE_FILE) if args.resume else None
    if args.resume and state is None:
        reporter.info(f"no checkpoint under {checkpoints.describe()}: starting from epoch 1")
    if state is not None and state.get("complete"):
        reporter.info(
            f"this run already finished: {model_name} version {state['result']['model_version']} is registered"
        )
        reporter.materialization(state["result"])
        return 0

    cache = settings.home_dir / "cache"
    if config.weights.startswith("s3://"):
        local = _local_weights(config.weights, store=store, cache=cache / "weights")
        reporter.info(f"backbone weights {config.weights} -> {local}")
        weights_for_model = local
    else:
        weights_for_model = config.weights
    fetch_manifest_images(store, manifest, cache / "images", log=reporter.info)
    from tumor_model.training import split_files

    files = split_files(manifest, image_path=lambda row: cache / "images" / f"{row.sha256}.{row.ext}")
    sizes = {split: len(f) for split, f in files.items()}
    reporter.info(f"dataset {version}: {sizes} images; profile {config.profile}; checkpoints {checkpoints.describe()}")
    if sizes["test"] == 0:
        raise RuntimeError(f"dataset {version} has an empty test split ({sizes}): ingest more images")
    if sizes["train"] == 0:
        raise RuntimeError(f"dataset {version} has an empty training split ({sizes}): ingest more images")
    return _train_and_register(
        settings=settings,
        config=config,
        model_config=dataclasses.replace(config, weights=weights_for_model),
        manifest=manifest,
        files=files,
        version=version,
        checkpoints=checkpoints,
        state=state,
        model_name=model_name,
        source_uri=args.manifest if Path(args.manifest).is_file() else store.uri(args.manifest),
        reporter=reporter,
    )


def _train_and_register(
    *,
    settings: Any,
    config: TrainingConfig,
    model_config: TrainingConfig,
    manifest: Any,
    files: dict[str, Any],
    version: str,
    checkpoints: Any,
    state: dict[str, Any] | None,
    model_name: str,
    source_uri: str,
    reporter: _Reporter,
) -> int:
    import keras
    import mlflow
    import numpy as np
    import tensorflow as tf
    from mlflow.entities import Metric

    from tumor_model.checkpoints import STATE_FILE
    from tumor_model.evaluation import classification_metrics, flat_metrics
    from tumor_model.labels import CLASS_NAMES
    from tumor_model.plots import confusion_matrix_png, reliability_diagram_png, training_curves_png
    from tumor_model.preprocessing import PREPROCESSING_ID
    from tumor_model.training import predict_probabilities, train_classifier

    sizes = {split: len(f) for split, f in files.items()}
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_experiment(model_name)
    client = mlflow.MlflowClient()
    run_id = state.get("mlflow_run_id") if state else None
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else f"train-{version}") as active_run:
        run_id = active_run.info.run_id
        if state is None:
            split_sizes = {f"n_{k}": v for k, v in sizes.items()}
            mlflow.log_params({**config.to_params(), "dataset_version": version, **split_sizes})
            mlflow.set_tags(
                {"dataset_version": version, "git_commit": _git_commit(), "checkpoints": checkpoints.describe()}
            )
            dataset = mlflow.data.from_pandas(manifest, source=source_uri, name=version)
            mlflow.log_input(dataset, context="training")
        else:
            mlflow.set_tag("resumed_after_epoch", str(state["epoch"]))

        class EpochLogger(keras.callbacks.Callback):
            """One batched MLflow call per epoch, and a progress line to Dagster."""

            def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
                values = {k: float(v) for k, v in (logs or {}).items()}
                now = int(time.time() * 1000)
                client.log_batch(
                    run_id, metrics=[Metric(f"epoch_{k}", v, now, epoch) for k, v in values.items()], synchronous=True
                )
                shown = ", ".join(f"{k}={v:.4f}" for k, v in values.items())
                reporter.info(f"epoch {epoch + 1}/{config.epochs}: {shown}")

        outcome = train_classifier(
            train=files["train"],
            val=files["val"],
            config=model_config,
            checkpoints=checkpoints,
            resume_state=state,
            state_extra={"mlflow_run_id": run_id, "dataset_version": version},
            callbacks=[EpochLogger()],
            log=reporter.info,
        )
        reporter.info(
            f"training ended after {outcome.epochs_run} epochs ({outcome.stopped_because}); "
            f"keeping epoch {outcome.best_epoch}; {outcome.train_seconds / 60:.1f} min on {outcome.compute}"
        )
        # The test split is used here, once, after every training decision was taken.
        probabilities = predict_probabilities(outcome.model, files["test"], image_size=config.image_size)
        metrics = classification_metrics(
            y_true=files["test"].labels, probabilities=probabilities, class_names=CLASS_NAMES
        )
        summary_metrics = {
            **flat_metrics(metrics),
            "train_seconds": outcome.train_seconds,
            "epochs_run": outcome.epochs_run,
            "best_epoch": outcome.best_epoch,
        }
        mlflow.log_metrics(summary_metrics)
        mlflow.set_tags({"stopped_because": outcome.stopped_because, "compute": outcome.compute})
        mlflow.log_dict(metrics, "evaluation/test_metrics.json")
        mlflow.log_dict(outcome.history, "evaluation/history.json")
        plots = {
            "training curves": training_curves_png(outcome.history, best_epoch=outcome.best_epoch),
            "confusion matrix": confusion_matrix_png(metrics["confusion_matrix"], class_names=CLASS_NAMES),
            "reliability diagram": reliability_diagram_png(metrics["reliability"], ece=metrics["ece"]),
        }
        for title, png in plots.items():
            mlflow.log_image(_png_image(png), f"plots/{title.replace(' ', '_')}.png")

        example = _input_example(files["test"], image_size=config.image_size)
        signature = mlflow.models.infer_signature(example, np.asarray(outcome.model.predict(example, verbose=0)))
        with _model_folder_created_before_example():
            info = mlflow.keras.log_model(
                outcome.model,
                name="model",
                registered_model_name=model_name,
                signature=signature,
                input_example=example,
                pip_requirements=[f"keras=={keras.__version__}", f"tensorflow=={tf.__version__}"],
            )
        model_version = str(info.registered_model_version)
        tags = {
            "dataset_version": version,
            "image_size": str(config.image_size),
            "labels": json.dumps(list(CLASS_NAMES)),
            "preprocessing": PREPROCESSING_ID,
            "training_profile": config.profile,
            "test_accuracy": f"{metrics['accuracy']:.4f}",
            "test_macro_f1": f"{metrics['macro_f1']:.4f}",
            "test_ece": f"{metrics['ece']:.4f}",
            "mlflow_run_id": run_id,
        }
        for name, values in metrics["per_class"].items():
            tags[f"test_recall_{name}"] = f"{values['recall']:.4f}"
        for tag, value in tags.items():
            client.set_model_version_tag(model_name, model_version, tag, value)
        client.set_registered_model_alias(model_name, "candidate", model_version)

    reporter.info(
        f"registered {model_name} version {model_version} (alias candidate): "
        f"test accuracy {metrics['accuracy']:.3f}, macro F1 {metrics['macro_f1']:.3f}, ECE {metrics['ece']:.3f}"
    )
    per_class_rows = "\n".join(
        f"| {name} | {v['precision']:.3f} | {v['recall']:.3f} | {v['specificity']:.3f} | "
        f"{(v['roc_auc'] if v['roc_auc'] is not None else float('nan')):.3f} | {v['support']} |"
        for name, v in metrics["per_class"].items()
    )
    result = {
        "model_name": model_name,
        "model_version": model_version,
        "mlflow_run_id": run_id,
        "dataset_version": version,
        "training_profile": config.profile,
        "test_accuracy": metrics["accuracy"],
        "test_macro_f1": metrics["macro_f1"],
        "test_macro_roc_auc": metrics["macro_roc_auc"],
        "test_ece": metrics["ece"],
        "epochs_run": outcome.epochs_run,
        "best_epoch": outcome.best_epoch,
        "stopped_because": outcome.stopped_because,
        "train_minutes": round(outcome.train_seconds / 60, 2),
        "compute": outcome.compute,
        # Pipes takes nested values only with an explicit metadata type.
        "images_per_split": {"raw_value": sizes, "type": "json"},
        "config": {"raw_value": config.to_params(), "type": "json"},
        "test_metrics_per_class": {
            "raw_value": "| class | precision | recall (sensitivity) | specificity | ROC AUC | images |\n"
            "| --- | --- | --- | --- | --- | --- |\n" + per_class_rows,
            "type": "md",
        },
        "plots": {"raw_value": "\n".join(_png_markdown(t, png) for t, png in plots.items()), "type": "md"},
    }
    outcome.state.update(complete=True, result=result)
    checkpoints.write_json(STATE_FILE, outcome.state)
    reporter.materialization(result)
    return 0


@contextlib.contextmanager
def _model_folder_created_before_example() -> Iterator[None]:
    """Work around MLflow 3's Keras flavour writing `input_example.json` before it creates the model folder."""
    import mlflow.keras.save as keras_save

    original = keras_save._save_example

    def save_example(mlflow_model: Any, input_example: Any, path: str, *args: Any, **kwargs: Any) -> Any:
        os.makedirs(path, exist_ok=True)
        return original(mlflow_model, input_example, path, *args, **kwargs)

    keras_save._save_example = save_example
    try:
        yield
    finally:
        keras_save._save_example = original


def _png_image(png: bytes) -> Any:
    from PIL import Image

    return Image.open(io.BytesIO(png))


def _input_example(files: Any, *, image_size: int) -> Any:
    """One real test image as the model takes it: float32 (1, size, size, 3) in [0, 255]."""
    import numpy as np

    from tumor_model.preprocessing import preprocess_bytes

    return preprocess_bytes(Path(files.paths[0]).read_bytes(), image_size=image_size)[np.newaxis]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tumorops train", description=__doc__)
    add_arguments(parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
