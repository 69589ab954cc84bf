"""Grad-CAM: which regions of an MRI slice drove the classifier's answer.

The class score's gradient with respect to the backbone's last convolutional activation, averaged per channel,
weights those channels; their positive sum is the heatmap (Selvaraju et al., 2017).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from tumor_model.model import backbone_of

LAST_CONV_LAYER = "top_activation"


@dataclass(frozen=True)
class Explanation:
    """A Grad-CAM heatmap for one image and the class it explains."""

    class_index: int
    probabilities: np.ndarray
    heatmap: np.ndarray  # (h, w) in [0, 1], the last conv layer's resolution


class GradCam:
    """Grad-CAM for a classifier built by `tumor_model.model.build_classifier`.

    Args:
        model: the Keras classifier (EfficientNetB3 backbone, dropout, softmax layer `probabilities`).
    """

    def __init__(self, model: Any) -> None:
        import keras

        backbone = backbone_of(model)
        # The backbone's pooled output is computed from the last conv activation inside one graph, so the tape
        # sees the path from that activation to the class score.
        self._features = keras.Model(
            backbone.inputs, [backbone.get_layer(LAST_CONV_LAYER).output, backbone.output], name="gradcam_features"
        )
        self._classifier = model.get_layer("probabilities")

    def explain(self, image: np.ndarray, *, class_index: int | None = None) -> Explanation:
        """Heatmap of one preprocessed image (side, side, 3) for `class_index` (default: the predicted class)."""
        import tensorflow as tf

        batch = tf.convert_to_tensor(image[np.newaxis].astype(np.float32))
        with tf.GradientTape() as tape:
            activations, pooled = self._features(batch, training=False)
            probabilities = self._classifier(pooled)
            target = int(tf.argmax(probabilities[0])) if class_index is None else int(class_index)
            score = probabilities[:, target]
        gradients = tape.gradient(score, activations)
        channel_weights = tf.reduce_mean(gradients, axis=(0, 1, 2))
        cam = tf.nn.relu(tf.reduce_sum(activations[0] * channel_weights, axis=-1)).numpy()
        peak = float(cam.max())
        heatmap = cam / peak if peak > 0 else np.zeros_like(cam)
        return Explanation(
            class_index=target, probabilities=np.asarray(probabilities[0], dtype=np.float32), heatmap=heatmap
        )


def _jet(values: np.ndarray) -> np.ndarray:
    """Map [0, 1] to RGB uint8 with the classic jet colour scale (blue, cyan, yellow, red)."""
    red = np.clip(1.5 - np.abs(4 * values - 3), 0, 1)
    green = np.clip(1.5 - np.abs(4 * values - 2), 0, 1)
    blue = np.clip(1.5 - np.abs(4 * values - 1), 0, 1)
    return (np.stack([red, green, blue], axis=-1) * 255).astype(np.uint8)


def overlay_png(image: np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.45, size: int = 384) -> bytes:
    """PNG of the image with the heatmap blended over it, `size` pixels square.

    Args:
        image: the preprocessed input (side, side, 3), values in [0, 255].
        heatmap: (h, w) in [0, 1].
        alpha: heatmap opacity where the heatmap is strongest (it fades out where it is zero).
        size: side of the PNG.
    """
    base = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).resize((size, size), Image.Resampling.BILINEAR)
    resized = Image.fromarray((np.clip(heatmap, 0, 1) * 255).astype(np.uint8)).resize(
        (size, size), Image.Resampling.BILINEAR
    )
    weights = np.asarray(resized, dtype=np.float32)[..., np.newaxis] / 255.0
    colours = _jet(weights[..., 0]).astype(np.float32)
    blended = np.asarray(base, dtype=np.float32) * (1 - alpha * weights) + colours * (alpha * weights)
    buffer = io.BytesIO()
    Image.fromarray(blended.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
