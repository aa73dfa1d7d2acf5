"""Streaming volumes out of an ``.npz`` file, a chunk at a time.

A MedMNIST 3D training split at 64^3 is about 300 MB of pixels once decompressed; 2.5D images need
only a few slices of each volume. :func:`iter_chunks` decompresses the ``.npy`` member of the zip
archive sequentially and hands out ``chunk`` volumes at a time, so converting a split never holds
more than one chunk of full volumes in memory.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
from numpy.lib import format as npy_format

from mednns.errors import DatasetError


def _header(handle) -> tuple[tuple[int, ...], bool, np.dtype] | None:
    """``(shape, fortran_order, dtype)`` of an open ``.npy`` stream, or ``None`` for format versions
    numpy offers no public reader for (the caller then loads the whole array)."""
    version = npy_format.read_magic(handle)
    if version == (1, 0):
        return npy_format.read_array_header_1_0(handle)
    if version == (2, 0):
        return npy_format.read_array_header_2_0(handle)
    return None


def iter_chunks(path: Path, key: str, chunk: int = 64) -> Iterator[np.ndarray]:
    """The array ``key`` of the ``.npz`` at ``path``, ``chunk`` items (first-axis entries) at a time.

    :param path: the ``.npz`` file.
    :param key: the array's name (``train_images``, ...).
    :param chunk: items per yielded array (>= 1).
    :returns: an iterator of arrays ``(n <= chunk, *shape[1:])`` that together are the array.
    :raises DatasetError: when the file or the key cannot be read, naming both.
    """
    try:
        with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as handle:
            header = _header(handle)
            if header is None or header[1] or header[2].hasobject:  # Fortran order etc.: no streaming
                yield from _chunks_of(np.load(path, allow_pickle=False)[key], chunk)
                return
            shape, _, dtype = header
            item = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
            for start in range(0, shape[0], chunk):
                n = min(chunk, shape[0] - start)
                data = handle.read(n * item)
                if len(data) != n * item:
                    raise DatasetError(f"{path}: key {key!r} ends early (truncated file?)")
                yield np.frombuffer(data, dtype=dtype).reshape(n, *shape[1:])
    except KeyError:
        raise DatasetError(f"{path}: missing key {key!r}") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"{path}: cannot read key {key!r} ({exc})") from None


def _chunks_of(array: np.ndarray, chunk: int) -> Iterator[np.ndarray]:
    for start in range(0, len(array), chunk):
        yield array[start:start + chunk]


def load_array(path: Path, key: str) -> np.ndarray:
    """The whole array ``key`` of the ``.npz`` at ``path`` (for small arrays such as labels).

    :param path: the ``.npz`` file.
    :param key: the array's name.
    :returns: the array.
    :raises DatasetError: when it cannot be read, naming the file and key.
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            return archive[key]
    except KeyError:
        raise DatasetError(f"{path}: missing key {key!r}") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DatasetError(f"{path}: cannot read key {key!r} ({exc})") from None
