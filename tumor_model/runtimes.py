"""Inference runtimes for a trained classifier: Keras itself, and an OpenVINO export for fast CPU serving.

A release carries the Keras model and an OpenVINO IR of it. Whether a runtime may serve is decided at release time
by `parity_report`, on the test split: the fp32 export must reproduce the Keras model's top-1 class on every image
and its probabilities within `FP32_MAX_PROBABILITY_DIFF`; a reduced-precision one must agree on the top-1 class for
at least `REDUCED_MIN_TOP1_AGREEMENT` of the images and lose at most `REDUCED_MAX_ACCURACY_DROP` of accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

FP32_MAX_PROBABILITY_DIFF = 1e-4
REDUCED_MIN_TOP1_AGREEMENT = 0.995
REDUCED_MAX_ACCURACY_DROP = 0.005

OPENVINO_DIR = "openvino"
OPENVINO_XML = f"{OPENVINO_DIR}/model.xml"
OPENVINO_BIN = f"{OPENVINO_DIR}/model.bin"

# Runtime names as configured and as recorded in model.json, fastest first.
KERAS = "keras"
OPENVINO_FP32 = "openvino-fp32"
OPENVINO_BF16 = "openvino-bf16"
RUNTIMES = (OPENVINO_BF16, OPENVINO_FP32, KERAS)
_OPENVINO_PRECISIONS = {OPENVINO_FP32: "f32", OPENVINO_BF16: "bf16"}


class Predictor(Protocol):
    """What serving needs from a runtime: a batch of preprocessed images in, class probabilities out."""

    name: str

    def predict(self, images: np.ndarray) -> np.ndarray: ...


class KerasPredictor:
    """The Keras model itself (the reference every export is compared with)."""

    name = KERAS

    def __init__(self, model: Any) -> None:
        self.model = model

    def predict(self, images: np.ndarray) -> np.ndarray:
        # A direct call avoids `predict`'s per-call dataset set-up, which dominates small serving batches.
        outputs = self.model(images, training=False)
        return np.asarray(outputs.numpy() if hasattr(outputs, "numpy") else outputs, dtype=np.float32)


class OpenVinoPredictor:
    """An OpenVINO IR compiled for the CPU at a given inference precision.

    Args:
        xml_path: the IR's `.xml` file (its `.bin` sits beside it).
        runtime: `openvino-fp32` or `openvino-bf16`.
        threads: CPU threads for inference (None: OpenVINO's default, every core).
    """

    def __init__(self, xml_path: Path, *, runtime: str = OPENVINO_FP32, threads: int | None = None) -> None:
        import openvino as ov

        if runtime not in _OPENVINO_PRECISIONS:
            raise ValueError(f"unknown OpenVINO runtime {runtime!r}; known: {', '.join(_OPENVINO_PRECISIONS)}")
        self.name = runtime
        core = ov.Core()
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": _OPENVINO_PRECISIONS[runtime],
            # Serving batches arrive one by one from the adaptive batcher: latency mode runs each on every core.
            "PERFORMANCE_HINT": "LATENCY",
            # Unpinned threads: in a service, request handling shares the cores, and a pinned OpenVINO thread
            # that gets preempted stalls the whole parallel step (measured 3.5 -> 4.1 images/s, B3 at 300 px).
            "ENABLE_CPU_PINNING": False,
        }
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self._compiled = core.compile_model(core.read_model(str(xml_path)), "CPU", config)
        # What the CPU plugin actually runs: a bf16 hint on a CPU without bf16 falls back to f32.
        self.effective_precision = self._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()

    def predict(self, images: np.ndarray) -> np.ndarray:
        # A fresh request per call: the service may run several batches at once from worker threads.
        request = self._compiled.create_infer_request()
        result = request.infer([np.ascontiguousarray(images, dtype=np.float32)])
        return np.asarray(result[self._compiled.output(0)], dtype=np.float32)


def cpu_supports(runtime: str) -> bool:
    """Whether this machine's CPU runs `runtime` natively (bf16 needs AVX-512 BF16 or AMX)."""
    if runtime == KERAS:
        return True
    import openvino as ov

    capabilities = set(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    return runtime == OPENVINO_FP32 or (runtime == OPENVINO_BF16 and "BF16" in capabilities)


def export_openvino(model: Any, directory: Path) -> Path:
    """Write the OpenVINO IR of a Keras model (`model.xml` and `model.bin`) into `directory`; return the xml.

    Args:
        model: a Keras classifier (TensorFlow backend).
        directory: an empty or missing folder.
    """
    directory.mkdir(parents=True, exist_ok=True)
    xml = directory / "model.xml"
    model.export(str(xml), format="openvino", verbose=False)
    return xml


@dataclass(frozen=True)
class ParityReport:
    """How an export's answers compare with the Keras model's on the same images."""

    runtime: str
    effective_precision: str
    images: int
    top1_agreement: float
    max_probability_diff: float
    reference_accuracy: float
    accuracy: float
    passed: bool
    reason: str

    @property
    def accuracy_drop(self) -> float:
        return self.reference_accuracy - self.accuracy

    def to_dict(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "effective_precision": self.effective_precision,
            "images": self.images,
            "top1_agreement": round(self.top1_agreement, 6),
            "max_probability_diff": float(f"{self.max_probability_diff:.3g}"),
            "reference_accuracy": round(self.reference_accuracy, 6),
            "accuracy": round(self.accuracy, 6),
            "accuracy_drop": round(self.accuracy_drop, 6),
            "passed": self.passed,
            "reason": self.reason,
        }


def parity_report(
    *,
    runtime: str,
    effective_precision: str,
    reference: np.ndarray,
    candidate: np.ndarray,
    y_true: np.ndarray,
) -> ParityReport:
    """Judge an export against the Keras model by the release rules in this module's docstring.

    Args:
        runtime: the export's runtime name.
        effective_precision: the precision the export actually ran at (`f32` when a CPU lacks bf16).
        reference: Keras probabilities, (images, classes).
        candidate: the export's probabilities on the same images in the same order.
        y_true: class indices of those images.
    """
    if reference.shape != candidate.shape or len(reference) == 0 or len(y_true) != len(reference):
        raise ValueError(f"cannot compare outputs of shapes {reference.shape} and {candidate.shape}")
    reference_top1 = reference.argmax(axis=1)
    candidate_top1 = candidate.argmax(axis=1)
    agreement = float(np.mean(reference_top1 == candidate_top1))
    max_diff = float(np.max(np.abs(reference - candidate)))
    reference_accuracy = float(np.mean(reference_top1 == y_true))
    accuracy = float(np.mean(candidate_top1 == y_true))
    reduced = effective_precision != "f32"
    if reduced:
        # The tolerance keeps a drop of exactly the limit (e.g. 2 of 400 images) from failing on float rounding.
        passed = (
            agreement >= REDUCED_MIN_TOP1_AGREEMENT - 1e-12
            and reference_accuracy - accuracy <= REDUCED_MAX_ACCURACY_DROP + 1e-12
        )
        rule = (
            f"reduced precision: top-1 agreement >= {REDUCED_MIN_TOP1_AGREEMENT:.1%} and accuracy drop <= "
            f"{REDUCED_MAX_ACCURACY_DROP * 100:.1f} points"
        )
    else:
        passed = agreement == 1.0 and max_diff <= FP32_MAX_PROBABILITY_DIFF
        rule = f"fp32: identical top-1 and probabilities within {FP32_MAX_PROBABILITY_DIFF:g}"
    verdict = "passed" if passed else "failed"
    ran_at = (
        f"ran at {effective_precision}; "
        if _OPENVINO_PRECISIONS.get(runtime, effective_precision) != effective_precision
        else ""
    )
    reason = (
        f"{ran_at}{verdict} {rule} (top-1 agreement {agreement:.2%}, max probability difference {max_diff:.2g}, "
        f"accuracy {accuracy:.4f} vs {reference_accuracy:.4f})"
    )
    return ParityReport(
        runtime=runtime,
        effective_precision=effective_precision,
        images=len(reference),
        top1_agreement=agreement,
        max_probability_diff=max_diff,
        reference_accuracy=reference_accuracy,
        accuracy=accuracy,
        passed=passed,
        reason=reason,
    )


def choose_runtime(*, requested: str, parity: dict[str, dict[str, Any]], supported: dict[str, bool]) -> tuple[str, str]:
    """The runtime to serve a release with, and why.

    Args:
        requested: `auto` (the fastest that passed parity and this CPU runs natively) or a runtime name.
        parity: model.json's `runtimes` entries: runtime name -> `ParityReport.to_dict()`.
        supported: runtime name -> whether this CPU runs it natively (`cpu_supports`).
    """
    if requested != "auto" and requested not in RUNTIMES:
        raise ValueError(f"unknown serving runtime {requested!r}; known: auto, {', '.join(RUNTIMES)}")

    def allowed(runtime: str) -> str | None:
        """None when `runtime` may serve, else why not."""
        if runtime == KERAS:
            return None
        if runtime not in parity:
            return "the release carries no such export"
        if not parity[runtime].get("passed"):
            return f"it failed parity at release time: {parity[runtime].get('reason')}"
        if not supported.get(runtime, False):
            return "this CPU does not run it natively"
        return None

    if requested != "auto":
        refusal = allowed(requested)
        if refusal is None:
            return requested, "configured"
        fallback, why = choose_runtime(requested="auto", parity=parity, supported=supported)
        return fallback, f"{requested} refused ({refusal}); {why}"
    for runtime in RUNTIMES[:-1]:
        if allowed(runtime) is None:
            return runtime, "fastest runtime that passed parity and runs natively here"
    return KERAS, "no export passed parity and runs natively here"
