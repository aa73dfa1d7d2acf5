"""Per-image features of a dataset: a seeded sample of its images, encoded and cached.

:func:`sample_images` draws a seeded subset of a split as float tensors in ``[0, 1]``;
:func:`dataset_features` runs a :class:`~mednns.metaspace.contracts.DatasetEncoder` over that
sample and caches the ``(N, feature_dim)`` result as ``.npy`` under ``<cache_dir>/features/``,
keyed by :func:`features_key` (the dataset's identity, the encoder's cache key, the number of
images and the seed). A cache hit never calls the encoder.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mednns.data import MedicalDataset
from mednns.errors import UsageError
from mednns.files import atomic_write_bytes
from mednns.metaspace.contracts import DatasetEncoder

#: Sub-folder of the cache directory that holds the feature files.
FEATURES_DIR = "features"
#: Bumped when the layout of cached features changes, so stale files are never read.
CACHE_VERSION = 1


def sample_images(dataset: MedicalDataset, n: int, seed: int, split: str = "train") -> torch.Tensor:
    """A seeded subset of one split's images as float32 ``(N, C, H, W)`` in ``[0, 1]``.

    :param dataset: the dataset (2D images only).
    :param n: how many images; all of them when the split holds fewer.
    :param seed: seed of the subset (drawn without replacement, kept in dataset order).
    :param split: ``train``, ``val`` or ``test``.
    :returns: the images, channels first.
    :raises UsageError: for 3D volumes, an empty split or ``n < 1``.
    """
    if n < 1:
        raise UsageError(f"the number of images to sample must be at least 1, got {n}")
    info = dataset.info
    if info.ndim != 2:
        raise UsageError(f"{info.name} holds 3D volumes {info.image_size}; dataset encoders take 2D images",
                         hint="choose a 2D dataset (e.g. a *mnist flag without '3d')")
    images = dataset.split(split).images
    if images.ndim != 4:
        raise UsageError(f"{info.name}: {split} images have shape {images.shape}; dataset encoders take 2D images "
                         "(N, H, W, C)")
    total = images.shape[0]
    if total == 0:
        raise UsageError(f"{info.name}: the {split} split holds no images")
    if total <= n:
        chosen = images
    else:
        rng = np.random.default_rng(seed)
        index = np.sort(rng.choice(total, size=n, replace=False))
        chosen = images[index]
    tensor = torch.from_numpy(np.ascontiguousarray(chosen)).permute(0, 3, 1, 2).to(torch.float32)
    return tensor.div_(255.0).contiguous()


def dataset_identity(dataset: MedicalDataset, split: str = "train") -> dict[str, Any]:
    """What identifies a dataset's pixels for caching.

    The name, source, split sizes, image size and channels; when the source is a file, also its
    size and modification time; when there is no source (in-memory datasets), a SHA-256 of the
    split's pixels.

    :param dataset: the dataset.
    :param split: the split whose images are encoded.
    :returns: a JSON-serializable mapping.
    """
    info = dataset.info
    identity: dict[str, Any] = {
        "name": info.name,
        "source": info.source,
        "split": split,
        "split_sizes": {k: int(v) for k, v in sorted(info.split_sizes.items())},
        "image_size": list(info.image_size),
        "n_channels": info.n_channels,
    }
    if info.source:
        source = Path(info.source)
        if source.is_file():
            stat = source.stat()
            identity["file"] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    else:
        images = dataset.split(split).images
        digest = hashlib.sha256(np.ascontiguousarray(images).view(np.uint8).reshape(-1).data)
        identity["pixels_sha256"] = digest.hexdigest()
    return identity


def features_key(encoder: DatasetEncoder, dataset: MedicalDataset, *, images: int, seed: int,
                 split: str = "train") -> str:
    """The cache key of a dataset's features: a SHA-256 hex digest.

    :param encoder: the dataset encoder (its :meth:`~DatasetEncoder.cache_key` enters the key).
    :param dataset: the dataset (its :func:`dataset_identity` enters the key).
    :param images: the number of sampled images.
    :param seed: the sampling seed.
    :param split: the sampled split.
    :returns: 64 hex characters.
    """
    payload = {"version": CACHE_VERSION, "dataset": dataset_identity(dataset, split),
               "encoder": encoder.cache_key(), "images": int(images), "seed": int(seed)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def features_path(cache_dir: Path, dataset_name: str, key: str) -> Path:
    """Where the features of ``key`` are cached: ``<cache_dir>/features/<name>-<key[:24]>.npy``.

    :param cache_dir: the cache directory.
    :param dataset_name: the dataset's name (for readable file names only).
    :param key: from :func:`features_key`.
    :returns: the ``.npy`` path.
    """
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset_name)[:64] or "dataset"
    return Path(cache_dir) / FEATURES_DIR / f"{safe}-{key[:24]}.npy"


def _load_cached(path: Path, feature_dim: int) -> np.ndarray | None:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None  # unreadable (half-written by an older version, disk trouble): recompute
    if array.ndim != 2 or array.shape[1] != feature_dim or array.dtype != np.float32:
        return None
    return array


def encode(encoder: DatasetEncoder, images: torch.Tensor, *, batch_size: int = 128,
           progress: bool = False, label: str = "encoding") -> np.ndarray:
    """Run ``encoder`` over ``images`` in batches under :func:`torch.inference_mode`.

    :param encoder: the dataset encoder.
    :param images: float32 ``(N, C, H, W)`` in ``[0, 1]``.
    :param batch_size: images per call of :meth:`~DatasetEncoder.encode_images`.
    :param progress: show a progress bar on stderr (when it is a terminal).
    :param label: the progress bar's description.
    :returns: float32 ``(N, feature_dim)``.
    :raises ValueError: when the encoder returns the wrong shape or non-finite values.
    """
    if batch_size < 1:
        raise UsageError(f"batch_size must be at least 1, got {batch_size}")
    starts = range(0, images.shape[0], batch_size)
    chunks: list[np.ndarray] = []
    bar = None
    if progress:
        from rich.console import Console
        from rich.progress import Progress

        console = Console(stderr=True)
        if console.is_terminal:  # a bar in a log file is noise
            bar = Progress(console=console, transient=True)
            bar.start()
            task = bar.add_task(label, total=images.shape[0])
    try:
        with torch.inference_mode():
            for start in starts:
                batch = images[start:start + batch_size]
                out = encoder.encode_images(batch).detach().to("cpu", torch.float32).numpy()
                if out.shape != (batch.shape[0], encoder.feature_dim):
                    raise ValueError(f"{type(encoder).__name__}.encode_images returned shape {out.shape}, expected "
                                     f"{(batch.shape[0], encoder.feature_dim)}")
                if not np.isfinite(out).all():
                    raise ValueError(f"{type(encoder).__name__}.encode_images returned non-finite features")
                chunks.append(out)
                if bar is not None:
                    bar.advance(task, batch.shape[0])
    finally:
        if bar is not None:
            bar.stop()
    return np.ascontiguousarray(np.concatenate(chunks, axis=0), dtype=np.float32)


def dataset_features(encoder: DatasetEncoder, dataset: MedicalDataset, *, images: int = 1000, seed: int = 0,
                     cache_dir: Path | None = None, batch_size: int = 128, progress: bool = False,
                     split: str = "train") -> np.ndarray:
    """Per-image features of a seeded sample of a dataset's images (cached).

    :param encoder: the dataset encoder.
    :param dataset: the dataset (2D images).
    :param images: how many images to sample (all when the split holds fewer).
    :param seed: the sampling seed.
    :param cache_dir: cache the features under ``cache_dir/features/`` (``None``: no cache).
    :param batch_size: images per encoder call.
    :param progress: show a progress bar while encoding.
    :param split: the sampled split (default ``train``).
    :returns: float32 ``(N, encoder.feature_dim)``; ``N = min(images, split size)``.
    """
    path = None
    if cache_dir is not None:
        key = features_key(encoder, dataset, images=images, seed=seed, split=split)
        path = features_path(Path(cache_dir), dataset.name, key)
        if path.is_file():
            cached = _load_cached(path, encoder.feature_dim)
            if cached is not None:
                return cached
    sample = sample_images(dataset, images, seed, split)
    features = encode(encoder, sample, batch_size=batch_size, progress=progress,
                      label=f"{dataset.name}: {type(encoder).__name__}")
    if path is not None:
        buffer = io.BytesIO()
        np.save(buffer, features, allow_pickle=False)
        atomic_write_bytes(path, buffer.getvalue())
    return features


__all__ = ["dataset_features", "dataset_identity", "encode", "features_key", "features_path", "sample_images"]
