"""Validation rules for an image-metadata table, expressed as a Great Expectations 1.x suite.

Each expectation maps to one rejection reason, so a rejected file is always explained by the expectation that
failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from tumor_model.labels import CLASS_NAMES

SUPPORTED_FORMATS = ("JPEG", "PNG")


@dataclass(frozen=True)
class ValidationRules:
    """Bounds the suite enforces."""

    min_side: int = 32
    max_side: int = 4096


@dataclass(frozen=True)
class Rule:
    reason: str
    expectation: str
    description: str


@dataclass
class ValidationOutcome:
    """What the suite decided for a table of profiles."""

    accepted: list[str]
    rejected: dict[str, list[dict[str, str]]]
    expectation_results: list[dict[str, Any]] = field(default_factory=list)
    success: bool = True

    @property
    def rejected_count(self) -> int:
        return len(self.rejected)


def _rules_and_expectations(rules: ValidationRules) -> list[tuple[Rule, Any]]:
    import great_expectations as gx  # slow import: only when validating

    e = gx.expectations
    return [
        (
            Rule("undecodable", "expect_column_values_to_be_null(decode_error)", "the file must decode as an image"),
            e.ExpectColumnValuesToBeNull(column="decode_error"),
        ),
        (
            Rule("unsupported_format", "expect_column_values_to_be_in_set(format)", "JPEG or PNG"),
            e.ExpectColumnValuesToBeInSet(column="format", value_set=list(SUPPORTED_FORMATS)),
        ),
        (
            Rule("unknown_label", "expect_column_values_to_not_be_null(label)", "folder must name a known class"),
            e.ExpectColumnValuesToNotBeNull(column="label"),
        ),
        (
            Rule("unknown_label", "expect_column_values_to_be_in_set(label)", f"one of {', '.join(CLASS_NAMES)}"),
            e.ExpectColumnValuesToBeInSet(column="label", value_set=list(CLASS_NAMES)),
        ),
        (
            Rule(
                "width_out_of_bounds",
                "expect_column_values_to_be_between(width)",
                f"{rules.min_side} <= width <= {rules.max_side}",
            ),
            e.ExpectColumnValuesToBeBetween(column="width", min_value=rules.min_side, max_value=rules.max_side),
        ),
        (
            Rule(
                "height_out_of_bounds",
                "expect_column_values_to_be_between(height)",
                f"{rules.min_side} <= height <= {rules.max_side}",
            ),
            e.ExpectColumnValuesToBeBetween(column="height", min_value=rules.min_side, max_value=rules.max_side),
        ),
    ]


def validate_profiles(table: pd.DataFrame, *, rules: ValidationRules | None = None) -> ValidationOutcome:
    """Run the suite over a table of `ImageProfile` rows and say which paths pass and why the others fail.

    Args:
        table: one row per image, the columns of `ImageProfile`.
        rules: bounds for the suite; defaults when None.
    """
    import great_expectations as gx

    rules = rules or ValidationRules()
    if table.empty:
        return ValidationOutcome(accepted=[], rejected={}, expectation_results=[], success=True)
    table = table.reset_index(drop=True)
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas(name="images")
    asset = source.add_dataframe_asset(name="image_profiles")
    batch_definition = asset.add_batch_definition_whole_dataframe("batch")
    suite = context.suites.add(gx.ExpectationSuite(name="mri_image_batch"))
    pairs = _rules_and_expectations(rules)
    for rule, expectation in pairs:
        expectation.meta = {"reason": rule.reason, "description": rule.description}
        suite.add_expectation(expectation)
    batch = batch_definition.get_batch(batch_parameters={"dataframe": table})
    result = batch.validate(suite, result_format={"result_format": "COMPLETE"})

    rejected: dict[str, list[dict[str, str]]] = {}
    summaries: list[dict[str, Any]] = []
    by_type_and_column = {(exp.expectation_type, exp.column): rule for rule, exp in pairs}
    for expectation_result in result.results:
        config = expectation_result.expectation_config
        rule = by_type_and_column[(config.type, config.kwargs["column"])]
        indexes = expectation_result.result.get("partial_unexpected_index_list") or []
        indexes = expectation_result.result.get("unexpected_index_list") or indexes
        summaries.append(
            {
                "expectation": rule.expectation,
                "reason": rule.reason,
                "success": bool(expectation_result.success),
                "unexpected_count": int(expectation_result.result.get("unexpected_count") or 0),
            }
        )
        for index in indexes:
            path = str(table.loc[int(index), "path"])
            reasons = rejected.setdefault(path, [])
            if not any(r["reason"] == rule.reason for r in reasons):
                reasons.append({"reason": rule.reason, "expectation": rule.expectation, "rule": rule.description})
    accepted = [str(p) for p in table["path"] if str(p) not in rejected]
    return ValidationOutcome(
        accepted=accepted, rejected=rejected, expectation_results=summaries, success=bool(result.success)
    )
