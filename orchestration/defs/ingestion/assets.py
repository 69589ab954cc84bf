"""Intake of incoming MRI batches: profile every image, validate with Great Expectations, quarantine rejects."""

import base64
import io
import json
import tempfile
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from orchestration.defs.ingestion.partitions import batch_partitions
from orchestration.metadata import table_metadata
from orchestration.resources import S3Resource
from tumor_model.dataset import image_key
from tumor_model.duplicates import duplicate_groups
from tumor_model.preprocessing import decode_image, to_rgb
from tumor_model.profiling import profile_payloads
from tumor_model.validation import ValidationRules, validate_profiles

READY_MARKER = "_READY"
EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "DICOM": "dcm"}


def incoming_prefix(batch: str) -> str:
    return f"incoming/{batch}/"


def report_prefix(batch: str) -> str:
    return f"reports/validation/{batch}/"


# The launchpad shows the same defaults `tumorops validate` uses: one source, ValidationRules.
_DEFAULT_RULES = ValidationRules()


class ValidationConfig(dg.Config):
    """Bounds of the validation suite (defaults suit brain MRI slices)."""

    min_side: int = Field(default=_DEFAULT_RULES.min_side, description="smallest accepted width/height in pixels")
    max_side: int = Field(default=_DEFAULT_RULES.max_side, description="largest accepted width/height in pixels")
    max_pixels: int = Field(
        default=_DEFAULT_RULES.max_pixels, description="largest accepted pixel count (decompression bombs)"
    )
    min_std_intensity: float = Field(
        default=_DEFAULT_RULES.min_std_intensity, description="below this intensity spread an image is blank"
    )
    max_file_bytes: int = Field(default=_DEFAULT_RULES.max_file_bytes, description="largest accepted file")
    near_duplicate_distance: int = Field(
        default=_DEFAULT_RULES.near_duplicate_distance, description="perceptual-hash bits for near-duplicates"
    )
    max_rejected_fraction: float = Field(
        default=0.2, description="above this share of rejected images the batch stops the pipeline"
    )

    def rules(self) -> ValidationRules:
        return ValidationRules(
            min_side=self.min_side,
            max_side=self.max_side,
            max_pixels=self.max_pixels,
            min_std_intensity=self.min_std_intensity,
            max_file_bytes=self.max_file_bytes,
            near_duplicate_distance=self.near_duplicate_distance,
        )


