"""EfficientNetB3 backbone with a small classification head."""

from __future__ import annotations

from pathlib import Path

import keras


def resolve_weights(weights: str | None) -> tuple[str | None, Path | None]:
    """Split a `weights` option into what Keras downloads (`imagenet`) and a local weights file.

    Args:
        weights: `imagenet`, `none`/None, or a path to a `.weights.h5` file of the backbone.
    """
    if weights is None or str(weights).lower() in ("", "none", "null"):
        return None, None
    if str(weights).lower() == "imagenet":
        return "imagenet", None
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
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probabilities", dtype="float32")(features)
    return keras.Model(inputs, outputs, name="tumor_classifier")
