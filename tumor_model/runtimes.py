"""Inference runtimes for a trained classifier: Keras itself, and exports for fast CPU serving.

A release carries the Keras model, an OpenVINO IR and an ONNX graph of it. Whether a runtime may serve is decided at
release time by `parity_report`, on the test split: an fp32 export must reproduce the Keras model's top-1 class on
every image and its probabilities within `FP32_MAX_PROBABILITY_DIFF`; a reduced-precision one must agree on the
top-1 class for at least `REDUCED_MIN_TOP1_AGREEMENT` of the images and lose at most `REDUCED_MAX_ACCURACY_DROP` of
accuracy. Which of those that passed is fastest depends on the CPU (on a 2-core AMD EPYC, ONNX Runtime ran
EfficientNetB3 about 1.5x as fast as OpenVINO fp32), so the service times them where it runs and hands the figures
to `choose_runtime`.

Exports split a batch into parts of at most `LANE_PART_IMAGES` images that `lanes` single-threaded workers (one per
core) run in parallel: on a small CPU that beats one batch spread over every core, whose threads wait for each other
at every layer.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
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
ONNX_FILE = "onnx/model.onnx"

# Runtime names as configured and as recorded in model.json, in order of preference when no speed is measured.
KERAS = "keras"
OPENVINO_FP32 = "openvino-fp32"
OPENVINO_BF16 = "openvino-bf16"
ONNXRUNTIME_FP32 = "onnxruntime-fp32"
RUNTIMES = (OPENVINO_BF16, ONNXRUNTIME_FP32, OPENVINO_FP32, KERAS)
EXPORTED_RUNTIMES = (OPENVINO_FP32, OPENVINO_BF16, ONNXRUNTIME_FP32)
_OPENVINO_PRECISIONS = {OPENVINO_FP32: "f32", OPENVINO_BF16: "bf16"}


def available_cores() -> int:
    """CPU cores this process may run on (a container's CPU set, not the host's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# Lanes take parts of at most this many images, as they free up: a lane slowed by other work on its core takes
# fewer parts instead of holding up the batch. EfficientNetB3 ran as fast at 1-2 images per call as at 8.
LANE_PART_IMAGES = 2


def _lane_parts(images: np.ndarray, lanes: int) -> list[np.ndarray]:
    parts = max(min(lanes, len(images)), -(-len(images) // LANE_PART_IMAGES))
    return [np.ascontiguousarray(part, dtype=np.float32) for part in np.array_split(images, parts)]


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


class _LanePredictor:
    """Runs a batch's parts (`_lane_parts`) on `self._lanes`, a pool of `self.lanes` workers, through `_run`."""

    lanes: int
    _lanes: ThreadPoolExecutor

    def _run(self, part: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict(self, images: np.ndarray) -> np.ndarray:
        parts = _lane_parts(images, self.lanes)
        outputs = [self._run(parts[0])] if len(parts) == 1 else list(self._lanes.map(self._run, parts))
        return np.asarray(np.concatenate(outputs), dtype=np.float32)


class OpenVinoPredictor(_LanePredictor):
    """An OpenVINO IR compiled for the CPU at a given inference precision.

    Args:
        xml_path: the IR's `.xml` file (its `.bin` sits beside it).
        runtime: `openvino-fp32` or `openvino-bf16`.
        lanes: workers that run a batch's parts in parallel, one OpenVINO stream each (None: one per core; 1: one
            worker using every core).
    """

    def __init__(self, xml_path: Path, *, runtime: str = OPENVINO_FP32, lanes: int | None = None) -> None:
        import openvino as ov

        if runtime not in _OPENVINO_PRECISIONS:
            raise ValueError(f"unknown OpenVINO runtime {runtime!r}; known: {', '.join(_OPENVINO_PRECISIONS)}")
        self.name = runtime
        cores = available_cores()
        self.lanes = max(1, lanes or cores)
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": _OPENVINO_PRECISIONS[runtime],
            # Unpinned threads: in a service, request handling shares the cores, and a pinned OpenVINO thread
            # that gets preempted stalls the whole parallel step (measured 3.5 -> 4.1 images/s, B3 at 300 px).
            "ENABLE_CPU_PINNING": False,
        }
        if self.lanes == 1:
            config["PERFORMANCE_HINT"] = "LATENCY"
        else:
            config |= {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": self.lanes, "INFERENCE_NUM_THREADS": cores}
        core = ov.Core()
        self._compiled = core.compile_model(core.read_model(str(xml_path)), "CPU", config)
        # What the CPU plugin actually runs: a bf16 hint on a CPU without bf16 falls back to f32.
        self.effective_precision = self._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self._requests = threading.local()
        self._lanes = ThreadPoolExecutor(max_workers=self.lanes, thread_name_prefix="openvino-lane")

    def _run(self, part: np.ndarray) -> np.ndarray:
        # One infer request per lane thread; `infer` releases the GIL, so lanes run in parallel. (An
        # AsyncInferQueue with a Python callback deadlocked now and then: the callback needs the GIL.)
        request = getattr(self._requests, "request", None)
        if request is None:
            request = self._requests.request = self._compiled.create_infer_request()
        request.infer([part])
        return np.array(request.get_output_tensor(0).data, dtype=np.float32)


class OnnxRuntimePredictor(_LanePredictor):
    """An ONNX graph run by ONNX Runtime on the CPU, in fp32.

    Args:
        onnx_path: the `.onnx` file.
        lanes: single-threaded workers that run a batch's parts in parallel (None: one per core; 1: one worker
            using every core).
    """

    name = ONNXRUNTIME_FP32
    effective_precision = "f32"

    def __init__(self, onnx_path: Path, *, lanes: int | None = None) -> None:
        import onnxruntime as ort

        cores = available_cores()
        self.lanes = max(1, lanes or cores)
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, cores // self.lanes)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: its graph optimiser reports every folded constant
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning threads would take the cores from request decoding between batches.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self._session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        except Exception as error:  # ONNX Runtime's own errors derive from Exception alone
            raise RuntimeError(f"ONNX Runtime cannot load {onnx_path}: {error}") from error
        self._input = self._session.get_inputs()[0].name
        # ONNX Runtime releases the GIL while it runs, so lanes are plain threads.
        self._lanes = ThreadPoolExecutor(max_workers=self.lanes, thread_name_prefix="onnxruntime-lane")

    def _run(self, chunk: np.ndarray) -> np.ndarray:
        try:
            return self._session.run(None, {self._input: chunk})[0]
        except Exception as error:  # ONNX Runtime's own errors derive from Exception alone
            raise RuntimeError(f"ONNX Runtime failed on a batch of {len(chunk)}: {error}") from error


def load_predictor(runtime: str, directory: Path, *, keras_model: Any, lanes: int | None = None) -> Predictor:
    """The predictor of `runtime` for a release unpacked in `directory`.

    Args:
        runtime: a name from `RUNTIMES`.
        directory: the release folder (exports sit at `OPENVINO_XML` and `ONNX_FILE` in it).
        keras_model: the release's Keras model (the `keras` runtime).
        lanes: parallel workers per batch for the exports (None: one per core).
    """
    if runtime == KERAS:
        return KerasPredictor(keras_model)
    if runtime == ONNXRUNTIME_FP32:
        return OnnxRuntimePredictor(directory / ONNX_FILE, lanes=lanes)
    return OpenVinoPredictor(directory / OPENVINO_XML, runtime=runtime, lanes=lanes)


def cpu_supports(runtime: str) -> bool:
    """Whether this machine's CPU runs `runtime` natively (bf16 needs AVX-512 BF16 or AMX)."""
    if runtime in (KERAS, ONNXRUNTIME_FP32, OPENVINO_FP32):
        return True
    import openvino as ov

    capabilities = set(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    return runtime == OPENVINO_BF16 and "BF16" in capabilities


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


def export_onnx(model: Any, path: Path, *, opset: int = 17) -> Path:
    """Write the ONNX graph of a Keras classifier (TensorFlow backend) to `path`, with one input, `image`.

    Keras' own ONNX export leaves tensors that layers compute once (the backbone's Normalization mean and
    variance) as extra graph inputs; they are written into the graph as constants here, so the file runs alone.

    Args:
        model: a Keras classifier with a (batch, side, side, 3) input.
        path: the `.onnx` file to write.
        opset: ONNX opset.
    """
    import onnx
    import tensorflow as tf
    import tf2onnx
    from keras.src.export.tf2onnx_lib import patch_tf2onnx  # tf2onnx needs Keras' numpy 2 fixes

    from tumor_model.scoring import model_input_size

    side = model_input_size(model)
    spec = [tf.TensorSpec([None, side, side, 3], tf.float32, name="image")]
    function = tf.function(lambda image: model(image, training=False), input_signature=spec)
    concrete = function.get_concrete_function()
    constants = {
        placeholder.name: value.numpy()
        for value, placeholder in zip(concrete.captured_inputs, concrete.graph.internal_captures, strict=True)
        if placeholder.dtype != tf.resource
    }
    patch_tf2onnx()
    graph, _ = tf2onnx.convert.from_function(function, input_signature=spec, opset=opset)
    for graph_input in list(graph.graph.input):
        if graph_input.name in constants:
            graph.graph.initializer.append(onnx.numpy_helper.from_array(constants[graph_input.name], graph_input.name))
            graph.graph.input.remove(graph_input)
    if [i.name for i in graph.graph.input] != ["image"]:
        raise RuntimeError(f"ONNX export has inputs {[i.name for i in graph.graph.input]}, expected only 'image'")
    onnx.checker.check_model(graph)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(graph, str(path))
    return path


def write_exports(model: Any, directory: Path) -> dict[str, Path]:
    """Every export a release carries, written under `directory`: release-relative name -> local file.

    Args:
        model: the Keras classifier.
        directory: an empty or missing folder.
    """
    xml = export_openvino(model, directory / OPENVINO_DIR)
    onnx_file = export_onnx(model, directory / ONNX_FILE)
    return {OPENVINO_XML: xml, OPENVINO_BIN: xml.with_suffix(".bin"), ONNX_FILE: onnx_file}


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


def choose_runtime(
    *,
    requested: str,
    parity: dict[str, dict[str, Any]],
    supported: dict[str, bool],
    speeds: Mapping[str, float] | None = None,
) -> tuple[str, str]:
    """The runtime to serve a release with, and why.

    Args:
        requested: `auto` (the fastest that passed parity and this CPU runs natively) or a runtime name.
        parity: model.json's `runtimes` entries: runtime name -> `ParityReport.to_dict()`.
        supported: runtime name -> whether this CPU runs it natively (`cpu_supports`).
        speeds: images/s measured on this machine for eligible runtimes; without them, `auto` goes by the order
            of `RUNTIMES`.
    """
    if requested != "auto" and requested not in RUNTIMES:
        raise ValueError(f"unknown serving runtime {requested!r}; known: auto, {', '.join(RUNTIMES)}")

    if requested != "auto":
        refusal = _refusal(requested, parity, supported)
        if refusal is None:
            return requested, "configured"
        fallback, why = choose_runtime(requested="auto", parity=parity, supported=supported, speeds=speeds)
        return fallback, f"{requested} refused ({refusal}); {why}"
    eligible = eligible_runtimes(parity=parity, supported=supported)
    measured = [r for r in eligible if speeds and r in speeds]
    if len(measured) > 1:
        ranking = sorted(measured, key=lambda r: speeds[r], reverse=True)  # type: ignore[index]
        figures = ", ".join(f"{r} {speeds[r]:.1f} images/s" for r in ranking)  # type: ignore[index]
        return ranking[0], f"fastest here of the runtimes that passed parity ({figures})"
    if eligible[0] != KERAS:
        return eligible[0], "fastest runtime that passed parity and runs natively here"
    return KERAS, "no export passed parity and runs natively here"


def _refusal(runtime: str, parity: dict[str, dict[str, Any]], supported: dict[str, bool]) -> str | None:
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


def eligible_runtimes(*, parity: dict[str, dict[str, Any]], supported: dict[str, bool]) -> list[str]:
    """Runtimes that may serve a release here, in the order of `RUNTIMES` (Keras always, last)."""
    return [r for r in RUNTIMES if _refusal(r, parity, supported) is None]


def images_per_second(predict: Callable[[np.ndarray], np.ndarray], images: np.ndarray, *, repeats: int = 2) -> float:
    """Throughput of `predict` on `images`, after one warm-up call."""
    predict(images)
    started = time.perf_counter()
    for _ in range(repeats):
        predict(images)
    elapsed = time.perf_counter() - started
    return len(images) * repeats / elapsed if elapsed > 0 else float("inf")


def time_exports(
    eligible: list[str],
    directory: Path,
    *,
    image_size: int,
    batch: int,
    lanes: int | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, tuple[Predictor, float]]:
    """Load every eligible export of a release and time it here on one batch: name -> (predictor, images/s).

    Nothing is timed (an empty answer) when fewer than two exports are eligible: there is nothing to choose.

    Args:
        eligible: runtimes that may serve (`eligible_runtimes`); Keras is never timed.
        directory: the release folder.
        image_size: the model's input side.
        batch: images per timed call.
        lanes: parallel workers per batch (None: one per core).
        log: where an export that will not load here is reported (it is skipped).
    """
    exports = [name for name in eligible if name != KERAS]
    if len(exports) < 2:
        return {}
    probe = np.random.default_rng(0).uniform(0, 255, (batch, image_size, image_size, 3)).astype(np.float32)
    timed: dict[str, tuple[Predictor, float]] = {}
    for name in exports:
        try:
            predictor = load_predictor(name, directory, keras_model=None, lanes=lanes)
            timed[name] = (predictor, images_per_second(predictor.predict, probe))
        except (ImportError, OSError, RuntimeError, ValueError) as error:
            log(f"runtime {name} passed parity but does not run here: {error}")
    return timed
