"""Training hyper-parameters and named profiles (a light module: the command line imports it without TensorFlow).

A profile is a complete, named recipe; explicit options (command line, Dagster launchpad, `TUMOROPS_*` settings)
override single fields of it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class TrainingConfig:
    """Hyper-parameters of one training run.

    Args:
        profile: name of the profile these values started from.
        image_size: side of the square input (300 is B3's native size; small sizes train fast on CPU).
        weights: `imagenet`, `none`, or a backbone weights file (local path or `s3://` URI).
        warmup_epochs: phase 1, backbone frozen, only the head learns (0 skips it: useless without pretrained
            weights).
        epochs: most epochs in all (phase 1 + phase 2); early stopping and the time budget may end sooner.
        fine_tune_blocks: EfficientNet blocks (counted from the top, 1..7) trained in phase 2; 0 or more than 7
            trains the whole backbone (what training from scratch needs).
        freeze_batchnorm: keep BatchNorm layers frozen in phase 2 (right for pretrained weights, whose
            statistics a small batch would wreck; wrong from scratch).
        batch_size: images per step per replica (scaled by the number of GPUs).
        learning_rate: peak learning rate of phase 1, or of the whole run when there is no phase 1.
        fine_tune_learning_rate: peak learning rate of phase 2 when it follows a warm-up phase.
        lr_schedule: `cosine` (linear ramp over `lr_warmup_epochs`, then cosine decay to 5% of the peak, in
            each phase) or `constant`.
        lr_warmup_epochs: epochs of the linear ramp at the start of each phase.
        weight_decay: AdamW decoupled weight decay.
        label_smoothing: cross-entropy label smoothing.
        dropout: dropout before the classification layer.
        batchnorm_momentum: momentum of trainable BatchNorm layers; 0.9 lets their moving statistics catch up in
            a short from-scratch run (Keras' 0.99 leaves them near their initial values).
        augment: random flips, small rotations, zoom, brightness and contrast on training images.
        early_stopping_patience: epochs without a better validation loss before stopping (0 disables).
        time_budget_minutes: stop after this much training time, keeping the best epoch (None: no limit).
        mixed_precision: `auto` (float16 compute on GPU, float32 on CPU), `on` or `off`.
        xla: compile the training step with XLA.
        seed: seed for weight initialisation, shuffling and augmentation.
    """

    profile: str = "demo"
    image_size: int = 64
    weights: str = "none"
    warmup_epochs: int = 0
    epochs: int = 16
    fine_tune_blocks: int = 0
    freeze_batchnorm: bool = False
    batch_size: int = 16
    learning_rate: float = 2e-3
    fine_tune_learning_rate: float = 1e-4
    lr_schedule: str = "cosine"
    lr_warmup_epochs: int = 1
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    dropout: float = 0.3
    batchnorm_momentum: float = 0.9
    augment: bool = True
    early_stopping_patience: int = 0
    time_budget_minutes: float | None = None
    mixed_precision: str = "auto"
    xla: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.image_size < 32:
            problems.append(f"image_size {self.image_size} is under 32 pixels")
        if self.epochs < 1:
            problems.append(f"epochs must be at least 1, not {self.epochs}")
        if not 0 <= self.warmup_epochs <= self.epochs:
            problems.append(f"warmup_epochs {self.warmup_epochs} must be between 0 and epochs ({self.epochs})")
        if self.batch_size < 1:
            problems.append(f"batch_size must be at least 1, not {self.batch_size}")
        if self.learning_rate <= 0 or self.fine_tune_learning_rate <= 0:
            problems.append("learning rates must be positive")
        if self.lr_schedule not in ("cosine", "constant"):
            problems.append(f"lr_schedule must be cosine or constant, not {self.lr_schedule!r}")
        if self.mixed_precision not in ("auto", "on", "off"):
            problems.append(f"mixed_precision must be auto, on or off, not {self.mixed_precision!r}")
        if self.time_budget_minutes is not None and self.time_budget_minutes <= 0:
            problems.append("time_budget_minutes must be positive")
        if problems:
            raise ValueError("invalid training configuration: " + "; ".join(problems))

    @property
    def trains_whole_backbone(self) -> bool:
        return self.fine_tune_blocks <= 0 or self.fine_tune_blocks >= 7

    def to_params(self) -> dict[str, Any]:
        return asdict(self)


TRAINING_PROFILES: dict[str, TrainingConfig] = {
    # Minutes on a laptop: what `make demo` and the tests train.
    "demo": TrainingConfig(profile="demo", lr_schedule="constant", weight_decay=0.0, augment=False),
    # The best recipe for 60 minutes on 2 CPU cores without pretrained weights (measured on the Sartaj
    # training folder; see README "Training"). EfficientNetB3 trains at 8 to 14 images/s there (the shared host
    # varies), so an hour holds 9 to about 24 passes over ~1,900 images: the time budget decides, and the learning
    # rate decays with whichever of epochs and budget is further along.
    "cpu": TrainingConfig(
        profile="cpu",
        image_size=96,
        epochs=24,
        batch_size=32,
        learning_rate=2e-3,
        lr_warmup_epochs=2,
        label_smoothing=0.05,
        dropout=0.3,
        early_stopping_patience=8,
        time_budget_minutes=60.0,
    ),
    # Transfer learning on a GPU: the head warms up on a frozen ImageNet backbone, then the top blocks fine-tune
    # at a lower rate with BatchNorm frozen.
    "gpu": TrainingConfig(
        profile="gpu",
        image_size=300,
        weights="imagenet",
        warmup_epochs=3,
        epochs=30,
        fine_tune_blocks=3,
        freeze_batchnorm=True,
        batch_size=32,
        learning_rate=1e-3,
        fine_tune_learning_rate=1e-4,
        lr_warmup_epochs=1,
        label_smoothing=0.05,
        early_stopping_patience=5,
    ),
}

OVERRIDABLE_FIELDS = tuple(f.name for f in fields(TrainingConfig) if f.name != "profile")


def training_config(profile: str = "demo", **overrides: Any) -> TrainingConfig:
    """The named profile with the given fields replaced; None values leave the profile's value.

    Args:
        profile: one of `TRAINING_PROFILES`.
        **overrides: fields of `TrainingConfig`.
    """
    if profile not in TRAINING_PROFILES:
        raise ValueError(f"unknown training profile {profile!r}; known: {', '.join(TRAINING_PROFILES)}")
    unknown = sorted(set(overrides) - set(OVERRIDABLE_FIELDS))
    if unknown:
        raise ValueError(f"unknown training options: {', '.join(unknown)}")
    return replace(TRAINING_PROFILES[profile], **{k: v for k, v in overrides.items() if v is not None})
