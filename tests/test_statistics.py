"""Paired statistics of an evaluation (mednns.evaluation.statistics), checked against values computed
independently here: exact Wilcoxon p-values by enumeration, bootstrap intervals by scipy on the
group means and by a plain numpy nested bootstrap."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.stats

from mednns.evaluation import statistics as S


def runs(values: dict[int, float], metric: str = "test_acc") -> list[dict]:
    return [{"seed": seed, "history": [{"epoch": 1, metric: 0.0}, {"epoch": 2, metric: v}]}
            for seed, v in values.items()]


def exact_two_sided_wilcoxon(values: list[float]) -> float:
    """By enumeration of every sign assignment (no ties, no zeros)."""
    ranks = scipy.stats.rankdata(np.abs(values))
    observed = sum(r for r, v in zip(ranks, values) if v > 0)
    total = ranks.sum()
    sums = [sum(r for r, s in zip(ranks, signs) if s) for signs in itertools.product([0, 1], repeat=len(values))]
    extreme = min(observed, total - observed)
    return min(1.0, 2 * np.mean([x <= extreme for x in sums]))


def test_paired_differences_use_the_last_epoch_of_seeds_present_in_both():
    ours = runs({0: 0.80, 1: 0.70, 2: 0.90})
    theirs = runs({0: 0.75, 1: 0.72})
    assert S.paired_differences(ours, theirs, "test_acc") == pytest.approx({0: 0.05, 1: -0.02})
    assert S.paired_differences(ours, theirs, "test_auc") == {}  # not recorded: no pairs


def test_an_early_metric_pairs_the_runs_after_that_epoch():
    ours = [{"seed": 0, "history": [{"epoch": 1, "test_acc": 0.6}, {"epoch": 2, "test_acc": 0.7},
                                    {"epoch": 3, "test_acc": 0.9}]},
            {"seed": 1, "history": [{"epoch": 1, "test_acc": 0.5}]}]  # stopped after one epoch
    theirs = [{"seed": 0, "history": [{"epoch": 1, "test_acc": 0.4}, {"epoch": 2, "test_acc": 0.8},
                                      {"epoch": 3, "test_acc": 0.8}]},
              {"seed": 1, "history": [{"epoch": 1, "test_acc": 0.45}, {"epoch": 2, "test_acc": 0.6}]}]
    assert S.early_metric("test_acc", 1) == "test_acc@1"
    assert S.paired_differences(ours, theirs, "test_acc@1") == pytest.approx({0: 0.2, 1: 0.05})
    assert S.paired_differences(ours, theirs, "test_acc@2") == pytest.approx({0: -0.1})  # seed 1 has no epoch 2
    assert S.paired_differences(ours, theirs, "test_acc") == pytest.approx({0: 0.1, 1: -0.1})  # the last epochs


@pytest.mark.parametrize("values", [[0.1, 0.2, 0.3, 0.4, 0.5], [0.1, -0.2, 0.3, 0.4, 0.5],
                                    [-0.05, 0.11, -0.31, 0.02, 0.07, -0.13, 0.23, 0.19]])
def test_wilcoxon_p_is_the_exact_two_sided_signed_rank_p(values):
    assert S.wilcoxon_p(values) == pytest.approx(exact_two_sided_wilcoxon(values))


def test_wilcoxon_p_drops_zeros_and_needs_two_nonzero_values():
    assert S.wilcoxon_p([0.0, 0.0, 0.3]) is None
    assert S.wilcoxon_p([0.0, 0.1, 0.2, 0.3, 0.4]) == pytest.approx(exact_two_sided_wilcoxon([0.1, 0.2, 0.3, 0.4]))


def test_with_one_seed_per_dataset_the_interval_is_scipys_percentile_bootstrap_of_the_means():
    means = [0.03, -0.01, 0.05, 0.02, 0.04, -0.02, 0.06, 0.01]
    ours = S.nested_bootstrap_ci([[m] for m in means], seed=3)
    reference = scipy.stats.bootstrap((np.asarray(means),), np.mean, n_resamples=S.RESAMPLES, method="percentile",
                                      confidence_level=0.95, rng=np.random.default_rng(3))
    assert ours == pytest.approx((reference.confidence_interval.low, reference.confidence_interval.high), abs=1e-12)


def test_the_nested_interval_agrees_with_a_plain_numpy_two_level_bootstrap():
    rng = np.random.default_rng(0)
    groups = [list(rng.normal(mu, 0.05, size=3)) for mu in (0.02, 0.04, -0.01, 0.03, 0.05, 0.0, 0.01, 0.06)]
    low, high = S.nested_bootstrap_ci(groups, seed=1)
    draws = np.random.default_rng(7)
    arrays = [np.asarray(g) for g in groups]
    stats = []
    for _ in range(20000):
        picked = draws.integers(0, len(arrays), len(arrays))
        stats.append(np.mean([arrays[i][draws.integers(0, 3, 3)].mean() for i in picked]))
    expected = np.percentile(stats, [2.5, 97.5])
    assert low == pytest.approx(expected[0], abs=0.004) and high == pytest.approx(expected[1], abs=0.004)
    # seeds within datasets add spread: wider than the interval from the dataset means alone
    flat = S.nested_bootstrap_ci([[np.mean(g)] for g in groups], seed=1)
    assert high - low > flat[1] - flat[0]


def test_an_interval_needs_two_datasets_and_collapses_without_variation():
    assert S.nested_bootstrap_ci([[0.1, 0.2]]) is None
    assert S.nested_bootstrap_ci([[0.02, 0.02], [0.02]]) == (0.02, 0.02)


def test_gain_statistics_average_per_dataset_means_so_every_dataset_weighs_the_same():
    stats = S.gain_statistics({"a": {0: 0.10, 1: 0.20, 2: 0.30}, "b": {0: -0.10}, "c": {0: 0.05, 1: 0.15}})
    assert stats["datasets"] == pytest.approx({"a": 0.20, "b": -0.10, "c": 0.10})
    assert stats["mean"] == pytest.approx((0.20 - 0.10 + 0.10) / 3)
    assert stats["wins"] == [2, 3] and stats["pairs"] == 6
    assert stats["p_wilcoxon"] == pytest.approx(exact_two_sided_wilcoxon([0.20, -0.10, 0.10]))
    assert stats["ci"][0] <= stats["mean"] <= stats["ci"][1]
    assert S.gain_statistics({"a": {}}) is None


def test_compare_methods_pairs_every_mednns_method_with_every_method_that_ran():
    datasets = {
        "a": {"mednns": {"status": "ok", "runs": runs({0: 0.8, 1: 0.9})},
              "random_init": {"status": "ok", "runs": runs({0: 0.7, 1: 0.7})},
              "imagenet": {"status": "skipped", "runs": []}},
        "b": {"mednns": {"status": "ok", "runs": runs({0: 0.6, 1: 0.5})},
              "random_init": {"status": "ok", "runs": runs({0: 0.5, 1: 0.6})}},
    }
    table = S.compare_methods(datasets, ["mednns"], ["mednns", "random_init", "imagenet"], metrics=["test_acc"])
    assert set(table) == {"mednns"} and set(table["mednns"]) == {"random_init"}  # not itself, not a skipped one
    stats = table["mednns"]["random_init"]["test_acc"]
    assert stats["datasets"] == pytest.approx({"a": 0.15, "b": 0.0}) and stats["pairs"] == 4


def test_two_evaluations_pair_runs_of_the_same_dataset_seed_and_training_subset_only():
    def evaluation(values: dict[str, dict[int, float]], subsets: dict[int, str]) -> dict:
        return {"datasets": {d: {"conditions": {"c": {"methods": {"mednns": {
            "status": "ok", "runs": [{**r, "train_subset": subsets[r["seed"]]} for r in runs(v)]}}}}}
            for d, v in values.items()}}

    before = evaluation({"a": {0: 0.5, 1: 0.6}, "b": {0: 0.7, 1: 0.7}, "only_before": {0: 0.1}}, {0: "x", 1: "y"})
    after = evaluation({"a": {0: 0.6, 1: 0.9}, "b": {0: 0.6, 1: 0.8}}, {0: "x", 1: "z"})  # seed 1: another subset
    table = S.compare_evaluations(before, after, "c", ["mednns", "tans"], metrics=["test_acc"])
    assert set(table) == {"mednns"}  # tans ran in neither
    entry = table["mednns"]
    assert entry["pairs"] == 2 and entry["unpaired"] == 2
    assert entry["test_acc"]["datasets"] == pytest.approx({"a": 0.1, "b": -0.1})
    assert entry["test_acc"]["mean"] == pytest.approx(0.0) and entry["test_acc"]["wins"] == [1, 2]
