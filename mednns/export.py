"""Exported models: a subnet with its inherited weights, adapted to a target dataset, as plain files.

An export folder holds ``model.safetensors`` (the state dict), ``model.json`` (how to rebuild it:
the search space and its arguments, the canonical architecture, the adaptations, the source and
target datasets) and ``arch.json``. :func:`load_model` rebuilds a plain ``nn.Module`` from it.

Adapting a subnet to a target: its last ``nn.Linear`` (the classifier) is replaced by a new,
seeded one with the target's class count, and when the input channels differ its first
convolution is converted (3 → 1: the RGB kernels summed, as a grey image equals R = G = B; 1 → 3:
the kernel repeated and divided by 3), so the inherited features still see the same signal.
A network converted 1 → 3 sees only the mean of the three channels; :func:`add_colour_kernels`
lets it tell colours apart from the first step (the transfer recipe's ``colour_stem``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import nn

from mednns.errors import UsageError
from mednns.files import read_manifest, write_json

if TYPE_CHECKING:
    from mednns.registry import ComponentSource

FORMAT = "mednns-model/1"
WEIGHTS, METADATA, ARCH = "model.safetensors", "model.json", "arch.json"

_M = TypeVar("_M", bound=nn.Module)


def _named(model: nn.Module, kind: type[_M]) -> list[tuple[str, _M]]:
    return [(name, m) for name, m in model.named_modules() if type(m) is kind]


def _replace(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, attribute = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, attribute, module)


def head_module(model: nn.Module) -> tuple[str, nn.Linear]:
    """The classifier of ``model``: its last ``nn.Linear`` (path and module)."""
    linears = _named(model, nn.Linear)
    if not linears:
        raise UsageError("the model has no nn.Linear layer to serve as its classifier head")
    return linears[-1]


def adapt_network(model: nn.Module, *, num_classes: int | None = None, in_channels: int | None = None,
                  seed: int = 0) -> dict[str, Any]:
    """Adapt ``model`` in place to a target's classes and input channels; returns what was changed.

    :param num_classes: new classifier size (``None``: keep the head).
    :param in_channels: new input channel count (``None``: keep).
    :param seed: seed of the new classifier's initial weights.
    """
    changes: dict[str, Any] = {}
    if num_classes is not None:
        path, head = head_module(model)  # always a new head: the target's classes mean something else
        generator = torch.Generator().manual_seed(seed)
        new = nn.Linear(head.in_features, num_classes, bias=head.bias is not None)
        with torch.no_grad():
            bound = 1.0 / head.in_features ** 0.5
            new.weight.uniform_(-bound, bound, generator=generator)
            if new.bias is not None:
                new.bias.zero_()
        _replace(model, path, new.to(head.weight.device))
        changes["head"] = {"module": path, "in_features": head.in_features, "num_classes": num_classes}
    if in_channels is not None:
        found = first_conv(model)
        if found is None:
            raise UsageError("cannot adapt the input channels: the model has no nn.Conv2d layer")
        path, conv = found
        if conv.in_channels != in_channels:
            if conv.groups != 1 or {conv.in_channels, in_channels} != {1, 3}:
                raise UsageError(f"cannot adapt a first convolution of {conv.in_channels} input channels to "
                                 f"{in_channels} (1 <-> 3 only)")
            # as read back from a conv (tuples of any length in torch's stubs): the same geometry
            geometry: dict[str, Any] = {"kernel_size": conv.kernel_size, "stride": conv.stride,
                                        "padding": conv.padding, "dilation": conv.dilation}
            stem = nn.Conv2d(in_channels, conv.out_channels, **geometry, bias=conv.bias is not None,
                             padding_mode=conv.padding_mode)
            with torch.no_grad():
                weight = conv.weight.sum(1, keepdim=True) if in_channels == 1 else conv.weight.repeat(1, 3, 1, 1) / 3
                stem.weight.copy_(weight)
                if conv.bias is not None:
                    assert stem.bias is not None
                    stem.bias.copy_(conv.bias)
            _replace(model, path, stem.to(conv.weight.device))
            changes["stem"] = {"module": path, "from": conv.in_channels, "to": in_channels}
    return changes


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d] | None:
    """The first ``nn.Conv2d`` of ``model`` (path and module): the stem that sees the input channels
    (``None``: the model has none)."""
    convs = _named(model, nn.Conv2d)
    return convs[0] if convs else None


def has_colour_blind_stem(model: nn.Module) -> bool:
    """Whether ``model``'s first convolution is colour-blind (:func:`is_colour_blind`)."""
    stem = first_conv(model)
    return stem is not None and is_colour_blind(stem[1])


