"""`tumorops`: the command line of the platform (see `tumorops --help`)."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import threading
import time
from pathlib import Path

from infra.settings import Settings, load_settings


def cli_settings() -> Settings:
    """Settings from the environment; the local stack's endpoint and keys when `tumorops up` runs one."""
    from infra.stack import STACK_FILE, stack_settings

    settings = load_settings()
    if settings.s3_endpoint_url is None and (settings.home_dir / STACK_FILE).exists():
        return stack_settings(settings)
    return settings


def _progress(label: str):  # noqa: ANN202
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last[0] > 0.5:
            last[0] = now
            width = 30
            filled = int(width * done / max(total, 1))
            sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
            if done == total:
                sys.stderr.write("\n")
            sys.stderr.flush()

    return report


def cmd_up(args: argparse.Namespace) -> int:
    from infra.stack import up

    urls = up(load_settings())
    print_urls(urls)
    return 0


def print_urls(urls: dict[str, str]) -> None:
    print("\nTumorOps local stack:")
    print(f"  Dagster UI        {urls['dagster']}")
    print(f"  MLflow UI         {urls['mlflow']}")
    print(f"  BentoML API docs  {urls['bentoml']}  (POST {urls['bentoml']}/classify)")
    print(f"  S3 (SeaweedFS)    {urls['s3']}")


def cmd_down(args: argparse.Namespace) -> int:
    from infra.stack import down

    down(load_settings())
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from infra.stack import status

    report = status(load_settings())
    for name, item in report.items():
        state = "not running" if item["pid"] is None else ("healthy" if item["healthy"] else "running, not ready")
        print(f"{name:8s} {state:20s} pid={item['pid']} {item['url']}")
    return 0 if all(item["healthy"] for item in report.values()) else 1


