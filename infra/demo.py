"""`tumorops demo`: the whole platform once, on the local stack, with synthetic MRI slices."""

from __future__ import annotations

import json
import time
import urllib.request

from infra.settings import Settings

RUNS_QUERY = """
query Runs($tags: [ExecutionTag!]) {
  runsOrError(filter: {tags: $tags}, limit: 10) {
    __typename
    ... on Runs { results { runId jobName status } }
    ... on PythonError { message }
  }
}
"""
FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}


class DemoError(RuntimeError):
    pass


def graphql(url: str, query: str, variables: dict) -> dict:
    request = urllib.request.Request(
        f"{url}/graphql",
        data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["data"]


def wait_for_run(dagster_url: str, *, job: str, tags: dict[str, str], deadline: float) -> str:
    """Wait for the run of `job` carrying `tags` to finish; return its run id (raise unless it succeeded)."""
    variables = {"tags": [{"key": k, "value": v} for k, v in tags.items()]}
    last = None
    while time.monotonic() < deadline:
        runs = graphql(dagster_url, RUNS_QUERY, variables)["runsOrError"].get("results", [])
        run = next((r for r in runs if r["jobName"] == job), None)
        state = run["status"] if run else "WAITING FOR SENSOR"
        if state != last:
            print(f"  {job}: {state.lower()}", flush=True)
            last = state
        if run and run["status"] in FINISHED:
            if run["status"] != "SUCCESS":
                raise DemoError(f"{job} ended {run['status']}: see {dagster_url}/runs/{run['runId']}")
            return run["runId"]
        time.sleep(3)
    raise DemoError(f"timed out waiting for {job}; see {dagster_url}/runs")


def _candidate_verdict(settings: Settings) -> dict[str, str] | None:
    """The newest candidate's gate verdict and approval, for the demo's printout."""
    from infra.promotion import CANDIDATE, Registry

    registry = Registry(tracking_uri=settings.mlflow_tracking_uri, model_name=settings.model_name)
    version = registry.by_alias(CANDIDATE)
    if version is None:
        return None
    tags = version.tags
    return {
        "version": str(version.version),
        "test_accuracy": tags.get("test_accuracy", "?"),
        "gates": {"true": "passed", "false": "FAILED"}.get(tags.get("gate.passed", ""), "not evaluated"),
        "summary": tags.get("gate.summary", ""),
        "approval": f"{tags.get('approval.status', 'none')} by {tags.get('approval.by', '-')}",
    }


DEMO_APPROVER = "tumorops demo"


def _override_for_demo(settings: Settings, store: object, version: str, dagster_url: str, deadline: float) -> dict:
    """Nothing serves and the demo model failed the clinical gates: sign it off with a recorded override.

    This is the path a person takes with `tumorops approve VERSION --override`; the approval sensor then runs
    promotion_job. The override is visible in MLflow, the audit log, the model card and `tumorops models list`.
    """
    from infra.promotion import Registry, decide
    from infra.release import read_pointer

    registry = Registry(tracking_uri=settings.mlflow_tracking_uri, model_name=settings.model_name)
    reason = "demo on synthetic data: served despite failed clinical gates so the flow can be shown end to end"
    decide(registry, store, version=version, decision="approve", by=DEMO_APPROVER, reason=reason, override=True)
    print(
        f"    nothing serves yet: the demo approves version {version} with a recorded override "
        f'(tumorops approve {version} --by "{DEMO_APPROVER}" --override); Dagster\'s approval_sensor promotes it',
        flush=True,
    )
    wait_for_run(
        dagster_url,
        job="promotion_job",
        tags={"tumorops/trigger": "approval", "tumorops/version": version},
        deadline=deadline,
    )
    return read_pointer(store, settings.model_name)


def run_demo(settings: Settings, *, images_per_class: int = 120, timeout: float = 1500) -> int:
    import httpx

    from infra.cli import print_urls
    from infra.ingest import ingest_folder
    from infra.release import read_pointer
    from infra.stack import stack_settings, up
    from infra.storage import ObjectStore
    from tumor_model.synthetic import synthetic_slice, write_synthetic_dataset

    started = time.monotonic()
    print("1/5 starting the local stack", flush=True)
    urls = up(settings)
    local = stack_settings(settings)
    store = ObjectStore.from_settings(local)

    sample = settings.home_dir / "sample" / f"synthetic-{images_per_class}"
    if not sample.exists():
        print(f"2/5 writing {images_per_class} synthetic MRI slices per class to {sample}", flush=True)
        staging = sample.with_name(sample.name + ".partial")
        write_synthetic_dataset(staging, images_per_class=images_per_class)
        staging.rename(sample)
    else:
        print(f"2/5 using the synthetic sample in {sample}", flush=True)
    batch, count = ingest_folder(store, sample, batch=f"sample-{time.strftime('%Y%m%d-%H%M%S')}")
    print(f"    ingested {count} images as batch {batch}; the batch sensor picks it up", flush=True)

    print("3/5 waiting for Dagster (ingest_job, then retrain_job)", flush=True)
    deadline = started + timeout
    wait_for_run(urls["dagster"], job="ingest_job", tags={"dagster/partition": batch}, deadline=deadline)
    wait_for_run(urls["dagster"], job="retrain_job", tags={"tumorops/batch": batch}, deadline=deadline)
    pointer = read_pointer(store, local.model_name)
    candidate = _candidate_verdict(local)
    if candidate:
        print(
            f"    candidate version {candidate['version']}: test accuracy {candidate['test_accuracy']}, "
            f"gates {candidate['gates']} ({candidate['summary']}); approval {candidate['approval']}",
            flush=True,
        )
        if candidate["approval"].startswith("pending"):
            print(f"    approve it with: tumorops approve {candidate['version']} --by NAME --reason TEXT", flush=True)
        elif candidate["gates"] == "FAILED" and pointer is not None:
            print(f"    the champion, version {pointer['version']}, keeps serving", flush=True)
        elif candidate["gates"] == "FAILED":
            pointer = _override_for_demo(local, store, candidate["version"], urls["dagster"], deadline)
    if pointer is None:
        raise DemoError(
            "the pipeline ran but nothing was promoted (see the promotion_gate asset in Dagster and "
            "`tumorops models list`)"
        )

    print(f"4/5 waiting for BentoML to serve version {pointer['version']}", flush=True)
    probe = settings.home_dir / "sample" / "probe-pituitary.png"
    from PIL import Image

    Image.fromarray(synthetic_slice(label="pituitary", index=100_000, size=256)).save(probe)
    result = None
    token = settings.serving_token.get_secret_value() if settings.serving_token else None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    while time.monotonic() < deadline:
        with open(probe, "rb") as handle:
            response = httpx.post(
                f"{urls['bentoml']}/classify",
                files={"image": (probe.name, handle, "image/png")},
                headers=headers,
                timeout=60,
            )
        if response.status_code == 200 and response.json()["model_version"] == pointer["version"]:
            result = response.json()
            break
        time.sleep(3)
    if result is None:
        raise DemoError(f"BentoML did not serve version {pointer['version']} in time; see {settings.home_dir}/logs")

    print(f"5/5 classified {probe} (a pituitary slice the model never saw):")
    print(json.dumps(result, indent=2))
    auth = ' -H "Authorization: Bearer $TUMOROPS_SERVING_TOKEN"' if token else ""
    print(f"\ntry it:  curl{auth} -F image=@{probe} {urls['bentoml']}/classify")
    print(f"         curl{auth} -F image=@{probe} {urls['bentoml']}/explain -o gradcam.png")
    print_urls(urls)
    print(f"\ndemo finished in {time.monotonic() - started:.0f}s; `make down` (or `tumorops down`) stops the stack")
    return 0
