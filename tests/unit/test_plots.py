"""Evaluation plots render as PNG images that depend on their data."""

import io

from PIL import Image

from tumor_model.evaluation import expected_calibration_error
from tumor_model.labels import CLASS_NAMES
from tumor_model.plots import confusion_matrix_png, reliability_diagram_png, training_curves_png


def _image(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def test_plots_are_pngs_whose_pixels_follow_the_data() -> None:
    import numpy as np

    history = {"loss": [1.2, 0.8, 0.6], "val_loss": [1.3, 0.9, 0.95], "accuracy": [0.4, 0.6, 0.7]}
    curves = _image(training_curves_png(history, best_epoch=2))
    assert curves.format == "PNG" and curves.size == (900, 360)
    assert training_curves_png(history, best_epoch=2) != training_curves_png({**history, "loss": [2, 1, 0.1]})

    diagonal = [[5, 0, 0, 0], [0, 5, 0, 0], [0, 0, 5, 0], [0, 0, 0, 5]]
    confused = [[0, 5, 0, 0], [5, 0, 0, 0], [0, 0, 5, 0], [0, 0, 0, 5]]
    a = np.asarray(_image(confusion_matrix_png(diagonal, class_names=CLASS_NAMES)).convert("L"), float)
    b = np.asarray(_image(confusion_matrix_png(confused, class_names=CLASS_NAMES)).convert("L"), float)
    assert a.shape == b.shape and np.abs(a - b).mean() > 0.5

    probabilities = np.array([[0.9, 0.05, 0.03, 0.02], [0.6, 0.2, 0.1, 0.1], [0.3, 0.3, 0.2, 0.2]])
    ece, bins = expected_calibration_error(y_true=np.array([0, 1, 0]), probabilities=probabilities)
    diagram = _image(reliability_diagram_png(bins, ece=ece))
    assert diagram.format == "PNG" and diagram.size == (460, 420)
