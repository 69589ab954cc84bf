"""Where training runs: every visible GPU through tf.distribute, mixed precision on GPU, plain CPU otherwise.

Multi-worker training: set `TF_CONFIG` on each worker (cluster spec and this worker's task, see the README);
the same command then runs under `MultiWorkerMirroredStrategy`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ComputePlan:
    """How one training run uses the machine.

    Args:
        strategy: the tf.distribute strategy whose scope builds the model.
        replicas: devices that share each global batch.
        gpus: visible GPUs on this worker.
        mixed_precision: whether float16 compute is on.
        description: one line for logs and MLflow.
    """

    strategy: Any
    replicas: int
    gpus: int
    mixed_precision: bool
    description: str


def use_mixed_precision(setting: str, *, gpus: int) -> bool:
    """`auto` means on exactly when there is a GPU (CPUs gain nothing from float16)."""
    if setting == "on":
        return True
    if setting == "off":
        return False
    if setting == "auto":
        return gpus > 0
    raise ValueError(f"mixed_precision must be auto, on or off, not {setting!r}")


def plan_compute(*, mixed_precision: str = "auto") -> ComputePlan:
    """Pick the strategy for the visible devices and set the Keras dtype policy.

    Args:
        mixed_precision: `auto`, `on` or `off`.
    """
    import keras
    import tensorflow as tf

    gpus = len(tf.config.list_physical_devices("GPU"))
    for gpu in tf.config.list_physical_devices("GPU"):
        # Share the GPU politely with evaluation and other processes instead of reserving all its memory.
        tf.config.experimental.set_memory_growth(gpu, True)
    if os.environ.get("TF_CONFIG"):
        task = json.loads(os.environ["TF_CONFIG"]).get("task", {})
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        where = f"multi-worker ({task.get('type')} {task.get('index')})"
    elif gpus:
        strategy = tf.distribute.MirroredStrategy()
        where = f"{gpus} GPU(s), mirrored"
    else:
        strategy = tf.distribute.get_strategy()
        where = "CPU"
    mixed = use_mixed_precision(mixed_precision, gpus=gpus)
    keras.mixed_precision.set_global_policy("mixed_float16" if mixed else "float32")
    replicas = int(strategy.num_replicas_in_sync)
    description = f"{where}, {replicas} replica(s), {'mixed float16' if mixed else 'float32'}"
    logger.info("compute: %s", description)
    return ComputePlan(strategy=strategy, replicas=replicas, gpus=gpus, mixed_precision=mixed, description=description)
