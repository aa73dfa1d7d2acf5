"""From 3D volumes to 2D multi-channel images (2.5D): slice choice, intensity window, resizing.

Pure numpy (and Pillow for resizing); nothing here imports torch. Volumes are ``uint8`` arrays of
shape ``(N, D, H, W)`` in the axis order of the file: an **axial** slice fixes the first axis
(``D``), a **coronal** slice the second (``H``) and a **sagittal** slice the third (``W``). The
centre of an axis of length ``n`` is index ``n // 2``.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from mednns.errors import DatasetError, UsageError


def centre(length: int) -> int:
    """The central index of an axis.

    :param length: the axis length (>= 1).
    :returns: ``length // 2``.
    """
    return length // 2


def axial_indices(depth: int, slices: int, spacing: int | None = None) -> list[int]:
    """Indices of ``slices`` evenly spaced axial slices around the centre of a volume.

    With ``spacing=None`` the slices spread over the whole depth: slice ``k`` sits at the centre of
    the ``k``-th of ``slices`` equal bands, ``floor((2k + 1) * depth / (2 * slices))`` (for an odd
    count the middle one is the centre slice ``depth // 2``). With an integer ``spacing`` the slices
    are ``spacing`` apart, centred on ``depth // 2``: ``depth // 2 + spacing * (k - (slices - 1) // 2)``.

    :param depth: number of axial slices in the volume.
    :param slices: how many slices to take (1 ... ``depth``).
    :param spacing: distance between neighbouring slices, or ``None`` to spread them over the depth.
    :returns: increasing slice indices, all in ``[0, depth)``.
    :raises DatasetError: when the slices do not fit in the volume.
    :raises UsageError: when ``spacing`` is below 1.
    """
    if not 1 <= slices <= depth:
        raise DatasetError(f"cannot take {slices} axial slices from a volume of depth {depth}",
                           hint=f"use slices between 1 and {depth}")
    if spacing is None:
        return [(2 * k + 1) * depth // (2 * slices) for k in range(slices)]
    if spacing < 1:
        raise UsageError(f"spacing must be >= 1, got {spacing}", hint="use 1 for adjacent slices")
    first = centre(depth) - spacing * ((slices - 1) // 2)
    indices = [first + spacing * k for k in range(slices)]
    if indices[0] < 0 or indices[-1] >= depth:
        raise DatasetError(
            f"{slices} axial slices {spacing} apart around slice {centre(depth)} need indices "
            f"{indices[0]}..{indices[-1]}, outside a volume of depth {depth}",
            hint="use fewer slices, a smaller spacing, or spacing: null to spread them over the depth",
        )
    return indices


def orthogonal_slices(volumes: np.ndarray) -> list[np.ndarray]:
    """The central axial, coronal and sagittal slices of each volume.

    :param volumes: ``(N, D, H, W)``.
    :returns: ``[axial (N, H, W), coronal (N, D, W), sagittal (N, D, H)]`` (views, not copies).
    """
    _, depth, height, width = volumes.shape
    return [volumes[:, centre(depth)], volumes[:, :, centre(height)], volumes[:, :, :, centre(width)]]


def axial_stack(volumes: np.ndarray, indices: list[int]) -> list[np.ndarray]:
    """The axial slices ``indices`` of each volume.

    :param volumes: ``(N, D, H, W)``.
    :param indices: axial slice indices (see :func:`axial_indices`).
    :returns: one ``(N, H, W)`` array per index.
    """
    return [volumes[:, i] for i in indices]


def window_table(low: float, high: float) -> np.ndarray:
    """The lookup table of an intensity window, as CT viewers apply it.

    Values ``<= low`` become 0, values ``>= high`` become 255 and values in between are stretched
    linearly: ``round(255 * (v - low) / (high - low))``.

    :param low: lower window bound, in the ``uint8`` range ``[0, 255]``.
    :param high: upper window bound, ``> low`` and ``<= 255``.
    :returns: ``(256,)`` ``uint8`` table; ``table[images]`` windows ``uint8`` images.
    :raises UsageError: when the bounds are not ``0 <= low < high <= 255``.
    """
    if not 0 <= low < high <= 255:
        raise UsageError(f"window [{low}, {high}] is not a range inside [0, 255]",
                           hint="give window: [low, high] with 0 <= low < high <= 255, e.g. [40, 200]")
    values = np.arange(256, dtype=np.float64)
    stretched = np.clip((values - low) / (high - low), 0.0, 1.0) * 255.0
    return np.rint(stretched).astype(np.uint8)


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of 2D ``uint8`` images to ``size x size`` (Pillow; antialiased when shrinking).

    :param images: ``(N, h, w)`` ``uint8``.
    :param size: output side length.
    :returns: ``(N, size, size)`` ``uint8``; the input itself when it already has that size.
    """
    if images.shape[1:] == (size, size):
        return images
    out = np.empty((images.shape[0], size, size), dtype=np.uint8)
    for i, image in enumerate(images):
        out[i] = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((size, size), Image.BILINEAR))
    return out


def to_channels(planes: list[np.ndarray], size: int | None, table: np.ndarray | None) -> np.ndarray:
    """Window, resize and stack 2D planes as the channels of one image each.

    :param planes: ``C`` arrays ``(N, h_c, w_c)``; without ``size`` they must share one shape.
    :param size: resize every plane to ``size x size`` first, or ``None`` to keep them.
    :param table: a :func:`window_table`, or ``None`` for no window.
    :returns: ``(N, H, W, C)`` ``uint8``, channels in the order of ``planes``.
    :raises DatasetError: when the planes differ in shape and no ``size`` is given.
    """
    if table is not None:
        planes = [table[p] for p in planes]
    if size is not None:
        planes = [resize(p, size) for p in planes]
    shapes = {p.shape[1:] for p in planes}
    if len(shapes) != 1:
        raise DatasetError(f"slices of different shapes {sorted(shapes)} cannot be stacked as channels",
                           hint="give size: N to resize every slice to N x N")
    return np.stack(planes, axis=-1)