@dg.asset(partitions_def=batch_partitions, group_name="ingestion", kinds={"s3", "python"})
def incoming_batch(context: dg.AssetExecutionContext, s3: S3Resource) -> dg.MaterializeResult:
    """Profile every file of `incoming/<batch>/`: format, mode, bit depth, size, sha256, perceptual hash, intensity.

    The originals are only read, never modified. Profiling runs on every core; the table goes to
    `reports/validation/<batch>/profiles.parquet`. DICOM patient tags are never read into the table.
    """
    batch = context.partition_key
    store = s3.store()
    prefix = incoming_prefix(batch)
    keys = [k for k in store.list_keys(prefix) if not k.endswith(READY_MARKER)]
    if not keys:
        raise dg.Failure(f"batch {batch!r} has no files under {store.uri(prefix)}")

    def fetch(key: str) -> tuple[bytes, str, str]:
        relative = key[len(prefix) :]
        label_folder = relative.split("/", 1)[0] if "/" in relative else ""
        return store.get_bytes(key), relative, label_folder

    with ThreadPoolExecutor(max_workers=16) as pool:
        payloads = list(pool.map(fetch, keys))
    context.log.info(f"downloaded {len(payloads)} files of batch {batch}; profiling")
    table = pd.DataFrame([p.to_dict() for p in profile_payloads(payloads)])
    buffer = io.BytesIO()
    table.to_parquet(buffer, index=False)
    store.put_bytes(report_prefix(batch) + "profiles.parquet", buffer.getvalue())
    folders = Counter(table["label_folder"])
    formats = Counter(table["format"].fillna("unreadable"))
    return dg.MaterializeResult(
        metadata={
            "batch": batch,
            "files": len(table),
            "bytes": int(table["file_size"].sum()),
            "undecodable": int(table["decode_error"].notna().sum()),
            "distinct_sizes": int(table[["width", "height"]].dropna().drop_duplicates().shape[0]),
            "files_per_folder": table_metadata(
                [{"folder": k, "files": v} for k, v in sorted(folders.items())],
                [("folder", "string"), ("files", "int")],
            ),
            "formats": dg.MetadataValue.json(dict(sorted(formats.items()))),
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
            description="the share of rejected images stays under the configured limit; above it, no training",
        )
    ],
)
def validated_batch(
    context: dg.AssetExecutionContext, config: ValidationConfig, s3: S3Resource
) -> dg.MaterializeResult:
    """Run the Great Expectations suite over the batch's profiles; accept or quarantine every image.

    Accepted images are copied to the content-addressed store `datasets/images/<sha256>.<ext>` (duplicates
    collapse); rejected ones to `quarantine/<batch>/` with `reasons.json`. The batch's originals stay untouched in
    `incoming/`. Data Docs go to `reports/validation/<batch>/data_docs/`; `result.json` is written last.
    """
    batch = context.partition_key
    store = s3.store()
    table = pd.read_parquet(io.BytesIO(store.get_bytes(report_prefix(batch) + "profiles.parquet")))
    known_labels = {
        row["sha256"]: row["label"]
        for result in load_validation_results(s3, exclude=batch)
        for row in result["accepted"]
    }
    with tempfile.TemporaryDirectory() as tmp:
        docs_dir = Path(tmp) / "data_docs"
        outcome = validate_profiles(table, rules=config.rules(), known_labels=known_labels, docs_dir=docs_dir)
        docs_key = _upload_tree(store, docs_dir, report_prefix(batch) + "data_docs/")
    rows = table.set_index("path")

    accepted_rows = []
    for path in outcome.accepted:
        row = rows.loc[path]
        ext = EXTENSIONS[row["format"]]
        key = image_key(row["sha256"], ext)
        if not store.exists(key):
            store.copy(incoming_prefix(batch) + path, key)
        accepted_rows.append(
            {
                "path": path,
                "sha256": row["sha256"],
                "ext": ext,
                "label": row["label"],
                "source_batch": batch,
                "width": int(row["width"]),
                "height": int(row["height"]),
                "phash": row["phash"],
            }
        )
    rejected = [{"file": path, "reasons": reasons} for path, reasons in sorted(outcome.rejected.items())]
    for item in rejected:
        store.copy(incoming_prefix(batch) + item["file"], f"quarantine/{batch}/{item['file']}")
    if rejected:
        store.put_json(f"quarantine/{batch}/reasons.json", rejected)
    groups = duplicate_groups(table, max_distance=config.near_duplicate_distance)
    total = len(table)
    fraction = len(rejected) / total if total else 0.0
    passed = fraction <= config.max_rejected_fraction
    result = {
        "batch": batch,
        # A batch over the rejection limit contributes nothing to training, not even its accepted files.
        "passed": passed,
        "rejected_fraction": fraction,
        "accepted": accepted_rows,
        "rejected": rejected,
        "expectations": outcome.expectation_results,
        "duplicate_groups": groups["exact"],
        "near_duplicate_groups": groups["near"],
        "data_docs": docs_key,
    }
    store.put_json(report_prefix(batch) + "result.json", result)

    reasons = Counter(r["reason"] for item in rejected for r in item["reasons"])
    classes = Counter(row["label"] for row in accepted_rows)
    context.log.info(f"batch {batch}: {len(accepted_rows)} accepted, {len(rejected)} rejected ({dict(reasons)})")
    metadata = {
        "accepted": len(accepted_rows),
        "rejected": len(rejected),
        "rejected_fraction": round(fraction, 4),
        "exact_duplicate_groups": len(groups["exact"]),
        "near_duplicate_groups": len(groups["near"]),
        "accepted_per_class": table_metadata(
            [{"label": k, "images": v} for k, v in sorted(classes.items())], [("label", "string"), ("images", "int")]
        ),
        "reject_reasons": table_metadata(
            [{"reason": k, "files": v} for k, v in sorted(reasons.items())], [("reason", "string"), ("files", "int")]
        ),
        "rejected_files": table_metadata(
            [{"file": r["file"], "reasons": ", ".join(x["reason"] for x in r["reasons"])} for r in rejected[:50]],
            [("file", "string"), ("reasons", "string")],
        ),
        "expectations": dg.MetadataValue.md(_expectations_markdown(outcome.expectation_results)),
        "rejected_thumbnails": dg.MetadataValue.md(_thumbnails_markdown(store, batch, rejected)),
        "data_docs": dg.MetadataValue.path(store.uri(docs_key)) if docs_key else "not built",
        "data_docs_link": dg.MetadataValue.url(store.presigned_url(docs_key)) if docs_key else "not built",
        "result": dg.MetadataValue.path(store.uri(report_prefix(batch) + "result.json")),
    }
    return dg.MaterializeResult(
        metadata=metadata,
        check_results=[
            dg.AssetCheckResult(
                check_name="rejected_fraction_within_limit",
                passed=passed,
                severity=dg.AssetCheckSeverity.ERROR,
                description=(
                    f"{len(rejected)} of {total} files rejected ({fraction:.1%}); limit "
                    f"{config.max_rejected_fraction:.0%}. Reasons: {dict(reasons) or 'none'}"
                ),
                metadata={
                    "rejected_fraction": round(fraction, 4),
                    "limit": config.max_rejected_fraction,
                    "rejected": len(rejected),
                    "files": total,
                    "reasons": dg.MetadataValue.json(dict(reasons)),
                },
            )
        ],
    )


