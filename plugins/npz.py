"""Built-in plugin: ``npz``, any MedMNIST-layout ``.npz`` file.

The file holds ``train_images``, ``train_labels``, ``val_images``, ``val_labels``,
``test_images`` and ``test_labels`` (uint8 images, integer labels); see
:class:`mednns.data.NpzDataset`.
"""

from pathlib import Path
from typing import Callable, Literal

import mednns
from mednns.data import NpzDataset


def npz_dataset(
    path: Path,
    name: str | None = None,
    task: Literal["multi-class", "binary", "ordinal", "multi-label"] | None = None,
    label_names: list[str] | None = None,
    modality: str = "unknown",
) -> NpzDataset:
    """A MedMNIST-layout ``.npz`` file.

    :param path: the ``.npz`` file.
    :param name: dataset name (default: the file name without ``.npz``).
    :param task: label semantics; inferred when omitted (multi-hot labels:
        multi-label; 2 classes: binary; else multi-class). Give ``ordinal`` for graded classes.
    :param label_names: class names in label order (default ``"0"``, ``"1"``, ...).
    :param modality: imaging modality, for reports.
    """
    return NpzDataset(path, name=name, task=task, label_names=label_names, modality=modality)


@mednns.hookimpl
def register_datasets(register: Callable[..., None]) -> None:
    """Register the ``npz`` dataset source."""
    register("npz", npz_dataset, description="MedMNIST-layout .npz file (train/val/test _images and _labels)")
