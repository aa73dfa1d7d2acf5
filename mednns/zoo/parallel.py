"""A zoo build split into parts: the ranks of a torchrun job, or local worker processes.

Each part evaluates one :class:`~mednns.zoo.settings.Shard` of every supernet's plan into its own
store (``zoo.part-<i>-of-<n>.sqlite`` beside the build's store; rows the build's store already
holds are skipped), and the parts are then merged into the build's store in plan order
(:meth:`~mednns.zoo.store.ZooStore.merge_parts`): the result equals a single-process build row for
row. A killed part resumes from its own store; the part stores are deleted after the merge.

Local workers (``workers``) run the same parts in processes started by ``torch.multiprocessing``
(``spawn``), each with ``cores // workers`` torch threads: on 2 cores, two one-thread processes
evaluate faster than one two-thread process, and more threads than cores cost an order of
magnitude. A worker builds the run's datasets again from their config specs, so it sees only
installed plugins (entry points), not components registered in code.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

from mednns.errors import MednnsError, UsageError
from mednns.files import read_json, write_json
from mednns.zoo.settings import BuildSettings, Shard, ZooProtocol

if TYPE_CHECKING:
    from rich.console import Console

    from mednns.distributed import Distributed
    from mednns.manager import PluginManager
    from mednns.registry import ComponentSource

log = logging.getLogger("mednns.zoo")

#: ``auto`` starts a worker per this many subnets still to evaluate (and at most one per core):
#: starting one costs a few seconds (imports, datasets, supernets), about 20 subnets' time here.
SUBNETS_PER_WORKER = 64
#: The distribution name of components registered in code (they do not exist in a worker process).
IN_CODE = "(registered in code)"

Workers = int | Literal["auto"]
#: (dataset name, trained supernet folder) pairs, in build order.
Targets = Sequence[tuple[str, "str | Path"]]


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def part_path(store: Path, shard: Shard) -> Path:
    """The store of one part of a split build of ``store``."""
    return store.with_name(f"{store.stem}.part-{shard.index}-of-{shard.count}{store.suffix}")


def part_paths(store: Path) -> list[Path]:
    """Every part store of ``store`` on disk (those of an interrupted build with another split too)."""
    return sorted(store.parent.glob(f"{store.stem}.part-*-of-*{store.suffix}"), key=lambda p: p.name)


def in_code_plugins(manager: PluginManager) -> list[str]:
    """Names of the plugins registered in code (a worker process cannot see them)."""
    return sorted(r.name for r in manager.records.values() if r.distribution == IN_CODE)


def choose_workers(workers: Workers, *, todo: int, device: str, manager: PluginManager) -> tuple[int, str]:
    """How many local worker processes to run, and why.

    ``auto``: one per :data:`SUBNETS_PER_WORKER` subnets still to evaluate, at most one per usable
    core; one on a GPU (more GPUs: torchrun) or when plugins are registered in code.
    """
    if workers != "auto":
        if int(workers) < 1:
            raise UsageError(f"build_zoo: workers must be >= 1 or auto, got {workers}")
        count = int(workers)
        if count > 1 and in_code_plugins(manager):
            raise UsageError(f"build_zoo: worker processes cannot see plugins registered in code "
                             f"({', '.join(in_code_plugins(manager))})",
                             hint="install them (an entry point in group 'mednns'), or set workers: 1")
        return count, "as configured"
    if not device.startswith("cpu"):
        return 1, f"auto: one process on {device} (several GPUs: torchrun)"
    if in_code_plugins(manager):
        return 1, "auto: plugins registered in code are not visible to worker processes"
    cores = usable_cores()
    count = max(1, min(cores, todo // SUBNETS_PER_WORKER))
    return count, f"auto: {todo} subnets to evaluate on {cores} core(s)"


@dataclass(frozen=True)
class PartJob:
    """What a worker process needs to build one part (all picklable)."""

    datasets: list[dict[str, Any]]  # the run's dataset specs ({name, args}), to build them again
    targets: list[tuple[str, str]]  # (dataset name, supernet folder)
    store: str  # the build's store: its rows count as done
    settings: BuildSettings
    protocol: ZooProtocol
    count: int
    threads: int


def build_part(targets: Targets, datasets: dict[str, Any], store: Path, shard: Shard,
               settings: BuildSettings, protocol: ZooProtocol, *, device: str = "cpu",
               manager: ComponentSource | None = None, console: Console | None = None) -> dict[str, Any]:
    """Evaluate ``shard`` of every target's plan into the part store of ``store``; per-dataset summaries."""
    from mednns.zoo.build import build_zoo
    from mednns.zoo.store import ZooStore

    part = replace(settings, shard=shard)
    summaries = {}
    known = ZooStore(store, readonly=True) if store.is_file() else None
    try:
        with ZooStore(part_path(store, shard)) as writer:
            for name, folder in targets:
                summaries[name] = build_zoo(writer, folder, datasets[name], settings=part, protocol=protocol,
                                            device=device, manager=manager, console=console, known=known)
    finally:
        if known is not None:
            known.close()
    write_json(summary_path(part_path(store, shard)), summaries)
    return summaries


