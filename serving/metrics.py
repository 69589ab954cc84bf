"""Prometheus metrics of the service, exported on BentoML's `/metrics` beside its own request metrics.

Counters live in `prometheus_client`'s multiprocess files, which BentoML sets up before the workers import this
module; the serving version is added to the scrape text by the service's `__metrics__` hook instead of a gauge,
because a multiprocess gauge keeps every label set it ever had.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

PREDICTIONS = Counter(
    "tumorops_predictions", "Images classified, by predicted class and model version", ["label", "model_version"]
)
REFERRALS = Counter(
    "tumorops_referrals", "Predictions flagged refer_to_radiologist (confidence under the threshold)", ["model_version"]
)
REJECTED_UPLOADS = Counter("tumorops_rejected_uploads", "Uploads refused, by HTTP status", ["status"])
RELEASES_LOADED = Counter("tumorops_releases_loaded", "Releases loaded and swapped in", ["model_version"])
RELEASES_REFUSED = Counter("tumorops_releases_refused", "Releases refused (verification or loading failed)")
INFERENCE_SECONDS = Histogram(
    "tumorops_inference_seconds",
    "Model time per batch",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
BATCH_SIZE = Histogram("tumorops_batch_images", "Images per model batch", buckets=(1, 2, 4, 8, 16, 32, 64))


def model_info_lines(*, version: str | None, runtime: str | None) -> str:
    """Scrape text naming the served version (1) or saying nothing is loaded (0)."""
    lines = [
        "# HELP tumorops_serving_model_info The model version and runtime this worker serves",
        "# TYPE tumorops_serving_model_info gauge",
    ]
    if version is None:
        lines.append('tumorops_serving_model_info{model_version="none",runtime="none"} 0')
    else:
        lines.append(f'tumorops_serving_model_info{{model_version="{version}",runtime="{runtime}"}} 1')
    return "\n".join(lines) + "\n"
