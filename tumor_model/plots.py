"""Evaluation plots as PNG bytes: training curves, confusion matrix, reliability diagram."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any


def _figure(width: float = 5.0, height: float = 4.0) -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and training pods
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def training_curves_png(history: dict[str, Sequence[float]], *, best_epoch: int | None = None) -> bytes:
    """Loss and accuracy per epoch, training and validation side by side.

    Args:
        history: per-epoch values keyed `loss`, `val_loss`, `accuracy`, `val_accuracy` (any may be missing).
        best_epoch: 1-based epoch whose weights were kept, marked with a vertical line.
    """
    figure = _figure(9.0, 3.6)
    for position, metric in enumerate(("loss", "accuracy"), start=1):
        axes = figure.add_subplot(1, 2, position)
        for key, style in ((metric, "-"), (f"val_{metric}", "--")):
            values = history.get(key) or []
            if values:
                axes.plot(range(1, len(values) + 1), values, style, marker=".", label=key)
        if best_epoch:
            axes.axvline(best_epoch, color="grey", linewidth=0.8, linestyle=":", label=f"best epoch {best_epoch}")
        axes.set_xlabel("epoch")
        axes.set_title(metric)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=8)
    return _png(figure)


def confusion_matrix_png(matrix: Sequence[Sequence[int]], *, class_names: Sequence[str]) -> bytes:
    """Counts of true class (rows) against predicted class (columns), with row-normalised shading."""
    import numpy as np

    counts = np.asarray(matrix, dtype=float)
    rows = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    figure = _figure(5.2, 4.4)
    axes = figure.add_subplot(1, 1, 1)
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, fraction=0.046, label="share of true class")
    axes.set_xticks(range(len(class_names)), class_names, rotation=30, ha="right")
    axes.set_yticks(range(len(class_names)), class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            colour = "white" if shares[i, j] > 0.5 else "black"
            axes.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", color=colour)
    axes.set_title("confusion matrix (test split)")
    return _png(figure)


def reliability_diagram_png(bins: Sequence[dict[str, float]], *, ece: float) -> bytes:
    """Accuracy against mean confidence per confidence bin; bar width is the bin, the diagonal is calibration.

    Args:
        bins: the reliability bins of `tumor_model.evaluation.expected_calibration_error`.
        ece: the expected calibration error, shown in the title.
    """
    figure = _figure(4.6, 4.2)
    axes = figure.add_subplot(1, 1, 1)
    axes.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    for entry in bins:
        width = entry["upper"] - entry["lower"]
        axes.bar(entry["lower"], entry["accuracy"], width=width, align="edge", color="tab:blue", alpha=0.7)
        axes.plot(entry["confidence"], entry["accuracy"], "o", color="tab:red", markersize=3)
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel("confidence (top-1 probability)")
    axes.set_ylabel("accuracy")
    axes.set_title(f"reliability diagram, ECE {ece:.3f}")
    axes.legend(fontsize=8, loc="upper left")
    return _png(figure)
