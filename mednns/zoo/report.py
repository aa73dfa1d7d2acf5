"""Reading a zoo store for people: per-group statistics and CSV / JSON-lines export."""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np

from mednns.zoo.store import METRIC_COLUMNS, ZooStore

EXPORT_FORMATS = ("csv", "jsonl")


def _quantiles(values: np.ndarray) -> dict[str, float | None]:
    values = values[~np.isnan(values)]
    if not len(values):
        return {k: None for k in ("min", "q25", "median", "q75", "max", "mean", "std")}
    q = np.quantile(values, [0.0, 0.25, 0.5, 0.75, 1.0])
    return {"min": float(q[0]), "q25": float(q[1]), "median": float(q[2]), "q75": float(q[3]), "max": float(q[4]),
            "mean": float(values.mean()), "std": float(values.std())}


def source_quality(store: ZooStore) -> dict[int, dict[str, Any]]:
    """Per supernet id: did it learn? Its largest subnet's validation ACC against the validation
    majority-class rate of its dataset (recorded by the zoo build): a supernet that does not beat
    it learned nothing ACC can see, and its weights are poor transfer candidates.

    :returns: ``{id: {"dataset", "space", "folder", "largest_val_acc", "val_majority_rate",
        "learned": bool | None}}`` (``None``: a fact is missing, e.g. a zoo built by an older mednns).
    """
    quality = {}
    for supernet in store.supernets():
        rows = [r for r in store.models(["params", "val_acc"], supernet_id=supernet["id"], origin="extreme")
                if r["val_acc"] is not None]
        largest = max(rows, key=lambda r: r["params"])["val_acc"] if rows else None
        majority = supernet["metadata"].get("val_majority_rate")
        quality[supernet["id"]] = {
            "dataset": supernet["dataset"], "space": supernet["space"], "folder": str(Path(supernet["path"]).parent),
            "largest_val_acc": largest, "val_majority_rate": majority,
            "learned": None if largest is None or majority is None else bool(largest > majority)}
    return quality


def zoo_stats(store: ZooStore) -> list[dict[str, Any]]:
    """Per (dataset, space): count, origins, metric distributions, params/MACs range, evaluation time,
    and the :func:`source_quality` of its supernet(s)."""
    quality = list(source_quality(store).values())
    stats = []
    for group in store.groups():
        where = {"dataset": group["dataset"], "space": group["space"]}
        origins = store.db.execute("SELECT origin, COUNT(*) FROM models WHERE dataset = ? AND space = ? "
                                   "GROUP BY origin", (group["dataset"], group["space"])).fetchall()
        params, macs = store.column("params", **where), store.column("macs", **where)
        seconds = store.column("eval_seconds", **where)
        stats.append({
            **group,
            "origins": {o: int(n) for o, n in origins},
            "metrics": {c: _quantiles(store.column(c, **where)) for c in METRIC_COLUMNS if not c.endswith("_n")},
            "params": {"min": int(params.min()), "max": int(params.max())},
            "macs": {"min": int(macs.min()), "max": int(macs.max())},
            "eval_seconds": {"mean": float(seconds.mean()), "total": float(seconds.sum())},
            "source_quality": [q for q in quality if (q["dataset"], q["space"]) == (group["dataset"], group["space"])],
        })
    return stats


def export_columns() -> list[str]:
    """Column order of an export (every column of ``models``, the supernet's weights hash and the protocol)."""
    return ["id", "dataset", "space", "arch_hash", "arch", "origin", "params", "macs", *METRIC_COLUMNS,
            "eval_seconds", "created_at", "supernet_sha256", "protocol", "encoding"]


def _records(store: ZooStore, **where: Any) -> Iterator[dict[str, Any]]:
    for record in store.iter_models(**where):
        yield {c: record[c] for c in export_columns()}


def export_zoo(store: ZooStore, fmt: str, out: IO[str] | str | os.PathLike | None = None, **where: Any) -> int:
    """Write every row (filtered by ``dataset``/``space``) as CSV or JSON lines; returns the row count.

    CSV keeps the architecture and the protocol as JSON text and the encoding as a JSON list.
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {EXPORT_FORMATS}, got {fmt!r}")
    handle: IO[str]
    target: Path | None = None
    if out is None or out == "-":
        handle = sys.stdout
    elif isinstance(out, (str, os.PathLike)):
        target = Path(out)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.partial")  # renamed when whole: no half-written export
        handle = open(partial, "w", newline="", encoding="utf-8")
    else:
        handle = out
    count = 0
    complete = False
    try:
        if fmt == "csv":
            writer = csv.DictWriter(handle, fieldnames=export_columns())
            writer.writeheader()
            for record in _records(store, **where):
                record["encoding"] = json.dumps(record["encoding"])
                writer.writerow(record)
                count += 1
        else:
            for record in _records(store, **where):
                record["arch"] = json.loads(record["arch"])
                record["protocol"] = json.loads(record["protocol"])
                handle.write(json.dumps(record, separators=(",", ":")) + "\n")
                count += 1
        complete = True
    finally:
        if target is not None:
            handle.close()
            if complete:
                os.replace(partial, target)
            else:
                partial.unlink(missing_ok=True)
    return count
