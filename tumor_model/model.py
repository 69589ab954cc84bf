"""EfficientNetB3 backbone with a small classification head."""

from __future__ import annotations

from pathlib import Path

import keras

BACKBONE_NAME = "efficientnetb3"
TOP_BLOCK = 7  # EfficientNetB3's blocks are block1a ... block7b, then top_conv/top_bn


def resolve_weights(weights: str | None) -> tuple[str | None, Path | None]:
    """Split a `weights` option into what Keras downloads (`imagenet`) and a local weights file.

    Args:
        weights: `imagenet`, `none`/None, or a path to a `.weights.h5` file of the backbone (an `s3://` URI is
            downloaded by the caller first: this package does not talk to S3).
    """
    if weights is None or str(weights).lower() in ("", "none", "null"):
        return None, None
    if str(weights).lower() == "imagenet":
        return "imagenet", None
    if str(weights).startswith("s3://"):
        raise ValueError(f"download {weights} first and pass the local file")
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights file not found: {path}")
    return None, path


def build_classifier(
    *,
    num_classes: int,
    image_size: int,
    weights: str | None = None,
    dropout: float = 0.3,
) -> keras.Model:
    """EfficientNetB3 (global average pooling) followed by dropout and a softmax layer.

    Args:
        num_classes: number of output classes.
        image_size: side of the square input image (300 is B3's native size).
        weights: `imagenet`, None, or a local backbone weights file (see `resolve_weights`).
        dropout: dropout rate before the classification layer.
    """
    keras_weights, weights_file = resolve_weights(weights)
    backbone = keras.applications.EfficientNetB3(
        include_top=False,
        weights=keras_weights,
        input_shape=(image_size, image_size, 3),
        pooling="avg",
    )
    if weights_file is not None:
        backbone.load_weights(weights_file)
    inputs = keras.Input(shape=(image_size, image_size, 3), name="image")
    features = backbone(inputs)
    features = keras.layers.Dropout(dropout, name="head_dropout")(features)
    # float32 softmax: stable probabilities under mixed precision too.
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probabilities", dtype="float32")(features)
    return keras.Model(inputs, outputs, name="tumor_classifier")


def backbone_of(model: keras.Model) -> keras.Model:
    """The EfficientNetB3 sub-model of a classifier built by `build_classifier`."""
    for layer in model.layers:
        if isinstance(layer, keras.Model) and layer.name.startswith(BACKBONE_NAME):
            return layer
    raise ValueError(f"model {model.name!r} has no {BACKBONE_NAME} backbone")


def _block_number(layer_name: str) -> int:
    """7 for `block7b_...`, 8 for the top layers after the last block, 0 for the stem."""
    if layer_name.startswith("block") and layer_name[5:6].isdigit():
        return int(layer_name[5])
    if layer_name.startswith("top_"):
        return TOP_BLOCK + 1
    return 0


def set_trainable_layers(
    model: keras.Model, *, phase: str, fine_tune_blocks: int = 0, freeze_batchnorm: bool = False
) -> int:
    """Freeze and unfreeze backbone layers for a training phase; return the number of trainable weights.

    Args:
        model: a classifier from `build_classifier`.
        phase: `warmup` (backbone frozen, head trains) or `fine_tune`.
        fine_tune_blocks: in `fine_tune`, train the top this many blocks (and the top conv); 0 or >= 7: all.
        freeze_batchnorm: in `fine_tune`, keep every BatchNorm layer frozen (they then run in inference mode).
    """
    if phase not in ("warmup", "fine_tune"):
        raise ValueError(f"unknown training phase {phase!r}")
    backbone = backbone_of(model)
    backbone.trainable = phase == "fine_tune"
    if phase == "fine_tune":
        whole = fine_tune_blocks <= 0 or fine_tune_blocks >= TOP_BLOCK
        lowest = 0 if whole else TOP_BLOCK + 1 - fine_tune_blocks
        for layer in backbone.layers:
            trainable = _block_number(layer.name) >= lowest
            if freeze_batchnorm and isinstance(layer, keras.layers.BatchNormalization):
                trainable = False
            layer.trainable = trainable
    return len(model.trainable_weights)
