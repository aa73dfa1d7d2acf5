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

from mednns._exports import lazy_exports

# imported on first access so that importing mednns.training.config stays free of torch and timm
__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), {
    "Augmentation": "mednns.training.augment",
    "Checkpoint": "mednns.training.checkpoint",
    "CheckpointEvent": "mednns.training.trainer",
    "DistillationLoss": "mednns.training.losses",
    "FINAL": "mednns.training.config",
    "FULL_PHASE": "mednns.training.config",
    "METRIC_COLUMNS": "mednns.training.metrics_log:COLUMNS",
    "Phase": "mednns.training.config",
    "SUPERNET_METADATA": "mednns.training.config",
    "SUPERNET_WEIGHTS": "mednns.training.config",
    "StepLosses": "mednns.training.sandwich",
    "SupernetTrainer": "mednns.training.trainer",
    "TrainConfig": "mednns.training.config",
    "TrainProgress": "mednns.training.trainer",
    "TrainingData": "mednns.training.data",
    "all_reduce_gradients": "mednns.training.sandwich",
    "evaluate": "mednns.training.evaluation",
    "evaluation_loss": "mednns.training.losses",
    "load_checkpoint": "mednns.training.checkpoint",
    "load_supernet": "mednns.training.checkpoint",
    "load_weights": "mednns.training.checkpoint",
    "read_weights": "mednns.training.checkpoint",
    "median_arch": "mednns.training.evaluation",
    "metrics_from_logits": "mednns.training.evaluation",
    "phase_smallest": "mednns.training.sandwich",
    "plan_phases": "mednns.training.config",
    "predict": "mednns.training.evaluation",
    "random_crop": "mednns.training.augment",
    "random_hflip": "mednns.training.augment",
    "read_metrics_csv": "mednns.training.metrics_log",
    "sample_subnets": "mednns.training.sandwich",
    "sandwich_step": "mednns.training.sandwich",
    "save_checkpoint": "mednns.training.checkpoint",
    "save_supernet": "mednns.training.checkpoint",
    "save_weights": "mednns.training.checkpoint",
    "supervised_loss": "mednns.training.losses",
    "train_supernet": "mednns.training.trainer",
    "weights_problem": "mednns.training.checkpoint",
    "write_metrics_csv": "mednns.training.metrics_log",
})
