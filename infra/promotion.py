"""Approval, promotion and rollback of registered model versions: one implementation for the CLI and Dagster.

MLflow holds the verdicts (model-version tags `gate.*`, `approval.*`, `release.*`; alias `champion`); S3 holds the
releases, the `production.json` pointer and `audit.jsonl`. The pointer is always the last write, so a crash at any
point leaves the previous release in force, and running the same step again completes it.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.failpoints import failpoint
from infra.release import (
    ReleaseVerificationError,
    append_audit,
    now_iso,
    read_audit,
    read_pointer,
    release_prefix,
    upload_release,
    verify_release,
    write_pointer,
)
from infra.runtime_release import export_runtimes
from infra.settings import load_settings
from infra.storage import ObjectStore

CHAMPION = "champion"
CANDIDATE = "candidate"
APPROVED, REJECTED, PENDING, GATES_FAILED = "approved", "rejected", "pending", "gates_failed"
GATE_EVALUATION_ARTIFACT = "promotion/gate_evaluation.json"
MODEL_CARD_ARTIFACT = "promotion/model_card.md"


class PromotionError(RuntimeError):
    """A promotion step was refused; the message says why and what to do."""


@dataclass
class Registry:
    """The MLflow model registry entry of one model name."""

    tracking_uri: str
    model_name: str
    client: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.client is None:
            import mlflow

            self.client = mlflow.MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def download_model(self, version: str, destination: Path) -> Path:
        """Download a version's model artifacts; return the local folder.

        The registry resolves the version to its artifact location first: a `models:/` URI would be resolved
        against MLflow's default registry (a local SQLite file) when MLFLOW_TRACKING_URI is not exported.
        """
        import mlflow

        source = self.client.get_model_version_download_uri(self.model_name, str(version))
        return Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=source, dst_path=str(destination), tracking_uri=self.tracking_uri
            )
        )

    def version(self, version: str) -> Any:
        """The model version, or a PromotionError naming what exists."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version(self.model_name, str(version))
        except MlflowException as error:
            raise PromotionError(
                f"model {self.model_name} has no version {version} in MLflow ({self.tracking_uri}); "
                "`tumorops models list` shows the versions"
            ) from error

    def by_alias(self, alias: str) -> Any | None:
        version = self.aliases().get(alias)
        return None if version is None else self.version(version)

    def aliases(self) -> dict[str, str]:
        """alias -> version ({} when the model is not registered yet)."""
        from mlflow.exceptions import MlflowException

        try:
            model = self.client.get_registered_model(self.model_name)
        except MlflowException:
            return {}
        return {alias: str(version) for alias, version in model.aliases.items()}

    def versions(self) -> list[Any]:
        return sorted(
            self.client.search_model_versions(f"name='{self.model_name}'"), key=lambda v: int(v.version), reverse=True
        )

    def set_tags(self, version: str, tags: dict[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(self.model_name, str(version), key, str(value))


def approval_of(model_version: Any) -> dict[str, Any]:
    tags = model_version.tags
    return {
        "status": tags.get("approval.status", "none"),
        "by": tags.get("approval.by"),
        "reason": tags.get("approval.reason"),
        "at": tags.get("approval.at"),
        "override": tags.get("approval.override") == "true",
    }


def gate_tags(report: Any) -> dict[str, str]:
    """MLflow tags of a `GateReport`: per gate its value, the champion's, the threshold and the verdict."""
    tags = {
        "gate.passed": str(report.passed).lower(),
        "gate.summary": report.summary()[:4000],
        "gate.champion_version": report.champion_version or "none",
    }
    for result in report.results:
        value = "n/a" if result.candidate is None else f"{result.candidate:.4f}"
        tags[f"gate.{result.name}.value"] = value
        tags[f"gate.{result.name}.threshold"] = f"{result.comparison} {result.threshold:.4f}"
        tags[f"gate.{result.name}.passed"] = str(result.passed).lower()
        if result.champion is not None:
            tags[f"gate.{result.name}.champion"] = f"{result.champion:.4f}"
    return tags


def record_gate_verdict(
    registry: Registry,
    store: ObjectStore,
    *,
    version: str,
    report: Any,
    policy: str,
    evaluation: dict[str, Any],
) -> dict[str, Any]:
    """Record a gate report on a version and apply the approval policy; return the approval.

    Policy `auto`: passed -> approved by `policy:auto`. Policy `manual`: passed -> pending (a human decides).
    Either way, failed gates -> `gates_failed`, which only an explicit override can approve.

    Args:
        registry: the model's registry entry.
        store: the bucket (for the audit log).
        version: the candidate version.
        report: the `GateReport`.
        policy: `auto` or `manual`.
        evaluation: everything measured (both models' metrics, data counts, config), logged as an artifact.
    """
    model_version = registry.version(version)
    registry.set_tags(version, gate_tags(report))
    registry.client.log_dict(model_version.run_id, evaluation, GATE_EVALUATION_ARTIFACT)
    if not report.passed:
        status, by, action = GATES_FAILED, f"policy:{policy}", "reject"
    elif policy == "auto":
        status, by, action = APPROVED, "policy:auto", "approve"
    else:
        status, by, action = PENDING, "policy:manual", "await_approval"
    return _record_approval(
        registry,
        store,
        version=version,
        status=status,
        by=by,
        reason=report.summary(),
        override=False,
        action=action,
        gates_passed=report.passed,
        champion_version=report.champion_version,
        metrics=_headline(evaluation.get("candidate")),
    )


def _record_approval(
    registry: Registry,
    store: ObjectStore,
    *,
    version: str,
    status: str,
    by: str,
    reason: str,
    override: bool,
    action: str,
    **audit_details: Any,
) -> dict[str, Any]:
    """Set the `approval.*` tags and append the matching audit line; return the approval without prefixes."""
    approval = {
        "approval.status": status,
        "approval.by": by,
        "approval.reason": reason,
        "approval.at": now_iso(),
        "approval.override": str(override).lower(),
    }
    registry.set_tags(version, approval)
    append_audit(store, registry.model_name, action=action, version=str(version), by=by, reason=reason, **audit_details)
    return {key.removeprefix("approval."): value for key, value in approval.items()}


def _headline(metrics: dict[str, Any] | None) -> dict[str, float] | None:
    if not metrics:
        return None
    headline = {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "ece": metrics["ece"]}
    headline.update({f"sensitivity_{k}": v["recall"] for k, v in metrics["per_class"].items()})
    return {k: round(float(v), 4) for k, v in headline.items()}


def decide(
    registry: Registry,
    store: ObjectStore,
    *,
    version: str,
    decision: str,
    by: str,
    reason: str,
    override: bool = False,
) -> dict[str, Any]:
    """A named human approves or rejects a version; return the recorded approval.

    Raises:
        PromotionError: no such version, no name or reason, gates not evaluated or failed without `override`.
    """
    if decision not in ("approve", "reject"):
        raise PromotionError(f"decision must be approve or reject, not {decision!r}")
    if not by.strip() or not reason.strip():
        raise PromotionError("a decision needs the name of who takes it (--by) and a reason (--reason)")
    if by.startswith("policy:"):
        raise PromotionError("'policy:' names are reserved for automatic decisions; give a person's name")
    model_version = registry.version(version)
    gates = model_version.tags.get("gate.passed")
    if decision == "approve" and gates != "true" and not override:
        why = (
            f"its gates failed ({model_version.tags.get('gate.summary', 'see gate.* tags')})"
            if gates == "false"
            else "its gates have not been evaluated (run retrain_job or the promotion_gate asset)"
        )
        raise PromotionError(
            f"version {version} cannot be approved: {why}. Approving it anyway needs --override, "
            "which is recorded as such."
        )
    status = APPROVED if decision == "approve" else REJECTED
    is_override = decision == "approve" and gates != "true"
    return _record_approval(
        registry,
        store,
        version=version,
        status=status,
        by=by,
        reason=reason,
        override=is_override,
        action="approve_override" if is_override else decision,
        gates_passed=gates == "true",
        gate_summary=model_version.tags.get("gate.summary"),
    )


def evaluate_candidate(
    registry: Registry,
    store: ObjectStore,
    *,
    version: str,
    manifest_key: str,
    cache_dir: Path,
    thresholds: Any,
    log: Callable[[str], None] = print,
) -> tuple[Any, dict[str, Any]]:
    """Score a candidate and the serving champion on the same test images; return the gate report and the evidence.

    The champion is the release `production.json` names (verified by sha256), re-scored on the current test split
    so both models are compared on identical images, each at its own input size.

    Returns:
        The `GateReport` and a JSON-able dict: both models' metrics, images per class and split, dataset version.
    """
    import io

    import pandas as pd

    from infra.image_cache import cached_image_path, fetch_manifest_images
    from infra.release import download_release
    from tumor_model.gates import evaluate_gates
    from tumor_model.scoring import score_model_file

    version = str(version)
    registry.version(version)
    manifest = pd.read_parquet(io.BytesIO(store.get_bytes(manifest_key)))
    test_rows = manifest[manifest["split"] == "test"]
    if test_rows.empty:
        raise PromotionError(f"the test split of {store.uri(manifest_key)} is empty: ingest more images")
    fetch_manifest_images(store, test_rows, cache_dir, log=log)

    def image_path(row: Any) -> Path:
        return cached_image_path(cache_dir, row)

    pointer = read_pointer(store, registry.model_name)
    champion_version = pointer["version"] if pointer and pointer["version"] != version else None
    with tempfile.TemporaryDirectory(prefix="tumorops-gates-") as tmp:
        local = registry.download_model(version, Path(tmp) / "candidate")
        keras_files = sorted(local.rglob("*.keras"))
        if not keras_files:
            raise PromotionError(f"version {version} has no .keras file in its MLflow artifacts")
        log(f"scoring candidate version {version} on {len(test_rows)} test images")
        candidate = score_model_file(keras_files[0], rows=test_rows, image_path=image_path)
        champion = None
        if champion_version is not None:
            info = download_release(store, pointer, Path(tmp) / "champion")
            log(f"re-scoring champion version {champion_version} on the same images")
            champion = score_model_file(
                Path(tmp) / "champion" / info.get("model_file", "model.keras"), rows=test_rows, image_path=image_path
            )
    report = evaluate_gates(
        candidate=candidate, champion=champion, thresholds=thresholds, champion_version=champion_version
    )
    counts = manifest.groupby(["label", "split"]).size()
    data = {label: {split: int(n) for (_, split), n in group.items()} for label, group in counts.groupby(level=0)}
    evaluation = {
        "dataset_version": Path(manifest_key).stem,
        "manifest": manifest_key,
        "candidate_version": version,
        "champion_version": champion_version,
        "candidate": candidate,
        "champion": champion,
        "data": data,
        "thresholds": thresholds.model_dump(),
        "report": report.to_dict(),
    }
    return report, evaluation


@dataclass(frozen=True)
class PromotionOutcome:
    promoted: bool
    version: str
    previous_version: str | None
    message: str
    pointer: dict[str, Any] | None = None
    model_json: dict[str, Any] | None = None
    model_card: str | None = None


def _download_gate_evaluation(registry: Registry, run_id: str, destination: Path) -> dict[str, Any] | None:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        path = mlflow.artifacts.download_artifacts(
            run_id=run_id,
            artifact_path=GATE_EVALUATION_ARTIFACT,
            dst_path=str(destination),
            tracking_uri=registry.tracking_uri,
        )
    except (MlflowException, OSError):
        return None  # approved with --override before any gate ran: the card says so
    return json.loads(Path(path).read_text())


def promote(
    registry: Registry,
    store: ObjectStore,
    *,
    version: str,
    by: str | None = None,
    referral_confidence: float = 0.8,
    cache_dir: Path | None = None,
    log: Callable[[str], None] = print,
) -> PromotionOutcome:
    """Release an approved version: export from MLflow, upload and verify, write `production.json`, alias `champion`.

    The release carries the Keras model, its OpenVINO IR and its ONNX graph, with their parity figures on the gates'
    test split (`infra.runtime_release`); `cache_dir` is the local image cache those test images are read through.

    Idempotent: promoting the version already in production only repairs the alias if a crash left it behind.

    Raises:
        PromotionError: the version does not exist or is not approved, or its MLflow artifacts hold no model.
    """

    from tumor_model.model_card import render_model_card

    version = str(version)
    model_version = registry.version(version)
    approval = approval_of(model_version)
    if approval["status"] != APPROVED:
        raise PromotionError(
            f"version {version} is not approved (approval.status={approval['status']}); "
            f"approve it first: tumorops approve {version} --by NAME --reason TEXT"
        )
    current = read_pointer(store, registry.model_name)
    previous = current["version"] if current else None
    if previous == version:
        repaired = _complete_interrupted_release(registry, store, current, log=log)
        message = f"version {version} is already in production" + (f" ({repaired})" if repaired else "")
        return PromotionOutcome(False, version, previous, message, current)

    with tempfile.TemporaryDirectory(prefix="tumorops-release-") as tmp:
        workdir = Path(tmp)
        log(f"exporting version {version} from MLflow")
        local = registry.download_model(version, workdir / "mlflow")
        keras_files = sorted(local.rglob("*.keras"))
        if not keras_files:
            raise PromotionError(f"version {version} has no .keras file in its MLflow artifacts ({local})")
        run = registry.client.get_run(model_version.run_id)
        gate_evaluation = _download_gate_evaluation(registry, model_version.run_id, workdir / "gates")
        runtime_files, runtimes = export_runtimes(
            keras_files[0],
            workdir / "runtimes",
            store=store,
            manifest_key=gate_evaluation.get("manifest") if gate_evaluation else None,
            cache_dir=cache_dir or load_settings().home_dir / "cache" / "images",
            log=log,
        )
        test_metrics = {k: v for k, v in run.data.metrics.items() if k.startswith("test_")}
        info = {
            "model_name": registry.model_name,
            "version": version,
            "labels": json.loads(model_version.tags["labels"]),
            "image_size": int(model_version.tags["image_size"]),
            "preprocessing": model_version.tags["preprocessing"],
            "dataset_version": model_version.tags.get("dataset_version"),
            "mlflow_run_id": model_version.run_id,
            "git_commit": run.data.tags.get("git_commit", "unknown"),
            "training": {k: v for k, v in run.data.params.items() if not k.startswith("n_")},
            "metrics": test_metrics,
            "evaluation": gate_evaluation["candidate"] if gate_evaluation else None,
            "data": gate_evaluation.get("data") if gate_evaluation else None,
            "gates": gate_evaluation["report"] if gate_evaluation else None,
            "approval": approval,
            "referral_confidence": referral_confidence,
            "model_file": "model.keras",
            "runtimes": runtimes,
        }
        if info["evaluation"]:
            info["evaluation"] = {k: v for k, v in info["evaluation"].items() if k != "images_sha256"}
        card = render_model_card(info)
        card_path = workdir / "model_card.md"
        card_path.write_text(card)
        registry.client.log_text(model_version.run_id, card, MODEL_CARD_ARTIFACT)
        log(f"uploading release {store.uri(release_prefix(registry.model_name, version))}")
        model_json = upload_release(
            store,
            model_name=registry.model_name,
            version=version,
            files={"model.keras": keras_files[0], "model_card.md": card_path, **runtime_files},
            model_info=info,
        )
    failpoint("promote.before_pointer")
    approved_by = approval["by"] or "unknown"
    pointer = write_pointer(
        store,
        model_name=registry.model_name,
        version=version,
        approved_by=approved_by,
        reason=approval["reason"] or "",
        previous_version=previous,
        action="promote",
    )
    append_audit(
        store,
        registry.model_name,
        action="promote",
        version=version,
        by=by or approved_by,
        approved_by=approved_by,
        reason=approval["reason"],
        override=approval["override"],
        previous=previous,
        metrics=_headline(info["evaluation"]) or test_metrics,
    )
    failpoint("promote.before_alias")
    registry.client.set_registered_model_alias(registry.model_name, CHAMPION, version)
    registry.set_tags(version, {"release.promoted_at": pointer["promoted_at"], "release.prefix": pointer["prefix"]})
    log(f"version {version} is in production (was {previous or 'nothing'})")
    return PromotionOutcome(True, version, previous, f"promoted {version}", pointer, model_json, card)


def _complete_interrupted_release(
    registry: Registry, store: ObjectStore, pointer: dict[str, Any], *, log: Callable[[str], None]
) -> str | None:
    """Finish the steps after the pointer (audit line, alias) that a crash may have skipped; say what was done."""
    done = []
    releases = [a for a in read_audit(store, registry.model_name) if a.get("action") in ("promote", "rollback")]
    last = releases[-1] if releases else None
    if last is None or str(last.get("version")) != pointer["version"] or last.get("at", "") < pointer["promoted_at"]:
        append_audit(
            store,
            registry.model_name,
            action=pointer.get("action", "promote"),
            version=pointer["version"],
            by=pointer["approved_by"],
            reason=pointer["reason"],
            previous=pointer.get("previous_version"),
            completed_after_interruption=True,
        )
        done.append("audit line written")
    if registry.aliases().get(CHAMPION) != pointer["version"]:
        registry.client.set_registered_model_alias(registry.model_name, CHAMPION, pointer["version"])
        done.append(f"alias {CHAMPION} moved")
    registry.set_tags(
        pointer["version"], {"release.promoted_at": pointer["promoted_at"], "release.prefix": pointer["prefix"]}
    )
    if done:
        log(f"completed an interrupted release of version {pointer['version']}: {', '.join(done)}")
    return ", ".join(done) or None


def rollback(
    registry: Registry, store: ObjectStore, *, by: str, reason: str, to: str | None = None
) -> PromotionOutcome:
    """Serve an earlier release again: the version served before the current one, or `to`.

    The target's release files are verified against their sha256 before the pointer moves.

    Raises:
        PromotionError: nothing in production, no earlier version known, no release for the target, or the
            target's files fail verification.
    """
    if not by.strip() or not reason.strip():
        raise PromotionError("a rollback needs the name of who does it (--by) and a reason (--reason)")
    current = read_pointer(store, registry.model_name)
    if current is None:
        raise PromotionError("nothing is in production yet: there is nothing to roll back")
    target = str(to) if to is not None else current.get("previous_version")
    if not target:
        raise PromotionError(
            f"no earlier version is recorded before version {current['version']}; name one with --to VERSION"
        )
    if target == current["version"]:
        raise PromotionError(f"version {target} is already in production")
    model_version = registry.version(target)
    if approval_of(model_version)["status"] == REJECTED:
        raise PromotionError(
            f"version {target} was rejected by {model_version.tags.get('approval.by')} "
            f"({model_version.tags.get('approval.reason')}); approve it again before serving it"
        )
    try:
        model_json = verify_release(store, registry.model_name, target)
    except ReleaseVerificationError as error:
        raise PromotionError(
            f"cannot roll back to version {target}: {error}. Promote it instead (tumorops promote {target})"
        ) from error
    pointer = write_pointer(
        store,
        model_name=registry.model_name,
        version=target,
        approved_by=by,
        reason=reason,
        previous_version=current["version"],
        action="rollback",
    )
    registry.client.set_registered_model_alias(registry.model_name, CHAMPION, target)
    registry.set_tags(current["version"], {"release.rolled_back_at": pointer["promoted_at"]})
    registry.set_tags(target, {"release.promoted_at": pointer["promoted_at"], "release.prefix": pointer["prefix"]})
    append_audit(
        store,
        registry.model_name,
        action="rollback",
        version=target,
        by=by,
        reason=reason,
        previous=current["version"],
        metrics=_headline(model_json.get("evaluation")) or model_json.get("metrics"),
    )
    return PromotionOutcome(
        True, target, current["version"], f"rolled back from {current['version']} to {target}", pointer, model_json
    )


def describe_versions(registry: Registry, store: ObjectStore) -> dict[str, Any]:
    """What `tumorops models list` shows: every version with aliases, metrics, gates, approval; what serves."""
    pointer = read_pointer(store, registry.model_name)
    by_version: dict[str, list[str]] = {}
    aliases = registry.aliases()
    for alias, version in aliases.items():
        by_version.setdefault(version, []).append(alias)
    rows = []
    for model_version in registry.versions():
        tags = model_version.tags
        failed = sorted(
            key.removeprefix("gate.").removesuffix(".passed")
            for key, value in tags.items()
            if key.startswith("gate.") and key.endswith(".passed") and key != "gate.passed" and value == "false"
        )
        rows.append(
            {
                "version": str(model_version.version),
                "aliases": sorted(by_version.get(str(model_version.version), [])),
                "serving": pointer is not None and pointer["version"] == str(model_version.version),
                "test_accuracy": tags.get("test_accuracy"),
                "test_macro_f1": tags.get("test_macro_f1"),
                "gates": tags.get("gate.passed", "-"),
                "failed_gates": failed,
                "approval": approval_of(model_version),
                "dataset_version": tags.get("dataset_version"),
                "image_size": tags.get("image_size"),
                "created": model_version.creation_timestamp,
            }
        )
    champion = aliases.get(CHAMPION)
    warning = None
    if pointer is not None and champion != pointer["version"]:
        warning = (
            f"alias {CHAMPION} ({champion}) differs from production.json ({pointer['version']}): an interrupted "
            f"promotion; `tumorops promote {pointer['version']}` repairs it"
        )
    return {"model_name": registry.model_name, "serving": pointer, "versions": rows, "warning": warning}


def audit_tail(store: ObjectStore, model_name: str, lines: int = 20) -> list[dict[str, Any]]:
    return read_audit(store, model_name)[-lines:] if lines > 0 else []
