"""Shared pieces of the supernet-training tests: tiny spaces and tiny datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mednns.data import ArrayDataset, DatasetInfo, MedicalDataset, SplitArrays
from mednns.manager import PluginManager
from mednns.search_spaces.ofa_mobilenetv3 import OFAMobileNetV3
from mednns.search_spaces.ofa_resnet import OFAResNet

#: Overrides of the cpu preset that make OFA-ResNet tiny (two stages, 8–32 channels).
TINY_RESNET: dict[str, Any] = {"stage_widths": [16, 32], "base_depths": [1, 1], "depth_choices": [0, 1],
                               "expand_choices": [0.5, 1.0], "width_mults": [0.5, 1.0], "stem_width": 8}
#: Overrides of the cpu preset that make OFA-MobileNetV3 tiny.
TINY_MOBILENET: dict[str, Any] = {"width_mult": 0.25, "stage_widths": [24, 40], "stage_acts": ["relu", "hard_swish"],
                                  "stage_se": [False, True], "stage_strides": [2, 2], "depth_choices": [1, 2],
                                  "expand_choices": [3, 4], "final_expand_width": 64, "last_channel": 64}



def tiny_resnet(in_channels: int = 1, num_classes: int = 3) -> OFAResNet:
    return OFAResNet(in_channels, num_classes, "cpu", **TINY_RESNET)


def tiny_mobilenet(in_channels: int = 1, num_classes: int = 3) -> OFAMobileNetV3:
    return OFAMobileNetV3(in_channels, num_classes, "cpu", **TINY_MOBILENET)


def _split(rng: np.random.Generator, n: int, size: int, channels: int, n_classes: int, multilabel: bool) -> SplitArrays:
    """Learnable images: class k brightens the k-th horizontal band."""
    images = rng.integers(0, 96, (n, size, size, channels), dtype=np.uint8)
    band = max(1, size // n_classes)
    if multilabel:
        labels = (rng.random((n, n_classes)) < 0.4).astype(np.int64)
        for k in range(n_classes):
            images[labels[:, k] == 1, k * band:(k + 1) * band] += 120
        return SplitArrays(images, labels)
    labels = np.arange(n) % n_classes
    rng.shuffle(labels)
    for k in range(n_classes):
        images[labels == k, k * band:(k + 1) * band] += 120
    return SplitArrays(images, labels[:, None])


def tiny_arrays(seed: int = 0, size: int = 12, channels: int = 1, n_classes: int = 3, multilabel: bool = False,
                sizes: tuple[int, int, int] = (96, 32, 32)) -> dict[str, SplitArrays]:
    rng = np.random.default_rng(seed)
    return {split: _split(rng, n, size, channels, n_classes, multilabel)
            for split, n in zip(("train", "val", "test"), sizes)}


def tiny_dataset(name: str = "tiny", **kwargs: Any) -> ArrayDataset:
    multilabel = kwargs.get("multilabel", False)
    n_classes = kwargs.get("n_classes", 3)
    arrays = tiny_arrays(**kwargs)
    task = "multi-label" if multilabel else ("binary" if n_classes == 2 else "multi-class")
    info = DatasetInfo(name, task, arrays["train"].images.shape[-1], n_classes,
                       tuple(str(i) for i in range(n_classes)), arrays["train"].images.shape[1:3],
                       split_sizes={k: len(v) for k, v in arrays.items()})
    return ArrayDataset(info, arrays)


def write_tiny_npz(path: Path, **kwargs: Any) -> Path:
    arrays = tiny_arrays(**kwargs)
    np.savez_compressed(path, **{f"{split}_{part}": getattr(a, part) for split, a in arrays.items()
                                 for part in ("images", "labels")})
    return path


class CountingDataset(MedicalDataset):
    """Wraps a dataset and records every ``split()`` access (to prove the test split is left alone)."""

    def __init__(self, inner: MedicalDataset):
        super().__init__()
        self.inner = inner
        self.accesses: list[str] = []

    @property
    def info(self) -> DatasetInfo:
        return self.inner.info

    def load_split(self, split: str) -> SplitArrays:
        return self.inner.split(split)

    def split(self, split: str) -> SplitArrays:
        self.accesses.append(split)
        return super().split(split)


def make_manager() -> PluginManager:
    """A fresh plugin manager (built-ins: the OFA spaces and the train_supernet stage) for in-process tests."""
    return PluginManager(environ={})


def timm_offline(patch: Any, message: str = "no internet here") -> None:
    """No internet in tests: timm's pretrained weights fail to load with ``message`` (an OSError), as
    they do on a machine without a network or a filled cache; models without weights still build."""
    import timm

    original = timm.create_model

    def offline(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError(message)
        return original(name, pretrained=False, **kwargs)

    patch.setattr(timm, "create_model", offline)
