"""Training the EfficientNetB3 classifier: two phases, early stopping, a learning-rate schedule, resumable
per-epoch checkpoints and a time budget.

Phase 1 (`warmup`) trains the head on a frozen backbone; phase 2 (`fine_tune`) trains the top blocks at a lower
rate, BatchNorm optionally frozen. Without pretrained weights phase 1 is skipped and phase 2 trains everything.
Early stopping watches the validation split only; the test split is never seen here.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tumor_model.checkpoints import STATE_FILE, CheckpointStore, best_weights_name, model_file_name
from tumor_model.labels import CLASS_NAMES, class_index
from tumor_model.training_config import TrainingConfig

logger = logging.getLogger(__name__)

MIN_IMPROVEMENT = 1e-4  # smaller changes of the validation loss do not reset the patience


@dataclass
class SplitFiles:
    """The local image files of one split, sorted by sha256, with their class indices."""

    paths: list[Path]
    labels: np.ndarray
    sha256: list[str]

    def __len__(self) -> int:
        return len(self.paths)


def split_files(manifest: pd.DataFrame, *, image_path: Callable[[Any], Path]) -> dict[str, SplitFiles]:
    """Group manifest rows by split (`train`, `val`, `test`), each sorted by sha256.

    Args:
        manifest: rows with columns `sha256`, `ext`, `label`, `split`.
        image_path: where the local copy of a row's image is.
    """
    splits: dict[str, SplitFiles] = {}
    for split in ("train", "val", "test"):
        rows = manifest[manifest["split"] == split].sort_values("sha256")
        splits[split] = SplitFiles(
            paths=[image_path(row) for row in rows.itertuples()],
            labels=np.array([class_index(label) for label in rows["label"]], dtype=np.int32),
            sha256=list(rows["sha256"]),
        )
    return splits


def class_weights(labels: np.ndarray, *, num_classes: int = len(CLASS_NAMES)) -> dict[int, float]:
    """Inverse-frequency weights (mean 1 over the examples) for the classes present."""
    counts = np.bincount(labels, minlength=num_classes)
    return {i: float(len(labels) / (num_classes * c)) for i, c in enumerate(counts) if c}


def learning_rate_at(
    *,
    epoch: int,
    phase_start: int,
    phase_end: int,
    peak: float,
    config: TrainingConfig,
    budget_used: float | None = None,
) -> float:
    """Learning rate of 0-based `epoch` inside a phase: linear ramp, then cosine decay to 5% of the peak.

    Args:
        epoch: 0-based epoch number of the whole run.
        phase_start: first epoch of the phase.
        phase_end: epoch after the last of the phase.
        peak: the phase's peak learning rate.
        config: supplies `lr_schedule` and `lr_warmup_epochs`.
        budget_used: share of the time budget already spent (final phase only); the decay follows whichever is
            further along, epochs or time, so a slow machine still ends the budget at a low rate.
    """
    if config.lr_schedule == "constant":
        return peak
    position = epoch - phase_start
    length = max(phase_end - phase_start, 1)
    ramp = min(config.lr_warmup_epochs, length - 1)
    if position < ramp:
        return peak * (position + 1) / (ramp + 1)
    progress = (position - ramp) / max(length - ramp - 1, 1)
    if budget_used is not None:
        progress = max(progress, budget_used)
    floor = 0.05 * peak
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


@dataclass(frozen=True)
class Phase:
    name: str
    start: int
    end: int
    peak_learning_rate: float


def training_phases(config: TrainingConfig) -> list[Phase]:
    """The phases a configuration runs, with their epoch ranges and peak learning rates."""
    phases = []
    if config.warmup_epochs:
        phases.append(Phase("warmup", 0, config.warmup_epochs, config.learning_rate))
    if config.epochs > config.warmup_epochs:
        peak = config.fine_tune_learning_rate if config.warmup_epochs else config.learning_rate
        phases.append(Phase("fine_tune", config.warmup_epochs, config.epochs, peak))
    return phases


@dataclass
class TrainingOutcome:
    """What a training run produced."""

    model: Any
    history: dict[str, list[float]]
    epochs_run: int
    best_epoch: int
    stopped_because: str
    resumed_from_epoch: int
    train_seconds: float
    compute: str
    state: dict[str, Any] = field(default_factory=dict)


def _set_batchnorm_momentum(model: Any, momentum: float) -> None:
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.Model):  # the nested backbone
            _set_batchnorm_momentum(layer, momentum)
        elif isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum


def _compile(model: Any, *, config: TrainingConfig, learning_rate: float) -> None:
    import keras

    from tumor_model.losses import SparseSmoothedCrossentropy

    model.compile(
        optimizer=keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=config.weight_decay),
        loss=SparseSmoothedCrossentropy(num_classes=len(CLASS_NAMES), label_smoothing=config.label_smoothing),
        metrics=["accuracy"],
        jit_compile=config.xla,
    )


def _make_epoch_callback(
    *,
    store: CheckpointStore,
    state: dict[str, Any],
    config: TrainingConfig,
    phase: Phase,
    work_dir: Path,
    log: Callable[[str], None],
) -> Any:
    import keras

    class EpochCheckpoint(keras.callbacks.Callback):
        """Checkpoint, early stopping and time budget after every epoch; `state.json` is uploaded last."""

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.started = time.monotonic()
            budget = config.time_budget_minutes
            final_phase = phase.end == config.epochs
            rate = learning_rate_at(
                epoch=epoch,
                phase_start=phase.start,
                phase_end=phase.end,
                peak=phase.peak_learning_rate,
                config=config,
                budget_used=state["train_seconds"] / (budget * 60) if budget and final_phase else None,
            )
            self.model.optimizer.learning_rate.assign(rate)
            state["learning_rate"] = rate

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            number = epoch + 1
            seconds = time.monotonic() - self.started
            logs = {k: float(v) for k, v in (logs or {}).items()}
            logs["learning_rate"] = state["learning_rate"]
            logs["epoch_seconds"] = seconds
            for key, value in logs.items():
                state["history"].setdefault(key, []).append(value)
            state["train_seconds"] += seconds
            monitored = logs.get("val_loss", logs.get("loss", math.inf))
            old_files = [state.get("model_file")]
            if monitored < state["best_loss"] - MIN_IMPROVEMENT:
                state.update(best_loss=monitored, best_epoch=number, epochs_without_improvement=0)
                best_local = work_dir / best_weights_name(number)
                self.model.save_weights(best_local)
                store.put_file(best_local.name, best_local)
                if state.get("best_weights_file"):
                    (work_dir / state["best_weights_file"]).unlink(missing_ok=True)
                old_files.append(state.get("best_weights_file"))
                state["best_weights_file"] = best_local.name
            else:
                state["epochs_without_improvement"] += 1
            model_local = work_dir / model_file_name(number)
            self.model.save(model_local)
            store.put_file(model_local.name, model_local)
            model_local.unlink()
            state.update(epoch=number, phase=phase.name, model_file=model_local.name)
            stop = self._stop_reason(seconds)
            if stop:
                state["stopped_because"] = stop
                self.model.stop_training = True
            store.write_json(STATE_FILE, state)
            for name in old_files:
                if name and name not in (state["model_file"], state.get("best_weights_file")):
                    store.delete(name)
            log(f"checkpoint epoch {number} saved to {store.describe()}" + (f"; stopping: {stop}" if stop else ""))

        def _stop_reason(self, last_epoch_seconds: float) -> str | None:
            patience = config.early_stopping_patience
            in_final_phase = phase.end == config.epochs
            if patience and in_final_phase and state["epochs_without_improvement"] >= patience:
                return (
                    f"early stopping: no better validation loss for {patience} epochs "
                    f"(best {state['best_loss']:.4f} at epoch {state['best_epoch']})"
                )
            budget = config.time_budget_minutes
            if budget is not None and state["train_seconds"] + last_epoch_seconds > budget * 60:
                return (
                    f"time budget: {state['train_seconds'] / 60:.1f} min trained, another epoch would pass "
                    f"{budget:g} min"
                )
            return None

    return EpochCheckpoint()


def new_training_state(*, config: TrainingConfig, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint state of a run that has not finished an epoch yet."""
    return {
        "epoch": 0,
        "phase": None,
        "model_file": None,
        "best_weights_file": None,
        "best_loss": math.inf,
        "best_epoch": 0,
        "epochs_without_improvement": 0,
        "train_seconds": 0.0,
        "history": {},
        "config": config.to_params(),
        "complete": False,
        **(extra or {}),
    }


