"""The BentoML service over real HTTP (`bentoml serve`) with releases in the real S3 server.

One tiny EfficientNetB3 release (Keras + OpenVINO) is built per module and published under fresh model names.
"""

from __future__ import annotations

import io
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from infra.release import write_pointer
from infra.settings import Settings
from infra.stack import ManagedProcess, free_port, start_bentoml
from infra.storage import ObjectStore
from tests.images import dicom_bytes, jpeg_bytes, png_bytes
from tests.loadgen import multipart_request, run_load
from tests.serving_release import TinyRelease, build_tiny_release, corrupt, publish
from tumor_model.labels import CLASS_NAMES

pytestmark = pytest.mark.integration
TOKEN = "serving-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_UPLOAD_BYTES = 1_000_000


@pytest.fixture(scope="module")
def tiny_release(tmp_path_factory: pytest.TempPathFactory) -> TinyRelease:
    return build_tiny_release(tmp_path_factory.mktemp("tiny-release"))


def _serve(settings: Settings, model_name: str, home: Path, *, token: str | None = TOKEN) -> ManagedProcess:
    env = {
        **os.environ,
        **settings.service_env(),
        "TUMOROPS_HOME": str(home),
        "TUMOROPS_MODEL_NAME": model_name,
        "TUMOROPS_SERVING_POLL_SECONDS": "1",
        "TUMOROPS_SERVING_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
        "TUMOROPS_SERVING_MAX_REQUEST_BYTES": str(4 * MAX_UPLOAD_BYTES),
    }
    if token:
        env["TUMOROPS_SERVING_TOKEN"] = token
    return start_bentoml(log_path=home / "bentoml.log", host="127.0.0.1", port=free_port(), env=env)


