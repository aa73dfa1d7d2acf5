"""Which architectures a zoo evaluates: a deterministic, deduplicated, shardable list.

For one supernet the plan is, in order: the largest and smallest subnets (``extremes``), an
``anchor`` set drawn from a seed that depends only on the search space (so every dataset of that
space evaluates the same anchors: the meta-space sees one architecture across datasets), then
``samples`` distinct random architectures drawn from a seed of the space and the dataset. Equal
networks (same canonical architecture hash) appear once. A shard ``i/n`` takes every ``n``-th
entry from ``i`` on, so shards are disjoint and together give the whole plan.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from mednns.errors import UsageError
from mednns.seeding import derive_seed
from mednns.supernets import Arch, Supernet
from mednns.zoo.settings import Shard

log = logging.getLogger("mednns.zoo")

#: Draws allowed per wanted architecture before the plan gives up on finding new ones.
MAX_DRAWS_PER_ARCH = 50


@dataclass(frozen=True)
class Planned:
    """One planned evaluation."""

    arch: Arch
    arch_hash: str
    origin: str  # "extreme" | "anchor" | "sample"


def _draw(space: Supernet, rng: random.Random, wanted: int, seen: set[str], origin: str) -> list[Planned]:
    out: list[Planned] = []
    draws = 0
    while len(out) < wanted and draws < MAX_DRAWS_PER_ARCH * max(wanted, 1):
        draws += 1
        arch = space.canonical(space.sample(rng))
        digest = space.arch_hash(arch)
        if digest not in seen:
            seen.add(digest)
            out.append(Planned(arch, digest, origin))
    if len(out) < wanted:
        log.warning("only %d distinct new %s architectures found in %d draws (%d wanted)",
                    len(out), origin, draws, wanted)
    return out


def plan_architectures(space: Supernet, *, space_name: str, dataset: str, samples: int, anchors: int = 0,
                       extremes: bool = True, seed: int = 0) -> list[Planned]:
    """The full plan of one supernet (see the module documentation)."""
    if samples < 0 or anchors < 0:
        raise UsageError("samples and anchors must be >= 0")
    seen: set[str] = set()
    plan: list[Planned] = []
    if extremes:
        for arch in (space.largest(), space.smallest()):
            arch = space.canonical(arch)
            digest = space.arch_hash(arch)
            if digest not in seen:
                seen.add(digest)
                plan.append(Planned(arch, digest, "extreme"))
    total = space.count()
    if samples + anchors + len(plan) > total:
        log.warning("%s has %d distinct subnets; the zoo of %s asks for %d and takes what random draws find",
                    space_name, total, dataset, samples + anchors + len(plan))
    # never ask for more than the space holds: a huge 'samples' on a small space would draw forever
    anchors = min(anchors, total - len(seen))
    plan += _draw(space, random.Random(derive_seed(seed, "zoo-anchors", space_name)), anchors, seen, "anchor")
    samples = min(samples, total - len(seen))
    plan += _draw(space, random.Random(derive_seed(seed, "zoo-samples", space_name, dataset)), samples, seen,
                  "sample")
    return plan


def shard_plan(plan: list[Planned], shard: Shard) -> list[Planned]:
    """The entries of ``plan`` that belong to ``shard``."""
    return plan[shard.index :: shard.count]
