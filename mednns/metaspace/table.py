"""Reading a zoo store into the :class:`~mednns.metaspace.contracts.ModelTable` the meta-space trains on."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from mednns.errors import UsageError
from mednns.metaspace.contracts import ModelTable
from mednns.zoo.store import ZooStore

#: Zoo columns the meta-space can learn (validation metrics only: the test split stays unseen).
TARGETS = ("val_acc", "val_auc")
Target = Literal["val_acc", "val_auc"]


def load_table(store: ZooStore, target: Target = "val_acc", datasets: Sequence[str] | None = None) -> ModelTable:
    """Every row of ``store`` (or of ``datasets``) whose ``target`` is known, in row-id order.

    ``supernet`` holds each row's trained supernet folder (the folder of its weights file), which a
    functional model encoder extracts subnets from.
    """
    if target not in TARGETS:
        raise UsageError(f"meta-space target must be one of {', '.join(TARGETS)}, got {target!r}")
    folders = {s["id"]: str(Path(s["path"]).parent) for s in store.supernets()}
    rows = store.models(["id", "dataset", "space", "arch", "encoding", "params", "macs", "supernet_id", target])
    if datasets is not None:
        wanted = set(datasets)
        rows = [r for r in rows if r["dataset"] in wanted]
    rows = [r for r in rows if r[target] is not None]
    if not rows:
        raise UsageError(f"the zoo {store.path} has no rows with a {target}"
                         + (f" for {', '.join(datasets)}" if datasets is not None else ""),
                         hint="build it first: a build_zoo stage or 'mednns zoo build'")
    return ModelTable(
        ids=np.array([r["id"] for r in rows], dtype=np.int64),
        dataset=[r["dataset"] for r in rows],
        space=[r["space"] for r in rows],
        encoding=[np.asarray(r["encoding"], dtype=np.float32) for r in rows],
        params=np.array([r["params"] for r in rows], dtype=np.float64),
        macs=np.array([r["macs"] for r in rows], dtype=np.float64),
        target=np.array([r[target] for r in rows], dtype=np.float32),
        arch=[r["arch"] for r in rows],
        supernet=[folders[r["supernet_id"]] for r in rows],
    )