def cmd_ingest(args: argparse.Namespace) -> int:
    from infra.ingest import ingest_folder
    from infra.storage import ObjectStore

    store = ObjectStore.from_settings(cli_settings())
    batch, count = ingest_folder(store, Path(args.path), batch=args.batch, progress=_progress("uploading"))
    print(f"ingested {count} files as batch {batch} ({store.uri(f'incoming/{batch}/')}, _READY written last)")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    import pandas as pd

    from tumor_model.duplicates import duplicate_groups
    from tumor_model.profiling import profile_folder
    from tumor_model.validation import ValidationRules, validate_profiles

    root = Path(args.path)
    if not root.is_dir():
        print(f"error: {root} is not a folder", file=sys.stderr)
        return 2
    started = time.monotonic()
    # Great Expectations takes seconds to import: do it while the worker processes profile the images.
    threading.Thread(target=importlib.import_module, args=("great_expectations",), daemon=True).start()
    table = pd.DataFrame([p.to_dict() for p in profile_folder(root, progress=_progress("profiling"))])
    if table.empty:
        print(f"error: {root} has no files under label folders (<label>/<image>)", file=sys.stderr)
        return 2
    profiled = time.monotonic()
    rules = ValidationRules(near_duplicate_distance=args.near_duplicate_distance)
    docs_dir = Path(args.data_docs) if args.data_docs else None
    outcome = validate_profiles(table, rules=rules, docs_dir=docs_dir)
    groups = duplicate_groups(table, max_distance=rules.near_duplicate_distance)
    accepted = table[table["path"].isin(outcome.accepted)]
    report = {
        "folder": str(root.resolve()),
        "images": len(table),
        "accepted": outcome.accepted,
        "rejected": [{"file": f, "reasons": r} for f, r in sorted(outcome.rejected.items())],
        "duplicate_groups": groups["exact"],
        "near_duplicate_groups": groups["near"],
        "class_counts": {k: int(v) for k, v in accepted["label"].value_counts().sort_index().items()},
        "expectations": outcome.expectation_results,
        "rules": vars(rules),
        "seconds": {"profiling": round(profiled - started, 2), "total": round(time.monotonic() - started, 2)},
    }
    Path(args.report).write_text(json.dumps(report, indent=2, default=str))
    reasons: dict[str, int] = {}
    for item in report["rejected"]:
        for reason in item["reasons"]:
            reasons[reason["reason"]] = reasons.get(reason["reason"], 0) + 1
    print(
        f"{len(table)} files: {len(outcome.accepted)} accepted, {len(outcome.rejected)} rejected {reasons or ''}\n"
        f"{len(groups['exact'])} groups of exact duplicates "
        f"({sum(len(g) for g in groups['exact'])} files), {len(groups['near'])} groups of near-duplicates "
        f"({sum(len(g) for g in groups['near'])} files)\n"
        f"class counts (accepted): {report['class_counts']}\nreport: {args.report}"
        + (f"; Data Docs: {docs_dir / 'index.html'}" if docs_dir else "")
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from tumor_model.train_entry import run

    return run(args)


def _registry_and_store():  # noqa: ANN202
    from infra.promotion import Registry
    from infra.storage import ObjectStore

    settings = cli_settings()
    return (
        settings,
        Registry(tracking_uri=settings.mlflow_tracking_uri, model_name=settings.model_name),
        (ObjectStore.from_settings(settings)),
    )


def cmd_models_list(args: argparse.Namespace) -> int:
    from infra.promotion import describe_versions

    _, registry, store = _registry_and_store()
    listing = describe_versions(registry, store)
    if args.json:
        print(json.dumps(listing, indent=2, default=str))
        return 0
    serving = listing["serving"]
    if serving:
        print(
            f"model {listing['model_name']}: serving version {serving['version']} since {serving['promoted_at']} "
            f"({serving.get('action', 'promote')} by {serving['approved_by']})"
        )
    else:
        print(f"model {listing['model_name']}: nothing in production yet")
    if listing["warning"]:
        print(f"warning: {listing['warning']}")
    print(
        f"{'version':>7}  {'aliases':27s}  {'test_acc':>8}  {'macro_f1':>8}  {'gates':10s}  {'dataset':15s}  approval"
    )
    for row in listing["versions"]:
        aliases = ",".join(row["aliases"]) + (" *serving" if row["serving"] else "")
        gates = {"true": "passed", "false": f"FAILED({len(row['failed_gates'])})"}.get(row["gates"], "-")
        approval = row["approval"]
        who = f"{approval['status']}" + (f" by {approval['by']}" if approval["by"] else "")
        if approval["override"]:
            who += " (override)"
        print(
            f"{row['version']:>7}  {aliases or '-':27s}  {row['test_accuracy'] or '-':>8}  "
            f"{row['test_macro_f1'] or '-':>8}  {gates:10s}  {row['dataset_version'] or '-':15s}  {who}"
        )
        if row["failed_gates"]:
            print(f"{'':9}failed gates: {', '.join(row['failed_gates'])}")
    return 0


def cmd_decide(args: argparse.Namespace) -> int:
    from infra.promotion import decide

    _, registry, store = _registry_and_store()
    approval = decide(
        registry,
        store,
        version=args.version,
        decision=args.command,
        by=args.by,
        reason=args.reason,
        override=getattr(args, "override", False),
    )
    override = " (override of failed gates, recorded)" if approval["override"] == "true" else ""
    print(f"version {args.version}: {approval['status']} by {approval['by']}{override}")
    if args.command == "approve":
        print("the Dagster approval_sensor promotes it within a minute; or now: tumorops promote " + args.version)
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from infra.promotion import promote
    from tumor_model.gates import load_promotion_config

    settings, registry, store = _registry_and_store()
    config = load_promotion_config(settings.promotion_config, policy=settings.approval_policy)
    outcome = promote(
        registry,
        store,
        version=args.version,
        by=args.by,
        referral_confidence=config.release.referral_confidence,
        log=lambda m: print(m, file=sys.stderr),
    )
    print(outcome.message)
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from infra.promotion import rollback

    _, registry, store = _registry_and_store()
    outcome = rollback(registry, store, by=args.by, reason=args.reason, to=args.to)
    print(f"{outcome.message}; production.json now names version {outcome.version}")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from infra.promotion import audit_tail

    settings, _, store = _registry_and_store()
    for item in audit_tail(store, settings.model_name, args.tail):
        print(json.dumps(item, sort_keys=True, default=str))
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    import httpx

    settings = cli_settings()
    url = (args.url or f"http://{settings.host}:{settings.bentoml_port}").rstrip("/")
    path = Path(args.image)
    headers = {"Authorization": f"Bearer {settings.serving_token.get_secret_value()}"} if settings.serving_token else {}
    with open(path, "rb") as handle:
        response = httpx.post(
            f"{url}/classify", files={"image": (path.name, handle, _content_type(path))}, headers=headers, timeout=60
        )
    if response.status_code != 200:
        print(f"error {response.status_code}: {response.text}", file=sys.stderr)
        return 1
    print(json.dumps(response.json(), indent=2))
    return 0


def _content_type(path: Path) -> str:
    known = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".dcm": "application/dicom"}
    return known.get(path.suffix.lower(), "application/octet-stream")  # the service then reads the bytes


