"""Supernet training: progressive shrinking with the sandwich rule and in-place distillation.

Public API::

    from mednns.training import SupernetTrainer, TrainConfig, load_supernet

    final = SupernetTrainer(space, dataset, "out/pneumonia", TrainConfig(full_epochs=2),
                            space_name="ofa_resnet", seed=0).fit()
    space, metadata = load_supernet("out/pneumonia")
    net = space.extract(space.smallest())

Modules, one job each: :mod:`~mednns.training.config` (hyper-parameters, phase plan),
:mod:`~mednns.training.losses` (label loss, distillation), :mod:`~mednns.training.augment`
(batch augmentation), :mod:`~mednns.training.data` (tensors, batch order, calibration set),
:mod:`~mednns.training.sandwich` (one sandwich step), :mod:`~mednns.training.evaluation`
(subnet evaluation after BN recalibration), :mod:`~mednns.training.checkpoint` (checkpoints,
final files, :func:`load_supernet`), :mod:`~mednns.training.metrics_log` (``metrics.csv``) and
:mod:`~mednns.training.trainer` (the loop).
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> (module, attribute); imported on first access (PEP 562) so that importing
# mednns.training.config stays free of torch and timm.
_EXPORTS: dict[str, tuple[str, str]] = {
    "Augmentation": ("mednns.training.augment", "Augmentation"),
    "Checkpoint": ("mednns.training.checkpoint", "Checkpoint"),
    "CheckpointEvent": ("mednns.training.trainer", "CheckpointEvent"),
    "DistillationLoss": ("mednns.training.losses", "DistillationLoss"),
    "FULL_PHASE": ("mednns.training.config", "FULL_PHASE"),
    "METRIC_COLUMNS": ("mednns.training.metrics_log", "COLUMNS"),
    "Phase": ("mednns.training.config", "Phase"),
    "StepLosses": ("mednns.training.sandwich", "StepLosses"),
    "SupernetTrainer": ("mednns.training.trainer", "SupernetTrainer"),
    "TrainConfig": ("mednns.training.config", "TrainConfig"),
    "TrainProgress": ("mednns.training.trainer", "TrainProgress"),
    "TrainingData": ("mednns.training.data", "TrainingData"),
    "all_reduce_gradients": ("mednns.training.sandwich", "all_reduce_gradients"),
    "evaluate": ("mednns.training.evaluation", "evaluate"),
    "evaluation_loss": ("mednns.training.losses", "evaluation_loss"),
    "load_checkpoint": ("mednns.training.checkpoint", "load_checkpoint"),
    "load_supernet": ("mednns.training.checkpoint", "load_supernet"),
    "load_weights": ("mednns.training.checkpoint", "load_weights"),
    "median_arch": ("mednns.training.evaluation", "median_arch"),
    "metrics_from_logits": ("mednns.training.evaluation", "metrics_from_logits"),
    "phase_smallest": ("mednns.training.sandwich", "phase_smallest"),
    "plan_phases": ("mednns.training.config", "plan_phases"),
    "predict": ("mednns.training.evaluation", "predict"),
    "random_crop": ("mednns.training.augment", "random_crop"),
    "random_hflip": ("mednns.training.augment", "random_hflip"),
    "read_metrics_csv": ("mednns.training.metrics_log", "read_metrics_csv"),
    "sample_subnets": ("mednns.training.sandwich", "sample_subnets"),
    "sandwich_step": ("mednns.training.sandwich", "sandwich_step"),
    "save_checkpoint": ("mednns.training.checkpoint", "save_checkpoint"),
    "save_supernet": ("mednns.training.checkpoint", "save_supernet"),
    "save_weights": ("mednns.training.checkpoint", "save_weights"),
    "supervised_loss": ("mednns.training.losses", "supervised_loss"),
    "train_supernet": ("mednns.training.trainer", "train_supernet"),
    "write_metrics_csv": ("mednns.training.metrics_log", "write_metrics_csv"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'mednns.training' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
