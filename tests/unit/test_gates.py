"""Promotion gates on crafted metrics, the config file, and the model card."""

from pathlib import Path

import numpy as np
import pytest

from tumor_model.evaluation import classification_metrics
from tumor_model.gates import GateThresholds, evaluate_gates, load_promotion_config
from tumor_model.labels import CLASS_NAMES
from tumor_model.model_card import render_model_card


def crafted_metrics(*, per_class_correct: dict[str, int], per_class: int = 20, confidence: float = 0.9) -> dict:
    """Metrics of a model that gets `per_class_correct[label]` of `per_class` images right (wrong ones -> no_tumor)."""
    y_true, predicted = [], []
    for index, label in enumerate(CLASS_NAMES):
        right = per_class_correct.get(label, per_class)
        wrong_as = CLASS_NAMES.index("no_tumor") if label != "no_tumor" else 0
        y_true += [index] * per_class
        predicted += [index] * right + [wrong_as] * (per_class - right)
    rest = (1 - confidence) / (len(CLASS_NAMES) - 1)
    probabilities = np.full((len(y_true), len(CLASS_NAMES)), rest)
    probabilities[np.arange(len(y_true)), predicted] = confidence
    return classification_metrics(y_true=np.array(y_true), probabilities=probabilities, class_names=CLASS_NAMES)


THRESHOLDS = GateThresholds(
    min_test_images=50,
    min_accuracy=0.85,
    min_macro_f1=0.80,
    max_ece=0.10,
    max_regression=0.02,
    min_sensitivity={"glioma": 0.85, "meningioma": 0.80, "pituitary": 0.85},
)


def test_a_good_first_model_passes_every_gate() -> None:
    candidate = crafted_metrics(per_class_correct={"glioma": 19, "meningioma": 18}, confidence=0.93)
    report = evaluate_gates(candidate=candidate, champion=None, thresholds=THRESHOLDS)
    assert report.passed, report.summary()
    assert not [r for r in report.results if r.name.startswith("no_regression")], "no champion, no regression gate"
    assert {r.name for r in report.results} >= {"accuracy", "macro_f1", "ece", "sensitivity_glioma", "test_images"}


def test_missed_gliomas_fail_even_when_accuracy_is_high() -> None:
    # 15/20 gliomas found (75% < 85%) but overall accuracy 75/80 = 93.75%.
    candidate = crafted_metrics(per_class_correct={"glioma": 15}, confidence=0.94)
    report = evaluate_gates(candidate=candidate, champion=None, thresholds=THRESHOLDS)
    assert not report.passed
    assert [r.name for r in report.failed] == ["sensitivity_glioma"]
    assert report.failed[0].candidate == pytest.approx(0.75)
    assert "sensitivity_glioma 0.750" in report.summary()


def test_regression_against_the_champion_on_the_same_images_fails() -> None:
    champion = crafted_metrics(per_class_correct={"pituitary": 20}, confidence=0.99)
    candidate = crafted_metrics(per_class_correct={"pituitary": 18}, confidence=0.95)  # -10 points on pituitary
    report = evaluate_gates(candidate=candidate, champion=champion, thresholds=THRESHOLDS, champion_version="3")
    failed = {r.name for r in report.failed}
    assert "no_regression_sensitivity_pituitary" in failed
    assert "sensitivity_pituitary" not in failed, "0.90 is above the 0.85 floor: only the regression fails"
    regression = next(r for r in report.results if r.name == "no_regression_accuracy")
    assert regression.champion == pytest.approx(1.0) and regression.threshold == pytest.approx(0.98)
    assert report.champion_version == "3"


def test_poor_calibration_and_a_tiny_test_split_fail() -> None:
    overconfident = crafted_metrics(
        per_class_correct={"glioma": 17, "meningioma": 16, "pituitary": 17}, confidence=0.9999
    )
    report = evaluate_gates(candidate=overconfident, champion=None, thresholds=THRESHOLDS)
    assert [r.name for r in report.failed] == ["ece"]
    tiny = crafted_metrics(per_class_correct={}, per_class=5, confidence=0.99)
    assert [r.name for r in evaluate_gates(candidate=tiny, champion=None, thresholds=THRESHOLDS).failed] == [
        "test_images"
    ]


def test_a_class_missing_from_the_test_split_fails_its_sensitivity_gate() -> None:
    metrics = crafted_metrics(per_class_correct={})
    metrics["per_class"]["glioma"] = {**metrics["per_class"]["glioma"], "support": 0, "recall": 0.0}
    report = evaluate_gates(candidate=metrics, champion=None, thresholds=THRESHOLDS)
    gate = next(r for r in report.results if r.name == "sensitivity_glioma")
    assert gate.candidate is None and not gate.passed


def test_config_file_defaults_overrides_and_errors(tmp_path: Path) -> None:
    default = load_promotion_config()
    assert default.approval.policy == "auto" and default.gates.min_sensitivity["glioma"] == 0.85
    assert load_promotion_config(policy="manual").approval.policy == "manual"

    custom = tmp_path / "promotion.toml"
    custom.write_text(
        '[approval]\npolicy = "manual"\n[gates]\nmin_accuracy = 0.5\n[gates.min_sensitivity]\nglioma = 0.9\n'
    )
    config = load_promotion_config(custom)
    assert config.approval.policy == "manual" and config.gates.min_accuracy == 0.5
    assert config.gates.min_sensitivity == {"glioma": 0.9} and config.source == str(custom)

    for text, message in (
        ("[gates]\nmin_acuracy = 0.5\n", "min_acuracy"),
        ("[gates.min_sensitivity]\nastrocytoma = 0.9\n", "astrocytoma"),
        ("[gates]\nmin_accuracy = 1.5\n", "min_accuracy"),
        ('[approval]\npolicy = "sometimes"\n', "policy"),
        ("[gates\n", "not valid TOML"),
    ):
        custom.write_text(text)
        with pytest.raises(ValueError, match=message):
            load_promotion_config(custom)
    with pytest.raises(FileNotFoundError):
        load_promotion_config(tmp_path / "missing.toml")


def test_model_card_carries_data_metrics_calibration_gates_and_limits() -> None:
    candidate = crafted_metrics(per_class_correct={"glioma": 15}, confidence=0.94)
    report = evaluate_gates(candidate=candidate, champion=None, thresholds=THRESHOLDS)
    card = render_model_card(
        {
            "model_name": "tumor-classifier",
            "version": "7",
            "labels": list(CLASS_NAMES),
            "image_size": 300,
            "preprocessing": "rgb-resize-v1",
            "dataset_version": "ds-abc",
            "evaluation": candidate,
            "data": {"glioma": {"train": 600, "val": 80, "test": 20}},
            "gates": report.to_dict(),
            "approval": {"status": "approved", "by": "Dr Okafor", "at": "2026-12-04", "override": True, "reason": "x"},
            "referral_confidence": 0.8,
        }
    )
    assert "# Model card: tumor-classifier version 7" in card
    assert "| glioma | 600 | 80 | 20 |" in card
    assert "| glioma | 75.0% |" in card, "per-class sensitivity"
    assert "Expected calibration error" in card and "| sensitivity_glioma |" in card and "**FAIL**" in card
    assert "with override of failed gates" in card and "Dr Okafor" in card
    assert "Only 20 glioma test images" in card and "## Intended use" in card
