"""Losses of supernet training: the supervised loss on labels and in-place knowledge distillation.

- single-label tasks (multi-class, binary, ordinal): cross-entropy with label smoothing
  (:class:`timm.loss.LabelSmoothingCrossEntropy`); targets are class indices.
- multi-label tasks: BCE-with-logits against the multi-hot targets (:class:`timm.loss.BinaryCrossEntropy`
  with dense targets; smoothing moves each label towards 0.5). Targets are never reduced with argmax.

Distillation (BigNAS / AttentiveNAS in-place KD): a subnet learns the largest subnet's *detached*
output: soft-target cross-entropy against ``softmax(teacher / T)`` for single-label tasks, BCE
against ``sigmoid(teacher / T)`` for multi-label tasks, scaled by ``T²`` (Hinton et al.).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from torch import nn

from mednns.data import Task


def supervised_loss(task: Task | str, smoothing: float = 0.0) -> nn.Module:
    """The loss on labels for ``task``: ``loss(logits, targets)``.

    :param task: the dataset's task.
    :param smoothing: label smoothing in ``[0, 1)``.
    :returns: a module taking float logits ``(N, K)`` and targets: int64 ``(N,)`` class indices,
        or float ``(N, L)`` multi-hot for multi-label tasks.
    """
    if Task(task) is Task.MULTI_LABEL:
        return BinaryCrossEntropy(smoothing=smoothing, smooth_dense=True)
    if smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=smoothing)
    return nn.CrossEntropyLoss()


class DistillationLoss(nn.Module):
    """In-place distillation from a teacher's logits; the teacher is always detached.

    :param task: the dataset's task (decides softmax/cross-entropy or sigmoid/BCE).
    :param temperature: softening temperature ``T``; the loss is multiplied by ``T²``.
    """

    def __init__(self, task: Task | str, temperature: float = 1.0):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.task = Task(task)
        self.temperature = float(temperature)
        self._soft_ce = SoftTargetCrossEntropy()

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        teacher = teacher_logits.detach().float() / t
        student = student_logits.float() / t
        if self.task is Task.MULTI_LABEL:
            loss = F.binary_cross_entropy_with_logits(student, torch.sigmoid(teacher))
        else:
            loss = self._soft_ce(student, torch.softmax(teacher, dim=-1))
        return loss * (t * t)

    def extra_repr(self) -> str:
        return f"task={self.task.value}, temperature={self.temperature}"


def evaluation_loss(task: Task | str) -> nn.Module:
    """The unsmoothed loss reported for validation and test: cross-entropy, or BCE for multi-label."""
    return supervised_loss(task, 0.0)
