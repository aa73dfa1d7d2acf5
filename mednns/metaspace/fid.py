"""Fréchet distances between datasets, from their per-image features.

The Fréchet distance between two Gaussians ``N(mu1, S1)`` and ``N(mu2, S2)`` is
``||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))`` (FID when the features come from an
image network). :func:`frechet_distance` computes it safely, :func:`fid_between` from two feature
sets (projecting onto principal components when the covariances would be rank-deficient),
:func:`fid_matrix` for every pair of datasets (with a per-pair JSON cache) and
:func:`save_heatmap` draws the matrix.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import linalg

from mednns.files import write_json

#: Offsets ``eps * I`` tried, in order, when the matrix square root is unreliable.
OFFSET_SCALES = (1.0, 10.0, 100.0, 1e3, 1e4)
#: Largest relative residual ``||R R - S1 S2||_F / ||S1 S2||_F`` accepted for the square root ``R``.
MAX_RESIDUAL = 1e-3
#: Largest imaginary part of the square root's diagonal, relative to its real diagonal, that is discarded.
MAX_IMAGINARY = 1e-3
#: Negative distances down to ``-NEGATIVE_TOLERANCE * scale`` are rounding noise and become 0.
NEGATIVE_TOLERANCE = 1e-4
#: Bumped when the pair values in a cache file would change.
CACHE_VERSION = 1


def _sqrtm(matrix: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # scipy warns about singular matrices; the residual below decides
        root = linalg.sqrtm(matrix)
    return root[0] if isinstance(root, tuple) else root


def _acceptable(root: np.ndarray, product: np.ndarray) -> np.ndarray | None:
    """The real part of ``root`` when it is a trustworthy square root of ``product``, else ``None``."""
    if not np.all(np.isfinite(root)):
        return None
    if np.iscomplexobj(root):
        diagonal = np.diagonal(root)
        scale = max(1.0, float(np.abs(diagonal.real).max(initial=0.0)))
        if float(np.abs(diagonal.imag).max(initial=0.0)) > MAX_IMAGINARY * scale:
            return None
        root = root.real
    norm = float(np.linalg.norm(product))
    residual = float(np.linalg.norm(root @ root - product))
    if residual > MAX_RESIDUAL * max(norm, 1e-12):
        return None
    return root


def _near_singular(product: np.ndarray) -> bool:
    diagonal = np.abs(np.diagonal(product))
    if diagonal.size == 0 or diagonal.max() <= 0:
        return True
    return bool(diagonal.min() <= 1e-12 * diagonal.max())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """The Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``.

    ``(sigma1 sigma2)^(1/2)`` comes from :func:`scipy.linalg.sqrtm`. When the product is
    near-singular, or the root is not finite, has a non-negligible imaginary part or does not
    square back to the product, ``eps * I`` (then 10, 100, ... times that) is added to both
    covariances and the root is taken again (the result is then the distance between those
    regularized Gaussians: the traces are shifted too, so identical inputs still give 0). A
    negligible imaginary residue is dropped; tiny negative results (rounding) are clipped to 0.

    :param mu1: mean ``(D,)`` of the first distribution.
    :param sigma1: covariance ``(D, D)`` of the first distribution.
    :param mu2: mean ``(D,)`` of the second distribution.
    :param sigma2: covariance ``(D, D)`` of the second distribution.
    :param eps: the first diagonal offset tried.
    :returns: the distance (``>= 0``).
    :raises ValueError: on mismatched shapes, or when no offset gives a reliable square root.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    dim = mu1.shape[0]
    if mu1.shape != (dim,) or mu2.shape != (dim,) or sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise ValueError(f"mismatched shapes: mu1 {mu1.shape}, sigma1 {sigma1.shape}, mu2 {mu2.shape}, "
                         f"sigma2 {sigma2.shape}")
    for name, value in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{name} holds non-finite values")
    diff = mu1 - mu2
    product = sigma1 @ sigma2
    root = None if _near_singular(product) else _acceptable(_sqrtm(product), product)
    if root is None:
        identity = np.eye(dim)
        for scale in OFFSET_SCALES:
            offset = eps * scale * identity
            shifted = (sigma1 + offset) @ (sigma2 + offset)
            root = _acceptable(_sqrtm(shifted), shifted)
            if root is not None:
                # the distance between the regularized Gaussians: traces shifted like the root
                sigma1, sigma2 = sigma1 + offset, sigma2 + offset
                break
        else:
            raise ValueError(f"no reliable matrix square root of sigma1 @ sigma2 ({dim}x{dim}), even with "
                             f"diagonal offsets up to {eps * OFFSET_SCALES[-1]:g}")
    trace1, trace2 = float(np.trace(sigma1)), float(np.trace(sigma2))
    distance = float(diff @ diff) + trace1 + trace2 - 2.0 * float(np.trace(root))
    if distance < 0:
        scale = float(diff @ diff) + abs(trace1) + abs(trace2) + 1e-12
        if distance < -NEGATIVE_TOLERANCE * scale:
            raise ValueError(f"the Fréchet distance came out clearly negative ({distance:.6g}); the covariances are "
                             "numerically unreliable")
        distance = 0.0
    return distance


