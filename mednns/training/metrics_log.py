"""``metrics.csv``: one row per training epoch, rewritten atomically from the full history each time."""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any, Sequence

from mednns.files import atomic_write_text

#: Column order of ``metrics.csv``.
COLUMNS = ("phase", "epoch", "step", "lr", "train_loss", "train_kd",
           "val_loss_largest", "val_acc_largest", "val_auc_largest",
           "val_loss_smallest", "val_acc_smallest", "val_auc_smallest", "seconds")


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_metrics_csv(path: str | os.PathLike, rows: Sequence[dict[str, Any]],
                      columns: Sequence[str] = COLUMNS) -> Path:
    """Write ``rows`` (dicts keyed by ``columns``; extra keys ignored) as CSV, atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    return atomic_write_text(path, buffer.getvalue())


def read_metrics_csv(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a ``metrics.csv`` as dicts of strings."""
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
