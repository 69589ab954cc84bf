"""Intake of incoming MRI batches: profile every image, validate with Great Expectations, quarantine rejects."""

import io
import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
import pandas as pd
from pydantic import Field

from orchestration.defs.ingestion.partitions import batch_partitions
from orchestration.resources import S3Resource
from tumor_model.dataset import image_key
from tumor_model.profiling import profile_image_bytes
from tumor_model.validation import ValidationRules, validate_profiles

READY_MARKER = "_READY"


def incoming_prefix(batch: str) -> str:
    return f"incoming/{batch}/"


def report_prefix(batch: str) -> str:
    return f"reports/validation/{batch}/"


class ValidationConfig(dg.Config):
    min_side: int = Field(default=32, description="smallest accepted width/height in pixels")
    max_side: int = Field(default=4096, description="largest accepted width/height in pixels")
    max_rejected_fraction: float = Field(
        default=0.2, description="above this share of rejected images the batch stops the pipeline"
    )


@dg.asset(partitions_def=batch_partitions, group_name="ingestion", kinds={"s3", "python"})
def incoming_batch(context: dg.AssetExecutionContext, s3: S3Resource) -> dg.MaterializeResult:
    """Profile every image of `incoming/<batch>/` (format, size, sha256, perceptual hash, intensity).

    The originals are only read. The profile table is written to `reports/validation/<batch>/profiles.parquet`.
    """
    batch = context.partition_key
    store = s3.store()
    prefix = incoming_prefix(batch)
    keys = [k for k in store.list_keys(prefix) if not k.endswith(READY_MARKER)]
    if not keys:
        raise dg.Failure(f"batch {batch!r} has no files under {store.uri(prefix)}")

    def profile(key: str) -> dict:
        relative = key[len(prefix) :]
        label_folder = relative.split("/", 1)[0] if "/" in relative else ""
        return profile_image_bytes(store.get_bytes(key), path=relative, label_folder=label_folder).to_dict()

    with ThreadPoolExecutor(max_workers=8) as pool:
        rows = list(pool.map(profile, keys))
    table = pd.DataFrame(rows)
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    store.put_bytes(report_prefix(batch) + "profiles.parquet", buffer.getvalue())
    context.log.info(f"profiled {len(table)} files of batch {batch}")
    folders = Counter(table["label_folder"])
    return dg.MaterializeResult(
        metadata={
            "batch": batch,
            "files": len(table),
            "undecodable": int(table["decode_error"].notna().sum()),
            "files_per_folder": dg.MetadataValue.table(
                records=[dg.TableRecord({"folder": k, "files": v}) for k, v in sorted(folders.items())],
                schema=dg.TableSchema(columns=[dg.TableColumn("folder", "string"), dg.TableColumn("files", "int")]),
            ),
            "profiles": dg.MetadataValue.path(s3.console_url(report_prefix(batch) + "profiles.parquet")),
        }
    )


