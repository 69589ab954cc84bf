import numpy as np
import pandas as pd
import pytest

from tumor_model.dataset import build_manifest, dataset_version
from tumor_model.evaluation import classification_metrics

CLASSES = ("a", "b", "c")


def test_metrics_on_known_predictions() -> None:
    y_true = np.array([0, 0, 1, 1, 2, 2])
    predicted = np.array([0, 1, 1, 1, 2, 0])
    probabilities = np.eye(3)[predicted]
    metrics = classification_metrics(y_true=y_true, probabilities=probabilities, class_names=CLASSES)
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["per_class"]["a"]["recall"] == pytest.approx(0.5)
    assert metrics["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert metrics["per_class"]["c"]["specificity"] == pytest.approx(1.0)
    assert metrics["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    f1 = [2 * 0.5 * 0.5 / 1.0, 2 * (2 / 3) * 1 / (2 / 3 + 1), 2 * 1 * 0.5 / 1.5]
    assert metrics["macro_f1"] == pytest.approx(np.mean(f1))


def test_metrics_refuse_mismatched_or_empty_inputs() -> None:
    with pytest.raises(ValueError):
        classification_metrics(y_true=np.array([0, 1]), probabilities=np.eye(3)[:1], class_names=CLASSES)
    with pytest.raises(ValueError):
        classification_metrics(y_true=np.array([], int), probabilities=np.zeros((0, 3)), class_names=CLASSES)


def _accepted(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"sha256": s, "ext": "jpg", "label": label, "source_batch": b, "width": 64, "height": 64}
            for s, label, b in rows
        ]
    )


def test_manifest_collapses_exact_duplicates_and_keeps_splits_stable() -> None:
    first = build_manifest(_accepted([(f"{i:064x}", "glioma", "b1") for i in range(50)]))
    assert len(first) == 50
    again = build_manifest(
        _accepted(
            [(f"{i:064x}", "glioma", "b1") for i in range(50)] + [(f"{i:064x}", "glioma", "b2") for i in range(80)]
        )
    )
    assert len(again) == 80
    merged = again.set_index("sha256").loc[first["sha256"]]
    assert list(merged["split"]) == list(first["split"]), "adding data must not move existing images"
    assert set(merged["source_batch"]) == {"b1"}


def test_dataset_version_changes_with_labels() -> None:
    rows = [(f"{i:064x}", "glioma", "b1") for i in range(10)]
    base = dataset_version(build_manifest(_accepted(rows)))
    assert base == dataset_version(build_manifest(_accepted(list(reversed(rows)))))
    relabelled = [(rows[0][0], "meningioma", "b1"), *rows[1:]]
    assert dataset_version(build_manifest(_accepted(relabelled))) != base
