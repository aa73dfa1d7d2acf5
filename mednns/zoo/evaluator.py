"""Evaluating many subnets of one supernet fast: data prepared once, one pass per subnet.

:class:`~mednns.zoo.settings.ZooProtocol` fixes what a zoo row's numbers mean;
:class:`EvaluationData` holds the dataset's tensors for it, normalized once; and
:class:`SubnetEvaluator` turns an architecture into validation and test metrics:

1. ``space.extract(arch)``: a standalone copy with the inherited weights (the supernet's own
   BN buffers are never touched, so evaluations are independent of their order);
2. BN recalibration on the fixed calibration batches (train mode, no grad, cumulative averages);
3. one inference pass over validation and test images together, then metrics per split.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch
from torch import nn

from mednns.data import MedicalDataset, Task, dataset_tensors
from mednns.errors import UsageError
from mednns.seeding import derive_seed, torch_generator
from mednns.supernets import Arch, Supernet, recalibrate_bn
from mednns.training.evaluation import metrics_from_logits, predict
from mednns.zoo.settings import ZooProtocol

log = logging.getLogger("mednns.zoo")


def _subset(x: torch.Tensor, y: torch.Tensor, cap: int | None, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    if cap is None or cap >= len(x):
        return x, y
    keep = torch.randperm(len(x), generator=torch_generator(seed))[:cap].sort().values
    return x[keep], y[keep]


@dataclass
class EvaluationData:
    """The tensors of one dataset under a protocol (normalized with its training statistics)."""

    task: Task
    calibration: list[torch.Tensor]
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    @classmethod
    def from_dataset(cls, dataset: MedicalDataset, protocol: ZooProtocol, *, channels: int | None = None,
                     mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> "EvaluationData":
        """Read the three splits once.

        :param channels: input channels of the supernet (1 ↔ 3 adapted).
        :param mean: :param std: the normalization the supernet was trained with (checked against
            the dataset's own training statistics: a mismatch means another dataset or version).
        """
        name = dataset.info.name
        train_x, _ = dataset_tensors(dataset, "train", channels=channels)
        if mean is not None and std is not None:
            from mednns.data.tensors import dataset_stats

            here_mean, here_std = dataset_stats(dataset, "train", channels=channels)
            if not (torch.allclose(torch.tensor(here_mean), torch.tensor(list(mean)), atol=1e-4)
                    and torch.allclose(torch.tensor(here_std), torch.tensor(list(std)), atol=1e-4)):
                raise UsageError(f"{name}: its training images have mean/std {here_mean}/{here_std}, the "
                                 f"supernet was trained with {list(mean)}/{list(std)}",
                                 hint="evaluate a supernet on the dataset (and version) it was trained on")
        size = min(protocol.calibration_batch_size, len(train_x))
        count = max(1, min(protocol.calibration_images, len(train_x)) // size) * size
        if count < protocol.calibration_images:
            log.warning("%s: BN calibration uses %d training images (%d asked for)", name, count,
                        protocol.calibration_images)
        order = torch.randperm(len(train_x), generator=torch_generator(derive_seed(protocol.seed, "zoo-calibration")))
        calibration = list(train_x[order[:count]].clone().split(size))
        del train_x
        val_x, val_y = _subset(*dataset_tensors(dataset, "val", channels=channels), protocol.max_val_images,
                               derive_seed(protocol.seed, "zoo-val"))
        test_x, test_y = _subset(*dataset_tensors(dataset, "test", channels=channels), protocol.max_test_images,
                                 derive_seed(protocol.seed, "zoo-test"))
        if len(val_x) == 0 or len(test_x) == 0:
            raise UsageError(f"{name}: the zoo evaluates on the val and test splits; one of them is empty")
        return cls(dataset.info.task, calibration, val_x.contiguous(), val_y, test_x.contiguous(), test_y)

    @property
    def images_per_subnet(self) -> int:
        """Images one evaluation forwards (calibration + validation + test)."""
        return sum(len(b) for b in self.calibration) + len(self.val_x) + len(self.test_x)


class SubnetEvaluator:
    """Validation and test metrics of subnets of one supernet under one protocol.

    :param space: the trained supernet (not modified).
    :param data: the prepared tensors.
    :param batch_size: inference batch size.
    :param channels_last: run in channels-last memory format (1.7x faster than channels-first for
        the cpu presets at 28 px on 2 cores: see ``benchmarks/zoo_cpu.py``).
    :param device: where to run (default: the supernet's device).
    """

    def __init__(self, space: Supernet, data: EvaluationData, *, batch_size: int = 256, channels_last: bool = True,
                 device: torch.device | str | None = None):
        self.space = space
        self.data = data
        self.batch_size = batch_size
        self.device = torch.device(device) if device is not None else next(space.parameters()).device
        images_2d = data.val_x.ndim == 4  # channels-last exists for 2D images only
        self.memory_format = torch.channels_last if channels_last and images_2d else torch.contiguous_format
        self.calibration = [self._prepare(b) for b in data.calibration]
        self.inputs = self._prepare(torch.cat([data.val_x, data.test_x]))
        self.n_val = len(data.val_x)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        return x.contiguous(memory_format=self.memory_format) if x.ndim == 4 else x

    @torch.inference_mode()
    def network(self, arch: Arch) -> nn.Module:
        """The extracted, recalibrated network of ``arch``, in eval mode."""
        model = self.space.extract(arch).to(self.device)
        if self.memory_format is torch.channels_last:
            model = model.to(memory_format=torch.channels_last)
        recalibrate_bn(model, self.calibration)
        model.eval()
        return model

    def __call__(self, arch: Arch) -> dict[str, Any]:
        """``{"val": {acc, auc, loss, n}, "test": {...}, "seconds": wall time}``."""
        start = time.perf_counter()
        with torch.inference_mode():
            model = self.network(arch)
            logits = predict(model, self.inputs, self.batch_size, device=self.device, memory_format=self.memory_format)
        result: dict[str, Any] = {}
        for split, part, y in (("val", logits[: self.n_val], self.data.val_y),
                               ("test", logits[self.n_val :], self.data.test_y)):
            result[split] = {**metrics_from_logits(self.data.task, part, y), "n": int(len(y))}
        result["seconds"] = time.perf_counter() - start
        return result