def _wait_for_version(service: ManagedProcess, version: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        response = httpx.get(f"{service.url}/model", headers=AUTH, timeout=10)
        if response.status_code == 200 and response.json()["model_version"] == version:
            return
        assert time.monotonic() < deadline, f"version {version} never served: {service.log_path.read_text()[-3000:]}"
        time.sleep(0.5)


@pytest.fixture
def served(
    s3_settings: Settings, store: ObjectStore, tiny_release: TinyRelease, tmp_path: Path
) -> Iterator[tuple[ManagedProcess, str]]:
    model_name = f"serving-{uuid.uuid4().hex[:8]}"
    service = _serve(s3_settings, model_name, tmp_path)
    try:
        assert httpx.get(f"{service.url}/readyz").status_code != 200, "ready before anything was promoted"
        publish(store, tiny_release, model_name=model_name, version="1")
        _wait_for_version(service, "1")
        yield service, model_name
    finally:
        service.stop()


def _post(service: ManagedProcess, route: str, files: object, headers: dict | None = None) -> httpx.Response:
    return httpx.post(f"{service.url}{route}", files=files, headers=AUTH if headers is None else headers, timeout=60)


def _exif_rotated_jpeg() -> bytes:
    image = Image.fromarray(np.tile(np.arange(64, dtype=np.uint8), (40, 1)))
    exif = image.getexif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def test_endpoints_answer_and_every_bad_input_gets_its_status(served: tuple[ManagedProcess, str]) -> None:
    service, _ = served
    assert httpx.get(f"{service.url}/readyz").status_code == 200
    good = _post(service, "/classify", {"image": ("p.jpg", jpeg_bytes("pituitary", 1, size=64), "image/jpeg")})
    assert good.status_code == 200, good.text
    body = good.json()
    assert body["model_version"] == "1" and body["label"] in CLASS_NAMES
    assert abs(sum(body["probabilities"].values()) - 1) < 1e-4
    assert body["refer_to_radiologist"] == (body["confidence"] < 0.5) and body["referral_threshold"] == 0.5

    handled = {
        "gray16.png": (png_bytes(np.linspace(0, 65535, 4096, dtype=np.uint16).reshape(64, 64)), "image/png"),
        "rgba.png": (png_bytes(np.full((40, 40, 4), 200, np.uint8)), "image/png"),
        "exif.jpg": (_exif_rotated_jpeg(), "image/jpeg"),
        "slice.dcm": (dicom_bytes(np.arange(64 * 64).reshape(64, 64)), "application/dicom"),
        "unknown-type.jpg": (jpeg_bytes(), "application/octet-stream"),
    }
    for name, (data, media_type) in handled.items():
        response = _post(service, "/classify", {"image": (name, data, media_type)})
        assert response.status_code == 200, (name, response.text)

    bomb = io.BytesIO()
    Image.new("L", (8000, 8000)).save(bomb, "PNG")  # 64 Mpx declared in a few kB
    refused = {
        "wrong type": ({"image": ("a.gif", b"GIF89a" + b"\0" * 50, "image/gif")}, 415, "not accepted"),
        "empty": ({"image": ("e.jpg", b"", "image/jpeg")}, 400, "empty"),
        "truncated": ({"image": ("t.jpg", jpeg_bytes()[:400], "image/jpeg")}, 400, "t.jpg"),
        "not an image": ({"image": ("x.png", b"just some text", "image/png")}, 400, "not a JPEG, PNG or DICOM"),
        "broken DICOM": ({"image": ("d.dcm", b"\0" * 128 + b"DICM" + b"\1" * 64, "application/dicom")}, 400, "DICOM"),
        "pixel bomb": ({"image": ("b.png", bomb.getvalue(), "image/png")}, 413, "pixels"),
        "file over the limit": (
            {"image": ("big.jpg", b"\xff\xd8\xff" + b"\0" * MAX_UPLOAD_BYTES, "image/jpeg")},
            413,
            "limit",
        ),
        "body over the limit": (
            {"image": ("huge.jpg", b"\xff\xd8\xff" + b"\0" * 5 * MAX_UPLOAD_BYTES, "image/jpeg")},
            413,
            "limit",
        ),
    }
    for case, (files, status, message) in refused.items():
        response = _post(service, "/classify", files)
        assert response.status_code == status, (case, response.status_code, response.text)
        assert message in response.json()["error"], (case, response.text)
    as_json = httpx.post(f"{service.url}/classify", json={"image": "x"}, headers=AUTH)
    assert as_json.status_code == 415
    no_token = _post(service, "/classify", {"image": ("p.jpg", jpeg_bytes(), "image/jpeg")}, headers={})
    assert no_token.status_code == 401
    malformed = httpx.post(
        f"{service.url}/classify",
        content=b'--zz\r\nContent-Disposition: form-data; name="image"\r\n\r\nunterminated',
        headers={**AUTH, "Content-Type": "multipart/form-data; boundary=zz"},
    )
    assert 400 <= malformed.status_code < 500, malformed.text

    batch = _post(
        service,
        "/classify_batch",
        [
            ("images", ("a.jpg", jpeg_bytes("glioma", 2), "image/jpeg")),
            ("images", ("bad.jpg", b"garbage", "image/jpeg")),
            ("images", ("c.png", png_bytes(np.zeros((50, 50), np.uint8)), "image/png")),
        ],
    )
    assert batch.status_code == 200, batch.text
    results = batch.json()["results"]
    assert [r["status"] for r in results] == [200, 400, 200] and batch.json()["classified"] == 2
    assert results[0]["classification"]["label"] in CLASS_NAMES and "bad.jpg" in results[1]["error"]

    explained = _post(service, "/explain", {"image": ("m.jpg", jpeg_bytes("meningioma", 3, size=64), "image/jpeg")})
    assert explained.status_code == 200, explained.text
    assert explained.headers["content-type"] == "image/png" and explained.headers["x-label"] in CLASS_NAMES
    overlay = Image.open(io.BytesIO(explained.content))
    assert overlay.size == (384, 384) and overlay.mode == "RGB"

    info = httpx.get(f"{service.url}/model", headers=AUTH).json()
    assert info["model_version"] == "1" and info["dataset_version"] == "ds-test"
    # Both fp32 exports passed parity; the service timed them here and serves with the faster.
    assert info["runtime"] in ("openvino-fp32", "onnxruntime-fp32") and info["runtimes"][info["runtime"]]["passed"]
    assert info["runtime_reason"].startswith("fastest here of the runtimes that passed parity (")
    assert "onnxruntime-fp32" in info["runtime_reason"] and "openvino-fp32" in info["runtime_reason"]
    scraped = httpx.get(f"{service.url}/metrics").text
    assert f'tumorops_serving_model_info{{model_version="1",runtime="{info["runtime"]}"}} 1' in scraped
    assert "tumorops_predictions_total{label=" in scraped and 'tumorops_rejected_uploads_total{status="415"}' in scraped

    assert httpx.get(f"{service.url}/readyz").status_code == 200, "bad inputs must not hurt the service"
    log = service.log_path.read_text()
    assert "Doe^Jane" not in log and "TUMOROPS-TEST-0001" not in log, "DICOM patient tags must never be logged"
    assert "status=500" not in log, log[-3000:]
    # Requests meet BentoML's batcher in-process, not through its HTTP client (see serving.service._direct_batcher).
    assert "adaptive batcher of batched_inference reached in-process" in log


def test_hot_swap_under_load_drops_nothing_and_a_corrupted_release_is_refused(
    store: ObjectStore, tiny_release: TinyRelease, served: tuple[ManagedProcess, str]
) -> None:
    service, model_name = served
    request = multipart_request(
        f"{service.url}/classify",
        field_name="image",
        filename="p.jpg",
        data=jpeg_bytes("pituitary", 5, size=64),
        media_type="image/jpeg",
        token=TOKEN,
    )

    def promote_midway() -> None:
        time.sleep(3)
        publish(store, tiny_release, model_name=model_name, version="2")

    promoter = threading.Thread(target=promote_midway)
    promoter.start()
    # 45 s of load: the swap (download, verify, load, compile, warm up) takes 10-20 s on 2 busy cores.
    result = run_load(service.url, request, clients=16, seconds=45, marker=b'"model_version":"')
    promoter.join()
    assert result.failed == 0, (result.statuses, result.errors)
    assert result.ok > 50
    assert set(result.bodies) == {"1", "2"}, result.bodies  # answers came from both versions, none failed
    _wait_for_version(service, "2")

    publish(store, tiny_release, model_name=model_name, version="3", point=False)
    corrupt(store, model_name=model_name, version="3")
    write_pointer(store, model_name=model_name, version="3", approved_by="test", reason="corrupted on purpose")
    reload = httpx.post(f"{service.url}/admin/reload", headers=AUTH, timeout=120).json()
    assert not reload["reloaded"] and "refused release 3" in reload["message"] and reload["model_version"] == "2"
    answer = _post(service, "/classify", {"image": ("p.jpg", jpeg_bytes(), "image/jpeg")})
    assert answer.status_code == 200 and answer.json()["model_version"] == "2"
    refused = re.search(r"^tumorops_releases_refused_total ([0-9.]+)$", httpx.get(f"{service.url}/metrics").text, re.M)
    assert refused and float(refused.group(1)) >= 1
    assert httpx.post(f"{service.url}/admin/reload", timeout=30).status_code == 401
