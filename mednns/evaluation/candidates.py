"""Starting points of fine-tuning runs: the networks mednns and the baselines hand to the same loop.

A :class:`Candidate` names a starting point by a ``key`` (two methods that pick the same
starting point share their runs: mednns's top-1 is also the first of its top-k) and builds a fresh
network for a seed. Kinds:

* :func:`inherited` — a subnet extracted from a trained supernet with its weights, adapted to the
  target (new seeded head, 1 ↔ 3 input channels): what the query exports;
* :func:`random_init` — the same architecture from a freshly initialized supernet;
* :func:`timm_network` — a timm model from scratch or with ImageNet weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from mednns.data.info import DatasetInfo
from mednns.errors import UsageError
from mednns.export import adapt_network

if TYPE_CHECKING:
    from mednns.registry import ComponentSource


@dataclass
class Candidate:
    """A starting point. :param key: identity of the starting point (equal keys train identically).
    :param model: what the results record about it (name, source, space, weights, arch_hash).
    :param build: a fresh network for a seed (the seed also draws a new head).
    :param finetune: fine-tuning settings this start overrides (a variant's transfer recipe).
    :param restart: above 0, the same start fine-tuned with another seed (head and batch order; the
        training subset stays the seed's): :meth:`restarted`.
    """

    key: str
    model: dict[str, Any]
    build: Callable[[int], nn.Module] = field(repr=False)
    finetune: dict[str, Any] = field(default_factory=dict)
    restart: int = 0

    def restarted(self, restart: int) -> "Candidate":
        """This start as its ``restart``-th fine-tuning (0: itself)."""
        return replace(self, key=f"{self.key}#restart{restart}", restart=restart) if restart else self

    @property
    def pretrained(self) -> bool:
        """It starts from trained weights (a supernet's or ImageNet's): the transfer recipe applies."""
        return self.model.get("weights") in ("inherited", "imagenet")


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (torch's FLOP counter / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.zeros(1, *input_shape, device=next(model.parameters()).device))
    model.train(was_training)
    return int(counter.get_total_flops() // 2)


class SupernetCache:
    """Trained supernets loaded once per folder (a fold builds several subnets from each)."""

    def __init__(self, manager: ComponentSource | None = None):
        self.manager = manager
        self._loaded: dict[str, tuple[Any, dict[str, Any]]] = {}

    def __call__(self, folder: str) -> tuple[Any, dict[str, Any]]:
        if folder not in self._loaded:
            from mednns.training import load_supernet

            self._loaded[folder] = load_supernet(folder, manager=self.manager)
        return self._loaded[folder]


def inherited(supernets: SupernetCache, folder: str, arch_json: str, info: DatasetInfo, *,
              source: str, label: str) -> Candidate:
    """A subnet of the supernet in ``folder`` with its inherited weights, adapted to ``info``."""
    space, metadata = supernets(folder)
    arch = space.arch_from_json(arch_json)
    arch_hash = space.arch_hash(arch)

    def build(seed: int) -> nn.Module:
        model = space.extract(arch).cpu()
        adapt_network(model, num_classes=info.n_classes, in_channels=info.n_channels, seed=seed)
        return model

    return Candidate(f"inherited:{folder}:{arch_hash}",
                     {"name": label, "source": source, "space": metadata["space"]["name"], "weights": "inherited",
                      "arch_hash": arch_hash, "arch": arch_json}, build)


def random_init(manager: ComponentSource, space_spec: dict[str, Any], arch_json: str, arch_hash: str,
                info: DatasetInfo, *, label: str) -> Candidate:
    """``arch_json`` (canonical hash ``arch_hash``) of the space ``space_spec`` from a seeded random
    initialization."""
    def build(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        space = manager.create("search-spaces", space_spec["name"], **space_spec.get("args", {}))
        model = space.extract(space.arch_from_json(arch_json)).cpu()
        adapt_network(model, num_classes=info.n_classes, in_channels=info.n_channels, seed=seed)
        return model

    return Candidate(f"random:{space_spec['name']}:{arch_hash}",
                     {"name": label, "source": None, "space": space_spec["name"], "weights": "random",
                      "arch_hash": arch_hash, "arch": arch_json}, build)


def timm_network(name: str, info: DatasetInfo, *, pretrained: bool) -> Candidate:
    """timm's ``name`` for the target's classes and channels; ImageNet weights when ``pretrained``.

    :raises UsageError: when the pretrained weights cannot be loaded (no internet, no local cache),
        with timm's reason; the evaluation records it and skips the baseline.
    """
    import timm

    def build(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return timm.create_model(name, pretrained=pretrained, num_classes=info.n_classes, in_chans=info.n_channels)

    if pretrained:
        try:
            build(0)
        except Exception as exc:  # network, hub, cache and file errors all mean: no weights here
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise UsageError(f"ImageNet weights of {name} could not be loaded ({type(exc).__name__}: "
                             f"{first_line[:300]}); with internet or a filled HF_HOME cache they load, and "
                             f"HF_HUB_OFFLINE=1 skips the hub's retries when neither is there") from exc
    return Candidate(f"timm:{name}:{'imagenet' if pretrained else 'scratch'}",
                     {"name": f"timm {name}", "source": "ImageNet" if pretrained else None, "space": "timm",
                      "weights": "imagenet" if pretrained else "random", "arch_hash": None, "arch": None}, build)
