"""Functional signatures of zoo models: how a subnet *represents* a fixed probe batch (TANS-style).

A model's signature is its representational similarity matrix on a fixed batch of ``P`` probe
images: the cosine similarity between the ``P`` penultimate feature vectors (the input of the
final ``nn.Linear``), upper triangle without the diagonal, ``P(P-1)/2`` numbers. Its length
depends only on ``P``, never on the subnet's width (the official MedNNS functional embedding
grows with the width: a known bug this avoids), so one MLP embeds models of any width and any
search space.

Per zoo row, :func:`table_signatures` extracts the subnet from its trained supernet
(:func:`mednns.training.load_supernet` once per supernet folder), adapts the probe to the
supernet's input (channels 1 ↔ 3, its training image size, its normalization), recalibrates the
subnet's BN statistics on the probe batch itself, and computes the signature
(:func:`subnet_signature`). Signatures are cached per (supernet weights, preprocessing, probe)
in ``<cache_dir>/functional/<key>.npz``, keyed by row (space and architecture JSON), so a second
run does no forward passes.

The probe is either given (a float tensor ``(P, C, H, W)`` in ``[0, 1]``) or synthetic
(:func:`synthetic_probe`): smooth random fields plus Gaussian blobs, fully determined by a seed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mednns.data.tensors import LUMINANCE
from mednns.errors import UsageError
from mednns.export import first_conv, head_module
from mednns.files import atomic_write_bytes, read_json
from mednns.metaspace.contracts import ModelTable
from mednns.supernets import recalibrate_bn
from mednns.training.checkpoint import load_supernet, supernet_files
from mednns.zoo.store import sha256_file

if TYPE_CHECKING:
    from mednns.registry import ComponentSource

#: Version of the signature computation; part of every cache key (bump it when the maths changes).
SIGNATURE_FORMAT = "mednns-functional-signature/1"
#: Sub-folder of the context's ``cache_dir`` holding the signature files.
CACHE_SUBDIR = "functional"


# -- the probe -------------------------------------------------------------------------------------

def synthetic_probe(images: int = 32, size: int = 28, seed: int = 0) -> torch.Tensor:
    """A deterministic batch of smooth synthetic grey images in ``[0, 1]``.

    Each image is a low-frequency random field (a ``4x4`` grid of Gaussian values, bicubically
    upsampled) plus 2 to 5 Gaussian blobs (random centre, radius ``0.05``–``0.3`` of the image
    and signed amplitude), rescaled to span ``[0, 1]``: organ-like smooth structures at several
    scales, without any real data. Everything is drawn from ``numpy.random.default_rng(seed)``.

    :param images: number of images ``P`` (at least 2: a signature compares pairs).
    :param size: height and width in pixels.
    :param seed: the seed; equal seeds give bit-identical probes.
    :returns: float32 ``(images, 1, size, size)``.
    """
    if images < 2:
        raise UsageError(f"a probe needs at least 2 images, got {images}", hint="set probe_images >= 2")
    if size < 4:
        raise UsageError(f"probe images must be at least 4 px, got {size}", hint="set probe_size >= 4")
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.standard_normal((images, 1, 4, 4)))
    field = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True).numpy()[:, 0]
    grid = (np.arange(size) + 0.5) / size
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    out = np.empty((images, 1, size, size), dtype=np.float32)
    for i in range(images):
        image = 0.5 * field[i]
        for _ in range(int(rng.integers(2, 6))):
            cy, cx = rng.random(2)
            sigma = rng.uniform(0.05, 0.3)
            amplitude = rng.uniform(-1.0, 1.0)
            image = image + amplitude * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
        low, high = image.min(), image.max()
        out[i, 0] = (image - low) / max(high - low, 1e-8)
    return torch.from_numpy(out)


def check_probe(probe: Any) -> torch.Tensor:
    """Validate a caller's probe batch; returns it as a contiguous float32 CPU tensor.

    :param probe: a float tensor ``(P, C, H, W)``, ``P >= 2``, ``C`` 1 or 3, values in ``[0, 1]``.
    """
    hint = "give context['probe'] as a float tensor (P, C, H, W) with P >= 2, C 1 or 3, values in [0, 1]"
    if not isinstance(probe, torch.Tensor) or not probe.is_floating_point():
        raise UsageError(f"the probe must be a float tensor, got {type(probe).__name__}", hint=hint)
    if probe.dim() != 4 or probe.shape[0] < 2 or probe.shape[1] not in (1, 3):
        raise UsageError(f"the probe has shape {tuple(probe.shape)}", hint=hint)
    probe = probe.detach().to("cpu", torch.float32).contiguous()
    if not torch.isfinite(probe).all() or probe.min() < 0 or probe.max() > 1:
        raise UsageError("the probe's values are not all in [0, 1]", hint=hint)
    return probe


def probe_hash(probe: torch.Tensor) -> str:
    """SHA-256 (hex) of a probe's shape and float32 bytes: its identity in cache keys."""
    data = probe.detach().to("cpu", torch.float32).contiguous()
    digest = hashlib.sha256(json.dumps(list(data.shape)).encode())
    digest.update(data.numpy().tobytes())
    return digest.hexdigest()