@dataclass(frozen=True)
class FidResult:
    """A Fréchet distance with how it was computed.

    :param distance: the distance.
    :param dim: the feature dimension it was computed in (``k`` after a projection).
    :param projected: whether the features were projected onto principal components.
    """

    distance: float
    dim: int
    projected: bool


def _check_features(name: str, features: np.ndarray) -> np.ndarray:
    array = np.asarray(features, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"{name} must be (N, D) features, got shape {array.shape}")
    if array.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 feature vectors for a covariance, got {array.shape[0]}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds non-finite features")
    return array


def fid_details(a: np.ndarray, b: np.ndarray, *, max_dim: int | None = None) -> FidResult:
    """:func:`fid_between` with the dimension it was computed in.

    :param a: features ``(Na, D)``.
    :param b: features ``(Nb, D)``.
    :param max_dim: project onto at most this many principal components.
    :returns: a :class:`FidResult`.
    """
    a, b = _check_features("a", a), _check_features("b", b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} and {b.shape[1]}")
    if max_dim is not None and max_dim < 1:
        raise ValueError(f"max_dim must be at least 1, got {max_dim}")
    dim = a.shape[1]
    smallest = min(a.shape[0], b.shape[0])
    k = dim
    if smallest <= dim:
        k = max(1, min(dim, smallest // 2))
    if max_dim is not None:
        k = min(k, max_dim)
    projected = k < dim
    if projected:
        pooled = np.concatenate([a, b], axis=0)
        center = pooled.mean(axis=0)
        _, _, vt = np.linalg.svd(pooled - center, full_matrices=False)
        basis = vt[:k].T  # (D, k): the top-k principal directions of the pooled features
        a, b = (a - center) @ basis, (b - center) @ basis
    mu1, mu2 = a.mean(axis=0), b.mean(axis=0)
    sigma1 = np.atleast_2d(np.cov(a, rowvar=False))
    sigma2 = np.atleast_2d(np.cov(b, rowvar=False))
    return FidResult(frechet_distance(mu1, sigma1, mu2, sigma2), k, projected)


def fid_between(a: np.ndarray, b: np.ndarray, *, max_dim: int | None = None) -> float:
    """The Fréchet distance between two feature sets (each fitted with a Gaussian).

    With ``N`` vectors of dimension ``D`` a covariance has rank at most ``N - 1``, so when
    ``min(Na, Nb) <= D`` both sets are first projected onto the top ``k`` principal components of
    the pooled, centred features (``k = min(D, min(Na, Nb) // 2)``; the SVD of the pooled matrix),
    and the distance is computed in those ``k`` dimensions: the dominant directions of variation
    of both sets, where their covariances are full-rank. ``max_dim`` caps ``k`` (and projects even
    full-rank features). :func:`fid_details` also returns ``k``.

    :param a: features ``(Na, D)``.
    :param b: features ``(Nb, D)``.
    :param max_dim: project onto at most this many principal components (``None``: only when needed).
    :returns: the distance (``>= 0``; ``0`` for identical sets).
    :raises ValueError: for malformed features (not 2-D, fewer than 2 rows, other dimensions).
    """
    return fid_details(a, b, max_dim=max_dim).distance


def features_digest(features: np.ndarray) -> str:
    """A SHA-256 of a feature array's shape, dtype and values (the default key of :func:`fid_matrix`).

    :param features: any array.
    :returns: 64 hex characters.
    """
    array = np.ascontiguousarray(features)
    digest = hashlib.sha256(f"{array.shape}|{array.dtype.str}|".encode())
    digest.update(array.view(np.uint8).reshape(-1).data)
    return digest.hexdigest()


def _pair_key(first: str, second: str, max_dim: int | None) -> str:
    low, high = sorted((first, second))
    suffix = "" if max_dim is None else f"|max_dim={max_dim}"
    return f"{low}|{high}{suffix}"


def _read_cache(path: Path) -> dict[str, float]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("pairs"), dict):
        return {}
    return {k: float(v) for k, v in data["pairs"].items() if isinstance(v, (int, float))}


def fid_matrix(features: dict[str, np.ndarray], cache: Path | None = None, keys: dict[str, str] | None = None,
               *, max_dim: int | None = None) -> tuple[list[str], np.ndarray]:
    """Fréchet distances between every pair of feature sets.

    :param features: ``{dataset name: (N, D) features}``; the names keep their order.
    :param cache: a JSON file of per-pair results (read, extended and rewritten atomically); ``None``: no cache.
    :param keys: ``{dataset name: key}`` identifying each feature set in the cache (e.g.
        :func:`mednns.metaspace.features.features_key`); default: :func:`features_digest` of the array.
        A pair's entry is keyed by both keys, in either order.
    :param max_dim: passed to :func:`fid_between`.
    :returns: ``(names, matrix)``: a symmetric ``(n, n)`` float64 matrix with a zero diagonal.
    """
    names = list(features)
    if keys is None:
        keys = {}
    missing = [n for n in names if n not in keys]
    keys = {**keys, **{n: features_digest(features[n]) for n in missing}}
    cache_path = Path(cache) if cache is not None else None
    stored = _read_cache(cache_path) if cache_path is not None else {}
    matrix = np.zeros((len(names), len(names)), dtype=np.float64)
    added = 0
    for i, first in enumerate(names):
        for j in range(i + 1, len(names)):
            second = names[j]
            pair = _pair_key(keys[first], keys[second], max_dim)
            if pair in stored:
                value = stored[pair]
            else:
                value = fid_between(features[first], features[second], max_dim=max_dim)
                stored[pair] = value
                added += 1
            matrix[i, j] = matrix[j, i] = value
    if cache_path is not None and added:
        current = _read_cache(cache_path)  # keep pairs another process wrote meanwhile
        current.update(stored)
        write_json(cache_path, {"version": CACHE_VERSION, "pairs": current})
    return names, matrix


def save_heatmap(names: list[str], matrix: np.ndarray, path: Path, *, title: str = "FID between datasets") -> Path:
    """Save an annotated heatmap of a distance matrix as an image (matplotlib, Agg canvas).

    :param names: row and column labels.
    :param matrix: ``(n, n)`` values.
    :param path: the output file (``.png``, ``.pdf``, ``.svg`` ...).
    :param title: the figure's title.
    :returns: ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    values = np.asarray(matrix, dtype=np.float64)
    n = len(names)
    side = max(3.5, 0.75 * n + 2.0)
    figure = Figure(figsize=(side + 1.0, side))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(values, cmap="viridis")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="FID")
    axes.set_xticks(range(n), labels=names, rotation=45, ha="right", rotation_mode="anchor")
    axes.set_yticks(range(n), labels=names)
    high = float(values.max()) if values.size else 0.0
    for i in range(n):
        for j in range(n):
            dark = high > 0 and values[i, j] < 0.5 * high  # viridis is dark at the low end
            axes.text(j, i, f"{values[i, j]:.3g}", ha="center", va="center", fontsize=8,
                      color="white" if dark else "black")
    axes.set_title(title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=150)
    return path


__all__ = ["FidResult", "features_digest", "fid_between", "fid_details", "fid_matrix", "frechet_distance",
           "save_heatmap"]