def summary_path(part: Path) -> Path:
    """Where a part's build writes its per-dataset summaries."""
    return part.with_name(part.name + ".summary.json")


def part_summaries(store: Path) -> list[dict[str, Any]]:
    """The summaries the parts of ``store`` on disk wrote."""
    return [read_json(summary_path(p)) for p in part_paths(store) if summary_path(p).is_file()]


def _worker(index: int, job: PartJob) -> None:
    """One local worker: build the datasets again, then its part (quietly: the parent shows progress)."""
    import torch
    from rich.console import Console

    from mednns.manager import get_plugin_manager

    torch.set_num_threads(job.threads)
    manager = get_plugin_manager()
    wanted = {name for name, _ in job.targets}
    datasets = {}
    for spec in job.datasets:
        dataset = manager.create("datasets", spec["name"], **(spec.get("args") or {}))
        if dataset.name in wanted:
            datasets[dataset.name] = dataset
    settings = replace(job.settings, progress=False)
    build_part(job.targets, datasets, Path(job.store), Shard(index, job.count), settings, job.protocol,
               manager=manager, console=Console(quiet=True))


def run_workers(job: PartJob, console: Console | None = None, progress: bool = True) -> float:
    """Build ``job.count`` parts in local worker processes, showing the rows they store; wall seconds.

    A worker that fails stops the others; its error is raised here.
    """
    import torch.multiprocessing as mp
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from mednns.zoo.store import ZooStore

    store = Path(job.store)
    parts = [part_path(store, Shard(i, job.count)) for i in range(job.count)]

    def stored() -> int:
        total = 0
        for path in parts:
            if path.is_file():
                try:
                    with ZooStore(path, readonly=True) as part:
                        total += part.count()
                except Exception:  # a part being created: counted at the next poll
                    pass
        return total

    start, before = time.perf_counter(), stored()
    context = mp.start_processes(_worker, args=(job,), nprocs=job.count, join=False, start_method="spawn")
    columns = (SpinnerColumn(), TextColumn("[bold]zoo[/] {task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not progress) as bar:
        task = bar.add_task(f"{job.count} workers x {job.threads} thread(s)")
        try:
            while not context.join(timeout=2):
                done = stored() - before
                rate = done / max(time.perf_counter() - start, 1e-9)
                bar.update(task, description=f"{job.count} workers x {job.threads} thread(s): "
                                             f"{done} subnets, {rate:.2f}/s")
        except mp.ProcessRaisedException as exc:
            raise MednnsError(f"a zoo worker failed:\n{exc}") from None
        except mp.ProcessExitedException as exc:
            raise MednnsError(f"a zoo worker died ({exc}); run the build again to resume it") from None
    return time.perf_counter() - start


def merge_into(store: Path, targets: Targets, settings: BuildSettings, *,
               manager: ComponentSource | None = None) -> dict[str, Any]:
    """Merge every part store of ``store`` into it in plan order, then delete the parts."""
    from mednns.zoo.build import planned_hashes
    from mednns.zoo.store import ZooStore

    parts = part_paths(store)
    plans = dict(planned_hashes(folder, settings, manager=manager) for _, folder in targets)
    with ZooStore(store) as writer:
        report = writer.merge_parts(parts, plans)
    for part in parts:
        for path in (part, Path(f"{part}-wal"), Path(f"{part}-shm"), summary_path(part)):
            path.unlink(missing_ok=True)
    log.info("zoo: merged %d part store(s) into %s: %d rows added", len(parts), store, report.added)
    return {"parts": len(parts), "added": report.added, "duplicates": report.duplicates}


def combine_summaries(parts: list[dict[str, Any]], wall_seconds: float) -> dict[str, Any]:
    """One per-dataset summary from those of the parts (counts summed; rate over the wall time)."""
    combined: dict[str, Any] = {}
    for summaries in parts:
        for name, s in summaries.items():
            entry = combined.setdefault(name, {**s, "shard": "all", "in_shard": 0, "already_stored": 0,
                                               "evaluated": 0, "seconds": 0.0})
            for key in ("in_shard", "already_stored", "evaluated", "seconds"):  # seconds: summed over parts
                entry[key] += s[key]
    for entry in combined.values():
        entry.pop("subnets_per_second", None)
    evaluated = sum(e["evaluated"] for e in combined.values())
    return {"datasets": combined, "seconds": round(wall_seconds, 3),
            "subnets_per_second": round(evaluated / wall_seconds, 3) if wall_seconds > 0 else None}


def build_with_workers(workers: int, dataset_specs: list[dict[str, Any]], targets: Targets,
                       datasets: dict[str, Any], store: Path, settings: BuildSettings, protocol: ZooProtocol, *,
                       device: str = "cpu", manager: ComponentSource | None = None,
                       console: Console | None = None) -> dict[str, Any]:
    """Build ``targets`` into ``store`` in this process (``workers`` 1) or in local worker processes.

    :param dataset_specs: the run's dataset specs (``{name, args}``): workers build them again.
    :param datasets: the datasets by name (this process).
    :returns: ``{"datasets": per-dataset summaries, ...}``; with workers also their count, threads,
        the merge and the wall-clock rate.
    """
    from mednns.zoo.build import build_zoo
    from mednns.zoo.store import ZooStore

    if workers == 1:
        with ZooStore(store) as writer:
            return {"datasets": {name: build_zoo(writer, folder, datasets[name], settings=settings, protocol=protocol,
                                                 device=device, manager=manager, console=console)
                                 for name, folder in targets}}
    job = PartJob(datasets=list(dataset_specs), targets=[(n, str(f)) for n, f in targets], store=str(store),
                  settings=settings, protocol=protocol, count=workers, threads=max(1, usable_cores() // workers))
    seconds = run_workers(job, console=console, progress=settings.progress)
    parts = part_summaries(store)
    merged = merge_into(store, targets, settings, manager=manager)
    return {"workers": workers, "threads_per_worker": job.threads, "merge": merged,
            **combine_summaries(parts, seconds)}


def build_as_rank(job: Distributed, targets: Targets, datasets: dict[str, Any], store: Path,
                  settings: BuildSettings, protocol: ZooProtocol, *, device: str = "cpu",
                  manager: ComponentSource | None = None, console: Console | None = None) -> dict[str, Any]:
    """This rank's part of a torchrun job's build; rank 0 merges the parts once every rank is done
    (and returns the summary; the others return ``{}``)."""
    from mednns.distributed import barrier

    start = time.perf_counter()
    build_part(targets, datasets, store, Shard(job.rank, job.world_size), settings, protocol, device=device,
               manager=manager, console=console)
    barrier(job)
    if not job.is_main:
        return {}
    parts = part_summaries(store)
    merged = merge_into(store, targets, settings, manager=manager)
    return {"ranks": job.world_size, "merge": merged, **combine_summaries(parts, time.perf_counter() - start)}
