"""Paired statistics of an evaluation: is a method's gain over another one a win or noise?

The design is paired: every method is fine-tuned on the same datasets with the same seeds (the same
training subset, data order and augmentation), so the unit of comparison is the difference of two
runs of one (dataset, seed). Per dataset the mean difference over its seeds; over datasets:

* the mean gain (mean of the per-dataset means: every dataset weighs the same, however many seeds);
* a 95% bootstrap confidence interval, resampling datasets and, within each drawn dataset, its
  seeds (``scipy.stats.bootstrap`` draws the datasets; the statistic redraws the seeds);
* the Wilcoxon signed-rank p-value of the per-dataset means (``scipy.stats.wilcoxon``, two-sided);
* wins: datasets whose mean difference is positive.

A metric is a run's final value (``test_acc``) or its value after an earlier epoch
(``test_acc@1``: after one epoch): "trains faster" is a claim about the second kind, and it needs
the same paired statistics as "ends better".

Pure functions of JSON-like data (no torch).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

#: Metrics compared (the final epoch's test values of a run's history).
PAIRED_METRICS = ("test_acc", "test_auc", "test_bal_acc")
CONFIDENCE = 0.95
RESAMPLES = 9999


def early_metric(metric: str, epoch: int) -> str:
    """The name of ``metric`` after ``epoch`` epochs (``test_acc@1``)."""
    return f"{metric}@{epoch}"


def final_value(run: Mapping[str, Any], metric: str) -> float | None:
    """``metric`` at a run's last epoch, or after the epoch a ``metric@epoch`` name gives (``None``
    when the run did not record it or did not train that long)."""
    name, _, epoch = metric.partition("@")
    entry: Mapping[str, Any] = (next((h for h in run["history"] if h.get("epoch") == int(epoch)), {}) if epoch
                                else run["history"][-1])
    value = entry.get(name)
    return None if value is None or not np.isfinite(value) else float(value)


def paired_differences(ours: Sequence[Mapping[str, Any]], theirs: Sequence[Mapping[str, Any]],
                       metric: str) -> dict[int, float]:
    """Per seed present in both: ``ours - theirs`` of ``metric`` (:func:`final_value`)."""
    by_seed = {r["seed"]: final_value(r, metric) for r in theirs}
    differences = {}
    for run in ours:
        a, b = final_value(run, metric), by_seed.get(run["seed"])
        if a is not None and b is not None:
            differences[int(run["seed"])] = a - b
    return differences


def nested_bootstrap_ci(groups: Sequence[Sequence[float]], *, confidence: float = CONFIDENCE,
                        resamples: int = RESAMPLES, seed: int = 0) -> tuple[float, float] | None:
    """Percentile interval of the mean of group means, resampling groups (datasets) and, within each
    drawn group, its values (seeds).

    ``scipy.stats.bootstrap`` draws the groups; the statistic redraws the values within each drawn
    group from its own seeded generator. With one value per group this is exactly scipy's
    percentile bootstrap of the group means. ``None`` with fewer than two groups.
    """
    from scipy.stats import bootstrap

    arrays = [np.asarray(g, dtype=np.float64) for g in groups if len(g)]
    if len(arrays) < 2:
        return None
    means = np.array([a.mean() for a in arrays])
    if np.ptp(means) == 0 and all(np.ptp(a) == 0 for a in arrays):
        return float(means[0]), float(means[0])  # no variation at all: the interval is a point
    lengths = np.array([len(a) for a in arrays])
    values = np.zeros((len(arrays), lengths.max()))
    for i, a in enumerate(arrays):
        values[i, : len(a)] = a
    inner = np.random.default_rng(seed + 1)

    def statistic(indices: np.ndarray, axis: int = -1) -> np.ndarray:
        drawn = np.moveaxis(indices, axis, -1).astype(int)  # (..., groups drawn)
        size = lengths[drawn][..., None]
        picks = np.floor(inner.random((*drawn.shape, values.shape[1])) * size).astype(int)  # seeds redrawn
        present = np.arange(values.shape[1]) < size
        group_means = np.where(present, values[drawn[..., None], picks], 0.0).sum(-1) / lengths[drawn]
        return group_means.mean(-1)

    result = bootstrap((np.arange(len(arrays), dtype=float),), statistic, vectorized=True, n_resamples=resamples,
                       confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def wilcoxon_p(values: Sequence[float]) -> float | None:
    """Two-sided Wilcoxon signed-rank p-value of ``values`` against zero (zeros dropped);
    ``None`` when fewer than two non-zero values remain."""
    from scipy.stats import wilcoxon

    array = np.asarray(values, dtype=np.float64)
    if np.count_nonzero(array) < 2:
        return None
    return float(wilcoxon(array, zero_method="wilcox", alternative="two-sided").pvalue)


def gain_statistics(per_dataset: Mapping[str, Mapping[int, float]], *, seed: int = 0) -> dict[str, Any] | None:
    """The statistics of one (method, baseline, metric): ``per_dataset[d][seed]`` = paired difference.

    :returns: ``{"mean", "ci": [low, high] | None, "p_wilcoxon", "wins": [positive, datasets],
        "datasets": {d: mean difference}, "pairs": n}``; ``None`` when no dataset has a pair.
    """
    groups = {d: list(v.values()) for d, v in per_dataset.items() if v}
    if not groups:
        return None
    means = {d: float(np.mean(v)) for d, v in groups.items()}
    interval = nested_bootstrap_ci(list(groups.values()), seed=seed)
    return {"mean": float(np.mean(list(means.values()))), "ci": list(interval) if interval else None,
            "p_wilcoxon": wilcoxon_p(list(means.values())),
            "wins": [int(sum(m > 0 for m in means.values())), len(means)], "datasets": means,
            "pairs": int(sum(len(v) for v in groups.values()))}


def compare_methods(datasets: Mapping[str, Mapping[str, Any]], ours: Sequence[str], others: Sequence[str],
                    metrics: Sequence[str] = PAIRED_METRICS, *, seed: int = 0) -> dict[str, Any]:
    """Paired statistics of each method in ``ours`` against each other method that ran.

    :param datasets: ``{dataset: {method: {"status", "runs": [...]}}}`` (one condition).
    :returns: ``{ours: {other: {metric: gain_statistics}}}``.
    """
    table: dict[str, Any] = {}
    for mine in ours:
        for other in others:
            if other == mine:
                continue
            entry = {}
            for metric in metrics:
                per_dataset = {}
                for name, methods in datasets.items():
                    a, b = methods.get(mine), methods.get(other)
                    if a and b and a.get("status") == "ok" and b.get("status") == "ok":
                        per_dataset[name] = paired_differences(a["runs"], b["runs"], metric)
                stats = gain_statistics(per_dataset, seed=seed)
                if stats is not None:
                    entry[metric] = stats
            if entry:
                table.setdefault(mine, {})[other] = entry
    return table


def compare_evaluations(before: Mapping[str, Any], after: Mapping[str, Any], condition: str, methods: Sequence[str],
                        metrics: Sequence[str] = PAIRED_METRICS, *, seed: int = 0) -> dict[str, Any]:
    """Paired statistics of two evaluations of one protocol that differ in what they were built on
    (sources, zoo, code): per method, ``after - before`` of each run pair of one (dataset, seed).

    A pair counts only when both runs fine-tuned on the same training subset (equal ``train_subset``
    digests); the others are counted as ``unpaired`` (their protocols differ there).

    :param before: :param after: ``results.json`` contents. :param condition: a condition id both hold.
    :returns: ``{method: {"pairs", "unpaired", metric: gain_statistics}}`` for the methods that ran
        (status ``ok``) in both.
    """
    table: dict[str, Any] = {}
    shared = [d for d in before["datasets"] if d in after["datasets"]]
    for method in methods:
        per_metric: dict[str, dict[str, dict[int, float]]] = {m: {} for m in metrics}
        pairs = unpaired = 0
        for name in shared:
            a = before["datasets"][name].get("conditions", {}).get(condition, {}).get("methods", {}).get(method)
            b = after["datasets"][name].get("conditions", {}).get(condition, {}).get("methods", {}).get(method)
            if not (a and b and a.get("status") == "ok" and b.get("status") == "ok"):
                continue
            subsets = {r["seed"]: r.get("train_subset") for r in a["runs"]}
            runs = [r for r in b["runs"] if r["seed"] in subsets and r.get("train_subset") == subsets[r["seed"]]]
            pairs += len(runs)
            unpaired += len([r for r in b["runs"] if r["seed"] in subsets]) - len(runs)
            for metric in metrics:
                per_metric[metric][name] = paired_differences(runs, a["runs"], metric)
        entry: dict[str, Any] = {m: stats for m in metrics
                                 if (stats := gain_statistics(per_metric[m], seed=seed)) is not None}
        if entry:
            table[method] = {"pairs": pairs, "unpaired": unpaired, **entry}
    return table
