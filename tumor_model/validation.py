"""Validation rules for an image-metadata table, expressed as a Great Expectations 1.x suite.

Each expectation maps to one rejection reason, so every rejected file is explained by the expectation that
failed. The same rules run in the Dagster pipeline and offline (`tumorops validate`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tumor_model.duplicates import DEFAULT_MAX_DISTANCE, label_conflicts
from tumor_model.labels import CLASS_NAMES

SUPPORTED_FORMATS = ("JPEG", "PNG", "DICOM")
SUITE_NAME = "mri_image_batch"


@dataclass(frozen=True)
class ValidationRules:
    """Bounds the suite enforces.

    Args:
        min_side: smallest accepted width and height, in pixels.
        max_side: largest accepted width and height, in pixels.
        max_pixels: largest accepted pixel count (decompression bombs are refused before decoding).
        min_std_intensity: images with less intensity spread (0-255 scale) are blank or constant.
        min_file_bytes: smallest accepted file.
        max_file_bytes: largest accepted file.
        near_duplicate_distance: perceptual-hash bits within which two images are near-duplicates.
    """

    min_side: int = 64
    max_side: int = 4096
    max_pixels: int = 40_000_000
    min_std_intensity: float = 2.0
    min_file_bytes: int = 1
    max_file_bytes: int = 50_000_000
    near_duplicate_distance: int = DEFAULT_MAX_DISTANCE


@dataclass(frozen=True)
class Rule:
    """One expectation of the suite and the rejection reason it stands for."""

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
    docs_dir: Path | None = None

    @property
    def rejected_count(self) -> int:
        return len(self.rejected)


def _suite_rules(rules: ValidationRules) -> list[tuple[Rule, Any]]:
    import great_expectations as gx  # slow import: only when validating

    e = gx.expectations
    return [
        (
            Rule("undecodable", "expect_column_values_to_be_null(decode_error)", "the file decodes as an image"),
            e.ExpectColumnValuesToBeNull(column="decode_error"),
        ),
        (
            Rule("truncated", "expect_column_values_to_be_in_set(truncated)", "the file is complete, not cut off"),
            e.ExpectColumnValuesToBeInSet(column="truncated", value_set=[False]),
        ),
        (
            Rule("unsupported_format", "expect_column_values_to_be_in_set(format)", "JPEG, PNG or DICOM"),
            e.ExpectColumnValuesToBeInSet(column="format", value_set=list(SUPPORTED_FORMATS)),
        ),
        (
            Rule("unknown_label", "expect_column_values_to_not_be_null(label)", "the folder names a known class"),
            e.ExpectColumnValuesToNotBeNull(column="label"),
        ),
        (
            Rule("unknown_label", "expect_column_values_to_be_in_set(label)", f"one of {', '.join(CLASS_NAMES)}"),
            e.ExpectColumnValuesToBeInSet(column="label", value_set=list(CLASS_NAMES)),
        ),
        (
            Rule(
                "label_conflict",
                "expect_column_values_to_be_in_set(label_conflict)",
                "the same image is not filed under another label",
            ),
            e.ExpectColumnValuesToBeInSet(column="label_conflict", value_set=[False]),
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
        (
            Rule(
                "too_many_pixels",
                "expect_column_values_to_be_between(pixels)",
                f"at most {rules.max_pixels} pixels (decompression bomb)",
            ),
            e.ExpectColumnValuesToBeBetween(column="pixels", min_value=1, max_value=rules.max_pixels),
        ),
        (
            Rule(
                "blank_or_constant",
                "expect_column_values_to_be_between(std_intensity)",
                f"intensity standard deviation >= {rules.min_std_intensity}",
            ),
            e.ExpectColumnValuesToBeBetween(column="std_intensity", min_value=rules.min_std_intensity),
        ),
        (
            Rule(
                "file_size_out_of_bounds",
                "expect_column_values_to_be_between(file_size)",
                f"{rules.min_file_bytes} <= bytes <= {rules.max_file_bytes}",
            ),
            e.ExpectColumnValuesToBeBetween(
                column="file_size", min_value=rules.min_file_bytes, max_value=rules.max_file_bytes
            ),
        ),
    ]


def validate_profiles(
    table: pd.DataFrame,
    *,
    rules: ValidationRules | None = None,
    known_labels: dict[str, str] | None = None,
    docs_dir: Path | None = None,
) -> ValidationOutcome:
    """Run the suite over a table of `ImageProfile` rows and say which paths pass and why the others fail.

    Args:
        table: one row per image, the columns of `ImageProfile`.
        rules: bounds for the suite; defaults when None.
        known_labels: sha256 -> label of images accepted earlier, so a re-filed image is a label conflict too.
        docs_dir: when given, the Great Expectations Data Docs (HTML) of this validation are written there.
    """
    rules = rules or ValidationRules()
    if table.empty:
        return ValidationOutcome(accepted=[], rejected={}, expectation_results=[], success=True)
    table = table.reset_index(drop=True).copy()
    table["label_conflict"] = table["path"].isin(label_conflicts(table, known_labels))
    table["truncated"] = table["truncated"].astype(bool)
    pairs = _suite_rules(rules)
    result = _run_suite(table, pairs, docs_dir=docs_dir)

    rejected: dict[str, list[dict[str, str]]] = {}
    summaries: list[dict[str, Any]] = []
    for (rule, _), expectation_result in zip(pairs, result.results, strict=True):
        indexes = expectation_result.result.get("unexpected_index_list") or []
        summaries.append(
            {
                "expectation": rule.expectation,
                "reason": rule.reason,
                "rule": rule.description,
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
        accepted=accepted,
        rejected=rejected,
        expectation_results=summaries,
        success=bool(result.success),
        docs_dir=docs_dir,
    )


def _run_suite(table: pd.DataFrame, pairs: list[tuple[Rule, Any]], *, docs_dir: Path | None) -> Any:
    """Validate with an ephemeral GX context (nothing written to the working directory).

    Results come back in the order of `pairs`. With `docs_dir`, a checkpoint also renders Data Docs there.
    """
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_definition = (
        context.data_sources.add_pandas(name="images")
        .add_dataframe_asset(name="image_profiles")
        .add_batch_definition_whole_dataframe("batch")
    )
    suite = gx.ExpectationSuite(name=SUITE_NAME)
    for rule, expectation in pairs:
        expectation.meta = {"reason": rule.reason, "description": rule.description}
        suite.add_expectation(expectation)
    suite = context.suites.add(suite)
    actions = []
    if docs_dir is not None:
        # The ephemeral context's default site writes to a temporary folder: replace it by ours.
        context.delete_data_docs_site("local_site")
        context.add_data_docs_site(
            "tumorops",
            {
                "class_name": "SiteBuilder",
                "show_how_to_buttons": False,
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
            },
        )
        actions.append(UpdateDataDocsAction(name="data_docs", site_names=["tumorops"]))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=SUITE_NAME, data=batch_definition, suite=suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=SUITE_NAME,
            validation_definitions=[definition],
            actions=actions,
            result_format={"result_format": "COMPLETE"},
        )
    )
    run = checkpoint.run(batch_parameters={"dataframe": table})
    result = next(iter(run.run_results.values()))
    # Reasons are matched to results by position: make sure GX kept the suite's order.
    configs = [(r.expectation_config.type, r.expectation_config.kwargs.get("column")) for r in result.results]
    expected = [(e.expectation_type, e.column) for _, e in pairs]
    if configs != expected:
        raise RuntimeError(f"Great Expectations reordered the results: {configs} != {expected}")
    return result
