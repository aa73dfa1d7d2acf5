"""From dataset arrays to normalized torch tensors and seeded data loaders.

This module is the one place where ``uint8`` channels-last images become
``float32`` channels-first tensors: values are scaled to ``[0, 1]``, channels
adapted (1 → 3 by repetition, 3 → 1 by ITU-R 601 luminance) and then
normalized per channel. Work is done in chunks of images so that no float copy
of a whole large array is made beyond the returned tensor.

torch is imported inside the functions: importing :mod:`mednns.data` stays cheap.
"""

from __future__ import annotations

import hashlib
import weakref
from typing import TYPE_CHECKING, Sequence

import numpy as np

from mednns import seeding
from mednns.data.base import MedicalDataset
from mednns.data.info import Task

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch.utils.data import DataLoader

#: Weights of R, G and B in the 3 → 1 channel conversion (ITU-R BT.601 luma, as PIL's ``convert("L")``).
LUMINANCE = (0.299, 0.587, 0.114)

_CHUNK_BYTES = 32 * 2**20  # float32 working memory per chunk
_stats_cache: "weakref.WeakKeyDictionary[MedicalDataset, dict]" = weakref.WeakKeyDictionary()


def _check_images(images: np.ndarray) -> None:
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}")
    if images.ndim not in (4, 5):
        raise ValueError(f"images must be channels-last (N, H, W, C) or (N, D, H, W, C), got shape {images.shape}")


def _out_channels(in_channels: int, channels: int | None) -> int:
    if channels is None or channels == in_channels:
        return in_channels
    if (in_channels, channels) in ((1, 3), (3, 1)):
        return channels
    raise ValueError(f"cannot adapt {in_channels} channel(s) to {channels}; supported: 1 -> 3 and 3 -> 1")


