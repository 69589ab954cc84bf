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


def cmd_models_list(args: argparse.Namespace) -> int:
    import mlflow

    from infra.release import read_pointer
    from infra.storage import ObjectStore

    settings = cli_settings()
    client = mlflow.MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    pointer = read_pointer(ObjectStore.from_settings(settings), settings.model_name)
    versions = client.search_model_versions(f"name='{settings.model_name}'")
    # search_model_versions leaves aliases empty; the registered model has the alias -> version map.
    aliases_by_version: dict[str, list[str]] = {}
    if versions:
        for alias, version in client.get_registered_model(settings.model_name).aliases.items():
            aliases_by_version.setdefault(str(version), []).append(alias)
    print(f"model {settings.model_name}; serving: {pointer['version'] if pointer else 'nothing yet'}")
    print(f"{'version':>7}  {'aliases':20s}  {'test_acc':>8}  {'gates':6s}  {'approval':10s}  dataset")
    for mv in sorted(versions, key=lambda v: int(v.version), reverse=True):
        aliases = ",".join(sorted(aliases_by_version.get(str(mv.version), []))) or "-"
        print(
            f"{mv.version:>7}  {aliases:20s}  {mv.tags.get('test_accuracy', '-'):>8}  "
            f"{mv.tags.get('gate.passed', '-'):6s}  {mv.tags.get('approval.status', '-'):10s}  "
            f"{mv.tags.get('dataset_version', '-')}"
        )
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    import httpx

    settings = cli_settings()
    url = (args.url or f"http://{settings.host}:{settings.bentoml_port}").rstrip("/")
    path = Path(args.image)
    with open(path, "rb") as handle:
        response = httpx.post(f"{url}/classify", files={"image": (path.name, handle, _content_type(path))}, timeout=60)
    if response.status_code != 200:
        print(f"error {response.status_code}: {response.text}", file=sys.stderr)
        return 1
    print(json.dumps(response.json(), indent=2))
    return 0


def _content_type(path: Path) -> str:
    return {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}.get(path.suffix.lower(), "image/*")


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
    models_sub.add_parser("list", help="versions, aliases, gates, approval, what is serving").set_defaults(
        func=cmd_models_list
    )

    classify = sub.add_parser("classify", help="classify one image with the BentoML service")
    classify.add_argument("image")
    classify.add_argument("--url", default=None, help="service URL (default: the local stack's)")
    classify.set_defaults(func=cmd_classify)
    return parser


def main(argv: list[str] | None = None) -> int:
    from infra.demo import DemoError
    from infra.ingest import IngestError
    from infra.stack import StackError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (StackError, IngestError, DemoError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