def cmd_demo(args: argparse.Namespace) -> int:
    from infra.demo import run_demo

    return run_demo(load_settings(), images_per_class=args.images_per_class, timeout=args.timeout)


def build_parser() -> argparse.ArgumentParser:
    from tumor_model import train_entry

    parser = argparse.ArgumentParser(prog="tumorops", description="TumorOps: brain-tumour MRI classification MLOps.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", help="start the local stack (S3, MLflow, Dagster, BentoML)").set_defaults(func=cmd_up)
    sub.add_parser("down", help="stop the local stack").set_defaults(func=cmd_down)
    sub.add_parser("status", help="show the local stack's services").set_defaults(func=cmd_status)

    demo = sub.add_parser("demo", help="up, seed sample data, run the pipeline once, classify one image")
    demo.add_argument("--images-per-class", type=int, default=120)
    demo.add_argument("--timeout", type=float, default=1500, help="seconds to wait for the pipeline")
    demo.set_defaults(func=cmd_demo)

    ingest = sub.add_parser("ingest", help="upload a folder of <label>/<image> as an incoming batch")
    ingest.add_argument("path")
    ingest.add_argument("--batch", default=None, help="batch id (default: <folder>-<UTC timestamp>)")
    ingest.set_defaults(func=cmd_ingest)

    validate = sub.add_parser("validate", help="run the validation rules offline on a local folder")
    validate.add_argument("path")
    validate.add_argument("--report", required=True, help="JSON report to write")
    validate.add_argument("--data-docs", default=None, help="folder to write Great Expectations Data Docs into")
    validate.add_argument(
        "--near-duplicate-distance", type=int, default=4, help="perceptual-hash bits for near-duplicates (default 4)"
    )
    validate.set_defaults(func=cmd_validate)

    train = sub.add_parser("train", help="standalone training (what Dagster launches through Pipes)")
    train_entry.add_arguments(train)
    train.set_defaults(func=cmd_train)

    models = sub.add_parser("models", help="registered model versions")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    listing = models_sub.add_parser("list", help="versions, aliases, gates, approval, what is serving")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=cmd_models_list)

    for name, help_text in (("approve", "approve a version for production"), ("reject", "reject a version")):
        decision = sub.add_parser(name, help=help_text)
        decision.add_argument("version")
        decision.add_argument("--by", required=True, help="your name (recorded in MLflow and the audit log)")
        decision.add_argument("--reason", required=True, help="why (recorded)")
        if name == "approve":
            decision.add_argument(
                "--override", action="store_true", help="approve although the gates failed (recorded as an override)"
            )
        decision.set_defaults(func=cmd_decide)

    promote = sub.add_parser("promote", help="release an approved version now (without waiting for Dagster)")
    promote.add_argument("version")
    promote.add_argument("--by", default=None, help="who releases it (default: the approver)")
    promote.set_defaults(func=cmd_promote)

    rollback = sub.add_parser("rollback", help="serve the previous release again (or --to VERSION)")
    rollback.add_argument("--to", default=None, help="version to serve (default: the one served before this one)")
    rollback.add_argument("--by", required=True, help="your name (recorded)")
    rollback.add_argument("--reason", required=True, help="why (recorded)")
    rollback.set_defaults(func=cmd_rollback)

    audit = sub.add_parser("audit", help="the last lines of the release audit log")
    audit.add_argument("--tail", type=int, default=20)
    audit.set_defaults(func=cmd_audit)

    classify = sub.add_parser("classify", help="classify one image with the BentoML service")
    classify.add_argument("image")
    classify.add_argument("--url", default=None, help="service URL (default: the local stack's)")
    classify.set_defaults(func=cmd_classify)
    return parser


def main(argv: list[str] | None = None) -> int:
    from infra.demo import DemoError
    from infra.ingest import IngestError
    from infra.promotion import PromotionError
    from infra.release import ReleaseVerificationError
    from infra.stack import StackError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (StackError, IngestError, DemoError, PromotionError, ReleaseVerificationError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