def _chunk_rows(images: np.ndarray, out_channels: int) -> int:
    per_image = int(np.prod(images.shape[1:-1])) * max(images.shape[-1], out_channels) * 4
    return max(1, _CHUNK_BYTES // max(per_image, 1))


def _adapt(chunk: np.ndarray, out_channels: int) -> np.ndarray:
    """Adapt the last (channel) axis of a float chunk to ``out_channels``."""
    in_channels = chunk.shape[-1]
    if in_channels == out_channels:
        return chunk
    if in_channels == 1:
        return np.repeat(chunk, out_channels, axis=-1)
    weights = np.asarray(LUMINANCE, dtype=chunk.dtype)
    return (chunk @ weights)[..., None]


def _float_chunks(images: np.ndarray, out_channels: int, dtype=np.float32):
    """Yield ``(start, chunk)`` with chunk in ``[0, 1]``, channels adapted, channels-last."""
    rows = _chunk_rows(images, out_channels)
    for start in range(0, images.shape[0], rows):
        chunk = images[start : start + rows].astype(dtype)
        chunk /= 255.0
        yield start, _adapt(chunk, out_channels)


def _per_channel(values: Sequence[float] | float | None, channels: int, what: str, default: float) -> np.ndarray:
    if values is None:
        return np.full(channels, default, dtype=np.float32)
    array = np.atleast_1d(np.asarray(values, dtype=np.float32))
    if array.ndim != 1 or array.size not in (1, channels):
        raise ValueError(f"{what} needs 1 or {channels} values, got {np.asarray(values).tolist()}")
    return np.broadcast_to(array, (channels,)).copy()


def to_tensor(
    images: np.ndarray,
    *,
    channels: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> "torch.Tensor":
    """Convert ``uint8`` channels-last images to a normalized ``float32`` channels-first tensor.

    :param images: ``(N, H, W, C)`` or ``(N, D, H, W, C)`` ``uint8`` array.
    :param channels: output channels; ``None`` keeps them, 1 → 3 repeats the
        channel, 3 → 1 takes the luminance (:data:`LUMINANCE`).
    :param mean: per output channel (or one value for all), in ``[0, 1]`` units.
    :param std: per output channel (or one value); values below ``1e-8`` (a
        constant channel) are treated as 1 so that nothing is divided by zero.
    :returns: ``(N, C, H, W)`` or ``(N, C, D, H, W)`` ``float32``:
        ``(images / 255 - mean) / std``.
    """
    import torch

    images = np.asarray(images)
    _check_images(images)
    out_channels = _out_channels(images.shape[-1], channels)
    mean_array = _per_channel(mean, out_channels, "mean", 0.0)
    std_array = _per_channel(std, out_channels, "std", 1.0)
    std_array[std_array < 1e-8] = 1.0
    normalize = mean is not None or std is not None

    out = torch.empty((images.shape[0], out_channels, *images.shape[1:-1]), dtype=torch.float32)
    buffer = out.numpy()  # shares memory with ``out``
    for start, chunk in _float_chunks(images, out_channels):
        if normalize:
            chunk -= mean_array
            chunk /= std_array
        buffer[start : start + chunk.shape[0]] = np.moveaxis(chunk, -1, 1)
    return out


def channel_stats(images: np.ndarray, *, channels: int | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation in ``[0, 1]`` units.

    :param images: ``uint8`` channels-last images.
    :param channels: compute the statistics of the images adapted to this many
        channels (as :func:`to_tensor` would), so they can normalize its output.

    Accumulates sums in float64 over chunks of images; no float copy of the whole array is made.
    An empty array (a split with no images) gives ``nan`` for every channel.
    """
    images = np.asarray(images)
    _check_images(images)
    out_channels = _out_channels(images.shape[-1], channels)
    if images.size == 0:
        return (float("nan"),) * out_channels, (float("nan"),) * out_channels
    total = np.zeros(out_channels)
    total_sq = np.zeros(out_channels)
    axes = tuple(range(images.ndim - 1))
    for _, chunk in _float_chunks(images, out_channels, dtype=np.float64):
        total += chunk.sum(axis=axes)
        total_sq += np.square(chunk).sum(axis=axes)
    count = images.size // images.shape[-1]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def labels_to_tensor(labels: np.ndarray, task: Task | str) -> "torch.Tensor":
    """Targets for a loss: ``int64 (N,)`` class indices, or ``float32 (N, L)`` multi-hot for multi-label tasks."""
    import torch

    labels = np.asarray(labels)
    if Task(task) is Task.MULTI_LABEL:
        if labels.ndim != 2:
            raise ValueError(f"multi-label targets must be (N, L), got shape {labels.shape}")
        return torch.from_numpy(labels.astype(np.float32))
    if labels.ndim == 2:
        if labels.shape[1] != 1:
            raise ValueError(f"single-label targets must be (N,) or (N, 1), got shape {labels.shape}")
        labels = labels[:, 0]
    return torch.from_numpy(labels.astype(np.int64))


def dataset_stats(
    dataset: MedicalDataset, split: str = "train", *, channels: int | None = None
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """:func:`channel_stats` of one split of ``dataset`` (cached per dataset object)."""
    key = (split, channels)
    try:
        cache = _stats_cache.setdefault(dataset, {})
    except TypeError:  # unhashable or not weak-referenceable: no cache
        cache = {}
    if key not in cache:
        cache[key] = channel_stats(dataset.split(split).images, channels=channels)
    return cache[key]


def dataset_tensors(
    dataset: MedicalDataset,
    split: str,
    *,
    channels: int | None = None,
    stats_split: str | None = "train",
) -> tuple["torch.Tensor", "torch.Tensor"]:
    """``(x, y)`` tensors of one split, normalized with the statistics of ``stats_split``.

    :param channels: output channels (see :func:`to_tensor`); the statistics are
        computed on the adapted channels.
    :param stats_split: split whose per-channel mean/std normalize ``x``
        (``"train"``: never leak val/test statistics); ``None`` leaves ``x`` in ``[0, 1]``.
    :returns: ``x`` float32 channels-first; ``y`` int64 ``(N,)``, or float32
        ``(N, L)`` multi-hot for multi-label tasks (never reduced with argmax).
    """
    arrays = dataset.split(split)
    mean = std = None
    if stats_split is not None:
        mean, std = dataset_stats(dataset, stats_split, channels=channels)
    x = to_tensor(arrays.images, channels=channels, mean=mean, std=std)
    y = labels_to_tensor(arrays.labels, dataset.info.task)
    return x, y


def make_loader(
    x: "torch.Tensor",
    y: "torch.Tensor",
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    num_workers: int = 0,
) -> "DataLoader":
    """A ``DataLoader`` over ``TensorDataset(x, y)``, deterministic for a given ``seed``.

    Shuffling uses a generator seeded with ``seed`` (:func:`mednns.seeding.torch_generator`)
    and workers are seeded by :func:`mednns.seeding.seed_worker`: two loaders
    built with the same arguments yield the same batches, epoch after epoch.
    """
    from torch.utils.data import DataLoader, TensorDataset

    return DataLoader(
        TensorDataset(x, y),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        generator=seeding.torch_generator(seed),
        worker_init_fn=seeding.seed_worker,
    )


def tensor_digest(x: "torch.Tensor", y: "torch.Tensor") -> str:
    """A short digest of training images and labels: equal digests, equal training subsets."""
    digest = hashlib.sha1(x.numpy().tobytes())
    digest.update(y.numpy().tobytes())
    return digest.hexdigest()[:16]
