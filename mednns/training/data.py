"""The tensors of supernet training: train and validation splits in memory, the batch order, the calibration set.

Everything random is derived from one seed with :func:`mednns.seeding.derive_seed`, and never from
global state: the training subset (``max_train_images``), each epoch's order (identical on every
rank, then sharded by rank) and the fixed BN-calibration images. The test split is not read here;
:meth:`TrainingData.test` loads it on demand, for the final evaluation only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from mednns.data import MedicalDataset, Task, dataset_tensors
from mednns.data.tensors import dataset_stats
from mednns.errors import UsageError
from mednns.seeding import derive_seed, torch_generator

log = logging.getLogger("mednns.training")


@dataclass(frozen=True)
class Shard:
    """How one rank walks an epoch: ``steps`` batches of ``batch_size`` images."""

    steps: int
    batch_size: int


class TrainingData:
    """Normalized tensors of one dataset for training, validation and BN calibration.

    :param dataset: the dataset; its ``train`` split is read at construction, ``val`` too.
    :param channels: input channels of the network (``None``: the dataset's); 1 ↔ 3 are adapted.
    :param seed: the training seed.
    :param batch_size: images per step *per rank*.
    :param max_train_images: use a seeded random subset of this many training images.
    :param min_steps_per_epoch: an epoch is at least this many steps (more than one pass over a
        small training set).
    :param calibration_images: images of the fixed BN-calibration set (taken from the training images used).
    :param calibration_batch_size: its batch size; the set is a whole number of equal-size batches.
    :param rank: this process's rank; :param world_size: the number of processes.
    """

    def __init__(self, dataset: MedicalDataset, *, channels: int | None, seed: int, batch_size: int,
                 max_train_images: int | None = None, min_steps_per_epoch: int = 0, calibration_images: int = 512,
                 calibration_batch_size: int = 128, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.dataset = dataset
        self.info = dataset.info
        self.task: Task = dataset.info.task
        self.channels = channels
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.train_x, self.train_y = dataset_tensors(dataset, "train", channels=channels)
        self.val_x, self.val_y = dataset_tensors(dataset, "val", channels=channels)
        self.mean, self.std = dataset_stats(dataset, "train", channels=channels)
        if max_train_images is not None and max_train_images < len(self.train_x):
            keep = torch.randperm(len(self.train_x), generator=torch_generator(derive_seed(seed, "subset")))
            keep = keep[:max_train_images].sort().values
            self.train_x, self.train_y = self.train_x[keep], self.train_y[keep]
        n = len(self.train_x)
        per_rank = n // world_size
        if per_rank < 2:
            raise UsageError(f"{self.info.name}: {n} training image(s) for {world_size} rank(s); "
                             "each rank needs at least 2 (batch norm)")
        if len(self.val_x) == 0:
            raise UsageError(f"{self.info.name}: the validation split is empty; training validates on it")
        size = min(batch_size, per_rank)
        self.shard = Shard(max(per_rank // size, min_steps_per_epoch), size)
        self.calibration = self._calibration_batches(calibration_images, calibration_batch_size)

    # -- training batches --------------------------------------------------------
    @property
    def steps_per_epoch(self) -> int:
        return self.shard.steps

    def epoch_order(self, phase: str, epoch: int) -> torch.Tensor:
        """``(steps, batch_size)`` indices of this rank's batches for one epoch.

        The permutation depends only on the seed, the phase and the epoch (the same on every
        rank); rank ``r`` takes every ``world_size``-th image from ``r`` on; the tail that does not
        fill a batch is dropped. An epoch longer than one pass (``min_steps_per_epoch``) goes on
        with further permutations, each one whole pass.
        """
        used = self.shard.steps * self.shard.batch_size
        passes, mine, have = 0, [], 0
        while have < used:
            key = (phase, epoch) if passes == 0 else (phase, epoch, passes)
            order = torch.randperm(len(self.train_x), generator=torch_generator(derive_seed(self.seed, "order", *key)))
            part = order[self.rank :: self.world_size]
            part = part[: len(part) // self.shard.batch_size * self.shard.batch_size]  # whole batches per pass
            mine.append(part)
            have += len(part)
            passes += 1
        return torch.cat(mine)[:used].view(self.shard.steps, self.shard.batch_size)

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.train_x[indices], self.train_y[indices]

    # -- calibration and evaluation ----------------------------------------------
    def _calibration_batches(self, images: int, batch_size: int) -> list[torch.Tensor]:
        n = len(self.train_x)
        batch_size = min(batch_size, n)
        count = max(1, min(images, n) // batch_size) * batch_size
        if count < images:
            log.warning("%s: BN calibration uses %d training images (%d asked for)", self.info.name, count, images)
        order = torch.randperm(n, generator=torch_generator(derive_seed(self.seed, "calibration")))[:count]
        return list(self.train_x[order].split(batch_size))

    def test(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The test split (read on first call); only the final evaluation uses it."""
        return dataset_tensors(self.dataset, "test", channels=self.channels)
