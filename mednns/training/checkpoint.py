"""Checkpoints and final supernet files: weights as safetensors, metadata as JSON, training state as torch.

A checkpoint is three files named by a tag under ``<dir>/checkpoints/``, each written atomically
(temporary file, then rename): ``<tag>.safetensors`` (supernet weights and BN buffers),
``<tag>.json`` (metadata: space, dataset, phase, epoch, step, metrics ...) and ``<tag>.state.pt``
(optimizer, scheduler, RNG states, progress counters). ``latest.json`` names the newest complete
tag and the one before it, and is written last, so a crash at any point leaves a usable
checkpoint; the two newest tags are kept, and a damaged newest one (a truncated file, a full disk)
falls back to the one before it with a warning.

The final supernet is ``supernet.safetensors`` + ``supernet.json``; :func:`load_supernet` rebuilds
the space through the search-space registry from ``supernet.json`` and loads the weights.
"""

from __future__ import annotations

import io
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import safetensors.torch
import torch
from torch import nn

from mednns.errors import UsageError
from mednns.files import atomic_write_bytes, read_json, read_manifest, write_json

log = logging.getLogger("mednns.training")

CHECKPOINT_DIR = "checkpoints"
LATEST = "latest.json"
from mednns.training.config import SUPERNET_METADATA, SUPERNET_WEIGHTS  # noqa: E402 (re-exported)

if TYPE_CHECKING:
    from mednns.registry import ComponentSource

FORMAT = "mednns-supernet/1"


# -- weights -------------------------------------------------------------------
def module_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as contiguous CPU tensors (what safetensors stores)."""
    return {name: t.detach().to("cpu").contiguous() for name, t in module.state_dict().items()}


def save_weights(path: str | os.PathLike, module: nn.Module, metadata: dict[str, str] | None = None) -> Path:
    """Write ``module``'s state dict to a safetensors file, atomically."""
    return atomic_write_bytes(path, safetensors.torch.save(module_tensors(module), metadata=metadata))


