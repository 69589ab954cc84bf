"""Training on tiny inputs: profiles, schedule, phases, augmentation, the input pipeline, checkpoints and resume."""

import math
from pathlib import Path

import numpy as np
import pytest

from tests.images import jpeg_bytes, write
from tumor_model.checkpoints import STATE_FILE, LocalCheckpointStore
from tumor_model.labels import CLASS_NAMES
from tumor_model.training import SplitFiles, learning_rate_at, train_classifier, training_phases
from tumor_model.training_config import TRAINING_PROFILES, TrainingConfig, training_config


def test_profiles_are_complete_and_overrides_replace_single_fields() -> None:
    cpu = training_config("cpu")
    assert cpu.weights == "none" and cpu.warmup_epochs == 0 and cpu.trains_whole_backbone
    assert cpu.time_budget_minutes == 60
    gpu = training_config("gpu", epochs=12, image_size=None)
    assert gpu.epochs == 12 and gpu.image_size == 300 and gpu.weights == "imagenet" and gpu.freeze_batchnorm
    assert set(TRAINING_PROFILES) >= {"demo", "cpu", "gpu"}
    with pytest.raises(ValueError, match="unknown training profile 'laptop'"):
        training_config("laptop")
    with pytest.raises(ValueError, match="unknown training options: colour"):
        training_config("demo", colour="red")
    with pytest.raises(ValueError, match="warmup_epochs 5 must be between 0 and epochs"):
        training_config("demo", epochs=3, warmup_epochs=5)
    with pytest.raises(ValueError, match="mixed_precision must be auto, on or off"):
        TrainingConfig(mixed_precision="maybe")


def test_learning_rate_ramps_up_then_decays_to_five_percent_in_each_phase() -> None:
    config = TrainingConfig(lr_warmup_epochs=2, epochs=12, warmup_epochs=2)
    rates = [learning_rate_at(epoch=e, phase_start=2, phase_end=12, peak=1e-3, config=config) for e in range(2, 12)]
    assert rates[0] < rates[1] < rates[2] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(rates[2:], rates[3:], strict=False))
    assert rates[-1] == pytest.approx(5e-5)
    # On a slow machine the time budget ends the run early: the decay follows the budget instead.
    behind = learning_rate_at(epoch=4, phase_start=2, phase_end=12, peak=1e-3, config=config, budget_used=0.9)
    assert behind < learning_rate_at(epoch=4, phase_start=2, phase_end=12, peak=1e-3, config=config) / 5
    assert learning_rate_at(epoch=4, phase_start=2, phase_end=12, peak=1e-3, config=config, budget_used=1.0) == (
        pytest.approx(5e-5)
    )
    constant = TrainingConfig(lr_schedule="constant")
    assert learning_rate_at(epoch=7, phase_start=0, phase_end=8, peak=3e-3, config=constant) == 3e-3


def test_phases_follow_the_profile() -> None:
    gpu = [(p.name, p.start, p.end, p.peak_learning_rate) for p in training_phases(training_config("gpu"))]
    assert gpu == [("warmup", 0, 3, 1e-3), ("fine_tune", 3, 30, 1e-4)]
    cpu = [(p.name, p.start, p.end) for p in training_phases(training_config("cpu"))]
    assert cpu == [("fine_tune", 0, training_config("cpu").epochs)]
    only_head = training_phases(TrainingConfig(epochs=2, warmup_epochs=2))
    assert [p.name for p in only_head] == ["warmup"]


def test_warmup_freezes_the_backbone_and_fine_tuning_opens_only_the_top_blocks() -> None:
    import keras

    from tumor_model.model import backbone_of, build_classifier, set_trainable_layers

    model = build_classifier(num_classes=4, image_size=32)
    set_trainable_layers(model, phase="warmup")
    assert {w.path.split("/")[0] for w in model.trainable_weights} == {"probabilities"}

    set_trainable_layers(model, phase="fine_tune", fine_tune_blocks=2, freeze_batchnorm=True)
    backbone = backbone_of(model)
    trainable = [layer for layer in backbone.layers if layer.trainable and layer.weights]
    assert trainable, "fine-tuning must open some backbone layers"
    assert all(layer.name.startswith(("block6", "block7", "top_")) for layer in trainable)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in trainable)
    assert backbone.get_layer("block5a_expand_conv").trainable is False

    set_trainable_layers(model, phase="fine_tune", fine_tune_blocks=0)
    assert backbone.get_layer("stem_conv").trainable and backbone.get_layer("stem_bn").trainable
    with pytest.raises(ValueError, match="unknown training phase"):
        set_trainable_layers(model, phase="polish")


def test_augmentation_is_a_pure_function_of_the_seed() -> None:
    import tensorflow as tf

    from tumor_model.input_pipeline import augment

    image = tf.constant(np.random.default_rng(0).uniform(0, 255, (48, 48, 3)), tf.float32)
    first = augment(image, tf.constant([1, 2])).numpy()
    again = augment(image, tf.constant([1, 2])).numpy()
    other = augment(image, tf.constant([3, 4])).numpy()
    np.testing.assert_array_equal(first, again)
    assert first.shape == (48, 48, 3) and first.min() >= 0 and first.max() <= 255
    assert np.abs(first - other).mean() > 1.0


