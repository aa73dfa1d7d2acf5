"""The ``volume_slices`` dataset: 3D volumes of a MedMNIST-layout ``.npz`` served as 2.5D images.

Construction is cheap: the file's layout, dtypes, split sizes and labels are checked by mednns's
own :class:`~mednns.data.NpzDataset` (array headers and the small label arrays only); pixels are
read, sliced, windowed and resized per split in :meth:`VolumeSlicesDataset.load_split`, streaming a
chunk of volumes at a time.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import numpy as np

from mednns.data import DatasetInfo, MedicalDataset, NpzDataset, SplitArrays
from mednns.errors import DatasetError, MednnsError, UsageError
from mednns_volumes.reader import iter_chunks, load_array
from mednns_volumes.slicing import axial_indices, axial_stack, orthogonal_slices, to_channels, window_table

Mode = Literal["orthogonal", "axial_stack"]
MODES = ("orthogonal", "axial_stack")


def _at(path: Path, exc: MednnsError) -> MednnsError:
    """``exc`` again, its message prefixed with ``path`` (same class, same hint)."""
    return type(exc)(f"{path}: {exc.message}", hint=exc.hint)


def default_name(path: Path, mode: str, slices: int, spacing: int | None,
                 window: tuple[float, float] | None) -> str:
    """A dataset name that tells the views of one file apart (feature caches are keyed by name and file).

    :param path: the ``.npz`` file.
    :param mode: ``orthogonal`` or ``axial_stack``.
    :param slices: axial slices (``axial_stack``).
    :param spacing: axial slice spacing, or ``None``.
    :param window: the intensity window, or ``None``.
    :returns: e.g. ``adrenalmnist3d_64_orth``, ``adrenalmnist3d_64_axial5x2_w40-200``.
    """
    view = "orth" if mode == "orthogonal" else f"axial{slices}" + (f"x{spacing}" if spacing is not None else "")
    windowed = f"_w{window[0]:g}-{window[1]:g}" if window is not None else ""
    return f"{path.stem}_{view}{windowed}"


class VolumeSlicesDataset(MedicalDataset):
    """2D multi-channel images made from the 3D volumes of a MedMNIST-layout ``.npz`` file.

    :param path: the ``.npz`` file: ``{train,val,test}_images`` ``uint8`` ``(N, D, H, W)`` (or
        ``(N, D, H, W, 1)``) and ``{train,val,test}_labels``.
    :param mode: ``orthogonal``: the central axial, coronal and sagittal slices as 3 channels (the
        volumes must be cubic unless ``size`` is given); ``axial_stack``: ``slices`` axial slices
        around the centre as channels (see :func:`mednns_volumes.slicing.axial_indices`).
    :param slices: number of axial slices (``axial_stack`` only).
    :param spacing: distance between the axial slices; ``None`` spreads them over the depth.
    :param size: resize every slice to ``size x size`` (bilinear); ``None`` keeps the volume's size.
    :param window: ``(low, high)`` intensity window in the ``uint8`` range, stretched to 0-255.
    :param name: dataset name (default: see :func:`default_name`).
    :param modality: the volumes' modality; the dataset reports ``"<modality> (2.5D from 3D volumes)"``.
    :param chunk: volumes decompressed at a time while loading a split.
    :raises DatasetError: for a missing or malformed file (naming it) or volumes the view does not fit.
    :raises UsageError: for invalid arguments.
    """

    def __init__(self, path: str | Path, *, mode: str = "orthogonal", slices: int = 3, spacing: int | None = None,
                 size: int | None = None, window: tuple[float, float] | None = None, name: str | None = None,
                 modality: str = "CT", chunk: int = 64):
        super().__init__()
        self.path = Path(path).expanduser()
        self._check_args(mode, slices, size, window, chunk)
        window = (float(window[0]), float(window[1])) if window is not None else None
        self.mode, self.size, self.window, self.chunk = mode, size, window, chunk
        try:
            self.table = window_table(*window) if window is not None else None
        except MednnsError as exc:
            raise _at(self.path, exc) from None
        volumes = NpzDataset(self.path, modality=modality).info  # layout, labels, task, split sizes
        if volumes.ndim != 3 or volumes.n_channels != 1:
            raise DatasetError(
                f"{self.path}: holds {volumes.ndim}D images with {volumes.n_channels} channel(s) of size "
                f"{volumes.image_size}; volume_slices needs single-channel 3D volumes (N, D, H, W)",
                hint="use the 'npz' dataset for 2D images",
            )
        depth, height, width = volumes.image_size
        if mode == "orthogonal":
            self.indices: list[int] = []
            channels = 3
            if size is None and not depth == height == width:
                raise DatasetError(
                    f"{self.path}: volumes of size {volumes.image_size} are not cubic, so their axial, coronal "
                    "and sagittal slices differ in shape",
                    hint="give size: N to resize every slice to N x N",
                )
        else:
            try:
                self.indices = axial_indices(depth, slices, spacing)
            except MednnsError as exc:
                raise _at(self.path, exc) from None
            channels = slices
        image_size = (size, size) if size is not None else (height, width)
        self._info = dataclasses.replace(
            volumes,
            name=name or default_name(self.path, mode, slices, spacing, window),
            n_channels=channels,
            image_size=image_size,
            modality=f"{modality} (2.5D from 3D volumes)",
        )

    @staticmethod
    def _check_args(mode: str, slices: int, size: int | None, window: tuple[float, float] | None,
                    chunk: int) -> None:
        """Reject argument values no file could satisfy, with a hint."""
        if mode not in MODES:
            raise UsageError(f"unknown volume_slices mode {mode!r}", hint="use 'orthogonal' or 'axial_stack'")
        if slices < 1:
            raise UsageError(f"slices must be >= 1, got {slices}", hint="use 3 for three axial slices")
        if size is not None and size < 1:
            raise UsageError(f"size must be >= 1 or null, got {size}", hint="e.g. size: 28; null keeps the size")
        if window is not None and len(window) != 2:
            raise UsageError(f"window must be [low, high], got {list(window)}", hint="e.g. window: [40, 200]")
        if chunk < 1:
            raise UsageError(f"chunk must be >= 1, got {chunk}", hint="e.g. 64 volumes at a time")

    @property
    def info(self) -> DatasetInfo:
        return self._info

    def images(self, volumes: np.ndarray) -> np.ndarray:
        """The 2.5D images of a batch of volumes.

        :param volumes: ``uint8`` ``(N, D, H, W)`` or ``(N, D, H, W, 1)``.
        :returns: ``uint8`` ``(N, H', W', C)`` as described by :attr:`info`.
        """
        if volumes.ndim == 5:
            volumes = volumes[..., 0]
        planes = orthogonal_slices(volumes) if self.mode == "orthogonal" else axial_stack(volumes, self.indices)
        try:
            return to_channels(planes, self.size, self.table)
        except MednnsError as exc:
            raise _at(self.path, exc) from None

    def load_split(self, split: str) -> SplitArrays:
        """Read one split's volumes chunk by chunk and turn them into 2.5D images.

        :param split: ``train``, ``val`` or ``test``.
        :returns: ``(N, H', W', C)`` ``uint8`` images and the split's labels.
        """
        labels = load_array(self.path, f"{split}_labels")
        parts = [self.images(chunk) for chunk in iter_chunks(self.path, f"{split}_images", self.chunk)]
        if parts:
            images = np.concatenate(parts)
        else:
            images = np.zeros((0, *self.info.image_size, self.info.n_channels), dtype=np.uint8)
        return SplitArrays(images, labels)


def volume_slices(
    path: Path,
    mode: Mode = "orthogonal",
    slices: int = 3,
    spacing: int | None = None,
    size: int | None = None,
    window: tuple[float, float] | None = None,
    name: str | None = None,
    modality: str = "CT",
) -> VolumeSlicesDataset:
    """3D volumes of a MedMNIST-layout ``.npz`` (e.g. ``adrenalmnist3d_64.npz``) as 2.5D images.

    :param path: the ``.npz`` file with ``{train,val,test}_images`` ``(N, D, H, W)`` and ``_labels``.
    :param mode: ``orthogonal`` (central axial, coronal and sagittal slices as 3 channels) or
        ``axial_stack`` (``slices`` evenly spaced axial slices around the centre as channels).
    :param slices: number of axial slices for ``axial_stack``.
    :param spacing: slices between neighbouring axial slices; ``null`` spreads them over the depth.
    :param size: resize every slice to ``size x size`` (bilinear); ``null`` keeps the volume's size.
    :param window: ``[low, high]`` intensity window in the 0-255 range, stretched to 0-255 (as CT viewers do).
    :param name: dataset name (default: the file name plus the view, e.g. ``adrenalmnist3d_64_orth``).
    :param modality: modality of the volumes, for reports.
    """
    return VolumeSlicesDataset(path, mode=mode, slices=slices, spacing=spacing, size=size, window=window,
                               name=name, modality=modality)
