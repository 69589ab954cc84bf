"""Grad-CAM on a tiny EfficientNetB3 classifier."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from tumor_model.explain import GradCam, overlay_png
from tumor_model.model import build_classifier


def test_gradcam_explains_the_predicted_class_with_a_normalised_heatmap() -> None:
    import keras

    keras.utils.set_random_seed(3)
    model = build_classifier(num_classes=4, image_size=96)
    image = np.random.default_rng(0).uniform(0, 255, (96, 96, 3)).astype(np.float32)
    explanation = GradCam(model).explain(image)
    expected = np.asarray(model(image[np.newaxis], training=False))[0]
    assert explanation.class_index == int(np.argmax(expected))
    np.testing.assert_allclose(explanation.probabilities, expected, atol=1e-5)
    assert explanation.heatmap.shape == (3, 3)  # B3 downsamples by 32
    assert explanation.heatmap.min() >= 0.0 and explanation.heatmap.max() <= 1.0
    other = GradCam(model).explain(image, class_index=(explanation.class_index + 1) % 4)
    assert other.class_index == (explanation.class_index + 1) % 4


def test_overlay_blends_the_heatmap_where_it_is_strong() -> None:
    image = np.full((32, 32, 3), 100, np.float32)
    heatmap = np.zeros((4, 4), np.float32)
    heatmap[0, 0] = 1.0  # only the top-left corner matters
    overlay = np.asarray(Image.open(io.BytesIO(overlay_png(image, heatmap, size=64))))
    assert overlay.shape == (64, 64, 3)
    assert np.abs(overlay[60:, 60:].astype(int) - 100).max() <= 1  # untouched where the heatmap is zero
    assert np.abs(overlay[0, 0].astype(int) - 100).max() > 20  # coloured where it peaks
