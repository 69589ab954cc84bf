"""Test-split metrics computed from labels and predicted probabilities."""

from __future__ import annotations

from typing import Any

import numpy as np


def classification_metrics(
    *, y_true: np.ndarray, probabilities: np.ndarray, class_names: tuple[str, ...]
) -> dict[str, Any]:
    """Accuracy, macro F1, per-class precision/recall/specificity and the confusion matrix.

    Args:
        y_true: integer class indices, shape (n,).
        probabilities: predicted class probabilities, shape (n, num_classes), rows in the order of `y_true`.
        class_names: names of the classes, in index order.
    """
    y_true = np.asarray(y_true, dtype=int)
    probabilities = np.asarray(probabilities, dtype=float)
    if y_true.shape[0] != probabilities.shape[0]:
        raise ValueError(f"{y_true.shape[0]} labels but {probabilities.shape[0]} predictions")
    if y_true.size == 0:
        raise ValueError("cannot evaluate on an empty set")
    y_pred = probabilities.argmax(axis=1)
    k = len(class_names)
    confusion = np.zeros((k, k), dtype=int)
    np.add.at(confusion, (y_true, y_pred), 1)
    per_class: dict[str, dict[str, float]] = {}
    f1s = []
    for i, name in enumerate(class_names):
        tp = confusion[i, i]
        fp = confusion[:, i].sum() - tp
        fn = confusion[i, :].sum() - tp
        tn = confusion.sum() - tp - fp - fn
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        specificity = tn / (tn + fp) if tn + fp else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        f1s.append(f1)
        per_class[name] = {
            "precision": float(precision),
            "recall": float(recall),
            "specificity": float(specificity),
            "f1": float(f1),
            "support": int(confusion[i, :].sum()),
        }
    return {
        "accuracy": float((y_pred == y_true).mean()),
        "macro_f1": float(np.mean(f1s)),
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
        "n": int(y_true.size),
    }
