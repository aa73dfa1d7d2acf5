"""The training configuration of a supernet and its progressive-shrinking plan.

:class:`TrainConfig` holds every hyper-parameter of :class:`~mednns.training.trainer.SupernetTrainer`;
the ``train_supernet`` stage takes the same names as typed arguments (:func:`mednns.takes_settings`).
:func:`plan_phases` turns it and a space's elastic dimensions into the ordered list of
:class:`Phase` objects the trainer runs.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal, Sequence

from mednns.errors import UsageError

#: File names of a trained supernet folder.
SUPERNET_WEIGHTS = "supernet.safetensors"
SUPERNET_METADATA = "supernet.json"
FINAL = "final.json"

#: Name of the first phase: the largest network alone, trained on the labels.
FULL_PHASE = "full"

#: Default dimensions whose release reorders channels first (OFA's ``re_organize_middle_weights``);
#: a space overrides them with its ``channel_dimensions``.
CHANNEL_DIMENSIONS = ("expand", "width")

#: Keys of :class:`TrainConfig` that do not change what is computed (ignored when resuming).
NON_RESULT_KEYS = frozenset({"progress", "checkpoint_every_steps"})


@dataclass
class TrainConfig:
    """Hyper-parameters of supernet training (defaults suit the ``cpu`` presets at 28 px).

    Phases: ``full_epochs``/``full_lr`` for the largest network alone, then one phase per
    elastic dimension with ``shrink_epochs``/``shrink_lr``; ``phases`` overrides either per
    phase name (``full`` or a dimension): ``{"depth": {"epochs": 2, "lr": 0.01}}``. A phase
    with 0 epochs is skipped; its dimension is still released for the phases after it. The
    ``train_supernet`` stage takes every field as an argument of the same name.

    :param full_epochs: epochs of the full-network phase (largest network only).
    :param full_lr: its peak learning rate.
    :param shrink_epochs: epochs of each progressive-shrinking phase (one per elastic dimension).
    :param shrink_lr: their peak learning rate.
    :param phases: per-phase overrides ``{full|<dimension>: {epochs: N, lr: X}}``; 0 epochs skips a phase.
    :param batch_size: images per step (per process).
    :param num_random: random subnets per step besides the largest and the smallest (sandwich rule).
    :param kd_weight: weight of the distillation loss of the non-largest subnets.
    :param label_weight: weight of their label loss (0: distillation only).
    :param kd_temperature: distillation temperature.
    :param label_smoothing: label smoothing of the single-label loss (and of multi-label BCE targets).
    :param optimizer: ``sgd`` (Nesterov momentum), ``momentum`` (plain momentum) or ``adamw``.
    :param momentum: SGD momentum.
    :param weight_decay: weight decay (not on BN parameters and biases).
    :param warmup_epochs: linear warm-up per phase (at most a quarter of the phase).
    :param warmup_lr_ratio: warm-up starts at this fraction of the phase's learning rate.
    :param min_lr: learning rate at the end of each cosine schedule.
    :param grad_clip: clip the gradient norm (null: no clipping).
    :param crop_padding: random-crop padding in pixels (0: no crop).
    :param hflip: random horizontal flips (off: laterality matters in many medical images).
    :param max_train_images: train on a seeded random subset of this many images.
    :param min_steps_per_epoch: an epoch is at least this many optimizer steps (small datasets
        get more than one pass per epoch instead of a handful of steps).
    :param calibration_images: training images that recalibrate BN before each evaluation.
    :param calibration_batch_size: their batch size (the set is a whole number of batches).
    :param eval_batch_size: evaluation batch size.
    :param final_samples: random subnets among which the median-sized one is tested at the end.
    :param checkpoint_every_steps: also checkpoint every N steps (null: every epoch only).
    :param amp: bfloat16 autocast on CUDA (ignored on the CPU).
    :param channels_last: channels-last memory format.
    :param progress: show a progress bar.
    """

    full_epochs: int = 16
    full_lr: float = 0.1
    shrink_epochs: int = 6
    shrink_lr: float = 0.03
    phases: dict[str, dict[str, float]] | None = None  # null: no overrides (a dict once built)
    batch_size: int = 128
    num_random: int = 2
    kd_weight: float = 1.0
    label_weight: float = 0.0
    kd_temperature: float = 1.0
    label_smoothing: float = 0.1
    optimizer: Literal["sgd", "momentum", "adamw"] = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    warmup_lr_ratio: float = 0.01
    min_lr: float = 0.0
    grad_clip: float | None = None
    crop_padding: int = 2
    hflip: bool = False
    max_train_images: int | None = None
    min_steps_per_epoch: int = 0
    calibration_images: int = 512
    calibration_batch_size: int = 128
    eval_batch_size: int = 256
    final_samples: int = 15
    checkpoint_every_steps: int | None = None
    amp: bool = True
    channels_last: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        self.phases = {str(k): dict(v) for k, v in (self.phases or {}).items()}
        problems = []
        positive = ("batch_size", "calibration_images", "calibration_batch_size", "eval_batch_size")
        for name in positive:
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("full_epochs", "shrink_epochs", "num_random", "crop_padding", "min_steps_per_epoch"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("full_lr", "shrink_lr", "kd_weight", "label_weight", "weight_decay", "warmup_epochs",
                     "min_lr", "warmup_lr_ratio", "momentum"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.kd_temperature <= 0:
            problems.append(f"kd_temperature must be > 0, got {self.kd_temperature}")
        if not 0 <= self.label_smoothing < 1:
            problems.append(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.final_samples < 1:
            problems.append(f"final_samples must be >= 1, got {self.final_samples}")
        if self.max_train_images is not None and self.max_train_images < 2:
            problems.append(f"max_train_images must be >= 2 (or null), got {self.max_train_images}")
        if self.checkpoint_every_steps is not None and self.checkpoint_every_steps < 1:
            problems.append(f"checkpoint_every_steps must be >= 1 (or null), got {self.checkpoint_every_steps}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            problems.append(f"grad_clip must be > 0 (or null), got {self.grad_clip}")
        for name, override in (self.phases or {}).items():
            unknown = sorted(set(override) - {"epochs", "lr"})
            if unknown:
                problems.append(f"phases.{name}: unknown key(s) {', '.join(unknown)}; allowed: epochs, lr")
            epochs = override.get("epochs")
            if epochs is not None and (epochs < 0 or float(epochs) != int(epochs)):
                problems.append(f"phases.{name}.epochs must be a whole number >= 0, got {epochs}")
            if override.get("lr") is not None and override["lr"] < 0:
                problems.append(f"phases.{name}.lr must be >= 0, got {override['lr']}")
        if problems:
            raise UsageError("invalid training configuration: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible dict of every field."""
        return dataclasses.asdict(self)

    def result_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` without the keys that do not change results (:data:`NON_RESULT_KEYS`)."""
        return {k: v for k, v in self.to_dict().items() if k not in NON_RESULT_KEYS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise UsageError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**data)


@dataclass(frozen=True)
class Phase:
    """One training phase.

    :param name: ``full`` or the elastic dimension it releases.
    :param released: dimensions sampled in this phase (cumulative, in the space's order).
    :param epochs: epochs (0: skipped).
    :param lr: peak learning rate of its cosine schedule.
    :param sort_channels: call ``space.sort_channels()`` before the phase starts.
    """

    name: str
    released: tuple[str, ...]
    epochs: int
    lr: float
    sort_channels: bool

    @property
    def sandwich(self) -> bool:
        """Whether subnets other than the largest are trained (every phase but ``full``)."""
        return bool(self.released)


def plan_phases(dimensions: Sequence[str], config: TrainConfig,
                channel_dimensions: Sequence[str] = CHANNEL_DIMENSIONS) -> list[Phase]:
    """The phases, in order: ``full`` then one per dimension of ``dimensions``, releasing them cumulatively.

    Skipped phases (0 epochs) are included with ``epochs == 0``. A phase releasing
    ``expand`` or ``width`` sorts channels first.
    """
    dimensions = tuple(dimensions)
    allowed = (FULL_PHASE, *dimensions)
    overrides = config.phases or {}
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise UsageError(f"phases: unknown phase(s) {', '.join(unknown)} for a space with dimensions "
                         f"{', '.join(dimensions) or 'none'}", hint=f"phase names: {', '.join(allowed)}")

    def setting(name: str, key: str, default: float) -> float:
        value = overrides.get(name, {}).get(key)
        return default if value is None else value

    phases = [Phase(FULL_PHASE, (), int(setting(FULL_PHASE, "epochs", config.full_epochs)),
                    float(setting(FULL_PHASE, "lr", config.full_lr)), False)]
    for i, dim in enumerate(dimensions):
        phases.append(Phase(dim, dimensions[: i + 1], int(setting(dim, "epochs", config.shrink_epochs)),
                            float(setting(dim, "lr", config.shrink_lr)), dim in channel_dimensions))
    return phases


def warmup_steps(config: TrainConfig, steps_per_epoch: int, total_steps: int) -> int:
    """Warm-up steps of a phase: ``warmup_epochs`` worth of steps, at most a quarter of the phase."""
    return max(0, min(int(math.ceil(config.warmup_epochs * steps_per_epoch)), total_steps // 4))