def prepare_probe(probe: torch.Tensor, channels: int, image_size: Sequence[int], mean: Sequence[float] | None,
                  std: Sequence[float] | None) -> torch.Tensor:
    """The probe as a network's input: channels adapted, resized, normalized.

    :param probe: float ``(P, C, H, W)`` in ``[0, 1]``.
    :param channels: the network's input channels (1 → 3 repeats the channel; 3 → 1 takes the
        luminance, as :mod:`mednns.data.tensors`).
    :param image_size: ``(H, W)`` the network was trained on.
    :param mean: :param std: per-channel normalization (one value or one per channel; ``None``: none).
    :returns: float32 ``(P, channels, H, W)``.
    """
    x = probe.to(torch.float32)
    have = x.shape[1]
    if have != channels:
        if (have, channels) == (1, 3):
            x = x.repeat(1, 3, 1, 1)
        elif (have, channels) == (3, 1):
            x = (x * torch.tensor(LUMINANCE, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
        else:
            raise UsageError(f"cannot adapt a {have}-channel probe to a network with {channels} input channels",
                             hint="supported: 1 -> 3 and 3 -> 1")
    size = tuple(int(v) for v in image_size)
    if tuple(x.shape[2:]) != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    if mean is not None or std is not None:
        m = torch.as_tensor(0.0 if mean is None else list(np.atleast_1d(mean)), dtype=x.dtype).view(1, -1, 1, 1)
        s = torch.as_tensor(1.0 if std is None else list(np.atleast_1d(std)), dtype=x.dtype).view(1, -1, 1, 1)
        s = torch.where(s < 1e-8, torch.ones_like(s), s)
        x = (x - m) / s
    return x.contiguous()


# -- one network -----------------------------------------------------------------------------------

@contextlib.contextmanager
def capture_head_input(net: nn.Module, head: nn.Module | None = None) -> Iterator[list[torch.Tensor]]:
    """Within the block, every forward of ``net`` appends its classifier's input (the penultimate
    pooled features, flattened to ``(N, F)``) to the yielded list. :param head: the classifier
    (default: the classifier :func:`~mednns.export.head_module` finds, the layer fine-tuning replaces)."""
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        captured.append(inputs[0].detach().flatten(1))

    handle = (head if head is not None else head_module(net)[1]).register_forward_pre_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


@torch.no_grad()
def penultimate_features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``(N, F)`` inputs of ``net``'s final ``nn.Linear`` for the batch ``x`` (``net`` in eval mode)."""
    net.eval()
    with capture_head_input(net) as captured:
        net(x)
    if not captured:
        raise UsageError(f"{type(net).__name__}'s forward never called its final nn.Linear",
                         hint="functional encodings need a network whose output comes from a final nn.Linear")
    return captured[-1]


def similarity_signature(features: torch.Tensor) -> np.ndarray:
    """The representational similarity signature of ``P`` feature vectors.

    :param features: ``(P, F)``, any ``F``.
    :returns: float32 ``(P(P-1)/2,)``: cosine similarities of every pair ``i < j`` in row-major
        upper-triangle order (a zero vector has similarity 0 with everything).
    """
    if features.dim() != 2 or features.shape[0] < 2:
        raise ValueError(f"features must be (P >= 2, F), got {tuple(features.shape)}")
    unit = F.normalize(features.detach().to("cpu", torch.float64), dim=1, eps=1e-12)
    similarity = unit @ unit.T
    rows, cols = torch.triu_indices(len(unit), len(unit), offset=1)
    return similarity[rows, cols].to(torch.float32).numpy()


def signature_length(probe_images: int) -> int:
    """Length of a signature on ``probe_images`` images: ``P(P-1)/2``."""
    return probe_images * (probe_images - 1) // 2


def subnet_signature(net: nn.Module, probe: torch.Tensor, seed: int = 0) -> np.ndarray:
    """The functional signature of one network on a prepared probe batch.

    The network's BN statistics are re-estimated on the probe batch itself (it is modified in
    place), then the penultimate features of the probe are compared pairwise
    (:func:`similarity_signature`). Random state is forked and seeded, so equal networks give
    equal signatures.

    :param net: a standalone network (e.g. ``space.extract(arch)``) ending in an ``nn.Linear``.
    :param probe: the prepared input batch (:func:`prepare_probe`), on the network's device.
    :param seed: seeds the (forked) torch RNG during the computation.
    :returns: float32 ``(P(P-1)/2,)``.
    """
    devices = [probe.device.index or 0] if probe.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        recalibrate_bn(net, [probe])
        return similarity_signature(penultimate_features(net, probe))


# -- a whole table, cached -------------------------------------------------------------------------

_weights_hashes: dict[tuple[str, int, int], str] = {}


def weights_identity(path: str | os.PathLike) -> str:
    """SHA-256 of a supernet's weights file (memoized per path, size and modification time)."""
    stat = os.stat(path)
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _weights_hashes:
        _weights_hashes[key] = sha256_file(path)
    return _weights_hashes[key]


def row_key(space: str, arch_json: str) -> str:
    """A row's key inside a signature file: 24 hex digits of SHA-256 of ``space:arch JSON``."""
    return hashlib.sha256(f"{space}:{arch_json}".encode()).hexdigest()[:24]


def _input_spec(metadata: dict[str, Any], folder: str) -> dict[str, Any]:
    """``{channels, image_size, mean, std}`` of a supernet's input, from its ``supernet.json``."""
    image_size = (metadata.get("dataset") or {}).get("image_size")
    if isinstance(image_size, int):
        image_size = [image_size, image_size]
    if not isinstance(image_size, (list, tuple)) or len(image_size) != 2:
        raise UsageError(f"{folder}: supernet.json has no 2D dataset.image_size (got {image_size!r})",
                         hint="functional encodings need a supernet trained on 2D images by train_supernet")
    norm = metadata.get("normalization") or {}
    channels = (metadata.get("space") or {}).get("args", {}).get("in_channels")
    if channels is None and norm.get("mean") is not None:
        channels = len(norm["mean"])
    return {"channels": channels, "image_size": [int(v) for v in image_size],
            "mean": norm.get("mean"), "std": norm.get("std")}


def _first_conv_channels(net: nn.Module) -> int:
    stem = first_conv(net)
    if stem is None:
        raise UsageError(f"cannot tell the input channels of {type(net).__name__}",
                         hint="give space.args.in_channels in supernet.json")
    return stem[1].in_channels


class SignatureFile:
    """The cached signatures of one (supernet weights, input preprocessing, probe): an ``.npz`` of
    ``keys`` (row keys, :func:`row_key`) and ``signatures`` (float32 ``(n, P(P-1)/2)``)."""

    def __init__(self, path: Path | None):
        self.path = path
        self.signatures: dict[str, np.ndarray] = {}
        if path is not None and path.exists():
            with np.load(path, allow_pickle=False) as data:
                self.signatures = dict(zip(data["keys"].tolist(), data["signatures"]))

    def save(self) -> None:
        """Write every signature, atomically (nothing without a cache folder)."""
        if self.path is None or not self.signatures:
            return
        keys = sorted(self.signatures)
        buffer = io.BytesIO()
        np.savez(buffer, keys=np.array(keys), signatures=np.stack([self.signatures[k] for k in keys]))
        atomic_write_bytes(self.path, buffer.getvalue())


def _progress_bar(enabled: bool) -> Any:
    """A rich progress bar on stderr (disabled: draws nothing)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    return Progress(*columns, console=Console(stderr=True), disable=not enabled)


def table_signatures(table: ModelTable, probe: torch.Tensor, *, cache_dir: str | os.PathLike | None = None,
                     device: str | torch.device = "cpu", seed: int = 0, progress: bool = False,
                     manager: ComponentSource | None = None) -> np.ndarray:
    """The functional signature of every row of ``table``.

    Rows are grouped by supernet folder; each group's cache file is read first and only missing
    rows are computed (the supernet is then loaded once for the group, each distinct architecture
    extracted and run once) and written back.

    :param table: the models; ``table.supernet`` must name each row's supernet folder (or file).
    :param probe: float ``(P, C, H, W)`` in ``[0, 1]`` (:func:`synthetic_probe` or :func:`check_probe`).
    :param cache_dir: folder for ``functional/<key>.npz`` files; ``None``: no caching.
    :param device: where the subnets run.
    :param seed: seeds each signature's computation (:func:`subnet_signature`).
    :param progress: show a rich progress bar over the rows to compute.
    :param manager: the plugin manager that rebuilds the supernets (default: the process-wide one).
    :returns: float32 ``(len(table), P(P-1)/2)`` in row order.
    """
    n = len(table)
    if len(table.supernet) != n:
        raise UsageError(f"the model table names the supernet of {len(table.supernet)} of its {n} rows",
                         hint="functional encodings extract every subnet from its supernet: fill ModelTable.supernet")
    probe = probe.detach().to("cpu", torch.float32)
    p_hash = probe_hash(probe)
    out = np.zeros((n, signature_length(probe.shape[0])), dtype=np.float32)
    groups: dict[str, list[int]] = {}
    for i, folder in enumerate(table.supernet):
        groups.setdefault(str(folder), []).append(i)
    cache_root = Path(cache_dir) / CACHE_SUBDIR if cache_dir is not None else None

    plans: list[tuple[str, dict[str, Any], SignatureFile, dict[str, list[int]]]] = []
    for folder, rows in groups.items():
        meta_path, weights_path = supernet_files(folder)
        for path in (meta_path, weights_path):
            if not path.exists():
                raise UsageError(f"supernet file not found: {path}",
                                 hint="ModelTable.supernet holds the train_supernet output folder of each row")
        metadata = read_json(meta_path)
        spec = _input_spec(metadata, folder)
        space_name = (metadata.get("space") or {}).get("name")
        for i in rows:
            if space_name is not None and table.space[i] != space_name:
                raise UsageError(f"row {i} (id {table.ids[i]}) is in space {table.space[i]!r} but its supernet "
                                 f"{folder} is {space_name!r}", hint="check ModelTable.space and .supernet")
        identity = json.dumps({"format": SIGNATURE_FORMAT, "weights": weights_identity(weights_path), "probe": p_hash,
                               "input": spec, "seed": seed}, sort_keys=True)
        cache_path = cache_root / f"{hashlib.sha256(identity.encode()).hexdigest()[:32]}.npz" if cache_root else None
        cached = SignatureFile(cache_path)
        missing: dict[str, list[int]] = {}
        for i in rows:
            key = row_key(table.space[i], table.arch[i])
            if key in cached.signatures:
                out[i] = cached.signatures[key]
            else:
                missing.setdefault(key, []).append(i)
        plans.append((folder, spec, cached, missing))

    todo = sum(len(missing) for *_, missing in plans)
    with _progress_bar(progress and todo > 0) as bar:
        task = bar.add_task("functional signatures", total=todo)
        for folder, spec, cached, missing in plans:
            if not missing:
                continue
            space, _ = load_supernet(folder, device=device, manager=manager)
            prepared: torch.Tensor | None = None
            for key, rows in missing.items():
                net = space.extract(space.arch_from_json(table.arch[rows[0]]))
                if prepared is None:
                    channels = spec["channels"] or _first_conv_channels(net)
                    prepared = prepare_probe(probe, channels, spec["image_size"], spec["mean"], spec["std"])
                    prepared = prepared.to(device)
                signature = subnet_signature(net, prepared, seed=seed)
                cached.signatures[key] = signature
                out[rows] = signature
                bar.update(task, advance=1)
            del space
            cached.save()
    return out
