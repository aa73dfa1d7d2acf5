"""Running under ``torchrun``: the job's ranks, its process group, and the few collectives mednns uses.

``torchrun --nproc-per-node N -m mednns run CONFIG`` (or ``train-supernet``, ``zoo build``,
``evaluate``) starts N copies of the command with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT`` set; :func:`initialize` reads them, joins the process group
(``gloo`` on the CPU, ``nccl`` on CUDA, one device per local rank) and returns the
:class:`Distributed` facts a run carries. Without those variables it returns a single-process
job and touches nothing, so every code path is the same with or without torchrun.

Only rank 0 writes run files and draws progress; stages that set
:attr:`mednns.stages.Stage.distributed` split their work by rank (see :mod:`mednns.runner`). A rank
that fails exits non-zero; torchrun's agent then stops the others and shows its error (the CLI
records it with ``torch.distributed.elastic``'s ``record``).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping, TypeVar

from mednns.errors import UsageError

log = logging.getLogger("mednns")
T = TypeVar("T")

#: The torchrun variables a distributed job needs.
REQUIRED = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: Seconds a rank waits in a collective (ranks wait for rank 0 through stages only it runs, such as
#: fitting the meta-space): ``MEDNNS_DIST_TIMEOUT`` overrides it.
DEFAULT_TIMEOUT_S = 6 * 3600


@dataclass(frozen=True)
class Distributed:
    """Where this process stands in its job: ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes run files, logs and draws progress."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """More than one process: collectives are needed."""
        return self.world_size > 1

    def share(self, items: list[T]) -> list[T]:
        """This rank's part of ``items``: every ``world_size``-th from ``rank`` on (disjoint, complete)."""
        return items[self.rank :: self.world_size]

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> "Distributed":
        """The job torchrun described in ``environ`` (default: this process's), or a single process."""
        env = os.environ if environ is None else environ
        if "WORLD_SIZE" not in env and "RANK" not in env:
            return cls()
        missing = [k for k in REQUIRED if not env.get(k)]
        if missing:
            raise UsageError(f"a torchrun environment without {', '.join(missing)}",
                             hint="start mednns with torchrun (it sets them all), or unset RANK and WORLD_SIZE")
        try:
            rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"])
        except ValueError:
            raise UsageError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers, got {env['RANK']!r}, "
                             f"{env['WORLD_SIZE']!r}, {env['LOCAL_RANK']!r}") from None
        if world < 1 or not 0 <= rank < world or local < 0:
            raise UsageError(f"torchrun environment: rank {rank} of world size {world} (local rank {local})")
        return cls(rank, world, local)


def initialize(device: str, environ: Mapping[str, str] | None = None) -> tuple[Distributed, str]:
    """Join the torchrun job of this process, if any: ``(facts, device)``.

    The device becomes ``cuda:<local rank>`` on CUDA (``device`` names the kind; one GPU per local
    rank). The process group is created once per process (a second call reuses it).
    """
    job = Distributed.from_environment(environ)
    if not job.active:
        return job, device
    import torch
    import torch.distributed as dist

    if device.startswith("cuda"):
        if job.local_rank >= torch.cuda.device_count():
            raise UsageError(f"local rank {job.local_rank} has no GPU ({torch.cuda.device_count()} visible)",
                             hint="start at most as many processes per node as it has GPUs")
        device = f"cuda:{job.local_rank}"
        torch.cuda.set_device(job.local_rank)
    if not dist.is_initialized():
        seconds = float((environ or os.environ).get("MEDNNS_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend, timeout=_dt.timedelta(seconds=seconds))
        log.debug("rank %d of %d joined the %s process group", job.rank, job.world_size, backend)
    if not job.is_main:
        logging.getLogger("mednns").setLevel(logging.WARNING)  # rank 0 reports; the others only warn
    return job, device


def barrier(job: Distributed) -> None:
    """Wait until every rank gets here (nothing to wait for in a single process)."""
    if job.active:
        import torch.distributed as dist

        dist.barrier()


def broadcast(job: Distributed, value: T | None) -> T:
    """Rank 0's ``value`` on every rank (a picklable object)."""
    if not job.active:
        return value  # type: ignore[return-value]
    import torch.distributed as dist

    box: list[Any] = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def refuse_torchrun(command: str, hint: str) -> None:
    """A usage error when ``command`` (a single job: every rank would repeat it into the same files)
    is started under torchrun."""
    if Distributed.from_environment().active:
        raise UsageError(f"{command} is one job: under torchrun every rank would run it into the same files",
                         hint=hint)
