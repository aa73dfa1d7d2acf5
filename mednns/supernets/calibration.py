"""Batch-norm recalibration: re-estimate running statistics for the active (or an extracted) network.

Weight sharing leaves a supernet's BN statistics fit to a mix of subnets; before
evaluating one subnet, its statistics are re-estimated on a fixed set of
training batches: momentum ``None`` (cumulative average), statistics reset,
forward in train mode under no-grad. Calibrating a supernet in place overwrites
its shared buffers: use :func:`preserved_bn_statistics` around it.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def batch_norms(model: nn.Module) -> list[_BatchNorm]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def running_statistics(bn: _BatchNorm) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Running mean, running variance and batch count of a layer that tracks running statistics."""
    assert bn.running_mean is not None and bn.running_var is not None and bn.num_batches_tracked is not None
    return bn.running_mean, bn.running_var, bn.num_batches_tracked


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Re-estimate every BN layer's running statistics from ``batches``; returns the number of images used
    (0, without a forward pass, for a model without BN layers).

    The model is left in eval mode; momenta are restored afterwards. Use
    batches of equal size: the result is then the mean of the per-batch
    statistics, which for the running mean equals the mean over all images.
    """
    layers = batch_norms(model)
    if not layers:  # nothing to estimate (e.g. a transformer with layer norms only)
        model.eval()
        return 0
    momenta = [bn.momentum for bn in layers]
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    seen = 0
    try:
        for x in batches:
            model(x)
            seen += x.shape[0]
    finally:
        for bn, momentum in zip(layers, momenta):
            bn.momentum = momentum
        model.eval()
    if seen == 0 and layers:
        raise ValueError("recalibrate_bn got no batches: the BN statistics were reset and nothing re-estimated them")
    return seen


@contextlib.contextmanager
def preserved_bn_statistics(model: nn.Module) -> Iterator[None]:
    """Restore every BN buffer (running mean/var, batch count) on exit."""
    saved = [(bn, [t.clone() for t in running_statistics(bn)]) for bn in batch_norms(model) if bn.track_running_stats]
    try:
        yield
    finally:
        with torch.no_grad():
            for bn, copies in saved:
                for buffer, copy in zip(running_statistics(bn), copies):
                    buffer.copy_(copy)


@torch.no_grad()
def permute_bn(bn: _BatchNorm, idx: torch.Tensor) -> None:
    """Reorder a batch norm's channels (affine parameters and running statistics) by ``idx``, in place:
    what channel sorting does to the BN after a conv whose output channels it reorders."""
    for tensor in (bn.weight, bn.bias, bn.running_mean, bn.running_var):
        if tensor is not None:
            tensor.copy_(tensor.index_select(0, idx))
