"""The classifier on tiny inputs: shape, probabilities, weights options."""

import numpy as np
import pytest

from tumor_model.checkpoints import LocalCheckpointStore
from tumor_model.model import build_classifier, resolve_weights
from tumor_model.training import SplitFiles, TrainingConfig, train_classifier


def test_weights_option_is_parsed_and_missing_files_are_reported(tmp_path) -> None:
    assert resolve_weights(None) == (None, None)
    assert resolve_weights("none") == (None, None)
    assert resolve_weights("imagenet") == ("imagenet", None)
    weights = tmp_path / "b3.weights.h5"
    weights.write_bytes(b"x")
    assert resolve_weights(str(weights)) == (None, weights)
    with pytest.raises(FileNotFoundError, match="missing.weights.h5"):
        resolve_weights(str(tmp_path / "missing.weights.h5"))
    with pytest.raises(ValueError, match="download s3://bucket/b3.weights.h5 first"):
        resolve_weights("s3://bucket/b3.weights.h5")


def test_tiny_classifier_outputs_probabilities() -> None:
    model = build_classifier(num_classes=4, image_size=32)
    assert model.get_layer("efficientnetb3") is not None
    probabilities = model.predict(np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)), verbose=0)
    assert probabilities.shape == (3, 4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_training_refuses_an_empty_training_split(tmp_path) -> None:
    empty = SplitFiles(paths=[], labels=np.zeros(0, np.int32), sha256=[])
    with pytest.raises(ValueError, match="training split is empty"):
        train_classifier(
            train=empty,
            val=empty,
            config=TrainingConfig(image_size=32, epochs=1),
            checkpoints=LocalCheckpointStore(tmp_path),
        )
