"""The model zoo: evaluated subnets of trained supernets, in a SQLite store.

Modules, one job each: :mod:`~mednns.zoo.settings` (protocol, build settings, shards; no torch),
:mod:`~mednns.zoo.plan` (which architectures: deterministic, deduplicated, shardable),
:mod:`~mednns.zoo.evaluator` (measuring them fast), :mod:`~mednns.zoo.store` (the rows),
:mod:`~mednns.zoo.build` (the three together, resumable), :mod:`~mednns.zoo.parallel` (a build
split across torchrun ranks or local worker processes) and :mod:`~mednns.zoo.report`
(statistics, CSV / JSON-lines export). Names are imported on first use, so ``import mednns.zoo``
does not import torch.
"""

from __future__ import annotations

from mednns._exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), {
    "BuildSettings": "mednns.zoo.settings",
    "Shard": "mednns.zoo.settings",
    "ZooProtocol": "mednns.zoo.settings",
    "Planned": "mednns.zoo.plan",
    "plan_architectures": "mednns.zoo.plan",
    "shard_plan": "mednns.zoo.plan",
    "EvaluationData": "mednns.zoo.evaluator",
    "SubnetEvaluator": "mednns.zoo.evaluator",
    "build_zoo": "mednns.zoo.build",
    "build_as_rank": "mednns.zoo.parallel",
    "build_with_workers": "mednns.zoo.parallel",
    "choose_workers": "mednns.zoo.parallel",
    "export_zoo": "mednns.zoo.report",
    "source_quality": "mednns.zoo.report",
    "zoo_stats": "mednns.zoo.report",
    "SCHEMA_VERSION": "mednns.zoo.store",
    "MergeReport": "mednns.zoo.store",
    "ModelRow": "mednns.zoo.store",
    "ZooStore": "mednns.zoo.store",
    "merge_stores": "mednns.zoo.store",
})