def train_classifier(
    *,
    train: SplitFiles,
    val: SplitFiles,
    config: TrainingConfig,
    checkpoints: CheckpointStore,
    resume_state: dict[str, Any] | None = None,
    state_extra: dict[str, Any] | None = None,
    callbacks: list[Any] | None = None,
    log: Callable[[str], None] = logger.info,
) -> TrainingOutcome:
    """Fit the classifier, checkpointing every epoch; resume from `resume_state` when given.

    Args:
        train: training split.
        val: validation split (early stopping and the best epoch use it; may be empty).
        config: hyper-parameters.
        checkpoints: where the per-epoch checkpoints go (and come from when resuming).
        resume_state: the `state.json` of an interrupted run of the same configuration.
        state_extra: values stored in a new run's state (e.g. the MLflow run id).
        callbacks: extra Keras callbacks (progress reporting, metric logging).
        log: progress messages.
    """
    import keras

    from tumor_model.distribution import plan_compute
    from tumor_model.input_pipeline import AugmentationSettings, evaluation_dataset, training_dataset
    from tumor_model.model import build_classifier, set_trainable_layers

    if not len(train):
        raise ValueError("the training split is empty: ingest more images")
    if resume_state is not None and resume_state.get("config") != config.to_params():
        raise ValueError(
            "the checkpoint was written by a different training configuration; "
            f"checkpoint: {resume_state.get('config')}, now: {config.to_params()}"
        )
    keras.utils.set_random_seed(config.seed)
    compute = plan_compute(mixed_precision=config.mixed_precision)
    global_batch = config.batch_size * compute.replicas
    train_data = training_dataset(
        train.paths,
        train.labels,
        image_size=config.image_size,
        batch_size=global_batch,
        seed=config.seed,
        augmentation=AugmentationSettings() if config.augment else None,
    )
    val_data = (
        evaluation_dataset(val.paths, val.labels, image_size=config.image_size, batch_size=global_batch)
        if len(val)
        else None
    )
    state = resume_state or new_training_state(config=config, extra=state_extra)
    resumed_from = int(state["epoch"])
    work_dir = Path(tempfile.mkdtemp(prefix="tumorops-train-"))
    model = None
    model_phase = None
    with compute.strategy.scope():
        if resume_state is not None and resume_state.get("model_file"):
            local = work_dir / resume_state["model_file"]
            checkpoints.get_file(resume_state["model_file"], local)
            from tumor_model.losses import SparseSmoothedCrossentropy

            model = keras.saving.load_model(
                local, compile=True, custom_objects={"SparseSmoothedCrossentropy": SparseSmoothedCrossentropy}
            )
            local.unlink()
            model_phase = resume_state["phase"]
            log(f"resumed from {checkpoints.describe()} after epoch {resumed_from} ({model_phase} phase)")
        for phase in training_phases(config):
            if state["epoch"] >= phase.end or state.get("stopped_because"):
                continue
            if model is None:
                model = build_classifier(
                    num_classes=len(CLASS_NAMES),
                    image_size=config.image_size,
                    weights=config.weights,
                    dropout=config.dropout,
                )
                _set_batchnorm_momentum(model, config.batchnorm_momentum)
            if model_phase != phase.name:
                trainable = set_trainable_layers(
                    model,
                    phase=phase.name,
                    fine_tune_blocks=config.fine_tune_blocks,
                    freeze_batchnorm=config.freeze_batchnorm,
                )
                _compile(model, config=config, learning_rate=phase.peak_learning_rate)
                model_phase = phase.name
                log(f"phase {phase.name}: epochs {phase.start + 1}-{phase.end}, {trainable} trainable weight tensors")
            model.fit(
                train_data,
                validation_data=val_data,
                initial_epoch=state["epoch"],
                epochs=phase.end,
                class_weight=class_weights(train.labels),
                # The caller's callbacks (metric logging) see an epoch before its checkpoint is written, so an
                # epoch a resumed run skips has always been logged.
                callbacks=[
                    *(callbacks or []),
                    _make_epoch_callback(
                        store=checkpoints, state=state, config=config, phase=phase, work_dir=work_dir, log=log
                    ),
                ],
                verbose=0,
            )
    if model is None:
        raise RuntimeError("nothing to train: the checkpoint says every epoch is done")
    if state.get("best_weights_file"):
        best_local = work_dir / state["best_weights_file"]
        if not best_local.is_file():
            checkpoints.get_file(state["best_weights_file"], best_local)
        model.load_weights(best_local)
    shutil.rmtree(work_dir, ignore_errors=True)
    if compute.mixed_precision:
        model = _as_float32(model, config=config)
    stopped = state.get("stopped_because") or f"all {config.epochs} epochs"
    return TrainingOutcome(
        model=model,
        history=state["history"],
        epochs_run=int(state["epoch"]),
        best_epoch=int(state["best_epoch"]),
        stopped_because=stopped,
        resumed_from_epoch=resumed_from,
        train_seconds=float(state["train_seconds"]),
        compute=compute.description,
        state=state,
    )


def _as_float32(model: Any, *, config: TrainingConfig) -> Any:
    """The same weights in a float32 model: the registered model must run at full speed on CPUs too."""
    import keras

    from tumor_model.model import build_classifier

    keras.mixed_precision.set_global_policy("float32")
    plain = build_classifier(num_classes=len(CLASS_NAMES), image_size=config.image_size, dropout=config.dropout)
    plain.set_weights(model.get_weights())
    return plain


def predict_probabilities(model: Any, files: SplitFiles, *, image_size: int, batch_size: int = 32) -> np.ndarray:
    """Class probabilities for a split's files, in the split's order."""
    from tumor_model.input_pipeline import evaluation_dataset

    if not len(files):
        return np.zeros((0, len(CLASS_NAMES)), np.float32)
    dataset = evaluation_dataset(files.paths, files.labels, image_size=image_size, batch_size=batch_size)
    return np.asarray(model.predict(dataset.map(lambda image, label: image), verbose=0))
