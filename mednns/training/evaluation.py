"""Evaluating one subnet of a supernet: BN recalibration, then metrics on a split.

:func:`evaluate` is what training validation, the final test report and the model zoo share:
the subnet is extracted (a standalone copy) and its BN statistics re-estimated on fixed
training batches, so the supernet's shared buffers are never touched; with ``extract=False`` the
supernet itself runs the subnet inside :func:`~mednns.supernets.preserved_bn_statistics`.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from mednns.data import Task, balanced_accuracy, compute_metrics, logits_to_scores
from mednns.supernets import Arch, Supernet, preserved_bn_statistics, recalibrate_bn
from mednns.training.losses import evaluation_loss


def _on_device(batches: Iterable[torch.Tensor], device: torch.device,
               memory_format: torch.memory_format) -> Iterator[torch.Tensor]:
    for batch in batches:
        yield _prepare(batch, device, memory_format)


def _prepare(x: torch.Tensor, device: torch.device, memory_format: torch.memory_format) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=memory_format) if x.ndim == 4 else x


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 256, *,
            device: torch.device | str | None = None,
            memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """Float32 logits of ``model`` (in eval mode) for every image of ``x``, on the CPU."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    outputs = [model(_prepare(chunk, device, memory_format)).float().cpu() for chunk in x.split(batch_size)]
    return torch.cat(outputs) if outputs else torch.empty(0)


def metrics_from_logits(task: Task | str, logits: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """``acc``, ``auc`` (MedMNIST definitions), ``bal_acc`` (mean per-class recall) and the unsmoothed
    ``loss`` of ``logits`` against ``y``."""
    task = Task(task)
    target = y.float() if task is Task.MULTI_LABEL else y.long()
    loss = float(evaluation_loss(task)(logits.float(), target)) if len(y) else float("nan")
    scores = logits_to_scores(task, logits)
    metrics = compute_metrics(task, y.numpy(), scores)
    return {**metrics, "bal_acc": balanced_accuracy(task, y.numpy(), scores), "loss": loss}


@contextlib.contextmanager
def _restored(space: Supernet) -> Iterator[None]:
    """Restore the supernet's active architecture and train/eval mode on exit."""
    active, training = space.active(), space.training
    try:
        yield
    finally:
        space.set_active(active)
        space.train(training)


def evaluate(space: Supernet, arch: Arch, calibration_batches: Sequence[torch.Tensor], x: torch.Tensor,
             y: torch.Tensor, task: Task | str, batch_size: int = 256, *, extract: bool = True,
             device: torch.device | str | None = None, channels_last: bool = False,
             return_logits: bool = False) -> dict[str, Any]:
    """Metrics of subnet ``arch`` on ``(x, y)`` after BN recalibration.

    :param space: the supernet (left as it was: active architecture, mode and BN buffers).
    :param arch: the subnet.
    :param calibration_batches: equal-size batches of training images (fixed across calls, so
        every subnet is calibrated on the same images).
    :param x: images (normalized, channels-first), any device; :param y: targets
        (class indices, or multi-hot for multi-label tasks).
    :param task: the dataset's task.
    :param batch_size: evaluation batch size.
    :param extract: calibrate and run ``space.extract(arch)`` (default); ``False`` runs the supernet
        itself with its BN statistics restored afterwards.
    :param device: where to run (default: the supernet's device).
    :param return_logits: also return the logits (``"logits"``, a CPU tensor).
    :returns: ``{"acc", "auc", "loss", "n"}`` (+ ``"logits"``).
    """
    device = torch.device(device) if device is not None else next(space.parameters()).device
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    with _restored(space), torch.inference_mode():
        if extract:
            model = space.extract(arch).to(device)
            if channels_last:
                model = model.to(memory_format=torch.channels_last)
            recalibrate_bn(model, _on_device(calibration_batches, device, memory_format))
            logits = predict(model, x, batch_size, device=device, memory_format=memory_format)
        else:
            with preserved_bn_statistics(space):
                space.set_active(arch)
                recalibrate_bn(space, _on_device(calibration_batches, device, memory_format))
                logits = predict(space, x, batch_size, device=device, memory_format=memory_format)
    result: dict[str, Any] = {**metrics_from_logits(task, logits, y.cpu()), "n": int(len(y))}
    if return_logits:
        result["logits"] = logits
    return result


def median_arch(space: Supernet, rng_seed: int, samples: int, input_size: int | Sequence[int]) -> tuple[Arch, int]:
    """The median-sized (by parameters) of ``samples`` random architectures, and its parameter count."""
    import random

    rng = random.Random(rng_seed)
    archs = [space.sample(rng) for _ in range(samples)]
    params = [int(space.cost(a, input_size)["params"]) for a in archs]
    order = np.argsort(params, kind="stable")
    index = int(order[(len(order) - 1) // 2])
    return archs[index], params[index]
