"""One seed for python, numpy, torch and data loaders."""

from __future__ import annotations

import random
import zlib

import numpy as np


def derive_seed(seed: int, *keys: object) -> int:
    """A stable 31-bit seed for a named sub-task (a stage, a dataset, a rank)."""
    text = ":".join([str(seed), *map(str, keys)])
    return zlib.crc32(text.encode()) & 0x7FFFFFFF


def seed_everything(seed: int) -> None:
    """Seed ``random``, ``numpy`` and ``torch`` (CPU and every GPU)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def torch_generator(seed: int):
    """A ``torch.Generator`` for a DataLoader's shuffling and sampling."""
    import torch

    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` for DataLoaders: derive numpy/random seeds from torch's per-worker seed."""
    import torch

    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)
