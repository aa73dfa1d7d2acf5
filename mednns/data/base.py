"""The dataset contract: :class:`MedicalDataset` and the checks every source shares."""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass

import numpy as np

from mednns.data.info import SPLITS, DatasetInfo, Task
from mednns.errors import DatasetError

log = logging.getLogger("mednns.data")


@dataclass(frozen=True)
class SplitArrays:
    """One split as arrays.

    ``images``: ``uint8``, channels-last, ``(N, H, W, C)`` or ``(N, D, H, W, C)``.
    ``labels``: ``int64``, ``(N, 1)`` (class index) or ``(N, n_classes)`` (multi-hot).
    """

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])


class MedicalDataset(abc.ABC):
    """A labelled medical image dataset with ``train``/``val``/``test`` splits.

    Subclasses implement :attr:`info` and :meth:`load_split`; callers use
    :meth:`split`, which caches and validates what ``load_split`` returns, so a
    plugin's mistakes surface as one clear :class:`~mednns.errors.DatasetError`.
    Construction should be cheap (``mednns validate`` constructs every dataset of
    a config); load pixels in ``load_split``.
    """

    def __init__(self) -> None:
        self._splits: dict[str, SplitArrays] = {}

    @property
    def name(self) -> str:
        """The dataset's name; override when :attr:`info` is expensive to compute."""
        return self.info.name

    @property
    @abc.abstractmethod
    def info(self) -> DatasetInfo:
        """Metadata; may load data on first access when it cannot be known otherwise."""

    @abc.abstractmethod
    def load_split(self, split: str) -> SplitArrays:
        """Return the raw arrays of ``split`` (one of ``train``, ``val``, ``test``).

        Images may be ``(N, H, W)`` for single-channel 2D data; :meth:`split`
        adds the channel axis. Labels may have any integer dtype.
        """

    def split(self, split: str) -> SplitArrays:
        """The validated, channels-last arrays of one split (cached)."""
        if split not in SPLITS:
            raise DatasetError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        if split not in self._splits:
            raw = self.load_split(split)
            self._splits[split] = check_split(raw.images, raw.labels, self.info, split=split)
            self._check_classes(split)
        return self._splits[split]

    def _check_classes(self, split: str) -> None:
        """A training split with one class has nothing to learn (it trains to ACC 1, loss 0); a class
        that validation or test holds and training lacks can only be guessed wrong: said once, when
        the training split has been read before."""
        info = self.info
        if info.task is Task.MULTI_LABEL:
            return
        present = set(np.unique(self._splits[split].labels).tolist())
        if split == "train":
            if len(present) < 2 and len(self._splits[split].labels):
                only = info.label_names[min(present)]
                raise DatasetError(f"{info.name}: the training split holds one class only ({only}): there is "
                                   f"nothing to learn", hint="check the labels or the folder layout")
            return
        train = self._splits.get("train")  # compared once training has read it (reading it here costs)
        if train is None:
            return
        missing = sorted(present - set(np.unique(train.labels).tolist()))
        if missing:
            names = ", ".join(info.label_names[k] for k in missing)
            log.warning("%s: the %s split holds class(es) %s that the training split lacks; no model can learn "
                        "them", info.name, split, names)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


def check_split(images: np.ndarray, labels: np.ndarray, info: DatasetInfo, *, split: str) -> SplitArrays:
    """Validate and canonicalize one split against ``info``; errors name the split and key."""
    where = f"{info.name} ({info.source or 'no source'})"
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.dtype != np.uint8:
        raise DatasetError(f"{where}: {split}_images must be uint8, got {images.dtype}")
    if labels.ndim == 1:
        labels = labels[:, None]
    if labels.ndim != 2:
        raise DatasetError(f"{where}: {split}_labels must have shape (N, 1) or (N, L), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(f"{where}: {split}_labels must be integers, got {labels.dtype}")
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(
            f"{where}: {split}_images holds {images.shape[0]} images but {split}_labels {labels.shape[0]} labels"
        )
    spatial = len(info.image_size)
    if images.ndim == spatial + 1:  # no channel axis
        images = images[..., None]
    if images.ndim != spatial + 2:
        raise DatasetError(
            f"{where}: {split}_images has shape {images.shape}; expected (N, {', '.join(map(str, info.image_size))}"
            f"[, C]) for {spatial}D data"
        )
    if tuple(images.shape[1:-1]) != info.image_size:
        raise DatasetError(
            f"{where}: {split}_images has image size {tuple(images.shape[1:-1])}, expected {info.image_size}"
        )
    if images.shape[-1] != info.n_channels:
        raise DatasetError(f"{where}: {split}_images has {images.shape[-1]} channels, expected {info.n_channels}")
    labels = labels.astype(np.int64, copy=False)
    if info.task is Task.MULTI_LABEL:
        if labels.shape[1] != info.n_classes:
            raise DatasetError(
                f"{where}: {split}_labels has {labels.shape[1]} columns; multi-label data needs one per label "
                f"({info.n_classes})"
            )
        bad = labels[(labels != 0) & (labels != 1)]
        if bad.size:
            raise DatasetError(f"{where}: {split}_labels must be 0/1 for multi-label data, found {int(bad[0])}")
    else:
        if labels.shape[1] != 1:
            raise DatasetError(
                f"{where}: {split}_labels has shape {labels.shape}; a {info.task} task needs one label per image"
            )
        if labels.size:
            low, high = int(labels.min()), int(labels.max())
            if low < 0 or high >= info.n_classes:
                bad = low if low < 0 else high
                raise DatasetError(
                    f"{where}: {split}_labels holds {bad}, outside [0, {info.n_classes - 1}] for "
                    f"{info.n_classes} classes"
                )
    return SplitArrays(np.ascontiguousarray(images), labels)


class ArrayDataset(MedicalDataset):
    """A dataset whose splits are already arrays in memory (tests, generated data, converters)."""

    def __init__(self, info: DatasetInfo, splits: dict[str, SplitArrays]):
        super().__init__()
        missing = [s for s in SPLITS if s not in splits]
        if missing:
            raise DatasetError(f"{info.name}: missing split(s) {', '.join(missing)}")
        self._info = info
        self._raw = splits

    @property
    def info(self) -> DatasetInfo:
        return self._info

    def load_split(self, split: str) -> SplitArrays:
        return self._raw[split]
