"""Serving rules without servers: runtime parity and choice, upload checks, the request guard."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from serving.guard import RequestGuard
from serving.uploads import ImageUpload, UploadRejected, checked_upload
from tests.images import dicom_bytes, jpeg_bytes, png_bytes
from tumor_model.runtimes import (
    KERAS,
    ONNXRUNTIME_FP32,
    OPENVINO_BF16,
    OPENVINO_FP32,
    choose_runtime,
    eligible_runtimes,
    parity_report,
)


def _probabilities(rows: int, seed: int = 0) -> np.ndarray:
    logits = np.random.default_rng(seed).normal(size=(rows, 4))
    return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)


def test_fp32_parity_needs_identical_top1_and_close_probabilities() -> None:
    reference = _probabilities(200)
    labels = reference.argmax(axis=1)
    close = parity_report(
        runtime=OPENVINO_FP32, effective_precision="f32", reference=reference, candidate=reference + 5e-5, y_true=labels
    )
    assert close.passed and close.top1_agreement == 1.0
    drifted = parity_report(
        runtime=OPENVINO_FP32, effective_precision="f32", reference=reference, candidate=reference + 2e-4, y_true=labels
    )
    assert not drifted.passed and "fp32" in drifted.reason
    flipped = reference.copy()
    flipped[0] = flipped[0][::-1]  # one different top-1 class among 200 fails fp32
    one_flip = parity_report(
        runtime=OPENVINO_FP32, effective_precision="f32", reference=reference, candidate=flipped, y_true=labels
    )
    assert not one_flip.passed and one_flip.top1_agreement == pytest.approx(0.995)


def test_reduced_precision_allows_half_a_percent_of_top1_changes_and_accuracy() -> None:
    reference = _probabilities(400, seed=1)
    labels = reference.argmax(axis=1)
    candidate = reference.copy()
    candidate[:2] = candidate[:2, ::-1]  # 2 of 400 = 0.5% flipped, accuracy -0.5 points: allowed
    report = parity_report(
        runtime=OPENVINO_BF16, effective_precision="bf16", reference=reference, candidate=candidate, y_true=labels
    )
    assert report.passed, report.reason
    candidate[:3] = reference[:3, ::-1]  # 3 of 400: over both limits
    report = parity_report(
        runtime=OPENVINO_BF16, effective_precision="bf16", reference=reference, candidate=candidate, y_true=labels
    )
    assert not report.passed and report.accuracy_drop == pytest.approx(0.0075)


def test_parity_refuses_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="cannot compare"):
        parity_report(
            runtime=OPENVINO_FP32,
            effective_precision="f32",
            reference=_probabilities(3),
            candidate=_probabilities(4),
            y_true=np.zeros(3, int),
        )


PASSED = {"passed": True, "reason": "ok"}
FAILED = {"passed": False, "reason": "top-1 agreement 97%"}


@pytest.mark.parametrize(
    ("requested", "parity", "supported", "expected"),
    [
        (
            "auto",
            {OPENVINO_FP32: PASSED, OPENVINO_BF16: PASSED},
            {OPENVINO_FP32: True, OPENVINO_BF16: True},
            OPENVINO_BF16,
        ),
        (
            "auto",
            {OPENVINO_FP32: PASSED, OPENVINO_BF16: PASSED},
            {OPENVINO_FP32: True, OPENVINO_BF16: False},
            OPENVINO_FP32,
        ),
        (
            "auto",
            {OPENVINO_FP32: PASSED, OPENVINO_BF16: FAILED},
            {OPENVINO_FP32: True, OPENVINO_BF16: True},
            OPENVINO_FP32,
        ),
        ("auto", {OPENVINO_FP32: FAILED, OPENVINO_BF16: FAILED}, {OPENVINO_FP32: True, OPENVINO_BF16: True}, KERAS),
        ("auto", {}, {OPENVINO_FP32: True}, KERAS),
        (KERAS, {OPENVINO_FP32: PASSED}, {OPENVINO_FP32: True}, KERAS),
        (OPENVINO_BF16, {OPENVINO_FP32: PASSED, OPENVINO_BF16: FAILED}, {OPENVINO_FP32: True}, OPENVINO_FP32),
    ],
)
def test_runtime_choice(requested: str, parity: dict, supported: dict, expected: str) -> None:
    chosen, reason = choose_runtime(requested=requested, parity=parity, supported=supported)
    assert chosen == expected, reason
    if requested not in ("auto", expected):
        assert "refused" in reason


def test_auto_takes_the_fastest_runtime_measured_here() -> None:
    parity = {OPENVINO_FP32: PASSED, ONNXRUNTIME_FP32: PASSED, OPENVINO_BF16: FAILED}
    supported = {OPENVINO_FP32: True, ONNXRUNTIME_FP32: True, OPENVINO_BF16: True}
    assert eligible_runtimes(parity=parity, supported=supported) == [ONNXRUNTIME_FP32, OPENVINO_FP32, KERAS]
    chosen, reason = choose_runtime(
        requested="auto", parity=parity, supported=supported, speeds={ONNXRUNTIME_FP32: 4.0, OPENVINO_FP32: 6.5}
    )
    assert chosen == OPENVINO_FP32 and "openvino-fp32 6.5 images/s, onnxruntime-fp32 4.0 images/s" in reason
    chosen, _ = choose_runtime(
        requested="auto", parity=parity, supported=supported, speeds={ONNXRUNTIME_FP32: 8.0, OPENVINO_FP32: 6.5}
    )
    assert chosen == ONNXRUNTIME_FP32
    # A speed measured for a runtime that may not serve (failed parity) never wins.
    chosen, _ = choose_runtime(
        requested="auto",
        parity=parity,
        supported=supported,
        speeds={ONNXRUNTIME_FP32: 8.0, OPENVINO_FP32: 6.5, OPENVINO_BF16: 50.0},
    )
    assert chosen == ONNXRUNTIME_FP32
    # A configured runtime is taken as configured, whatever the speeds.
    chosen, reason = choose_runtime(
        requested=OPENVINO_FP32, parity=parity, supported=supported, speeds={ONNXRUNTIME_FP32: 8.0}
    )
    assert (chosen, reason) == (OPENVINO_FP32, "configured")


def test_unknown_runtime_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown serving runtime"):
        choose_runtime(requested="tensorrt", parity={}, supported={})


def _upload(data: bytes, media_type: str) -> ImageUpload:
    return ImageUpload.of(data=data, filename="slice", media_type=media_type)


@pytest.mark.parametrize(
    ("data", "media_type"),
    [
        (jpeg_bytes(), "image/jpeg"),
        (png_bytes(np.zeros((8, 8), np.uint8)), "image/png; charset=binary"),
        (dicom_bytes(np.ones((8, 8))), "application/dicom"),
        (jpeg_bytes(), "application/octet-stream"),
        (png_bytes(np.zeros((8, 8), np.uint8)), "image/jpeg"),  # mislabelled but a PNG: its bytes decide
    ],
)
def test_accepted_uploads(data: bytes, media_type: str) -> None:
    assert checked_upload(_upload(data, media_type), max_bytes=10_000_000) == data


@pytest.mark.parametrize(
    ("data", "media_type", "status", "message"),
    [
        (b"GIF89a....", "image/gif", 415, "not accepted"),
        (b"{}", "application/json", 415, "not accepted"),
        (b"", "image/jpeg", 400, "empty"),
        (b"hello", "image/png", 400, "not a JPEG, PNG or DICOM"),
        (jpeg_bytes(), "image/jpeg", 413, "over the limit"),
    ],
)
def test_refused_uploads(data: bytes, media_type: str, status: int, message: str) -> None:
    with pytest.raises(UploadRejected, match=message) as raised:
        checked_upload(_upload(data, media_type), max_bytes=200)
    assert raised.value.status == status


def _call(guard: RequestGuard, *, path: str, headers: dict[str, str], body: bytes = b"") -> tuple[int, Any]:
    """Run one request through the guard; return the status and whether the wrapped app saw the full body."""
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        message = await receive()
        seen["body"] = message["body"]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    chunks = [body[i : i + 1000] for i in range(0, len(body), 1000)] or [b""]
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    guard.app = app
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    asyncio.run(guard(scope, receive, send))
    return sent[0]["status"], seen.get("body")


def _guard(token: str | None = "s3cret") -> RequestGuard:
    return RequestGuard(None, token=token, max_body_bytes=5000, upload_paths=frozenset({"/classify"}))  # type: ignore[arg-type]


def test_guard_requires_the_bearer_token_when_one_is_set() -> None:
    multipart = {"content-type": "multipart/form-data; boundary=x"}
    assert _call(_guard(), path="/classify", headers=multipart)[0] == 401
    assert _call(_guard(), path="/classify", headers={**multipart, "authorization": "Bearer wrong"})[0] == 401
    status, body = _call(
        _guard(), path="/classify", headers={**multipart, "authorization": "Bearer s3cret"}, body=b"abc"
    )
    assert status == 200 and body == b"abc"
    assert _call(_guard(), path="/readyz", headers={})[0] == 200  # probes need no token


def test_guard_without_token_leaves_the_api_open_and_admin_closed() -> None:
    assert _call(_guard(None), path="/classify", headers={"content-type": "multipart/form-data; boundary=x"})[0] == 200
    assert _call(_guard(None), path="/admin/reload", headers={})[0] == 403


def test_guard_refuses_large_bodies_and_non_multipart_uploads() -> None:
    multipart = {"content-type": "multipart/form-data; boundary=x", "authorization": "Bearer s3cret"}
    assert _call(_guard(), path="/classify", headers={**multipart, "content-length": "9000"})[0] == 413
    # No Content-Length (chunked): counted while streaming.
    assert _call(_guard(), path="/classify", headers=multipart, body=b"x" * 6000)[0] == 413
    json_body = {"content-type": "application/json", "authorization": "Bearer s3cret"}
    assert _call(_guard(), path="/classify", headers=json_body, body=b"{}")[0] == 415