def _dataset(root: Path, *, per_class: int, size: int = 40) -> SplitFiles:
    paths, labels = [], []
    for label_index, label in enumerate(CLASS_NAMES):
        for index in range(per_class):
            paths.append(write(root / label / f"{index}.jpg", jpeg_bytes(label, index, size=size)))
            labels.append(label_index)
    return SplitFiles(paths=paths, labels=np.array(labels, np.int32), sha256=[p.name for p in paths])


def test_input_pipeline_decodes_with_the_shared_preprocessing_in_order(tmp_path) -> None:
    from tumor_model.input_pipeline import evaluation_dataset, training_dataset
    from tumor_model.preprocessing import preprocess_bytes

    files = _dataset(tmp_path, per_class=3)
    batches = list(evaluation_dataset(files.paths, files.labels, image_size=32, batch_size=5))
    images = np.concatenate([b[0].numpy() for b in batches])
    np.testing.assert_array_equal(np.concatenate([b[1].numpy() for b in batches]), files.labels)
    np.testing.assert_array_equal(images[4], preprocess_bytes(files.paths[4].read_bytes(), image_size=32))

    def one_epoch(seed: int) -> tuple[np.ndarray, np.ndarray]:
        data = training_dataset(files.paths, files.labels, image_size=32, batch_size=4, seed=seed)
        pairs = list(data)
        return np.concatenate([p[0].numpy() for p in pairs]), np.concatenate([p[1].numpy() for p in pairs])

    first, labels = one_epoch(seed=7)
    again, labels_again = one_epoch(seed=7)
    assert first.shape == (12, 32, 32, 3) and sorted(labels) == sorted(files.labels)
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(labels, labels_again)
    assert not np.array_equal(first, one_epoch(seed=8)[0])
    with pytest.raises(ValueError, match="training split is empty"):
        training_dataset([], [], image_size=32, batch_size=4, seed=0)


class _Interrupt(Exception):
    pass


def test_training_checkpoints_every_epoch_and_resumes_after_an_interruption(tmp_path) -> None:
    import keras

    train = _dataset(tmp_path / "train", per_class=4)
    val = _dataset(tmp_path / "val", per_class=1)
    store = LocalCheckpointStore(tmp_path / "checkpoints")
    config = TrainingConfig(image_size=32, epochs=3, batch_size=8, early_stopping_patience=0)

    class CrashInThirdEpoch(keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            if self.epoch == 2:
                raise _Interrupt("simulated crash")

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.epoch = epoch

    with pytest.raises(_Interrupt):
        train_classifier(
            train=train,
            val=val,
            config=config,
            checkpoints=store,
            state_extra={"mlflow_run_id": "run-1"},
            callbacks=[CrashInThirdEpoch()],
        )
    state = store.read_json(STATE_FILE)
    assert state["epoch"] == 2 and state["mlflow_run_id"] == "run-1" and not state["complete"]
    assert (tmp_path / "checkpoints" / state["model_file"]).is_file()
    assert (tmp_path / "checkpoints" / state["best_weights_file"]).is_file()
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("epoch-*.keras")) == ["epoch-002.keras"]

    with pytest.raises(ValueError, match="different training configuration"):
        train_classifier(
            train=train, val=val, config=TrainingConfig(image_size=32, epochs=4), checkpoints=store, resume_state=state
        )

    seen_epochs: list[int] = []

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            seen_epochs.append(epoch)

    outcome = train_classifier(
        train=train, val=val, config=config, checkpoints=store, resume_state=state, callbacks=[Record()]
    )
    assert seen_epochs == [2], "the resumed run continues with the third epoch only"
    assert outcome.resumed_from_epoch == 2 and outcome.epochs_run == 3
    assert len(outcome.history["val_loss"]) == 3 and len(outcome.history["learning_rate"]) == 3
    assert 1 <= outcome.best_epoch <= 3
    assert outcome.history["val_loss"][outcome.best_epoch - 1] == pytest.approx(min(outcome.history["val_loss"]))
    probabilities = outcome.model.predict(np.zeros((2, 32, 32, 3), np.float32), verbose=0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("epoch-*.keras")) == ["epoch-003.keras"]


def test_early_stopping_and_time_budget_end_training_with_a_reason(tmp_path) -> None:
    train = _dataset(tmp_path / "train", per_class=2)
    val = _dataset(tmp_path / "val", per_class=1)
    budget = TrainingConfig(image_size=32, epochs=5, batch_size=8, time_budget_minutes=1e-6)
    outcome = train_classifier(train=train, val=val, config=budget, checkpoints=LocalCheckpointStore(tmp_path / "c"))
    assert outcome.epochs_run == 1 and outcome.stopped_because.startswith("time budget")
    assert not math.isinf(outcome.state["best_loss"])
