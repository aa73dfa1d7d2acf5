"""Turning fine-tuning histories into the numbers of an evaluation: mean ± std over seeds at the
report epochs, convergence curves, gains of mednns over each baseline, epochs needed to match a
baseline's final accuracy, and the means over datasets. Pure functions of JSON-like data (no torch).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

#: The ``format`` of ``results.json`` (what the ``evaluate`` stage writes and the report reads).
FORMAT = "mednns-evaluation/2"
#: Its file name in the stage folder.
RESULTS_FILE = "results.json"
#: The method every baseline is compared with.
REFERENCE = "mednns"
METRICS = ("test_acc", "test_auc", "test_bal_acc")


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=1)) if len(array) > 1 else 0.0
    return {"mean": float(array.mean()), "std": std}


def report_epochs(epochs: int) -> list[int]:
    """Epochs 1, 3 and K (deduplicated, within 1..K)."""
    return sorted({e for e in (1, 3, epochs) if 1 <= e <= epochs})


def summarize_runs(runs: list[dict[str, Any]], epochs: Sequence[int]) -> dict[str, Any]:
    """Mean ± std over seeds of the test metrics at ``epochs`` plus the whole curve.

    :param runs: one ``{"seed", "model", "history": [row per evaluated epoch]}`` per seed. Rows are
        matched by position (every seed of a method evaluates the same epochs); a metric a run did
        not record (older results) is left out.
    """
    if not runs:
        raise ValueError("no runs to summarize")
    length = min(len(r["history"]) for r in runs)
    rows = [r["history"][:length] for r in runs]
    axis = [row["epoch"] for row in rows[0]]
    metrics = [m for m in METRICS if all(row.get(m) is not None for r in rows for row in r)]
    summary: dict[str, Any] = {}
    for metric in metrics:
        summary[metric] = {str(e): _mean_std([r[axis.index(e)][metric] for r in rows]) for e in epochs if e in axis}
    curve: dict[str, Any] = {"epochs": axis}
    spent = [c for c in ("target_seconds", "image_macs") if all(row.get(c) is not None for r in rows for row in r)]
    for metric in [*metrics, *spent]:
        points = [_mean_std([r[i][metric] for r in rows]) for i in range(length)]
        curve[f"{metric}_mean"] = [p["mean"] for p in points]
        curve[f"{metric}_std"] = [p["std"] for p in points]
    summary["curve"] = curve
    summary["final"] = {m: _mean_std([r[-1][m] for r in rows]) for m in metrics}
    summary["params"] = int(np.median([r["model"]["params"] for r in runs]))
    return summary


#: A dataset separates the methods when some method ends this far above its majority-class rate.
SEPARATION_MARGIN = 0.02


def separates(methods: dict[str, Any], majority: float | None, margin: float = SEPARATION_MARGIN) -> bool | None:
    """Whether any method's mean final test ACC ends more than ``margin`` above the majority-class
    rate; when none does, the dataset cannot tell the methods apart (``None``: unknown)."""
    finals = [final_mean(m["summary"]) for m in methods.values() if m.get("status") == "ok" and m.get("summary")]
    if majority is None or not finals:
        return None
    return max(finals) > majority + margin


def condition_view(results: dict[str, Any], condition: str | None = None) -> dict[str, Any]:
    """``results`` seen through one condition (budget and training-set size): every dataset's
    ``methods`` and ``comparison``, ``overall`` and ``statistics`` are that condition's.

    :param condition: a condition id (default: the first, the primary one).
    """
    conditions = results["protocol"]["conditions"]
    cid = condition or conditions[0]["id"]
    chosen = next(c for c in conditions if c["id"] == cid)
    datasets = {}
    for name, entry in results["datasets"].items():
        part = entry.get("conditions", {}).get(cid)
        if part is not None:
            datasets[name] = {**{k: v for k, v in entry.items() if k != "conditions"}, **part}
    return {**results, "condition": chosen, "datasets": datasets,
            "overall": (results.get("overall") or {}).get(cid, {}),
            "statistics": (results.get("statistics") or {}).get(cid, {})}


def final_mean(summary: dict[str, Any], metric: str = "test_acc") -> float:
    """Mean over seeds of ``metric`` at the last epoch."""
    return float(summary["curve"][f"{metric}_mean"][-1])


def epochs_to_match(curve: Sequence[float], target: float, tolerance: float = 1e-9,
                    epochs: Sequence[int] | None = None) -> int | None:
    """First epoch whose value reaches ``target``; ``None`` when none does.

    :param epochs: the epoch of each point (default: 1, 2, ...).
    """
    for index, value in enumerate(curve):
        if value >= target - tolerance:
            return int(epochs[index]) if epochs is not None else index + 1
    return None


def compare(reference: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """Gains of ``reference`` over ``baseline`` at the last epoch and epochs to reach its final ACC."""
    return {"gain_acc": final_mean(reference, "test_acc") - final_mean(baseline, "test_acc"),
            "gain_auc": final_mean(reference, "test_auc") - final_mean(baseline, "test_auc"),
            "epochs_to_match": epochs_to_match(reference["curve"]["test_acc_mean"], final_mean(baseline, "test_acc"),
                                               epochs=reference["curve"]["epochs"])}


def dataset_comparison(methods: dict[str, dict[str, Any]], reference: str = REFERENCE) -> dict[str, Any]:
    """:func:`compare` of ``reference`` with every other method that ran on the dataset."""
    ours = methods.get(reference)
    if not ours or ours.get("status") != "ok":
        return {}
    return {name: compare(ours["summary"], entry["summary"]) for name, entry in methods.items()
            if name != reference and entry.get("status") == "ok"}


def overall(datasets: dict[str, dict[str, Any]], methods: Sequence[str], reference: str = REFERENCE) -> dict[str, Any]:
    """Means over datasets: final test ACC, AUC and balanced accuracy per method (where it ran), its
    target-side compute, and the mean gain and wins of ``reference`` over each baseline (on the
    datasets where both ran)."""
    finals: dict[str, dict[str, list[float]]] = {metric: {m: [] for m in methods} for metric in METRICS}
    compute: dict[str, dict[str, list[float]]] = {m: {"seconds": [], "image_macs": []} for m in methods}
    gains: dict[str, list[float]] = {m: [] for m in methods if m != reference}
    for entry in datasets.values():
        for name in methods:
            method = entry["methods"].get(name)
            if method and method.get("status") == "ok":
                for metric in METRICS:
                    if f"{metric}_mean" in method["summary"]["curve"]:
                        finals[metric][name].append(final_mean(method["summary"], metric))
                for key in ("seconds", "image_macs"):
                    value = (method.get("compute") or {}).get(f"total_{key}")
                    if value is not None:
                        compute[name][key].append(value)
        for name, comparison in entry.get("comparison", {}).items():
            gains.setdefault(name, []).append(comparison["gain_acc"])
    acc = finals["test_acc"]
    return {**{f"mean_{metric}": {m: float(np.mean(v)) for m, v in finals[metric].items() if v} for metric in METRICS},
            "mean_compute": {m: {k: float(np.mean(v)) for k, v in c.items() if v} for m, c in compute.items()
                             if any(c.values())},
            "mean_gain_acc": {m: float(np.mean(v)) for m, v in gains.items() if v},
            "wins": {m: [int(sum(g > 0 for g in v)), len(v)] for m, v in gains.items() if v},
            "datasets": {m: len(v) for m, v in acc.items()}}
