"""The whole platform once: batch in S3 -> Dagster ingest + retrain (Pipes, MLflow) -> release -> BentoML over HTTP."""

import io
import os
import time
from pathlib import Path

import dagster as dg
import httpx
import mlflow
import pytest
from PIL import Image

from infra.ingest import ingest_folder
from infra.release import audit_key, read_pointer
from infra.settings import Settings
from infra.stack import free_port, start_bentoml
from infra.storage import ObjectStore
from orchestration.definitions import build_definitions
from orchestration.defs.training.resources import TrainingLauncherResource
from orchestration.resources import MLflowResource, PromotionPolicyResource, S3Resource
from tests.images import jpeg_bytes, write
from tumor_model.labels import CLASS_NAMES
from tumor_model.synthetic import write_synthetic_dataset

pytestmark = pytest.mark.e2e


def test_batch_to_served_prediction(stack_env: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = stack_env.model_copy(update={"model_name": "e2e-classifier", "home": tmp_path / "home"})
    monkeypatch.setenv("TUMOROPS_HOME", str(settings.home_dir))
    monkeypatch.setenv("TUMOROPS_MODEL_NAME", settings.model_name)
    store = ObjectStore.from_settings(settings)

    sample = tmp_path / "sample"
    write_synthetic_dataset(sample, images_per_class=12, size=64)
    write(sample / "glioma" / "broken.jpg", b"not a jpeg")
    batch, count = ingest_folder(store, sample, batch="e2e-batch-1")
    assert count == 49

    lenient = tmp_path / "promotion.toml"
    lenient.write_text(
        "[gates]\nmin_test_images = 1\nmin_accuracy = 0\nmin_macro_f1 = 0\nmax_ece = 1\n"
        "[gates.min_sensitivity]\nglioma = 0\n"
    )
    resources = {
        "s3": S3Resource.for_settings(settings),
        "mlflow": MLflowResource(tracking_uri=settings.mlflow_tracking_uri, model_name=settings.model_name),
        "training_launcher": TrainingLauncherResource(),
        # A 1-epoch model on 48 images cannot meet clinical gates: this test checks the flow, not the model.
        "promotion_policy": PromotionPolicyResource(config_path=str(lenient)),
    }
    defs = build_definitions(resources)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("batches", [batch])
        ingest = defs.resolve_job_def("ingest_job").execute_in_process(partition_key=batch, instance=instance)
        assert ingest.success
        validated = ingest.asset_materializations_for_node("validated_batch")[0].metadata
        assert validated["accepted"].value == 48 and validated["rejected"].value == 1
        assert store.get_json(f"quarantine/{batch}/reasons.json")[0]["file"] == "glioma/broken.jpg"
        assert store.get_bytes(f"incoming/{batch}/glioma/broken.jpg") == b"not a jpeg", "originals stay"

        retrain = defs.resolve_job_def("retrain_job").execute_in_process(
            instance=instance,
            run_config={
                "ops": {
                    "candidate_model": {"config": {"image_size": 32, "epochs": 1, "batch_size": 8}},
                }
            },
        )
        assert retrain.success
        trained = retrain.asset_materializations_for_node("candidate_model")[0].metadata
        assert 0.0 <= trained["test_accuracy"].value <= 1.0
        # The UI shows the plots and links back to MLflow.
        assert trained["plots"].value.count("data:image/png;base64,") == 3
        assert "sensitivity" in trained["test_metrics_per_class"].value
        assert trained["mlflow_run"].value.endswith(trained["mlflow_run_id"].value)
        gate = retrain.asset_materializations_for_node("promotion_gate")[0].metadata
        assert gate["gates_passed"].value is True and gate["approval_status"].value == "approved"
        # The gate re-scored the registered model on the test split: it must agree with the training run.
        gate_rows = {row.data["gate"]: row.data for row in gate["gates"].value.records}
        assert gate_rows["accuracy"]["candidate"] == pytest.approx(trained["test_accuracy"].value, abs=1e-3)

    pointer = read_pointer(store, settings.model_name)
    assert pointer is not None and pointer["version"] == str(trained["model_version"].value)
    client = mlflow.MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    champion = client.get_model_version_by_alias(settings.model_name, "champion")
    assert champion.version == pointer["version"]
    assert champion.tags["approval.status"] == "approved"
    assert '"promote"' in store.get_bytes(audit_key(settings.model_name)).decode()
    card = store.get_bytes(f"{pointer['prefix']}model_card.md").decode()
    assert "## Test metrics" in card and "## Known limits" in card

    env = {**os.environ, "TUMOROPS_SERVING_POLL_SECONDS": "1"}
    service = start_bentoml(log_path=tmp_path / "bentoml.log", host="127.0.0.1", port=free_port(), env=env)
    try:
        deadline = time.monotonic() + 180
        while httpx.get(f"{service.url}/readyz").status_code != 200:
            assert time.monotonic() < deadline, (tmp_path / "bentoml.log").read_text()[-3000:]
            time.sleep(1)
        response = httpx.post(
            f"{service.url}/classify",
            files={"image": ("p.jpg", jpeg_bytes("pituitary", 999, size=64), "image/jpeg")},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["label"] in CLASS_NAMES and body["model_version"] == pointer["version"]
        assert set(body["probabilities"]) == set(CLASS_NAMES)
        assert abs(sum(body["probabilities"].values()) - 1.0) < 1e-4

        bad = httpx.post(f"{service.url}/classify", files={"image": ("x.jpg", b"garbage", "image/jpeg")}, timeout=60)
        assert bad.status_code == 400 and "not a JPEG, PNG or DICOM" in bad.text
        bomb = io.BytesIO()
        Image.new("L", (8000, 8000)).save(bomb, "PNG")  # 64 Mpx declared, a few kB on the wire
        too_big = httpx.post(f"{service.url}/classify", files={"image": ("b.png", bomb.getvalue(), "image/png")})
        assert too_big.status_code == 413
        assert httpx.get(f"{service.url}/readyz").status_code == 200, "a bad upload must not hurt the service"
    finally:
        service.stop()
    assert service.process.poll() is not None
