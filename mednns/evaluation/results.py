"""Turning fine-tuning histories into the numbers of an evaluation: mean ± std over seeds at the
report epochs, convergence curves, gains of mednns over each baseline, epochs needed to match a
baseline's final accuracy, and the means over datasets. Pure functions of JSON-like data (no torch).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

#: The method every baseline is compared with.
REFERENCE = "mednns"
METRICS = ("test_acc", "test_auc")


def _mean_std(values: Sequence[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=1)) if len(array) > 1 else 0.0
    return {"mean": float(array.mean()), "std": std}


def report_epochs(epochs: int) -> list[int]:
    """Epochs 1, 3 and K (deduplicated, within 1..K)."""
    return sorted({e for e in (1, 3, epochs) if 1 <= e <= epochs})


def summarize_runs(runs: list[dict[str, Any]], epochs: Sequence[int]) -> dict[str, Any]:
    """Mean ± std over seeds of test ACC and AUC at ``epochs`` plus the whole curve.

    :param runs: one ``{"seed", "model", "history": [row per epoch]}`` per seed (equal lengths).
    """
    if not runs:
        raise ValueError("no runs to summarize")
    length = min(len(r["history"]) for r in runs)
    summary: dict[str, Any] = {}
    for metric in METRICS:
        summary[metric] = {str(e): _mean_std([r["history"][e - 1][metric] for r in runs]) for e in epochs if e <= length}
    curve: dict[str, Any] = {"epochs": list(range(1, length + 1))}
    for metric in METRICS:
        points = [_mean_std([r["history"][i][metric] for r in runs]) for i in range(length)]
        curve[f"{metric}_mean"] = [p["mean"] for p in points]
        curve[f"{metric}_std"] = [p["std"] for p in points]
    summary["curve"] = curve
    summary["params"] = int(np.median([r["model"]["params"] for r in runs]))
    return summary


def final_mean(summary: dict[str, Any], metric: str = "test_acc") -> float:
    """Mean over seeds of ``metric`` at the last epoch."""
    return float(summary["curve"][f"{metric}_mean"][-1])


def epochs_to_match(curve: Sequence[float], target: float, tolerance: float = 1e-9) -> int | None:
    """First epoch (1-based) whose value reaches ``target``; ``None`` when none does."""
    for epoch, value in enumerate(curve, start=1):
        if value >= target - tolerance:
            return epoch
    return None


def compare(reference: dict[str, Any], baseline: dict[str, Any]) -> dict[str, Any]:
    """Gains of ``reference`` over ``baseline`` at the last epoch and epochs to reach its final ACC."""
    return {"gain_acc": final_mean(reference, "test_acc") - final_mean(baseline, "test_acc"),
            "gain_auc": final_mean(reference, "test_auc") - final_mean(baseline, "test_auc"),
            "epochs_to_match": epochs_to_match(reference["curve"]["test_acc_mean"], final_mean(baseline, "test_acc"))}


def dataset_comparison(methods: dict[str, dict[str, Any]], reference: str = REFERENCE) -> dict[str, Any]:
    """:func:`compare` of ``reference`` with every other method that ran on the dataset."""
    ours = methods.get(reference)
    if not ours or ours.get("status") != "ok":
        return {}
    return {name: compare(ours["summary"], entry["summary"]) for name, entry in methods.items()
            if name != reference and entry.get("status") == "ok"}


def overall(datasets: dict[str, dict[str, Any]], methods: Sequence[str], reference: str = REFERENCE) -> dict[str, Any]:
    """Means over datasets: final test ACC and AUC per method (where it ran), mean gain and wins of
    ``reference`` over each baseline (on the datasets where both ran)."""
    acc: dict[str, list[float]] = {m: [] for m in methods}
    auc: dict[str, list[float]] = {m: [] for m in methods}
    gains: dict[str, list[float]] = {m: [] for m in methods if m != reference}
    for entry in datasets.values():
        for name in methods:
            method = entry["methods"].get(name)
            if method and method.get("status") == "ok":
                acc[name].append(final_mean(method["summary"], "test_acc"))
                auc[name].append(final_mean(method["summary"], "test_auc"))
        for name, comparison in entry.get("comparison", {}).items():
            gains.setdefault(name, []).append(comparison["gain_acc"])
    return {"mean_test_acc": {m: float(np.mean(v)) for m, v in acc.items() if v},
            "mean_test_auc": {m: float(np.mean(v)) for m, v in auc.items() if v},
            "mean_gain_acc": {m: float(np.mean(v)) for m, v in gains.items() if v},
            "wins": {m: [int(sum(g > 0 for g in v)), len(v)] for m, v in gains.items() if v},
            "datasets": {m: len(v) for m, v in acc.items()}}
