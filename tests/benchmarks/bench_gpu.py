"""GPU training speed: EfficientNetB3 at 300x300, float32 vs mixed precision, images/s and the ratio.

For a machine with an NVIDIA GPU. Runs under Keras 3 on whichever backend is installed (`KERAS_BACKEND`:
tensorflow, or jax / torch where TensorFlow is absent); it needs only keras and numpy, not the rest of TumorOps.

    python tests/benchmarks/bench_gpu.py [--batch-size 64] [--steps 30] [--allow-cpu]
    KERAS_BACKEND=jax python tests/benchmarks/bench_gpu.py

Under pytest (`make bench`) it skips when no GPU is visible. The two precisions run alternately (fp32, mixed,
fp32, mixed) and each figure is the better of its two rounds, so both see the same machine state.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import pytest


def gpu_name() -> str | None:
    """The first GPU the Keras backend sees, or None."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        return str(getattr(gpus[0], "device_kind", gpus[0])) if gpus else None
    if backend == "torch":
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        return gpus[0].name if gpus else None
    return None


def images_per_second(*, policy: str, batch_size: int, steps: int, image_size: int = 300, jit: bool = True) -> float:
    """Training images/s of EfficientNetB3 (from scratch, 4 classes) under a dtype policy."""
    import keras

    keras.config.set_dtype_policy(policy)
    keras.utils.set_random_seed(0)
    backbone = keras.applications.EfficientNetB3(
        include_top=False, weights=None, input_shape=(image_size, image_size, 3), pooling="avg"
    )
    inputs = keras.Input((image_size, image_size, 3))
    outputs = keras.layers.Dense(4, activation="softmax", dtype="float32")(backbone(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="sparse_categorical_crossentropy", jit_compile=jit)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (batch_size, image_size, image_size, 3)).astype(np.float32)
    y = rng.integers(0, 4, batch_size)
    for _ in range(3):  # compilation and autotuning
        model.train_on_batch(x, y)
    started = time.perf_counter()
    for _ in range(steps):
        loss = model.train_on_batch(x, y)
    float(np.asarray(loss))  # wait for the device
    seconds = time.perf_counter() - started
    keras.config.set_dtype_policy("float32")
    return batch_size * steps / seconds


def measure(
    *,
    batch_size: int = 64,
    steps: int = 30,
    rounds: int = 2,
    mixed: str = "mixed_float16",
    image_size: int = 300,
    jit: bool = True,
) -> dict:
    figures: dict[str, list[float]] = {"float32": [], mixed: []}
    for _ in range(rounds):
        for policy in figures:
            figures[policy].append(
                images_per_second(policy=policy, batch_size=batch_size, steps=steps, image_size=image_size, jit=jit)
            )
    return figures


def print_figures(figures: dict[str, list[float]], *, device: str, batch_size: int, image_size: int = 300) -> float:
    import keras

    (fp32_name, fp32), (mixed_name, mixed) = ((k, max(v)) for k, v in figures.items())
    ratio = mixed / fp32
    print(
        f"\nEfficientNetB3 {image_size}x{image_size} training, batch {batch_size}, Keras {keras.__version__} on "
        f"{keras.backend.backend()}, device {device}:\n"
        f"  {fp32_name:14s}: {fp32:8.1f} images/s  (rounds: {', '.join(f'{r:.1f}' for r in figures[fp32_name])})\n"
        f"  {mixed_name:14s}: {mixed:8.1f} images/s  (rounds: {', '.join(f'{r:.1f}' for r in figures[mixed_name])})\n"
        f"  ratio mixed/fp32: {ratio:.2f}",
        flush=True,
    )
    return ratio


def test_mixed_precision_speed_on_gpu() -> None:
    device = gpu_name()
    if device is None:
        pytest.skip("no GPU visible to the Keras backend")
    batch_size = int(os.environ.get("TUMOROPS_BENCH_GPU_BATCH", 64))
    print_figures(measure(batch_size=batch_size), device=device, batch_size=batch_size)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--mixed-policy", default="mixed_float16", help="mixed_float16 or mixed_bfloat16")
    parser.add_argument("--image-size", type=int, default=300)
    parser.add_argument("--no-jit", action="store_true", help="without XLA (its CPU compile of B3 takes minutes)")
    parser.add_argument("--allow-cpu", action="store_true", help="run without a GPU (a smoke test, not a figure)")
    args = parser.parse_args()
    device = gpu_name()
    if device is None and not args.allow_cpu:
        sys.exit("no GPU visible to the Keras backend; --allow-cpu runs it anyway")
    figures = measure(
        batch_size=args.batch_size,
        steps=args.steps,
        rounds=args.rounds,
        mixed=args.mixed_policy,
        image_size=args.image_size,
        jit=not args.no_jit,
    )
    print_figures(figures, device=device or "CPU", batch_size=args.batch_size, image_size=args.image_size)
