"""Reading a zoo store into the :class:`~mednns.metaspace.contracts.ModelTable` the meta-space trains on."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from mednns.errors import UsageError
from mednns.metaspace.contracts import ModelTable
from mednns.zoo.store import ZooStore

#: What the meta-space can learn (validation metrics only: the test split stays unseen):
#: validation ACC, validation AUC, or ``val_lift``, the ACC's lift over the majority-class rate.
TARGETS = ("val_acc", "val_auc", "val_lift")
Target = Literal["val_acc", "val_auc", "val_lift"]


def lift(acc: float, majority: float) -> float:
    """How far ``acc`` went from the majority-class rate towards 1, in [0, 1]: 0 for a model that
    learned nothing ACC can see (or less), 1 for a perfect one. Raw ACC is not comparable across
    datasets whose majority rates range from 0.27 to 0.73; the lift is (the sigmoid predictor
    cannot reach below 0, so below-majority models count as 0)."""
    return max(0.0, (acc - majority) / (1.0 - majority)) if majority < 1 else 0.0


def load_table(store: ZooStore, target: Target = "val_acc", datasets: Sequence[str] | None = None) -> ModelTable:
    """Every row of ``store`` (or of ``datasets``) whose ``target`` is known, in row-id order.

    ``supernet`` holds each row's trained supernet folder (the folder of its weights file), which a
    functional model encoder extracts subnets from. ``val_lift`` reads each supernet's validation
    majority-class rate (recorded by the zoo build).
    """
    if target not in TARGETS:
        raise UsageError(f"meta-space target must be one of {', '.join(TARGETS)}, got {target!r}")
    supernets = store.supernets()
    folders = {s["id"]: str(Path(s["path"]).parent) for s in supernets}
    column = "val_acc" if target == "val_lift" else target
    rows = store.models(["id", "dataset", "space", "arch", "encoding", "params", "macs", "supernet_id", column])
    if target == "val_lift":
        majority = {s["id"]: s["metadata"].get("val_majority_rate") for s in supernets}
        unknown = sorted({s["dataset"] for s in supernets if majority[s["id"]] is None})
        if unknown:
            raise UsageError(f"the zoo {store.path} does not record the validation majority-class rate of "
                             f"{', '.join(unknown)}, which the val_lift target needs",
                             hint="build the zoo again with this mednns (or learn val_acc)")
        rows = [{**r, target: None if r[column] is None else lift(r[column], majority[r["supernet_id"]])}
                for r in rows]
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