def read_weights(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a damaged one is a usage error naming it."""
    try:
        return safetensors.torch.load_file(str(path), device=str(device))
    except FileNotFoundError:
        raise UsageError(f"weights file not found: {path}") from None
    except Exception as exc:  # SafetensorError, OSError, ValueError: a truncated or foreign file
        raise UsageError(f"{path} is damaged: not readable as safetensors ({type(exc).__name__}: {exc})",
                         hint="restore it from a copy, or train or export it again") from None


def weights_problem(path: str | os.PathLike) -> str | None:
    """Why the safetensors file ``path`` is not whole (its header unreadable, or shorter than the
    tensors its header declares), or ``None``; reads the header only."""
    import json
    import struct

    path = Path(path)
    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length > path.stat().st_size:
                return f"{path}: its header claims {length} bytes, more than the file holds"
            header = json.loads(handle.read(length))
    except (OSError, struct.error, ValueError, UnicodeDecodeError) as exc:
        return f"{path}: not a safetensors file ({type(exc).__name__})"
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    expected = 8 + length + max(ends, default=0)
    size = path.stat().st_size
    return None if size >= expected else f"{path}: truncated ({size} of {expected} bytes)"


def load_weights(module: nn.Module, path: str | os.PathLike) -> None:
    """Load a safetensors state dict into ``module`` (strict: every key must match)."""
    module.load_state_dict(read_weights(path, next(module.parameters()).device), strict=True)


# -- RNG states ----------------------------------------------------------------
def capture_rng_state() -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) global RNG states, in types ``torch.load(weights_only=True)`` accepts."""
    # the legacy tuple (numpy's stubs type the default as the dict of legacy=False)
    key, keys, pos, has_gauss, cached = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state())
    state = {
        "python": random.getstate(),
        "numpy": {"key": key, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Undo :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["key"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- checkpoints ---------------------------------------------------------------
@dataclass
class Checkpoint:
    """A checkpoint read back: its tag, weights file, metadata and training state."""

    tag: str
    weights: Path
    metadata: dict[str, Any]
    state: dict[str, Any]


def _paths(directory: Path, tag: str) -> tuple[Path, Path, Path]:
    folder = directory / CHECKPOINT_DIR
    return folder / f"{tag}.safetensors", folder / f"{tag}.json", folder / f"{tag}.state.pt"


def save_checkpoint(directory: str | os.PathLike, tag: str, module: nn.Module, metadata: dict[str, Any],
                    state: dict[str, Any]) -> Path:
    """Write checkpoint ``tag`` under ``directory/checkpoints`` and make it the latest; returns the weights path."""
    directory = Path(directory)
    weights, meta, state_path = _paths(directory, tag)
    save_weights(weights, module, {"format": FORMAT, "tag": tag})
    write_json(meta, metadata)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(state_path, buffer.getvalue())
    pointer = directory / CHECKPOINT_DIR / LATEST
    previous = _latest_tags(pointer)[:1]
    keep = [tag, *[t for t in previous if t != tag]]
    write_json(pointer, {"tag": tag, "previous": keep[1] if len(keep) > 1 else None})
    for path in (directory / CHECKPOINT_DIR).iterdir():
        if path.name != LATEST and not path.name.startswith((*(f"{t}." for t in keep), ".")):
            path.unlink(missing_ok=True)
    return weights


def _latest_tags(pointer: Path) -> list[str]:
    """The tags ``latest.json`` names, newest first (none when it is missing or damaged)."""
    try:
        pointed = read_json(pointer) if pointer.exists() else {}
    except UsageError:
        return []
    return [t for t in (pointed.get("tag"), pointed.get("previous")) if isinstance(t, str)]


def load_checkpoint(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> Checkpoint | None:
    """The newest readable checkpoint under ``directory/checkpoints``, or ``None`` when there is none.

    The newest is tried first, then the one before it (``latest.json`` names both; when it is itself
    damaged, every tag in the folder, newest file first); each one skipped is a warning naming why.
    :raises UsageError: when checkpoints exist but none is readable.
    """
    folder = Path(directory) / CHECKPOINT_DIR
    pointer = folder / LATEST
    if not folder.is_dir():
        return None
    tags = _latest_tags(pointer)
    if not tags:  # no pointer, or a damaged one: whatever the folder holds, newest first
        states = sorted(folder.glob("*.state.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
        tags = [p.name[: -len(".state.pt")] for p in states]
    problems = []
    for tag in tags:
        weights, meta, state_path = _paths(Path(directory), tag)
        try:
            missing = [p.name for p in (weights, meta, state_path) if not p.exists()]
            if missing:
                raise UsageError(f"missing {', '.join(missing)}")
            read_weights(weights)
            metadata = read_json(meta)
            try:
                state = torch.load(state_path, map_location=map_location, weights_only=True)
            except Exception as exc:  # a truncated or foreign file
                raise UsageError(f"{state_path.name} is not readable ({type(exc).__name__}: {exc})") from None
        except UsageError as exc:
            problems.append(f"{tag}: {exc.message}")
            log.warning("checkpoint %s in %s is damaged (%s)%s", tag, folder, exc.message,
                        "; trying the one before it" if tag != tags[-1] else "")
            continue
        return Checkpoint(tag, weights, metadata, state)
    if problems:
        raise UsageError(f"no readable checkpoint in {folder}: {'; '.join(problems)}",
                         hint="rerun with --restart to start this stage over")
    return None


# -- final supernet files ------------------------------------------------------
def save_supernet(directory: str | os.PathLike, module: nn.Module, metadata: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``supernet.safetensors`` and ``supernet.json`` (weights first, then the metadata naming them)."""
    directory = Path(directory)
    weights = save_weights(directory / SUPERNET_WEIGHTS, module, {"format": FORMAT})
    meta = write_json(directory / SUPERNET_METADATA, {**metadata, "weights": SUPERNET_WEIGHTS})
    return weights, meta


def supernet_files(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(metadata, weights)`` paths of a trained supernet given by its folder or either file."""
    path = Path(path)
    if path.is_dir():
        return path / SUPERNET_METADATA, path / SUPERNET_WEIGHTS
    if path.suffix == ".safetensors":
        return path.with_suffix(".json"), path
    if path.suffix == ".json":
        return path, path.with_suffix(".safetensors")
    raise UsageError(f"not a supernet file or folder: {path}",
                     hint=f"give the folder holding {SUPERNET_METADATA}, or the .json / .safetensors file")


def load_supernet(path: str | os.PathLike, *, device: str | torch.device = "cpu", manager: ComponentSource | None = None
                  ) -> tuple[Any, dict[str, Any]]:
    """Rebuild a trained supernet: ``(space, metadata)``.

    :param path: a folder holding ``supernet.json`` + ``supernet.safetensors`` (e.g. a
        ``train_supernet`` output folder), or either file (a checkpoint's ``<tag>.json`` works too).
    :param device: where to put the weights.
    :param manager: the :class:`~mednns.manager.PluginManager` whose search-space registry builds
        the space (default: the process-wide one, as :func:`mednns.create`).
    :returns: the space in eval mode, with its largest architecture active, and the metadata.
    """
    from mednns.manager import get_plugin_manager

    meta_path, weights_path = supernet_files(path)
    _, metadata = read_manifest(meta_path, meta_path.name, FORMAT, what="trained supernet",
                                hint="give a train_supernet folder (it holds supernet.json and supernet.safetensors)")
    if not weights_path.exists():
        raise UsageError(f"supernet file not found: {weights_path}")
    spec = metadata.get("space")
    if not isinstance(spec, dict) or "name" not in spec:
        raise UsageError(f"{meta_path} does not describe a search space (no 'space.name')")
    manager = manager or get_plugin_manager()
    space = manager.create("search-spaces", spec["name"], **spec.get("args", {}))
    space.to(device)
    load_weights(space, weights_path)
    space.set_active(space.largest())
    space.eval()
    return space, metadata
