"""The methods an evaluation compares: mednns and the baselines, by name (no torch here).

Every method ends in the same fine-tuning loop (:func:`mednns.finetune.train_model`) with the same
epochs, data, augmentation, optimizer and seeds; they differ only in the network they start from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    """:param label: short name in tables and legends. :param kind: ``ours`` or ``baseline``."""

    label: str
    kind: str
    description: str


METHODS: dict[str, Method] = {
    "mednns": Method("mednns (top-1)", "ours",
                     "the query's top-ranked zoo model, extracted with its inherited supernet weights"),
    "mednns_topk": Method("mednns (best of top-k)", "ours",
                          "the query's top-k models, each fine-tuned; the one with the best validation ACC"),
    "random_init": Method("same arch, random init", "baseline",
                          "(a) mednns's top-1 architecture from a random initialization"),
    "timm_scratch": Method("timm scratch", "baseline", "(b) a timm network (MedMNIST v2's ResNet-18) from scratch"),
    "imagenet": Method("timm ImageNet", "baseline", "(c) the timm network with ImageNet weights, when they load"),
    "nearest_fid": Method("nearest-FID largest", "baseline",
                          "(d) the largest subnet of the source supernet with the smallest FID to the target"),
    "tans": Method("TANS-style", "baseline",
                   "(e) retrieval by a meta-space trained with contrastive + performance losses only"),
    "random_pick": Method("random zoo pick", "baseline",
                          "(f) a zoo model drawn at random (per seed) with its inherited weights"),
    "mednns_search": Method("mednns + own search", "ours",
                            "the target's own supernet started from the supernet of mednns's top-1 source, trained "
                            "on the run's training subset like (g), searched, the winner fine-tuned"),
    "own_supernet_search": Method("own-supernet search", "baseline",
                                  "(g) a supernet trained on the run's own training subset, random search over it "
                                  "(weight-shared, BN-recalibrated validation ACC), the winner fine-tuned with its "
                                  "weights"),
}

#: Methods in the order tables list them.
METHOD_NAMES = tuple(METHODS)

#: Separates a mednns method from its variant's name: ``mednns:auc_target``.
VARIANT_SEPARATOR = ":"


def split_variant(name: str) -> tuple[str, str | None]:
    """``("mednns_topk", "auc_target")`` for ``mednns_topk:auc_target``; ``(name, None)`` otherwise."""
    base, _, variant = name.partition(VARIANT_SEPARATOR)
    return base, variant or None


#: The variant part of a baseline's restarts row: ``nearest_fid:restarts4``.
_RESTARTS = re.compile(r"restarts(\d+)")


def restarts_row(method: str, k: int) -> str:
    """The row of a baseline fine-tuned ``k`` times (the ``baseline_restarts`` setting)."""
    return f"{method}{VARIANT_SEPARATOR}restarts{k}"


def describe(name: str) -> Method:
    """The :class:`Method` of a method name, variants included (they are the mednns method with other
    meta-space, query or re-ranking settings, or a baseline's restarts: :func:`restarts_row`)."""
    base, variant = split_variant(name)
    method = METHODS[base]
    if variant is None:
        return method
    restarts = _RESTARTS.fullmatch(variant)
    if method.kind == "baseline" and restarts:
        k = restarts.group(1)
        return Method(f"{method.label} [best of {k} restarts]", method.kind,
                      f"{method.description}; fine-tuned {k} times (another fine-tuning seed each, the same training "
                      f"subset), the one with the best validation ACC")
    return Method(f"{method.label} [{variant}]", method.kind, f"{method.description}; variant '{variant}'")
