"""Filling a zoo store from trained supernets: plan, skip what is stored, evaluate, commit in batches.

:func:`build_zoo` is what the ``build_zoo`` stage and ``mednns zoo build`` call, once per supernet.
It is resumable by construction: the plan is deterministic, rows already in the store (for this
supernet's weights) are skipped, and rows are committed ``commit_every`` at a time.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from mednns.data import MedicalDataset, majority_rate
from mednns.errors import UsageError
from mednns.training.checkpoint import load_supernet, supernet_files
from mednns.zoo.evaluator import EvaluationData, SubnetEvaluator
from mednns.zoo.plan import plan_architectures, shard_plan
from mednns.zoo.settings import BuildSettings, ZooProtocol
from mednns.zoo.store import ModelRow, ZooStore, sha256_file

if TYPE_CHECKING:
    from mednns.registry import ComponentSource

log = logging.getLogger("mednns.zoo")


def build_zoo(store: ZooStore, supernet: str | os.PathLike, dataset: MedicalDataset, *,
              settings: BuildSettings | None = None, protocol: ZooProtocol | None = None,
              device: str = "cpu", manager: ComponentSource | None = None,
              console: Console | None = None, known: ZooStore | None = None) -> dict[str, Any]:
    """Evaluate this shard's planned subnets of one trained supernet into ``store``.

    :param supernet: a trained supernet folder (or its ``supernet.json``).
    :param dataset: the dataset it was trained on.
    :param settings: what to evaluate and how fast (default: ``BuildSettings()``).
    :param protocol: how every subnet is evaluated (default: ``ZooProtocol()``).
    :param known: another store whose rows of this supernet count as done (the store that the
        parts of a split build are merged into).
    :returns: a summary: planned, already stored, evaluated now, seconds, subnets per second.
    """
    settings = BuildSettings() if settings is None else settings
    protocol = ZooProtocol() if protocol is None else protocol
    space, metadata = load_supernet(supernet, device=device, manager=manager)
    name, space_name = metadata["dataset"]["name"], metadata["space"]["name"]
    if dataset.info.name != name:
        raise UsageError(f"supernet {supernet} was trained on {name}, not {dataset.info.name}")
    _, weights_path = supernet_files(supernet)
    weights_sha = sha256_file(weights_path)
    supernet_id = store.add_supernet(weights_sha256=weights_sha, space=space_name, dataset=name,
                                     path=weights_path.resolve(), metadata=metadata)
    store.update_supernet_metadata(supernet_id, val_majority_rate=majority_rate(
        dataset.info.task, dataset.split("val").labels))  # the source-quality gate compares with it
    protocol_id = store.add_protocol(protocol.to_dict())
    others = [p for p in store.protocols_of(supernet_id) if p != protocol_id]
    if others:
        raise UsageError(f"{store.path} already holds rows of this {name} supernet evaluated under another "
                         f"protocol ({store.protocol(others[0])}); this build uses {protocol.to_dict()}",
                         hint="use the same protocol, another store, or discard this one (mednns run --restart)")

    plan = plan_architectures(space, space_name=space_name, dataset=name, samples=settings.samples,
                              anchors=settings.anchors, extremes=settings.extremes, seed=settings.seed)
    mine = shard_plan(plan, settings.shard)
    stored = store.arch_hashes(supernet_id) | (_stored_in(known, weights_sha) if known is not None else set())
    todo = [p for p in mine if p.arch_hash not in stored]
    summary: dict[str, Any] = {"dataset": name, "space": space_name, "supernet": str(weights_path),
                               "planned": len(plan), "shard": str(settings.shard), "in_shard": len(mine),
                               "already_stored": len(mine) - len(todo), "evaluated": 0, "seconds": 0.0}
    if not todo:
        log.info("zoo: %s/%s: all %d planned subnets of shard %s are stored", name, space_name, len(mine),
                 settings.shard)
        return summary

    normalization = metadata.get("normalization") or {}
    data = EvaluationData.from_dataset(dataset, protocol, channels=normalization.get("channels"),
                                       mean=normalization.get("mean"), std=normalization.get("std"))
    evaluator = SubnetEvaluator(space, data, batch_size=settings.batch_size,
                                channels_last=settings.channels_last, device=device)
    input_size = tuple(data.val_x.shape[2:])
    log.info("zoo: %s/%s: evaluating %d subnets (%d of shard %s already stored), %d images each", name,
             space_name, len(todo), len(mine) - len(todo), settings.shard, data.images_per_subnet)

    start = time.perf_counter()
    pending: list[ModelRow] = []
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, disable=not settings.progress) as bar:
        task = bar.add_task(f"zoo {name}/{space_name}", total=len(todo), rate="")
        for done, planned in enumerate(todo, 1):
            result = evaluator(planned.arch)
            cost = space.cost(planned.arch, input_size)
            pending.append(ModelRow(
                supernet_id=supernet_id, protocol_id=protocol_id, dataset=name, space=space_name,
                arch_hash=planned.arch_hash, arch=space.arch_to_json(planned.arch),
                encoding=space.encode(planned.arch).cpu().numpy(), params=int(cost["params"]), macs=int(cost["macs"]),
                origin=planned.origin, metrics={"val": result["val"], "test": result["test"]},
                eval_seconds=result["seconds"]))
            if len(pending) >= settings.commit_every or done == len(todo):
                store.add_models(pending)
                pending = []
            elapsed = time.perf_counter() - start
            bar.update(task, advance=1, rate=f"{done / elapsed:.2f} subnets/s")
    seconds = time.perf_counter() - start
    summary.update(evaluated=len(todo), seconds=round(seconds, 3), subnets_per_second=round(len(todo) / seconds, 3))
    log.info("zoo: %s/%s: %d subnets in %.1f s (%.2f/s)", name, space_name, len(todo), seconds, len(todo) / seconds)
    return summary


def _stored_in(store: ZooStore, weights_sha: str) -> set[str]:
    """Architecture hashes of the supernet with these weights in ``store`` (none when absent)."""
    ids = [s["id"] for s in store.supernets() if s["weights_sha256"] == weights_sha]
    return store.arch_hashes(ids[0]) if ids else set()


def planned_hashes(supernet: str | os.PathLike, settings: BuildSettings, *,
                   manager: ComponentSource | None = None) -> tuple[str, list[str]]:
    """``(weights sha256, architecture hashes in plan order)`` of one supernet's whole plan: the order
    that the parts of a split build are merged in."""
    space, metadata = load_supernet(supernet, device="cpu", manager=manager)
    _, weights_path = supernet_files(supernet)
    plan = plan_architectures(space, space_name=metadata["space"]["name"], dataset=metadata["dataset"]["name"],
                              samples=settings.samples, anchors=settings.anchors, extremes=settings.extremes,
                              seed=settings.seed)
    return sha256_file(weights_path), [p.arch_hash for p in plan]
