"""A third-party mednns plugin: the ``synthetic_lesions`` dataset.

Each image is smooth noisy "tissue"; positives carry one bright, blurred,
elliptical lesion at a random position. Everything derives from ``seed``, so a
config reproduces the same data everywhere.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

import mednns
from mednns.data import ArrayDataset, DatasetInfo, SplitArrays, Task


def _scan(rng: np.random.Generator, size: int, lesion: bool, contrast: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size] / size
    tissue = 0.35 + 0.1 * np.sin(2 * np.pi * (xx * rng.uniform(1, 3) + yy * rng.uniform(1, 3)))
    tissue += rng.normal(0, 0.05, (size, size))
    if lesion:
        cy, cx = rng.uniform(0.2, 0.8, 2)
        ry, rx = rng.uniform(0.06, 0.18, 2)
        tissue += contrast * np.exp(-(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2))
    return np.clip(tissue * 255, 0, 255).astype(np.uint8)


def synthetic_lesions(n_train: int = 400, n_val: int = 100, n_test: int = 200, image_size: int = 28,
                      channels: Literal[1, 3] = 1, positive_fraction: float = 0.5, contrast: float = 0.35,
                      seed: int = 0) -> ArrayDataset:
    """Generate the dataset (about 1 ms per image at 28x28)."""
    if not 0 < positive_fraction < 1:
        raise mednns.DatasetError(f"positive_fraction must be in (0, 1), got {positive_fraction}")
    rng = np.random.default_rng(seed)
    splits = {}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        labels = (rng.random(n) < positive_fraction).astype(np.int64)
        images = np.stack([_scan(rng, image_size, bool(y), contrast) for y in labels]) if n else \
            np.zeros((0, image_size, image_size), np.uint8)
        images = np.repeat(images[..., None], channels, axis=-1)
        splits[split] = SplitArrays(images, labels[:, None])
    info = DatasetInfo(name="synthetic_lesions", task=Task.BINARY, n_channels=channels, n_classes=2,
                       label_names=("healthy", "lesion"), image_size=(image_size, image_size),
                       modality="synthetic", split_sizes={k: len(v) for k, v in splits.items()},
                       source=f"mednns-example-plugin (seed {seed})")
    return ArrayDataset(info, splits)


@mednns.hookimpl
def register_datasets(register):
    register("synthetic_lesions", synthetic_lesions,
             description="Seeded synthetic scans with or without a bright lesion (binary; example plugin)")
