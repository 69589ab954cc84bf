import numpy as np
import pandas as pd
import pytest

from tumor_model.dataset import build_manifest, dataset_version
from tumor_model.evaluation import classification_metrics
from tumor_model.splits import assign_split

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


def _accepted(rows: list[tuple[str, str, str]], phash: dict[str, str] | None = None) -> pd.DataFrame:
    phash = phash or {}
    return pd.DataFrame(
        [
            {
                "sha256": s,
                "ext": "jpg",
                "label": label,
                "source_batch": b,
                "width": 64,
                "height": 64,
                # Distinct images get far-apart hashes unless a test says otherwise.
                "phash": phash.get(s, f"{int(s, 16) * 0x9E3779B97F4A7C15 % 2**64:016x}"),
            }
            for s, label, b in rows
        ]
    )


def test_manifest_collapses_exact_duplicates_and_keeps_splits_stable() -> None:
    first, excluded = build_manifest(_accepted([(f"{i:064x}", "glioma", "b1") for i in range(1, 51)]))
    assert len(first) == 50 and excluded.empty
    again, _ = build_manifest(
        _accepted(
            [(f"{i:064x}", "glioma", "b1") for i in range(1, 51)]
            + [(f"{i:064x}", "glioma", "b2") for i in range(1, 81)]
        ),
        previous=first,
    )
    assert len(again) == 80
    merged = again.set_index("sha256").loc[first["sha256"]]
    assert list(merged["split"]) == list(first["split"]), "adding data must not move existing images"
    assert set(merged["source_batch"]) == {"b1"}


def test_near_duplicates_share_one_group_and_split() -> None:
    a, b = "a" * 64, "b" * 64
    manifest, _ = build_manifest(
        _accepted([(a, "glioma", "b1"), (b, "glioma", "b1")], phash={a: "f0f0f0f0f0f0f0f0", b: "f0f0f0f0f0f0f0f1"})
    )
    assert manifest["group"].nunique() == 1 and manifest["split"].nunique() == 1


def _keys_in_different_splits() -> tuple[str, str]:
    keys = [f"{i:064x}" for i in range(1, 200)]
    first = keys[0]
    return first, next(k for k in keys if assign_split(k) != assign_split(first))


def test_a_new_image_bridging_two_splits_is_left_out() -> None:
    a, b = _keys_in_different_splits()
    c = "c" * 64
    hashes = {a: "0000000000000000", b: "00000000000000ff", c: "000000000000000f"}  # c is 4 bits from each
    first, _ = build_manifest(_accepted([(a, "glioma", "b1"), (b, "glioma", "b1")], hashes))
    assert first["split"].nunique() == 2
    second, excluded = build_manifest(
        _accepted([(a, "glioma", "b1"), (b, "glioma", "b1"), (c, "glioma", "b2")], hashes), previous=first
    )
    assert list(excluded["sha256"]) == [c]
    assert (
        second.set_index("sha256").loc[[a, b], "split"].tolist()
        == first.set_index("sha256").loc[[a, b], "split"].tolist()
    )


def test_dataset_version_changes_with_labels() -> None:
    rows = [(f"{i:064x}", "glioma", "b1") for i in range(1, 11)]
    base = dataset_version(build_manifest(_accepted(rows))[0])
    assert base == dataset_version(build_manifest(_accepted(list(reversed(rows))))[0])
    relabelled = [(rows[0][0], "meningioma", "b1"), *rows[1:]]
    assert dataset_version(build_manifest(_accepted(relabelled))[0]) != base


def test_calibration_error_and_roc_auc_on_known_values() -> None:
    from tumor_model.evaluation import expected_calibration_error, roc_auc_one_vs_rest

    # Four predictions at confidence 0.9 of which two are right: |0.5 - 0.9| = 0.4 in one bin.
    probabilities = np.array([[0.9, 0.05, 0.05]] * 4)
    ece, bins = expected_calibration_error(y_true=np.array([0, 0, 1, 2]), probabilities=probabilities)
    assert ece == pytest.approx(0.4)
    assert len(bins) == 1 and bins[0]["count"] == 4 and bins[0]["accuracy"] == pytest.approx(0.5)
    # Perfectly confident and right: calibrated.
    assert expected_calibration_error(y_true=np.array([0, 1]), probabilities=np.eye(3)[[0, 1]])[0] == 0.0

    assert roc_auc_one_vs_rest(positive=np.array([1, 1, 0, 0]), scores=np.array([0.9, 0.8, 0.2, 0.1])) == 1.0
    assert roc_auc_one_vs_rest(positive=np.array([1, 1, 0, 0]), scores=np.array([0.1, 0.2, 0.8, 0.9])) == 0.0
    # One positive ranked between two negatives, plus a tie counted half: (1 + 0.5) / 2.
    assert roc_auc_one_vs_rest(positive=np.array([1, 0, 0]), scores=np.array([0.5, 0.5, 0.2])) == pytest.approx(0.75)
    assert roc_auc_one_vs_rest(positive=np.array([1, 1]), scores=np.array([0.5, 0.2])) is None


def test_metrics_carry_auc_ece_and_flatten_for_mlflow() -> None:
    from tumor_model.evaluation import flat_metrics

    y_true = np.array([0, 0, 1, 1, 2, 2])
    probabilities = np.array(
        [[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8], [0.1, 0.2, 0.7]]
    )
    metrics = classification_metrics(y_true=y_true, probabilities=probabilities, class_names=CLASSES)
    assert metrics["per_class"]["c"]["roc_auc"] == 1.0
    assert 0.0 < metrics["ece"] < 0.5
    flat = flat_metrics(metrics)
    assert flat["test_recall_b"] == pytest.approx(0.5)
    assert flat["test_ece"] == metrics["ece"] and "test_roc_auc_a" in flat
