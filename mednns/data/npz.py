"""MedMNIST-layout ``.npz`` files: ``{train,val,test}_{images,labels}``.

:class:`NpzDataset` reads the array shapes and dtypes from the ``.npy`` headers
inside the zip archive, which decompresses only a few bytes per array, so
constructing a dataset stays cheap even for multi-gigabyte files. Pixels are
loaded per split by :meth:`NpzDataset.load_split`.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from numpy.lib import format as npy_format

from mednns.data.base import MedicalDataset, SplitArrays
from mednns.data.info import SPLITS, DatasetInfo, Task
from mednns.errors import DatasetError

KINDS = ("images", "labels")
#: The most classes a label array may imply without ``label_names`` (a typo or a missing-value code
#: such as 2^31-1 would otherwise build billions of class names).
MAX_CLASSES = 10_000
#: A member that inflates past MAX_PLAIN_INFLATION bytes at more than MAX_RATIO times its compressed
#: size is refused before it is read (the 3D AdrenalMNIST volumes, mostly background, inflate 222x
#: to 0.3 GiB; a zip bomb 1000x to gigabytes).
MAX_PLAIN_INFLATION, MAX_RATIO = 2**30, 500


@dataclass(frozen=True)
class ArrayHeader:
    """Shape and dtype of one array stored in an ``.npz`` file."""

    shape: tuple[int, ...]
    dtype: np.dtype


def read_npz_headers(path: str | os.PathLike[str]) -> dict[str, ArrayHeader]:
    """``{key: ArrayHeader}`` for every ``.npy`` member of the ``.npz`` at ``path``.

    Only the headers are read (a few hundred bytes decompressed per member).
    Raises :class:`DatasetError` naming the file or key when it is not a readable npz.
    """
    path = Path(path)
    headers: dict[str, ArrayHeader] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                member = info.filename
                if not member.endswith(".npy"):
                    continue  # np.savez writes only .npy members; anything else is not an array
                key = member[:-4]
                if info.file_size > MAX_PLAIN_INFLATION and info.file_size > MAX_RATIO * max(info.compress_size, 1):
                    raise DatasetError(f"{path}: key {key!r} inflates {info.file_size / max(info.compress_size, 1):.0f}"
                                       f"x, from {info.compress_size / 2**20:.1f} MiB to "
                                       f"{info.file_size / 2**30:.2f} GiB: images do not compress like that "
                                       f"(a zip bomb, or an array of one value?)",
                                       hint="check how the file was made")
                if info.file_size > memory_limit():
                    raise DatasetError(f"{path}: key {key!r} inflates to {info.file_size / 2**30:.1f} GiB "
                                       f"({info.compress_size / 2**20:.1f} MiB compressed), more than half of "
                                       f"this machine's memory ({memory_limit() * 2 / 2**30:.1f} GiB)")
                try:
                    with archive.open(member) as handle:
                        version = npy_format.read_magic(handle)
                        shape, _, dtype = _read_header(handle, version)
                except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
                    raise DatasetError(f"{path}: key {key!r} is not a readable .npy array ({exc})") from None
                header = ArrayHeader(tuple(int(s) for s in shape), np.dtype(dtype))
                if int(np.prod(header.shape, dtype=np.float64)) * header.dtype.itemsize > info.file_size:
                    raise DatasetError(f"{path}: key {key!r} declares shape {header.shape} ({header.dtype}), more "
                                       f"than the {info.file_size} bytes it holds: the file is damaged")
                headers[key] = header
    except zipfile.BadZipFile:
        raise DatasetError(f"{path}: not an .npz (zip) file") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return headers


def memory_limit() -> int:
    """The most bytes one array may inflate to: half of this machine's physical memory."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):  # not a POSIX system: no bound known
        return 2**62


def _read_header(handle, version: tuple[int, int]):
    if version == (1, 0):
        return npy_format.read_array_header_1_0(handle)
    if version == (2, 0):
        return npy_format.read_array_header_2_0(handle)
    reader = getattr(npy_format, "_read_array_header", None)  # version 3.0 has no public reader
    if reader is None:  # pragma: no cover - depends on numpy internals
        raise ValueError(f"unsupported .npy format version {version}")
    return reader(handle, version)


def _is_channel_axis(shape: tuple[int, ...]) -> bool:
    """Whether the last axis of a 4-d image array ``(N, a, b, c)`` holds channels.

    ``(N, H, W, C)`` (2D with channels) and ``(N, D, H, W)`` (3D, one channel)
    both have four axes; a last axis of at most 4 that is smaller than the
    others is read as channels.
    """
    return shape[-1] <= 4 and shape[-1] < min(shape[1:-1])


