"""The serving exports on a small model whose answers differ per image: ONNX constants, lanes, row order."""

from pathlib import Path

import numpy as np
import pytest

from tumor_model.runtimes import (
    EXPORTED_RUNTIMES,
    KERAS,
    ONNX_FILE,
    OPENVINO_BIN,
    OPENVINO_XML,
    eligible_runtimes,
    images_per_second,
    load_predictor,
    time_exports,
    write_exports,
)


@pytest.fixture(scope="module")
def normalized_model():
    """Normalization with non-trivial mean and variance (as the EfficientNet backbone has), then linear layers.

    No softmax: its saturated outputs would hide a wrong normalization or a reordered batch.
    """
    import keras

    keras.utils.set_random_seed(0)
    image = keras.Input((16, 16, 3), name="image")
    normalization = keras.layers.Normalization(axis=-1)
    features = keras.layers.GlobalAveragePooling2D()(normalization(image))
    model = keras.Model(image, keras.layers.Dense(4)(keras.layers.Dense(8)(features)))
    count = normalization.get_weights()[2]
    normalization.set_weights([np.array([120.0, 60.0, 10.0]), np.array([900.0, 100.0, 4.0]), count])
    normalization.finalize_state()
    return model


@pytest.fixture(scope="module")
def exports(normalized_model, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("exports")
    files = write_exports(normalized_model, directory)
    assert set(files) == {OPENVINO_XML, OPENVINO_BIN, ONNX_FILE}
    assert all(path.stat().st_size > 0 for path in files.values())
    return directory


def _images(count: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    # Per-image brightness makes every image's answer different, so a reordered batch would show.
    return (rng.uniform(0, 1, (count, 16, 16, 3)) * rng.uniform(20, 255, (count, 1, 1, 3))).astype(np.float32)


def test_onnx_export_keeps_the_normalization_constants(normalized_model, exports: Path) -> None:
    import onnx

    graph = onnx.load(str(exports / ONNX_FILE))
    assert [i.name for i in graph.graph.input] == ["image"]
    images = _images(6)
    reference = normalized_model(images, training=False).numpy()
    assert np.ptp(reference[:, 0]) > 0.1  # the images really get different answers
    answers = load_predictor("onnxruntime-fp32", exports, keras_model=None, lanes=1).predict(images)
    np.testing.assert_allclose(answers, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("runtime", EXPORTED_RUNTIMES)
@pytest.mark.parametrize("lanes", [1, 2, 3])
def test_exports_answer_like_keras_in_order_whatever_the_lanes(normalized_model, exports, runtime, lanes) -> None:
    predictor = load_predictor(runtime, exports, keras_model=None, lanes=lanes)
    for count in (1, 2, 5, 8):
        images = _images(count)
        reference = normalized_model(images, training=False).numpy()
        answers = predictor.predict(images)
        assert answers.shape == (count, 4) and answers.dtype == np.float32
        np.testing.assert_allclose(
            answers, reference, rtol=1e-5, atol=1e-5, err_msg=f"{runtime}, {lanes} lanes, {count} images"
        )


def test_time_exports_times_only_eligible_exports(exports) -> None:
    eligible = ["onnxruntime-fp32", "openvino-fp32", KERAS]
    timed = time_exports(eligible, exports, image_size=16, batch=4, lanes=2)
    assert set(timed) == {"onnxruntime-fp32", "openvino-fp32"}
    assert all(speed > 0 for _, speed in timed.values())
    # One eligible export leaves nothing to choose between: nothing is loaded.
    assert time_exports(["openvino-fp32", KERAS], exports, image_size=16, batch=4) == {}


def test_an_export_that_does_not_load_is_skipped_and_reported(exports, tmp_path) -> None:
    broken = tmp_path / "release"
    (broken / "onnx").mkdir(parents=True)
    (broken / ONNX_FILE).write_bytes(b"not an onnx graph")
    (broken / "openvino").mkdir()
    for name in (OPENVINO_XML, OPENVINO_BIN):
        (broken / name).write_bytes((exports / name).read_bytes())
    reports: list[str] = []
    timed = time_exports(["onnxruntime-fp32", "openvino-fp32"], broken, image_size=16, batch=2, log=reports.append)
    assert set(timed) == {"openvino-fp32"}
    assert len(reports) == 1 and "onnxruntime-fp32" in reports[0]


def test_eligible_runtimes_follow_parity_and_cpu() -> None:
    parity = {"openvino-fp32": {"passed": True}, "onnxruntime-fp32": {"passed": False}}
    assert eligible_runtimes(parity=parity, supported={"openvino-fp32": True}) == ["openvino-fp32", KERAS]
    assert eligible_runtimes(parity=parity, supported={}) == [KERAS]


def test_images_per_second_counts_images_not_calls() -> None:
    calls: list[int] = []
    speed = images_per_second(lambda batch: calls.append(len(batch)) or batch, np.zeros((4, 2)), repeats=3)
    assert calls == [4, 4, 4, 4] and speed > 0
