"""One training step of the sandwich rule, and the architectures it trains.

Per step (BigNAS / AttentiveNAS): the largest subnet learns from the labels; the smallest and
``n`` random subnets learn from the largest's detached output (in-place distillation), optionally
plus a weighted label loss. Every backward pass accumulates into the same ``.grad`` buffers, and
the caller makes one optimizer step for all of them.
"""

from __future__ import annotations

import contextlib
import logging
import random
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterable, Iterator, Sequence

import torch
from torch import nn

from mednns.supernets import Arch, InvalidArchitecture, Supernet

log = logging.getLogger("mednns.training")


@dataclass(frozen=True)
class StepLosses:
    """Detached losses of one step: the largest's label loss and the mean distillation loss of the others."""

    loss: float
    kd: float
    subnets: int


def phase_smallest(space: Supernet, released: Iterable[str]) -> Arch:
    """The smallest architecture when only ``released`` dimensions may shrink (the others at their largest).

    With every dimension released this is ``space.smallest()``; with none, ``space.largest()``.
    Otherwise the architecture takes the keys named like released dimensions from
    ``space.smallest()`` and the rest from ``space.largest()``; a block that is inactive in the
    smallest but active here gets the smallest choice seen for that key. The result is canonicalized
    with ``space.validate``.
    """
    released = tuple(released)
    if set(space.dimensions) <= set(released):
        return space.smallest()
    if not released:
        return space.largest()
    large, small = space.largest(), space.smallest()
    arch = dict(large)
    for dim in released:
        if dim not in small:
            log.warning("space %s has no architecture key %r; the phase's smallest subnet is the global smallest",
                        type(space).__name__, dim)
            return space.smallest()
        value = small[dim]
        if isinstance(value, list):
            present = [v for v in value if v is not None]
            floor = min(present) if present else None
            value = [floor if v is None and big is not None else v for v, big in zip(value, large[dim])]
        arch[dim] = value
    try:
        return space.validate(arch)
    except InvalidArchitecture as exc:
        log.warning("could not compose the phase's smallest subnet (%s); using the global smallest", exc)
        return space.smallest()


def sample_subnets(space: Supernet, rng: random.Random, released: Sequence[str], count: int) -> list[Arch]:
    """``count`` random architectures varying only the ``released`` dimensions."""
    return [space.sample(rng, dimensions=list(released)) for _ in range(count)]


def sandwich_step(space: Supernet, x: torch.Tensor, y: torch.Tensor, *, largest: Arch, others: Sequence[Arch],
                  supervised: nn.Module, distill: nn.Module, kd_weight: float = 1.0, label_weight: float = 0.0,
                  autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> StepLosses:
    """Forward and backward the largest subnet, then each of ``others``; gradients accumulate.

    :param space: the supernet, in train mode.
    :param x: the batch; :param y: its targets.
    :param largest: the teacher architecture (trained on the labels).
    :param others: students (smallest + random), trained on ``kd_weight * KD + label_weight * label loss``;
        empty in the full-network phase.
    :param supervised: the label loss; :param distill: the distillation loss ``(student, teacher)``.
    :param autocast: a context-manager factory wrapping each forward (mixed precision).
    :returns: the detached losses. No ``zero_grad`` and no optimizer step: the caller owns both.
    """
    space.set_active(largest)
    with autocast():
        logits = space(x)
    loss = supervised(logits.float(), y)
    loss.backward()
    teacher = logits.detach()
    kd_total = 0.0
    for arch in others:
        space.set_active(arch)
        with autocast():
            student = space(x)
        kd = distill(student.float(), teacher)
        total = kd_weight * kd
        if label_weight:
            total = total + label_weight * supervised(student.float(), y)
        total.backward()
        kd_total += float(kd.detach())
    space.set_active(largest)
    return StepLosses(float(loss.detach()), kd_total / len(others) if others else float("nan"), 1 + len(others))


def all_reduce_gradients(model: nn.Module, world_size: int) -> None:
    """Average gradients over ranks (``torch.distributed``), for multi-process training.

    Every rank samples the same architectures (identically seeded RNG), so the same parameters
    hold gradients everywhere. A no-op unless the default process group is initialized.
    """
    import torch.distributed as dist

    if world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        return
    for param in model.parameters():
        if param.grad is not None:
            dist.all_reduce(param.grad)
            param.grad.div_(world_size)


def all_reduce_mean(values: Sequence[float], world_size: int) -> list[float]:
    """The mean of ``values`` over ranks (``torch.distributed``); ``values`` unchanged in a single process."""
    import torch.distributed as dist

    if world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        return list(values)
    tensor = torch.tensor(list(values), dtype=torch.float64)
    dist.all_reduce(tensor)
    return (tensor / world_size).tolist()


@contextlib.contextmanager
def synchronized_batch_norm(world_size: int) -> Iterator[None]:
    """Within the block, batch norm in training mode normalizes with statistics over every rank's
    batch, as one process with the global batch would (sync BN): per channel, the sums and sums of
    squares are all-reduced differentiably (``torch.distributed.nn``), so the gradients, averaged
    over ranks afterwards, are the global batch's. Every batch-norm layer that calls
    ``torch.nn.functional.batch_norm`` is covered (the supernets' dynamic ones and plain
    ``nn.BatchNorm2d``). A no-op unless a process group of several ranks is initialized.
    """
    import torch.distributed as dist
    import torch.nn.functional as F

    if world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        yield
        return
    from torch.distributed.nn.functional import all_reduce

    local = F.batch_norm

    def batch_norm(input: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                   weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, training: bool = False,
                   momentum: float = 0.1, eps: float = 1e-5) -> torch.Tensor:
        if not training:
            return local(input, running_mean, running_var, weight, bias, training, momentum, eps)
        x = input.float()
        dims = [0, *range(2, x.ndim)]
        channels = x.shape[1]
        shape = (1, channels) + (1,) * (x.ndim - 2)
        count = torch.full((1,), x.numel() / channels, dtype=torch.float32, device=x.device)
        local_mean = x.mean(dims)
        # Chan et al.'s parallel variance: the global mean first, then every rank's squared deviations
        # from its own mean plus its count times its mean's offset (no E[x^2] - E[x]^2 cancellation)
        total = all_reduce(torch.cat([local_mean * count, count]))
        n = total[-1]
        mean = total[:channels] / n
        local_m2 = ((x - local_mean.view(shape)) ** 2).sum(dims)
        var = all_reduce(local_m2 + count * (local_mean - mean) ** 2) / n
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + eps)
        if weight is not None:
            out = out * weight.view(shape)
        if bias is not None:
            out = out + bias.view(shape)
        if running_mean is not None and running_var is not None:
            with torch.no_grad():
                running_mean.mul_(1 - momentum).add_(mean.detach() * momentum)
                running_var.mul_(1 - momentum).add_(var.detach() * (n / max(float(n) - 1, 1.0)) * momentum)
        return out.to(input.dtype)

    F.batch_norm = batch_norm
    try:
        yield
    finally:
        F.batch_norm = local