class NpzDataset(MedicalDataset):
    """A dataset stored as one MedMNIST-layout ``.npz`` file.

    :param path: the ``.npz`` file; it must hold ``train_images``, ``train_labels``,
        ``val_images``, ``val_labels``, ``test_images`` and ``test_labels``.
        Images are ``uint8``, ``(N, H, W)``, ``(N, H, W, C)``, ``(N, D, H, W)`` or
        ``(N, D, H, W, C)`` (a 4-d array is 2D with channels when its last axis is
        at most 4 and smaller than the others); labels are ``(N,)``, ``(N, 1)``
        or multi-hot ``(N, L)``.
    :param name: dataset name; defaults to the file name without extension.
    :param task: label semantics; inferred when ``None``: labels with more than
        one column are multi-label, two classes binary, anything else multi-class.
    :param label_names: one name per class (per label for multi-label data);
        defaults to ``"0"``, ``"1"``, ...; with ``n_classes`` taken from it.
    :param modality: imaging modality, for reports.
    :param info: complete metadata (used by the MedMNIST plugin); the file is then
        only checked against it, labels are not read at construction and
        ``name``/``task``/``label_names``/``modality`` are ignored.

    Construction reads the array headers and, without ``info``, the labels
    (small) to infer the number of classes; images are read by :meth:`load_split`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        name: str | None = None,
        task: Task | str | None = None,
        label_names: Sequence[str] | None = None,
        modality: str = "unknown",
        info: DatasetInfo | None = None,
    ):
        super().__init__()
        self.path = Path(path).expanduser()
        if not self.path.exists():
            raise DatasetError(f"npz file not found: {self.path}")
        if not self.path.is_file():
            raise DatasetError(f"{self.path}: not a file (expected a MedMNIST-layout .npz)")
        self._headers = read_npz_headers(self.path)
        image_shape, label_width = self._check_layout()
        if info is None:
            info = self._infer_info(image_shape, label_width, name, task, label_names, modality)
        else:
            self._check_against(info, image_shape)
        self._info = info

    @property
    def info(self) -> DatasetInfo:
        return self._info

    def load_split(self, split: str) -> SplitArrays:
        """Read ``{split}_images`` and ``{split}_labels`` from the file."""
        return SplitArrays(self._load(f"{split}_images"), self._load(f"{split}_labels"))

    # -- construction helpers --------------------------------------------------

    def _header(self, key: str) -> ArrayHeader:
        try:
            return self._headers[key]
        except KeyError:
            have = ", ".join(sorted(self._headers)) or "none"
            raise DatasetError(
                f"{self.path}: missing key {key!r} (has: {have})",
                hint="a MedMNIST-layout npz holds train/val/test _images and _labels",
            ) from None

    def _check_layout(self) -> tuple[tuple[int, ...], int]:
        """Check keys, dtypes and shapes across splits; return (image shape without N, label width)."""
        image_shape: tuple[int, ...] | None = None
        label_width: int | None = None
        first_images = first_labels = ""
        for split in SPLITS:
            images_key, labels_key = f"{split}_images", f"{split}_labels"
            images, labels = self._header(images_key), self._header(labels_key)
            if images.dtype != np.uint8:
                raise DatasetError(f"{self.path}: {images_key} must be uint8, got {images.dtype}")
            if not np.issubdtype(labels.dtype, np.integer):
                raise DatasetError(f"{self.path}: {labels_key} must be integers, got {labels.dtype}")
            if len(images.shape) not in (3, 4, 5):
                raise DatasetError(
                    f"{self.path}: {images_key} has shape {images.shape}; expected (N, H, W[, C]) or (N, D, H, W[, C])"
                )
            if len(labels.shape) not in (1, 2):
                raise DatasetError(f"{self.path}: {labels_key} has shape {labels.shape}; expected (N,) or (N, L)")
            if images.shape[0] != labels.shape[0]:
                raise DatasetError(
                    f"{self.path}: {images_key} holds {images.shape[0]} images but {labels_key} "
                    f"{labels.shape[0]} labels"
                )
            width = labels.shape[1] if len(labels.shape) == 2 else 1
            if image_shape is None:
                image_shape, label_width = images.shape[1:], width
                first_images, first_labels = images_key, labels_key
                continue
            if images.shape[1:] != image_shape:
                raise DatasetError(
                    f"{self.path}: {images_key} has images of shape {images.shape[1:]} but {first_images} "
                    f"{image_shape}; every split must share one image shape"
                )
            if width != label_width:
                raise DatasetError(
                    f"{self.path}: {labels_key} has {width} label column(s) but {first_labels} {label_width}"
                )
        assert image_shape is not None and label_width is not None
        if len(image_shape) == 3 and 4 < image_shape[-1] < min(image_shape[:-1]):
            raise DatasetError(
                f"{self.path}: train_images has shape (N, {', '.join(map(str, image_shape))}): 2D images with "
                f"{image_shape[-1]} channels, or volumes of {image_shape[-1]} slices along the last axis? Images "
                f"have 1, 3 or 4 channels", hint="store volumes as (N, D, H, W) with the slices first; reduce "
                                                 "multi-channel images to 1 or 3 channels")
        return image_shape, label_width

    def _split_sizes(self) -> dict[str, int]:
        return {split: self._headers[f"{split}_images"].shape[0] for split in SPLITS}

    @staticmethod
    def _geometry(image_shape: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
        """``(image_size, n_channels)`` of one image of shape ``image_shape`` (no N axis)."""
        if len(image_shape) == 2:
            return image_shape, 1
        if len(image_shape) == 4:
            return image_shape[:-1], image_shape[-1]
        if _is_channel_axis((0, *image_shape)):
            return image_shape[:-1], image_shape[-1]
        return image_shape, 1

    def _infer_info(
        self,
        image_shape: tuple[int, ...],
        label_width: int,
        name: str | None,
        task: Task | str | None,
        label_names: Sequence[str] | None,
        modality: str,
    ) -> DatasetInfo:
        if task is not None:
            try:
                task = Task(task)
            except ValueError:
                choices = ", ".join(t.value for t in Task)
                raise DatasetError(f"{self.path}: unknown task {task!r}; expected one of {choices}") from None
        if label_names is not None:
            if isinstance(label_names, str):
                raise DatasetError(f"{self.path}: label_names must be a list of names, got the string {label_names!r}")
            label_names = [str(n) for n in label_names]
        multilabel = task is Task.MULTI_LABEL if task is not None else label_width > 1
        if multilabel:
            task = Task.MULTI_LABEL
            n_classes = self._check_multilabel(label_width, label_names)
        else:
            if label_width != 1:
                raise DatasetError(
                    f"{self.path}: train_labels has {label_width} columns; a {task} task needs one label per image "
                    "(multi-hot labels mean task: multi-label)"
                )
            n_classes = self._check_class_labels(task, label_names)
            if task is None:
                task = Task.BINARY if n_classes == 2 else Task.MULTI_CLASS
        image_size, n_channels = self._geometry(image_shape)
        try:
            return DatasetInfo(
                name=name or self.path.stem,
                task=task,
                n_channels=n_channels,
                n_classes=n_classes,
                label_names=tuple(label_names) if label_names is not None else tuple(map(str, range(n_classes))),
                image_size=image_size,
                modality=modality,
                split_sizes=self._split_sizes(),
                source=str(self.path),
            )
        except ValueError as exc:
            raise DatasetError(f"{self.path}: {exc}") from None

    def _check_multilabel(self, label_width: int, label_names: list[str] | None) -> int:
        if label_names is not None and len(label_names) != label_width:
            raise DatasetError(
                f"{self.path}: train_labels has {label_width} label columns but {len(label_names)} "
                "label_names were given"
            )
        for split in SPLITS:
            key = f"{split}_labels"
            labels = self._load(key)
            bad = labels[(labels != 0) & (labels != 1)]
            if bad.size:
                raise DatasetError(f"{self.path}: {key} must be 0/1 for multi-label data, found {int(bad.flat[0])}")
        return label_width

    def _check_class_labels(self, task: Task | None, label_names: list[str] | None) -> int:
        """Number of classes, from ``label_names`` or the largest label; labels are range-checked."""
        highest: dict[str, int] = {}
        for split in SPLITS:
            key = f"{split}_labels"
            labels = self._load(key)
            if labels.size:
                low = int(labels.min())
                if low < 0:
                    raise DatasetError(f"{self.path}: {key} holds {low}; class labels must be >= 0")
                highest[key] = int(labels.max())
        top_key = max(highest, key=highest.__getitem__, default=None)
        top = highest[top_key] if top_key is not None else 0
        if label_names is not None:
            n_classes = len(label_names)
            if top_key is not None and top >= n_classes:
                raise DatasetError(
                    f"{self.path}: {top_key} holds {top}, outside [0, {n_classes - 1}] for the "
                    f"{n_classes} label_names given"
                )
        else:
            n_classes = top + 1
            if n_classes > MAX_CLASSES:
                raise DatasetError(f"{self.path}: {top_key} holds {top}; class labels are 0..K-1, and K above "
                                   f"{MAX_CLASSES:,} classes is not a classification dataset mednns can train",
                                   hint="check the labels (a missing-value code such as 2^31-1?) or pass "
                                        "label_names")
        if task is Task.BINARY:
            if top_key is not None and top > 1:
                raise DatasetError(f"{self.path}: {top_key} holds {top}; a binary task takes labels 0 and 1")
            if label_names is None:
                n_classes = 2
        return n_classes

    def _check_against(self, info: DatasetInfo, image_shape: tuple[int, ...]) -> None:
        image_size, n_channels = (
            (image_shape[:-1], image_shape[-1]) if len(image_shape) == len(info.image_size) + 1 else (image_shape, 1)
        )
        if tuple(image_size) != info.image_size or n_channels != info.n_channels:
            raise DatasetError(
                f"{self.path}: train_images holds images of shape {image_shape}; {info.name} expects "
                f"{info.image_size} with {info.n_channels} channel(s)"
            )
        for split, expected in info.split_sizes.items():
            actual = self._headers[f"{split}_images"].shape[0]
            if actual != expected:
                raise DatasetError(f"{self.path}: {split}_images holds {actual} images; {info.name} has {expected}")

    def _load(self, key: str) -> np.ndarray:
        try:
            with np.load(self.path, allow_pickle=False) as archive:
                return archive[key]
        except KeyError:
            self._header(key)  # raises with the available keys
            raise
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise DatasetError(f"{self.path}: cannot read key {key!r} ({exc})") from None