def is_colour_blind(conv: nn.Conv2d) -> bool:
    """A convolution over 3 input channels whose kernel is the same on every channel: it responds
    to the channels' mean only (what :func:`adapt_network` makes of a grey source's stem)."""
    if conv.in_channels != 3 or conv.groups != 1:
        return False
    weight = conv.weight
    return bool(torch.equal(weight[:, 0], weight[:, 1]) and torch.equal(weight[:, 1], weight[:, 2]))


def add_colour_kernels(model: nn.Module, generator: torch.Generator) -> bool:
    """Give a colour-blind stem (:func:`is_colour_blind`) seeded colour-opponent kernels, in place.

    Each kernel gets a random part drawn like a fresh convolution's (uniform in +-1/sqrt(fan_in),
    torch's default) minus its mean over the three channels: the added response is zero for any
    image with R = G = B, so what the inherited kernel computes on grey images is kept, and the
    gradients no longer have to break the channels' symmetry before colour can matter.

    :returns: whether the stem was colour-blind (and changed); any other model is left alone.
    """
    stem = first_conv(model)
    if stem is None or not is_colour_blind(stem[1]):
        return False
    with torch.no_grad():
        weight = stem[1].weight
        bound = 1.0 / (weight[0].numel()) ** 0.5
        noise = torch.empty(weight.shape, dtype=weight.dtype).uniform_(-bound, bound, generator=generator)
        weight.add_((noise - noise.mean(dim=1, keepdim=True)).to(weight.device))
    return True


def export_subnet(space: Any, space_spec: dict[str, Any], arch: Any, directory: str | os.PathLike, *,
                  num_classes: int, in_channels: int, metadata: dict[str, Any] | None = None, seed: int = 0) -> Path:
    """Extract ``arch`` from the trained supernet ``space`` with its weights, adapt it, save it.

    :param space_spec: ``{"name", "args"}`` that rebuild the space through the search-space registry.
    :param metadata: anything else worth keeping (source and target datasets, the query's scores).
    :returns: the export folder.
    """
    from mednns.training.checkpoint import save_weights

    directory = Path(directory)
    model = space.extract(arch).cpu().eval()
    changes = adapt_network(model, num_classes=num_classes, in_channels=in_channels, seed=seed)
    save_weights(directory / WEIGHTS, model)
    arch_json = space.arch_to_json(arch)
    (directory / ARCH).write_text(arch_json + "\n")
    write_json(directory / METADATA, {
        "format": FORMAT, "space": space_spec, "arch": arch_json, "arch_hash": space.arch_hash(arch),
        "num_classes": num_classes, "in_channels": in_channels, "changes": changes, "seed": seed,
        "params": sum(p.numel() for p in model.parameters()), **(metadata or {})})
    return directory


def export_query_result(result: dict[str, Any], dataset: Any, directory: str | os.PathLike, *, rank: int = 1,
                        manager: ComponentSource | None = None, seed: int = 0) -> Path:
    """Export the ``rank``-th model of a query result (:func:`mednns.metaspace.query`) for ``dataset``."""
    from mednns.training import load_supernet

    if len(result["results"]) < rank:
        raise UsageError(f"the query returned {len(result['results'])} model(s); nothing to export at rank {rank}",
                         hint="relax the limits (--max-params, --max-macs, --max-latency-ms)")
    row = result["results"][rank - 1]
    space, metadata = load_supernet(row["supernet"], manager=manager)
    info = dataset.info
    return export_subnet(space, metadata["space"],
                         space.arch_from_json(row["arch"]), directory, num_classes=info.n_classes,
                         in_channels=info.n_channels, seed=seed,
                         metadata={"source": {"dataset": metadata["dataset"]["name"], "supernet": row["supernet"],
                                              "zoo_id": row["zoo_id"]},
                                   "target": {"dataset": info.name, "task": str(info.task),
                                              "image_size": list(info.image_size)},
                                   "query": {k: row[k] for k in ("rank", "predicted", "score")}})


def load_model(path: str | os.PathLike, *, manager: ComponentSource | None = None,
               device: str | torch.device = "cpu") -> nn.Module:
    """A plain ``nn.Module`` (eval mode) from an export folder (or its ``model.json``)."""
    from mednns.manager import get_plugin_manager
    from mednns.training.checkpoint import load_weights

    directory, metadata = read_manifest(path, METADATA, FORMAT, what="exported model",
                                        hint="export one with 'mednns query RUN_DIR --dataset ... --export DIR'")
    manager = manager or get_plugin_manager()
    spec = metadata["space"]
    space = manager.create("search-spaces", spec["name"], **spec.get("args", {}))
    model = space.extract(space.arch_from_json(metadata["arch"]))
    del space
    adapt_network(model, num_classes=metadata["num_classes"], in_channels=metadata["in_channels"],
                  seed=metadata.get("seed", 0))
    model.to(device)
    load_weights(model, directory / WEIGHTS)
    return model.eval()
