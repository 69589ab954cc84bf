"""Serving speed, one run, one model (EfficientNetB3 at 300x300, random weights): three ways side by side.

Run on demand: `make bench PYTEST_ARGS="-k serving"` or `python -m tests.benchmarks.bench_serving`.

(a) in-process: the serving runtime (`TUMOROPS_SERVING_RUNTIME`, default: what the service would pick here) on
    pre-decoded images, at batch sizes 1..32; the best batch size counts.
(b) service: `bentoml serve` of `serving.service:TumorClassifier`, the release in a real SeaweedFS, 16 concurrent
    clients posting one JPEG each to `/classify` (decode, adaptive batching, HTTP included).
(c) naive: a minimal FastAPI app calling Keras `model.predict` per request (`tests/benchmarks/naive_app.py`), same
    clients and image.
Clients are `tests.loadgen` (asyncio sockets replaying one pre-encoded request), so they cost little CPU.
Targets: (b) >= 0.8 x (a); (b) >= 3 x (c) with the fp32 runtime, >= 5 x (c) with a reduced-precision runtime.
Knobs: TUMOROPS_BENCH_SECONDS (30), TUMOROPS_BENCH_CLIENTS (16), TUMOROPS_BENCH_IMAGE_SIZE (300).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

DATASET = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "sartaj-mri" / "Training"
BUCKET = "bench"
ACCESS_KEY, SECRET_KEY = "bench-access", "bench-secret-key-123"


def _request_image() -> tuple[bytes, str]:
    """A real MRI JPEG when the shared dataset is here, else a synthetic 512x512 slice."""
    real = sorted(DATASET.glob("glioma_tumor/*.jpg"))
    if real:
        return real[0].read_bytes(), real[0].name
    from tests.images import jpeg_bytes

    return jpeg_bytes("glioma", 0, size=512), "synthetic.jpg"


def _parity_images(size: int, count: int = 64) -> tuple[np.ndarray, np.ndarray]:
    from tumor_model.labels import CLASS_NAMES, canonical_label
    from tumor_model.preprocessing import preprocess_bytes

    every = sorted(DATASET.glob("*/*.jpg"))
    paths = every[:: max(1, len(every) // count)][:count]
    if not paths:
        rng = np.random.default_rng(0)
        return rng.uniform(0, 255, (count, size, size, 3)).astype(np.float32), rng.integers(0, 4, count)
    images = np.stack([preprocess_bytes(p.read_bytes(), image_size=size) for p in paths])
    return images, np.array([CLASS_NAMES.index(canonical_label(p.parent.name)) for p in paths])


def in_process(predictor: Any, size: int, *, seconds_per_batch_size: float = 8.0) -> dict[int, dict[str, float]]:
    """Images/s and per-image latency percentiles of `predictor` at each batch size."""
    rng = np.random.default_rng(1)
    figures = {}
    for batch in (1, 2, 4, 8, 16, 32):
        images = rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
        predictor.predict(images)  # warm-up
        latencies = []
        started = time.perf_counter()
        while time.perf_counter() - started < seconds_per_batch_size or len(latencies) < 3:
            t0 = time.perf_counter()
            predictor.predict(images)
            latencies.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - started
        figures[batch] = {
            "throughput": batch * len(latencies) / elapsed,
            "p50": statistics.median(latencies),
            "p99": float(np.percentile(latencies, 99)),
        }
    return figures


def measure(seconds: float | None = None, clients: int | None = None, size: int | None = None) -> dict[str, Any]:
    import keras

    from infra.runtime_release import measure_runtimes
    from infra.settings import Settings
    from infra.stack import free_port, http_ok, start_bentoml, start_process, start_seaweedfs, venv_bin, wait_healthy
    from infra.storage import ObjectStore
    from tests.loadgen import multipart_request, run_load
    from tests.serving_release import TinyRelease, publish
    from tumor_model.labels import CLASS_NAMES
    from tumor_model.model import build_classifier
    from tumor_model.runtimes import (
        OPENVINO_BIN,
        OPENVINO_XML,
        RUNTIMES,
        KerasPredictor,
        OpenVinoPredictor,
        choose_runtime,
        cpu_supports,
        export_openvino,
    )

    seconds = seconds or float(os.environ.get("TUMOROPS_BENCH_SECONDS", 30))
    clients = clients or int(os.environ.get("TUMOROPS_BENCH_CLIENTS", 16))
    size = size or int(os.environ.get("TUMOROPS_BENCH_IMAGE_SIZE", 300))
    requested = os.environ.get("TUMOROPS_SERVING_RUNTIME", "auto")
    image, image_name = _request_image()
    result: dict[str, Any] = {"seconds": seconds, "clients": clients, "size": size}
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        work = Path(tmp)
        keras.utils.set_random_seed(0)
        model = build_classifier(num_classes=len(CLASS_NAMES), image_size=size)
        model.save(work / "model.keras")
        xml = export_openvino(model, work / "openvino")
        images, labels = _parity_images(size)
        runtimes = measure_runtimes(model, xml, images, labels, log=lambda m: print(m, file=sys.stderr))
        runtime, why = choose_runtime(
            requested=requested, parity=runtimes, supported={r: cpu_supports(r) for r in RUNTIMES}
        )
        result["runtime"], result["runtime_reason"] = runtime, why
        result["parity"] = {k: v for k, v in runtimes.items() if k != "keras"}
        predictor = KerasPredictor(model) if runtime == "keras" else OpenVinoPredictor(xml, runtime=runtime)
        result["in_process"] = in_process(predictor, size)
        del predictor, model  # the service and the baseline get the machine to themselves

        s3 = start_seaweedfs(
            data_dir=work / "s3",
            log_path=work / "s3.log",
            host="127.0.0.1",
            port=free_port(),
            bucket=BUCKET,
            access_key=ACCESS_KEY,
            secret_key=SECRET_KEY,
        )
        try:
            settings = Settings(
                home=work / "home",
                s3_endpoint_url=s3.url,
                s3_bucket=BUCKET,
                aws_access_key_id=ACCESS_KEY,
                aws_secret_access_key=SECRET_KEY,  # type: ignore[arg-type]
                model_name="bench",
                _env_file=None,
            )
            files = {"model.keras": work / "model.keras", OPENVINO_XML: xml, OPENVINO_BIN: xml.with_suffix(".bin")}
            release = TinyRelease(files=files, runtimes=runtimes)
            publish(ObjectStore.from_settings(settings), release, model_name="bench", version="1", image_size=size)
            env = {**os.environ, **settings.service_env(), "TUMOROPS_SERVING_RUNTIME": runtime}
            service = start_bentoml(log_path=work / "bentoml.log", host="127.0.0.1", port=free_port(), env=env)
            try:
                deadline = time.monotonic() + 300
                while not http_ok(f"{service.url}/readyz"):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"service never ready: {(work / 'bentoml.log').read_text()[-2000:]}")
                    time.sleep(1)
                request = multipart_request(
                    f"{service.url}/classify",
                    field_name="image",
                    filename=image_name,
                    data=image,
                    media_type="image/jpeg",
                )
                run_load(service.url, request, clients=clients, seconds=5)  # warm-up
                result["service"] = run_load(service.url, request, clients=clients, seconds=seconds)
            finally:
                service.stop()
        finally:
            s3.stop()

        port = free_port()
        naive = start_process(
            name="naive",
            command=[venv_bin("uvicorn"), "tests.benchmarks.naive_app:app", "--host", "127.0.0.1", "--port", str(port)],
            env={**os.environ, "TUMOROPS_NAIVE_MODEL": str(work / "model.keras")},
            log_path=work / "naive.log",
            cwd=Path(__file__).resolve().parents[2],
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_healthy(
                name="naive",
                process=naive,
                check=lambda: http_ok(f"{url}/docs"),
                log_path=work / "naive.log",
                timeout=120,
            )
            request = multipart_request(
                f"{url}/classify", field_name="image", filename=image_name, data=image, media_type="image/jpeg"
            )
            run_load(url, request, clients=clients, seconds=5)  # warm-up: loads the model
            result["naive"] = run_load(url, request, clients=clients, seconds=seconds)
        finally:
            naive.terminate()
            naive.wait(timeout=30)
    return result


def print_figures(result: dict[str, Any]) -> tuple[float, float]:
    """Print the table and the ratios; return (service / in-process, service / naive)."""
    best_batch, best = max(result["in_process"].items(), key=lambda item: item[1]["throughput"])
    service, naive = result["service"], result["naive"]
    print(
        f"\nEfficientNetB3 {result['size']}x{result['size']}, runtime {result['runtime']} ({result['runtime_reason']})"
    )
    for name, figures in result["parity"].items():
        print(f"parity {name}: {figures.get('reason')}")
    print(f"{'':<34}{'images/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'failed':>8}")
    for batch, figures in result["in_process"].items():
        label = f"(a) in-process, batch {batch} (ms per batch)"
        print(
            f"{label:<34}{figures['throughput']:>10.1f}"
            f"{figures['p50'] * 1000:>10.0f}{figures['p99'] * 1000:>10.0f}{'':>8}"
        )
    clients = result["clients"]
    for label, load in ((f"(b) service, {clients} clients", service), (f"(c) naive FastAPI, {clients} clients", naive)):
        print(
            f"{label:<34}{load.throughput:>10.1f}{load.percentile(50) * 1000:>10.0f}"
            f"{load.percentile(99) * 1000:>10.0f}{load.failed:>8}"
        )
    versus_in_process = service.throughput / best["throughput"]
    versus_naive = service.throughput / naive.throughput if naive.throughput else float("inf")
    print(f"ratio service / in-process (batch {best_batch}): {versus_in_process:.2f} (target >= 0.8)")
    target = 3 if result["parity"].get(result["runtime"], {}).get("effective_precision", "f32") == "f32" else 5
    print(f"ratio service / naive: {versus_naive:.2f} (target >= {target} with {result['runtime']})")
    return versus_in_process, versus_naive


def test_service_throughput_against_in_process_and_naive() -> None:
    result = measure()
    _, versus_naive = print_figures(result)
    assert result["service"].failed == 0 and result["naive"].ok > 0
    assert versus_naive > 1, "the service must at least beat the naive baseline"


if __name__ == "__main__":
    print_figures(measure())
