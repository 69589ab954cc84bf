"""Clinical promotion gates: candidate vs champion on the same test images, thresholds from one config file."""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from tumor_model.labels import CLASS_NAMES

ApprovalPolicy = Literal["auto", "manual"]
DEFAULT_CONFIG_NAME = "promotion.toml"


class GateThresholds(BaseModel):
    """Thresholds of the promotion gates (fractions in [0, 1])."""

    model_config = ConfigDict(extra="forbid")

    min_test_images: int = Field(default=50, ge=1)
    min_accuracy: float = Field(default=0.85, ge=0, le=1)
    min_macro_f1: float = Field(default=0.80, ge=0, le=1)
    max_ece: float = Field(default=0.10, ge=0, le=1)
    max_regression: float = Field(default=0.02, ge=0, le=1)
    min_sensitivity: dict[str, float] = Field(
        default_factory=lambda: {"glioma": 0.85, "meningioma": 0.80, "pituitary": 0.85}
    )

    @field_validator("min_sensitivity")
    @classmethod
    def _known_classes(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(value) - set(CLASS_NAMES))
        if unknown:
            raise ValueError(f"min_sensitivity names unknown classes {unknown}; known: {list(CLASS_NAMES)}")
        if any(not 0 <= v <= 1 for v in value.values()):
            raise ValueError("min_sensitivity values must lie in [0, 1]")
        return value


class ApprovalSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy: ApprovalPolicy = "auto"


class ReleaseSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    referral_confidence: float = Field(default=0.80, ge=0, le=1)


class PromotionConfig(BaseModel):
    """The whole promotion config file: approval policy, gate thresholds, release settings."""

    model_config = ConfigDict(extra="forbid")

    approval: ApprovalSettings = Field(default_factory=ApprovalSettings)
    gates: GateThresholds = Field(default_factory=GateThresholds)
    release: ReleaseSettings = Field(default_factory=ReleaseSettings)
    source: str = Field(default="defaults", description="where this config was read from")


def load_promotion_config(path: Path | str | None = None, *, policy: str | None = None) -> PromotionConfig:
    """Read the promotion config file (the packaged default when `path` is None).

    Args:
        path: a TOML file (see `tumor_model/promotion.toml` for every key).
        policy: overrides `approval.policy` (`auto` or `manual`).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not valid TOML or holds unknown keys or out-of-range values.
    """
    if path is None:
        text = resources.files("tumor_model").joinpath(DEFAULT_CONFIG_NAME).read_text()
        source = f"tumor_model/{DEFAULT_CONFIG_NAME} (default)"
    else:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"promotion config file not found: {path}")
        text = path.read_text()
        source = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{source} is not valid TOML: {error}") from error
    if policy:
        data.setdefault("approval", {})["policy"] = policy
    try:
        return PromotionConfig(**data, source=source)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from error


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict: the candidate's value, the champion's on the same images, the threshold."""

    name: str
    description: str
    candidate: float | None
    champion: float | None
    threshold: float
    comparison: Literal[">=", "<="]
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GateReport:
    results: tuple[GateResult, ...]
    champion_version: str | None

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failed(self) -> list[GateResult]:
        return [r for r in self.results if not r.passed]

    def summary(self) -> str:
        if self.passed:
            return f"all {len(self.results)} gates passed"
        return "failed: " + "; ".join(
            f"{r.name} {_fmt(r.candidate)} (needs {r.comparison} {r.threshold:.3f})" for r in self.failed
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "champion_version": self.champion_version,
            "results": [r.to_dict() for r in self.results],
        }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _check(value: float | None, threshold: float, comparison: str) -> bool:
    if value is None or math.isnan(value):
        return False
    return value >= threshold - 1e-12 if comparison == ">=" else value <= threshold + 1e-12


def evaluate_gates(
    *,
    candidate: dict[str, Any],
    champion: dict[str, Any] | None,
    thresholds: GateThresholds,
    champion_version: str | None = None,
) -> GateReport:
    """Every gate for a candidate, given both models' `classification_metrics` on the same test images.

    Args:
        candidate: the candidate's metrics.
        champion: the champion's metrics on the same images, or None when nothing serves yet (regression gates
            then pass: there is nothing to regress from).
        thresholds: the gate thresholds.
        champion_version: the champion's model version, for the report.
    """
    results: list[GateResult] = []

    def gate(
        name: str,
        description: str,
        value: float | None,
        threshold: float,
        comparison: str,
        champion_value: float | None = None,
    ) -> None:
        results.append(
            GateResult(
                name,
                description,
                value,
                champion_value,
                float(threshold),
                comparison,  # type: ignore[arg-type]
                _check(value, threshold, comparison),
            )
        )

    def sensitivity(metrics: dict[str, Any] | None, label: str) -> float | None:
        if metrics is None:
            return None
        values = metrics["per_class"].get(label)
        return None if values is None or values["support"] == 0 else float(values["recall"])

    gate(
        "test_images",
        "images in the test split",
        float(candidate["n"]),
        thresholds.min_test_images,
        ">=",
        float(champion["n"]) if champion else None,
    )
    gate(
        "accuracy",
        "test accuracy",
        candidate["accuracy"],
        thresholds.min_accuracy,
        ">=",
        champion["accuracy"] if champion else None,
    )
    gate(
        "macro_f1",
        "test macro F1",
        candidate["macro_f1"],
        thresholds.min_macro_f1,
        ">=",
        champion["macro_f1"] if champion else None,
    )
    for label, floor in sorted(thresholds.min_sensitivity.items()):
        gate(
            f"sensitivity_{label}",
            f"share of {label} images recognised as {label}",
            sensitivity(candidate, label),
            floor,
            ">=",
            sensitivity(champion, label),
        )
    gate(
        "ece",
        "expected calibration error",
        candidate["ece"],
        thresholds.max_ece,
        "<=",
        champion["ece"] if champion else None,
    )

    if champion is not None:
        margin = thresholds.max_regression
        compared = [
            ("accuracy", candidate["accuracy"], champion["accuracy"]),
            ("macro_f1", candidate["macro_f1"], champion["macro_f1"]),
        ]
        compared += [
            (f"sensitivity_{label}", sensitivity(candidate, label), sensitivity(champion, label))
            for label in sorted(thresholds.min_sensitivity)
        ]
        for metric, value, reference in compared:
            if reference is None:
                continue
            gate(
                f"no_regression_{metric}",
                f"{metric} at most {margin:.3f} below the champion's",
                value,
                reference - margin,
                ">=",
                reference,
            )
    return GateReport(results=tuple(results), champion_version=champion_version)