@dg.asset(
    partitions_def=batch_partitions,
    group_name="ingestion",
    deps=[incoming_batch],
    kinds={"great_expectations", "s3"},
    check_specs=[
        dg.AssetCheckSpec(
            "rejected_fraction_within_limit",
            asset="validated_batch",
            blocking=True,
            description="the share of rejected images stays under the configured limit",
        )
    ],
)
def validated_batch(
    context: dg.AssetExecutionContext, config: ValidationConfig, s3: S3Resource
) -> dg.MaterializeResult:
    """Run the Great Expectations suite over the batch's profiles; accept or quarantine every image.

    Accepted images are copied to the content-addressed store `datasets/images/<sha256>.<ext>`; rejected ones to
    `quarantine/<batch>/` with `reasons.json`. The batch's originals stay untouched in `incoming/`. The result
    (`reports/validation/<batch>/result.json`) is written last.
    """
    batch = context.partition_key
    store = s3.store()
    table = pd.read_parquet(io.BytesIO(store.get_bytes(report_prefix(batch) + "profiles.parquet")))
    outcome = validate_profiles(table, rules=ValidationRules(min_side=config.min_side, max_side=config.max_side))
    rows = table.set_index("path")

    accepted_rows = []
    for path in outcome.accepted:
        row = rows.loc[path]
        ext = "jpg" if row["format"] == "JPEG" else str(row["format"]).lower()
        key = image_key(row["sha256"], ext)
        if not store.exists(key):
            store.client.copy_object(
                Bucket=store.bucket, Key=key, CopySource={"Bucket": store.bucket, "Key": incoming_prefix(batch) + path}
            )
        accepted_rows.append(
            {
                "path": path,
                "sha256": row["sha256"],
                "ext": ext,
                "label": row["label"],
                "source_batch": batch,
                "width": int(row["width"]),
                "height": int(row["height"]),
            }
        )
    rejected = [{"file": path, "reasons": reasons} for path, reasons in sorted(outcome.rejected.items())]
    for item in rejected:
        source = incoming_prefix(batch) + item["file"]
        store.client.copy_object(
            Bucket=store.bucket,
            Key=f"quarantine/{batch}/{item['file']}",
            CopySource={"Bucket": store.bucket, "Key": source},
        )
    if rejected:
        store.put_json(f"quarantine/{batch}/reasons.json", rejected)
    result = {
        "batch": batch,
        "accepted": accepted_rows,
        "rejected": rejected,
        "expectations": outcome.expectation_results,
    }
    store.put_json(report_prefix(batch) + "result.json", result)

    total = len(table)
    fraction = len(rejected) / total if total else 0.0
    reasons = Counter(r["reason"] for item in rejected for r in item["reasons"])
    classes = Counter(row["label"] for row in accepted_rows)
    context.log.info(f"batch {batch}: {len(accepted_rows)} accepted, {len(rejected)} rejected ({dict(reasons)})")
    return dg.MaterializeResult(
        metadata={
            "accepted": len(accepted_rows),
            "rejected": len(rejected),
            "rejected_fraction": round(fraction, 4),
            "accepted_per_class": dg.MetadataValue.json(dict(sorted(classes.items()))),
            "reject_reasons": dg.MetadataValue.table(
                records=[dg.TableRecord({"reason": k, "files": v}) for k, v in sorted(reasons.items())],
                schema=dg.TableSchema(columns=[dg.TableColumn("reason", "string"), dg.TableColumn("files", "int")]),
            ),
            "expectations": dg.MetadataValue.md(_expectations_markdown(outcome.expectation_results)),
            "result": dg.MetadataValue.path(s3.console_url(report_prefix(batch) + "result.json")),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="rejected_fraction_within_limit",
                passed=fraction <= config.max_rejected_fraction,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={
                    "rejected_fraction": round(fraction, 4),
                    "limit": config.max_rejected_fraction,
                    "rejected": len(rejected),
                    "files": total,
                    "first_rejects": dg.MetadataValue.json(rejected[:20]),
                },
            )
        ],
    )


def _expectations_markdown(results: list[dict]) -> str:
    lines = ["| expectation | reason | passed | unexpected |", "| --- | --- | --- | --- |"]
    for r in results:
        lines.append(
            f"| `{r['expectation']}` | {r['reason']} | {'yes' if r['success'] else 'no'} | {r['unexpected_count']} |"
        )
    return "\n".join(lines)


def load_validation_results(s3: S3Resource) -> list[dict]:
    """Every batch's `result.json` (what the training dataset is built from)."""
    store = s3.store()
    results = []
    for batch in store.list_prefixes("reports/validation/"):
        key = report_prefix(batch) + "result.json"
        if store.exists(key):
            results.append(json.loads(store.get_bytes(key)))
    return results


ingest_job = dg.define_asset_job(
    "ingest_job", selection=[incoming_batch, validated_batch], description="Profile and validate one incoming batch."
)
