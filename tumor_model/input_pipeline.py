"""The tf.data input pipeline: parallel decode through the shared preprocessing, augmentation, cache, prefetch.

Images are decoded once (by `tumor_model.preprocessing`, the function serving uses too), cached as uint8, then
shuffled, augmented and batched on every epoch. Augmentation uses stateless random ops fed by a seeded random
stream, so a run is reproducible from its seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tumor_model.preprocessing import preprocess_bytes


@dataclass(frozen=True)
class AugmentationSettings:
    """Ranges of the random training augmentation.

    Args:
        flip: mirror left-right with probability 0.5.
        max_rotation_degrees: rotation drawn uniformly from +-this.
        max_zoom: scale drawn uniformly from 1 +- this.
        max_brightness: shift drawn uniformly from +- this fraction of the 0..255 range.
        max_contrast: contrast factor drawn uniformly from 1 +- this.
    """

    flip: bool = True
    max_rotation_degrees: float = 10.0
    max_zoom: float = 0.1
    max_brightness: float = 0.1
    max_contrast: float = 0.15


def _decode_file(path: bytes, image_size: int) -> np.ndarray:
    return preprocess_bytes(Path(path.decode()).read_bytes(), image_size=int(image_size)).astype(np.uint8)


def decoded_images(paths: Sequence[str | Path], *, image_size: int) -> Any:
    """A dataset of uint8 (image_size, image_size, 3) images decoded in parallel, in the order of `paths`."""
    import tensorflow as tf

    def decode(path: Any) -> Any:
        image = tf.numpy_function(_decode_file, [path, image_size], tf.uint8, stateful=False)
        image.set_shape((image_size, image_size, 3))
        return image

    dataset = tf.data.Dataset.from_tensor_slices([str(p) for p in paths])
    return dataset.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _labelled_images(paths: Sequence[str | Path], labels: Sequence[int], *, image_size: int) -> Any:
    """(uint8 image, int32 label) pairs in the order of `paths`."""
    import tensorflow as tf

    labels_dataset = tf.data.Dataset.from_tensor_slices(np.asarray(labels, np.int32))
    return tf.data.Dataset.zip((decoded_images(paths, image_size=image_size), labels_dataset))


def augment(image: Any, seed: Any, settings: AugmentationSettings = AugmentationSettings()) -> Any:  # noqa: B008
    """Randomly flip, rotate, zoom, brighten and re-contrast one float32 image in [0, 255].

    Args:
        image: (height, width, 3) float32 tensor.
        seed: shape (2,) integer tensor; the same seed gives the same augmentation.
        settings: augmentation ranges.
    """
    import tensorflow as tf

    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=5)
    if settings.flip:
        image = tf.image.stateless_random_flip_left_right(image, seeds[0])
    angle = tf.random.stateless_uniform([], seeds[1], -1.0, 1.0) * settings.max_rotation_degrees * math.pi / 180
    scale = 1.0 + tf.random.stateless_uniform([], seeds[2], -1.0, 1.0) * settings.max_zoom
    height = tf.cast(tf.shape(image)[0], tf.float32)
    width = tf.cast(tf.shape(image)[1], tf.float32)
    cx, cy = (width - 1) / 2, (height - 1) / 2
    # The transform maps output pixels to input pixels: inverse rotation about the centre, divided by the zoom.
    a0, a1 = tf.cos(angle) / scale, tf.sin(angle) / scale
    b0, b1 = -tf.sin(angle) / scale, tf.cos(angle) / scale
    transform = tf.stack([a0, a1, cx - a0 * cx - a1 * cy, b0, b1, cy - b0 * cx - b1 * cy, 0.0, 0.0])
    image = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[tf.newaxis],
        transforms=transform[tf.newaxis],
        output_shape=tf.shape(image)[:2],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )[0]
    image = image + tf.random.stateless_uniform([], seeds[3], -1.0, 1.0) * settings.max_brightness * 255.0
    factor = 1.0 + tf.random.stateless_uniform([], seeds[4], -1.0, 1.0) * settings.max_contrast
    mean = tf.reduce_mean(image, axis=[0, 1], keepdims=True)
    return tf.clip_by_value((image - mean) * factor + mean, 0.0, 255.0)


def _options() -> Any:
    import tensorflow as tf

    options = tf.data.Options()
    options.deterministic = True
    # Every replica reads the whole file list; sharding by data works for any number of workers.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return options


def training_dataset(
    paths: Sequence[str | Path],
    labels: Sequence[int],
    *,
    image_size: int,
    batch_size: int,
    seed: int,
    augmentation: AugmentationSettings | None = AugmentationSettings(),  # noqa: B008
    cache_file: Path | None = None,
) -> Any:
    """Shuffled, augmented (float32 image batch, int label batch) pairs; one pass is one epoch.

    Args:
        paths: local image files.
        labels: class index of each file.
        image_size: side of the model input.
        batch_size: images per batch (global, across replicas).
        seed: shuffling and augmentation seed.
        augmentation: augmentation ranges, or None for none.
        cache_file: cache decoded images in this file instead of memory (for data sets larger than RAM).
    """
    import tensorflow as tf

    if len(paths) != len(labels):
        raise ValueError(f"{len(paths)} images but {len(labels)} labels")
    if not len(paths):
        raise ValueError("the training split is empty: ingest more images")
    dataset = _labelled_images(paths, labels, image_size=image_size).cache(str(cache_file) if cache_file else "")
    dataset = dataset.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    if augmentation is not None:
        random_seeds = tf.data.Dataset.random(seed=seed).batch(2, drop_remainder=True)

        def augment_pair(pair: Any, pair_seed: Any) -> Any:
            image, label = pair
            return augment(tf.cast(image, tf.float32), pair_seed, augmentation), label

        dataset = tf.data.Dataset.zip((dataset, random_seeds)).map(
            augment_pair, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
        )
    else:
        dataset = dataset.map(lambda image, label: (tf.cast(image, tf.float32), label))
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE).with_options(_options())


def evaluation_dataset(paths: Sequence[str | Path], labels: Sequence[int], *, image_size: int, batch_size: int) -> Any:
    """(float32 image batch, int label batch) pairs in the order of `paths`, cached after the first pass."""
    import tensorflow as tf

    dataset = _labelled_images(paths, labels, image_size=image_size).cache()
    dataset = dataset.map(lambda image, label: (tf.cast(image, tf.float32), label))
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE).with_options(_options())


def in_memory_dataset(images: np.ndarray, labels: np.ndarray, *, batch_size: int, seed: int) -> Any:
    """Shuffled batches of tensors already in memory: the input that never waits (the benchmark's reference)."""
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((images.astype(np.float32), labels.astype(np.int32)))
    dataset = dataset.cache().shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE).with_options(_options())
