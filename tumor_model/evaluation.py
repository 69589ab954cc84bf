"""Test-split metrics computed from labels and predicted probabilities (numpy only)."""

from __future__ import annotations

from typing import Any

import numpy as np

CALIBRATION_BINS = 15


def expected_calibration_error(
    *, y_true: np.ndarray, probabilities: np.ndarray, bins: int = CALIBRATION_BINS
) -> tuple[float, list[dict[str, float]]]:
    """Expected calibration error of the top-1 confidence, and the reliability-diagram bins.

    Args:
        y_true: integer class indices, shape (n,).
        probabilities: predicted class probabilities, shape (n, num_classes).
        bins: equal-width confidence bins over [0, 1].

    Returns:
        The ECE (bin-size-weighted mean |accuracy - confidence|) and, per non-empty bin, its bounds, count,
        mean confidence and accuracy.
    """
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Right-closed bins, with confidence 0 in the first one.
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    ece = 0.0
    table: list[dict[str, float]] = []
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        if not count:
            continue
        mean_confidence = float(confidence[members].mean())
        accuracy = float(correct[members].mean())
        ece += count / len(y_true) * abs(accuracy - mean_confidence)
        table.append(
            {
                "lower": float(edges[b]),
                "upper": float(edges[b + 1]),
                "count": count,
                "confidence": mean_confidence,
                "accuracy": accuracy,
            }
        )
    return float(ece), table


def roc_auc_one_vs_rest(*, positive: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve for one class against the rest (Mann-Whitney U, ties counted half).

    Returns None when the set holds only positives or only negatives (the AUC is undefined).
    """
    positive = np.asarray(positive, dtype=bool)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=float)
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    for start, count in zip(first, counts, strict=True):
        ranks[order[start : start + count]] = start + (count + 1) / 2
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def classification_metrics(
    *, y_true: np.ndarray, probabilities: np.ndarray, class_names: tuple[str, ...]
) -> dict[str, Any]:
    """Accuracy, macro F1, per-class precision/recall (sensitivity)/specificity/ROC AUC, ECE and the confusion matrix.

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
    k = len(class_names)
    if probabilities.ndim != 2 or probabilities.shape[1] != k:
        raise ValueError(f"probabilities have shape {probabilities.shape}, expected (n, {k})")
    y_pred = probabilities.argmax(axis=1)
    confusion = np.zeros((k, k), dtype=int)
    np.add.at(confusion, (y_true, y_pred), 1)
    per_class: dict[str, dict[str, Any]] = {}
    f1s = []
    aucs = []
    for i, name in enumerate(class_names):
        tp = confusion[i, i]
        fp = confusion[:, i].sum() - tp
        fn = confusion[i, :].sum() - tp
        tn = confusion.sum() - tp - fp - fn
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        specificity = tn / (tn + fp) if tn + fp else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        auc = roc_auc_one_vs_rest(positive=y_true == i, scores=probabilities[:, i])
        f1s.append(f1)
        if auc is not None:
            aucs.append(auc)
        per_class[name] = {
            "precision": float(precision),
            "recall": float(recall),
            "specificity": float(specificity),
            "f1": float(f1),
            "roc_auc": auc,
            "support": int(confusion[i, :].sum()),
        }
    ece, reliability = expected_calibration_error(y_true=y_true, probabilities=probabilities)
    return {
        "accuracy": float((y_pred == y_true).mean()),
        "macro_f1": float(np.mean(f1s)),
        "macro_roc_auc": float(np.mean(aucs)) if aucs else None,
        "ece": ece,
        "reliability": reliability,
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
        "class_names": list(class_names),
        "n": int(y_true.size),
    }


def flat_metrics(metrics: dict[str, Any], *, prefix: str = "test_") -> dict[str, float]:
    """The scalar metrics of `classification_metrics` as flat MLflow-style names (`test_recall_glioma`, ...)."""
    flat = {
        f"{prefix}accuracy": metrics["accuracy"],
        f"{prefix}macro_f1": metrics["macro_f1"],
        f"{prefix}ece": metrics["ece"],
    }
    if metrics.get("macro_roc_auc") is not None:
        flat[f"{prefix}macro_roc_auc"] = metrics["macro_roc_auc"]
    for name, values in metrics["per_class"].items():
        for key in ("recall", "precision", "specificity", "roc_auc"):
            if values.get(key) is not None:
                flat[f"{prefix}{key}_{name}"] = values[key]
    return flat