def _upload_tree(store, root: Path, prefix: str) -> str | None:  # noqa: ANN001 - ObjectStore
    """Upload every file below `root` under `prefix`; return the key of its index page (None when empty)."""
    if not root.exists():
        return None
    index = None
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        key = prefix + file.relative_to(root).as_posix()
        content_type = "text/html" if file.suffix == ".html" else "application/octet-stream"
        store.put_bytes(key, file.read_bytes(), content_type=content_type)
        if file.name == "index.html" and file.parent == root:
            index = key
    return index


def _expectations_markdown(results: list[dict]) -> str:
    lines = ["| expectation | reason | rule | passed | unexpected |", "| --- | --- | --- | --- | --- |"]
    for r in results:
        lines.append(
            f"| `{r['expectation']}` | {r['reason']} | {r['rule']} | {'yes' if r['success'] else '**no**'} "
            f"| {r['unexpected_count']} |"
        )
    return "\n".join(lines)


def _thumbnails_markdown(store, batch: str, rejected: list[dict], limit: int = 6) -> str:  # noqa: ANN001
    """Small inline PNGs of the first rejected files that still decode (blank, tiny, mislabelled, ...)."""
    cells = []
    for item in rejected:
        if len(cells) >= limit:
            break
        try:
            image = to_rgb(decode_image(store.get_bytes(incoming_prefix(batch) + item["file"])))
        except ValueError:
            continue  # undecodable files have no picture to show
        image.thumbnail((96, 96))
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        encoded = base64.b64encode(buffer.getvalue()).decode()
        reasons = ", ".join(r["reason"] for r in item["reasons"])
        cells.append(f"![{item['file']}](data:image/png;base64,{encoded})<br>`{item['file']}`: {reasons}")
    if not cells:
        return "No rejected file could be decoded into a thumbnail." if rejected else "No file was rejected."
    return "\n\n".join(cells)


def load_validation_results(s3: S3Resource, *, exclude: str | None = None) -> list[dict]:
    """The `result.json` of every batch that passed validation (what training uses), except batch `exclude`."""
    store = s3.store()
    results = []
    for batch in store.list_prefixes("reports/validation/"):
        key = report_prefix(batch) + "result.json"
        if batch != exclude and store.exists(key):
            result = json.loads(store.get_bytes(key))
            if result.get("passed", True):
                results.append(result)
    return results


ingest_job = dg.define_asset_job(
    "ingest_job", selection=[incoming_batch, validated_batch], description="Profile and validate one incoming batch."
)
