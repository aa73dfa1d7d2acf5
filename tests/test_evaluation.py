"""Leave-one-dataset-out evaluation: the numbers (mean ± std, gains, epochs to match) and the whole
``mednns evaluate`` protocol on tiny data (supernets → zoo → per-fold meta-spaces → every method)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from mednns.cli import cli
from mednns.errors import UsageError
from mednns.evaluation import results as R
from mednns.evaluation.candidates import count_macs, timm_network
from mednns.testing import tiny_dataset
from supernet_helpers import TINY_RESNET, timm_offline, write_tiny_npz


def run_record(seed: int, accs: list[float], aucs: list[float] | None = None, params: int = 10) -> dict[str, Any]:
    aucs = aucs or [a / 2 + 0.5 for a in accs]
    return {"seed": seed, "model": {"params": params},
            "history": [{"epoch": i + 1, "test_acc": a, "test_auc": u} for i, (a, u) in enumerate(zip(accs, aucs))]}


# --- the numbers ---------------------------------------------------------------------------------

def test_summary_is_mean_and_sample_std_over_seeds_at_the_report_epochs():
    runs = [run_record(0, [0.5, 0.6, 0.7, 0.8]), run_record(1, [0.7, 0.6, 0.9, 0.9])]
    summary = R.summarize_runs(runs, R.report_epochs(4))
    assert R.report_epochs(4) == [1, 3, 4] and R.report_epochs(2) == [1, 2] and R.report_epochs(1) == [1]
    assert summary["test_acc"]["1"]["mean"] == pytest.approx(0.6)
    assert summary["test_acc"]["1"]["std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert summary["test_acc"]["4"]["mean"] == pytest.approx(0.85)
    assert summary["curve"]["test_acc_mean"] == pytest.approx([0.6, 0.6, 0.8, 0.85])
    assert summary["curve"]["test_auc_mean"][0] == pytest.approx(0.8)
    single = R.summarize_runs(runs[:1], [1])
    assert single["test_acc"]["1"] == {"mean": 0.5, "std": 0.0}


def test_gain_and_epochs_to_match_a_baselines_final_accuracy():
    ours = R.summarize_runs([run_record(0, [0.70, 0.80, 0.85, 0.86])], [1, 3, 4])
    weaker = R.summarize_runs([run_record(0, [0.50, 0.60, 0.75, 0.79])], [1, 3, 4])
    stronger = R.summarize_runs([run_record(0, [0.80, 0.85, 0.88, 0.90])], [1, 3, 4])
    against_weaker = R.compare(ours, weaker)
    assert against_weaker["gain_acc"] == pytest.approx(0.07)
    assert against_weaker["epochs_to_match"] == 2  # 0.80 >= 0.79 first at epoch 2
    against_stronger = R.compare(ours, stronger)
    assert against_stronger["gain_acc"] == pytest.approx(-0.04)
    assert against_stronger["epochs_to_match"] is None


def test_overall_means_gains_and_wins_over_the_datasets_each_method_ran_on():
    def entry(ours: float, base: float | None) -> dict[str, Any]:
        methods = {"mednns": {"status": "ok", "summary": R.summarize_runs([run_record(0, [ours])], [1])}}
        methods["random_pick"] = ({"status": "ok", "summary": R.summarize_runs([run_record(0, [base])], [1])}
                                  if base is not None else {"status": "skipped", "reason": "x", "runs": []})
        return {"methods": methods, "comparison": R.dataset_comparison(methods)}

    datasets = {"a": entry(0.8, 0.7), "b": entry(0.6, 0.65), "c": entry(0.9, None)}
    result = R.overall(datasets, ["mednns", "random_pick"])
    assert result["mean_test_acc"]["mednns"] == pytest.approx((0.8 + 0.6 + 0.9) / 3)
    assert result["mean_test_acc"]["random_pick"] == pytest.approx(0.675)
    assert result["mean_gain_acc"]["random_pick"] == pytest.approx((0.1 - 0.05) / 2)
    assert result["wins"]["random_pick"] == [1, 2]
    assert result["datasets"] == {"mednns": 3, "random_pick": 2}


def test_sparse_histories_are_summarized_by_their_epochs():
    sparse = [{"seed": s, "model": {"params": 5}, "history": [
        {"epoch": 3, "test_acc": 0.5 + s / 10, "test_auc": 0.7, "target_seconds": 1.0 + s},
        {"epoch": 6, "test_acc": 0.8, "test_auc": 0.9, "target_seconds": 2.0 + s}]} for s in (0, 1)]
    summary = R.summarize_runs(sparse, [1, 3, 8])
    assert set(summary["test_acc"]) == {"3"}  # epochs 1 and 8 were never evaluated
    assert summary["curve"]["epochs"] == [3, 6]
    assert summary["curve"]["target_seconds_mean"] == pytest.approx([1.5, 2.5])
    assert summary["final"]["test_acc"]["mean"] == pytest.approx(0.8)
    assert "test_bal_acc" not in summary  # not recorded by these runs
    assert R.epochs_to_match([0.55, 0.8], 0.6, epochs=[3, 6]) == 6


def test_majority_rate_and_whether_a_dataset_separates_the_methods():
    from mednns.data import majority_rate

    assert majority_rate("binary", np.array([[0], [0], [0], [1]])) == pytest.approx(0.75)
    assert majority_rate("multi-class", np.array([2, 2, 1, 0, 2])) == pytest.approx(0.6)
    assert majority_rate("multi-label", np.array([[1, 0], [1, 0], [0, 0], [1, 1]])) == pytest.approx(0.75)

    def methods(*finals: float) -> dict[str, Any]:
        return {f"m{i}": {"status": "ok", "summary": R.summarize_runs([run_record(0, [v])], [1])}
                for i, v in enumerate(finals)}

    assert R.separates(methods(0.73, 0.74, 0.72), 0.73) is False  # everyone ends at the majority rate
    assert R.separates(methods(0.73, 0.80), 0.73) is True
    assert R.separates(methods(0.9), None) is None


def test_a_condition_view_is_the_shape_the_report_reads():
    results = {"protocol": {"conditions": [{"id": "equal_epochs@800"}, {"id": "equal_compute@800"}]},
               "datasets": {"a": {"info": {"task": "binary"}, "conditions": {
                   "equal_epochs@800": {"methods": {"mednns": 1}, "comparison": {"x": 1}},
                   "equal_compute@800": {"methods": {"mednns": 2}, "comparison": {}}}}},
               "overall": {"equal_epochs@800": {"o": 1}, "equal_compute@800": {"o": 2}},
               "statistics": {"equal_compute@800": {"s": 2}}}
    primary = R.condition_view(results)
    assert primary["datasets"]["a"] == {"info": {"task": "binary"}, "methods": {"mednns": 1}, "comparison": {"x": 1}}
    assert primary["overall"] == {"o": 1} and primary["statistics"] == {}
    assert primary["condition"] == {"id": "equal_epochs@800"}
    other = R.condition_view(results, "equal_compute@800")
    assert other["datasets"]["a"]["methods"] == {"mednns": 2} and other["statistics"] == {"s": 2}


def test_settings_name_conditions_and_variant_methods():
    from mednns.evaluation.settings import EvaluationSettings

    def settings(**changes: Any) -> EvaluationSettings:
        base = dict(datasets=None, methods=["mednns", "mednns_topk", "random_init"], seeds=[0, 1, 2],
                    finetune={"epochs": 8, "batch_size": 128}, top_k=2, by="predicted", meta_space={"steps": 10},
                    tans_losses=[], timm_model="resnet18", search_budget=5)
        return EvaluationSettings(**{**base, **changes})

    chosen = settings(train_images=[800, 100], budgets=["equal_epochs", "equal_compute"], equal_compute_seeds=[0],
                      variants={"auc": {"meta_space": {"target": "val_auc"}, "top_k": 3}})
    assert [(c.id, c.seeds, c.batch_size) for c in chosen.conditions()] == [
        ("equal_epochs@800", (0, 1, 2), 128), ("equal_epochs@100", (0, 1, 2), 16), ("equal_compute@800", (0,), 128)]
    # 100 images in batches of 16 make the 6 optimizer steps per epoch that 800 make in batches of 128
    assert chosen.method_names() == ["mednns", "mednns:auc", "mednns_topk", "mednns_topk:auc", "random_init"]
    variant = chosen.variant_list()[1]
    assert variant.meta_space == {"steps": 10, "target": "val_auc"} and variant.top_k == 3
    assert [c.id for c in settings(budgets=["equal_compute"]).conditions()] == ["equal_compute@all"]
    assert settings(variants={"knn": {"rerank": {"score": "knn"}}}).variant_list()[1].settings().score == {
        "name": "knn", "args": {}}
    # the re-ranking defaults are the measured configuration: the ridge probe's order alone, which a
    # random pool (no meta-space order to combine with) accepts without restating it
    alone = settings(variants={"alone": {"rerank": {}, "pool": "random", "top_k": 1}}).variant_list()[1].settings()
    assert alone.score == {"name": "ridge", "args": {}} and alone.combine == "score"
    measured = settings(train_images=[800, 100], budgets=["equal_epochs", "equal_compute"],
                        ranking={"train_images": [100]}).ranking_conditions()
    assert [c.id for c in measured] == ["equal_epochs@800", "equal_epochs@100"]
    assert [c.id for c in chosen.ranking_conditions()] == ["equal_epochs@800"]  # the primary one by default
    four = settings(variants={"r": {"restarts": 4, "top_k": 1}})
    assert four.variant_list()[1].restarts == 4
    assert four.describe("mednns_topk:r").description.startswith("the query's top-ranked zoo model fine-tuned 4 times")
    assert "top-k models" in four.describe("mednns_topk").description
    restarted = settings(baseline_restarts={"random_init": 4})
    assert restarted.method_names() == ["mednns", "mednns_topk", "random_init", "random_init:restarts4"]
    assert restarted.restarts_rows() == {"random_init:restarts4": ("random_init", 4)}
    with pytest.raises(UsageError, match=r"ranking.train_images \[50\] are not among"):
        settings(train_images=[800, 100], ranking={"train_images": [50]})
    for bad in ({"budgets": ["equal_money"]}, {"train_images": [100, 100]}, {"equal_compute_seeds": [7]},
                {"max_epochs": 4}, {"variants": {"x": {"lr": 1}}}, {"variants": {"x": {"meta_space": {"zoo": "z"}}}},
                {"variants": {"a b": {}}}, {"variants": {"x": {"rerank": {"score": "knn", "k": 3}}}},
                {"rerank": {"combine": "vote"}}, {"variants": {"x": {"finetune": {"epochs": 3}}}},
                {"variants": {"x": {"pool": "zoo"}}}, {"variants": {"x": {"pool": "random"}}},  # no re-ranking
                {"variants": {"x": {"pool": "random", "rerank": {"score": "knn", "combine": "rank_sum"},
                                    "top_k": 1}}},
                {"variants": {"x": {"pool": "random", "rerank": {"score": "knn", "combine": "score"}}}},  # top_k 2
                {"variants": {"x": {"restarts": 0, "top_k": 1}}}, {"variants": {"x": {"restarts": 3}}},  # top_k 2
                {"baseline_restarts": {"mednns_topk": 2}}, {"baseline_restarts": {"tans": 2}},  # not a baseline run
                {"baseline_restarts": {"random_init": 1}}, {"baseline_restarts": {"random_init": True}}):
        with pytest.raises(UsageError):
            settings(**bad)


def test_a_saved_re_ranking_is_reused_only_for_the_settings_and_candidates_it_was_made_with():
    from mednns.evaluation.leave_one_out import reranking_applies
    from mednns.transfer.reranking import RerankSettings

    settings = RerankSettings.from_dict({"score": "knn", "candidates": 3}).to_dict()
    made_with = {"settings": settings, "candidates": [4, 7, 9], "images": 24, "batch_size": 16}
    saved = json.loads(json.dumps({"order": [7, 4, 9], "made_with": made_with}))  # as read back from its file
    assert reranking_applies(saved, made_with)
    for changed in ({"settings": {**settings, "score": {"name": "ridge", "args": {}}}},
                    {"settings": {**settings, "combine": "rank_sum"}}, {"candidates": [4, 7, 8]},
                    {"images": 100}, {"batch_size": 128}):
        assert not reranking_applies(saved, {**made_with, **changed}), changed
    # saved before the record existed: judged by the facts the re-ranking wrote
    legacy = {"order": [7, 4, 9], "rerank": {**settings, "candidates": 3, "images": 24, "seconds": 1.0}}
    assert reranking_applies(legacy, made_with)
    for changed in ({"settings": {**settings, "score": {"name": "ridge", "args": {}}}},
                    {"settings": {**settings, "seed": 1}}, {"candidates": [4, 7, 8]}, {"images": 100}):
        assert not reranking_applies(legacy, {**made_with, **changed}), changed


def test_the_ranking_sample_takes_the_evaluations_seeds_first_then_further_ones():
    from mednns.evaluation.ranking import sample_seeds

    assert sample_seeds([0, 1, 2], 2) == [0, 1]  # runs shared with the methods
    assert sample_seeds([0, 1, 2], 5) == [0, 1, 2, 3, 4]  # a less noisy truth for the sample alone
    assert sample_seeds([4, 0], 4) == [4, 0, 5, 6]  # never a seed the evaluation already has


def test_ranking_quality_helpers_correlate_rank_and_average_as_documented():
    from mednns.evaluation.ranking import RankingSettings, assess, draw_sample, overall, rank_sum_key

    candidates = [{"zoo_id": i, "test_acc": acc} for i, acc in enumerate([0.5, 0.7, 0.6, 0.9])]
    result = assess(candidates, {"perfect": [1, 3, 2, 4], "reversed": [4, 2, 3, 1], "flat": [1, 1, 1, 1]})
    assert result.rankings["perfect"] == {"kendall": pytest.approx(1.0), "top1_regret": 0.0}
    assert result.rankings["reversed"]["kendall"] == pytest.approx(-1.0)
    assert result.rankings["reversed"]["top1_regret"] == pytest.approx(0.4)  # picks the 0.5 one
    assert np.isnan(result.rankings["flat"]["kendall"])
    assert result.candidates[1]["values"] == {"perfect": 3, "reversed": 2, "flat": 1}
    # rank sum: ranks (1 = best) 4+1, 2+3, 3+2, 1+4 tie at 5; higher is better, so the key is minus the mean
    assert rank_sum_key([1, 3, 2, 4], [4, 2, 3, 1]) == [-2.5] * 4
    assert rank_sum_key([3, 2, 1], [3, 1, 2]) == [-1.0, -2.5, -2.5]
    read_back = json.loads(json.dumps(result.to_dict()).replace("NaN", "null"))  # as results.json stores it
    summary = overall({"x": read_back, "y": assess(candidates, {"perfect": [4, 3, 2, 1]}).to_dict()})
    assert summary["perfect"]["mean_kendall"] == pytest.approx((1.0 - 2 / 3) / 2)  # 1 concordant pair of 6
    assert summary["perfect"]["targets"] == 2 and summary["flat"]["targets"] == 0
    rows = [{"id": i} for i in range(50)]
    assert draw_sample(rows, 10, "t") == draw_sample(rows, 10, "t") != draw_sample(rows, 10, "u")
    assert [r["id"] for r in draw_sample(rows[:4], 10, "t")] == [0, 1, 2, 3]
    assert draw_sample(rows, 10, "t", draw=0) == draw_sample(rows, 10, "t")  # the first draw is the default's
    assert draw_sample(rows, 10, "t", draw=1) == draw_sample(rows, 10, "t", draw=1) != draw_sample(rows, 10, "t")
    with pytest.raises(UsageError, match="draw must be >= 0"):
        RankingSettings(draw=-1)
    with pytest.raises(UsageError, match="candidates >= 3"):
        RankingSettings(candidates=2)
    with pytest.raises(UsageError, match="unknown key"):
        RankingSettings.from_dict({"sample": 3})
    with pytest.raises(UsageError, match="seeds must be >= 1"):
        RankingSettings(seeds=0)


def test_fine_tuned_once_ranks_each_seed_against_the_other_seeds_mean():
    from mednns.evaluation.ranking import ONCE, assess, once

    # seeds agree on the order: every seed ranks the others' mean perfectly
    agreeing = np.array([[0.5, 0.52, 0.51], [0.6, 0.61, 0.62], [0.7, 0.72, 0.71]])
    assert once(agreeing) == {"kendall": pytest.approx(1.0), "top1_regret": 0.0}
    # noisy seeds: the naive definition, pair by pair (no ties in continuous draws, so tau-a = tau-b)
    noisy = np.random.default_rng(0).uniform(0.4, 0.6, size=(6, 3))
    taus, regrets = [], []
    for s in range(3):
        mine, others = noisy[:, s], np.delete(noisy, s, axis=1).mean(axis=1)
        taus.append(sum(np.sign(mine[i] - mine[j]) * np.sign(others[i] - others[j])
                        for i in range(6) for j in range(i + 1, 6)) / 15)
        regrets.append(others.max() - others[mine.argmax()])
    assert once(noisy) == {"kendall": pytest.approx(np.mean(taus)), "top1_regret": pytest.approx(np.mean(regrets))}
    candidates = [{"zoo_id": i, "test_acc": float(r.mean()), "test_accs": list(r)} for i, r in enumerate(agreeing)]
    assert assess(candidates, {"x": [1, 2, 3]}).rankings[ONCE]["kendall"] == pytest.approx(1.0)
    single = [{"zoo_id": i, "test_acc": float(r[0])} for i, r in enumerate(agreeing)]
    assert ONCE not in assess(single, {"x": [1, 2, 3]}).rankings  # one seed: nothing to compare


def test_choice_ceiling_finds_a_better_candidate_and_adds_nothing_among_equal_ones():
    from mednns.evaluation.ranking import choice_ceiling

    rng = np.random.default_rng(0)
    # one candidate 0.1 better than the other three: chosen on the other seeds every time
    better = np.array([0.5, 0.5, 0.5, 0.6])[:, None] + rng.normal(0, 0.005, (4, 5))
    expected = [better[3, s] - better[:, s].mean() for s in range(5)]
    assert choice_ceiling(better) == pytest.approx(expected) and np.mean(expected) == pytest.approx(0.075, abs=0.01)
    # equal candidates: judged on a held-out seed, the choice adds nothing on average, while the best
    # mean minus the mean (a maximum selected on the noise it is judged by) would read a gain
    equal = [0.5 + rng.normal(0, 0.02, (10, 4)) for _ in range(500)]
    assert abs(np.mean([choice_ceiling(a) for a in equal])) < 0.002
    assert np.mean([a.mean(axis=1).max() - a.mean() for a in equal]) > 0.01
    with pytest.raises(ValueError, match="two seeds"):
        choice_ceiling(better[:, :1])


def test_separation_tells_candidates_that_differ_from_fine_tuning_noise():
    from mednns.evaluation.ranking import separation

    def entry(accs: np.ndarray) -> dict[str, Any]:
        return {"candidates": [{"test_acc": float(r.mean()), "test_accs": list(r)} for r in accs]}

    rng = np.random.default_rng(0)
    levels = np.linspace(0.5, 0.7, 8)[:, None]  # eight candidates 0.2 apart end to end
    settled = separation(entry(levels + rng.normal(0, 0.005, size=(8, 6))))
    assert settled["reliability"] > 0.99 and settled["reliability_once"] > 0.95 and settled["seeds"] == 6
    assert settled["spread"] == pytest.approx(levels.std(ddof=1), abs=0.003)
    assert settled["noise"] == pytest.approx(0.005, abs=0.002)
    # a seed that is better for every candidate (its training subset, say) orders nothing: same answer
    shifted = separation(entry(levels + rng.normal(0, 0.005, size=(8, 6)) + np.array([0, 0.1, -0.1, 0, 0.2, 0])))
    assert shifted["reliability"] > 0.99 and shifted["noise"] < 0.008
    noise = separation(entry(0.6 + rng.normal(0, 0.03, size=(60, 6))))  # no differences at all
    assert noise["reliability"] < 0.3 and noise["reliability_once"] <= noise["reliability"]
    assert noise["noise"] == pytest.approx(0.03, abs=0.003)
    # the naive two-way decomposition, ICC(3,k) = (MS_rows - MS_residual) / MS_rows
    accs = rng.uniform(0.4, 0.8, size=(5, 4))
    rows, cols, grand = accs.mean(axis=1), accs.mean(axis=0), accs.mean()
    ms_rows = 4 * sum((r - grand) ** 2 for r in rows) / 4
    ms_res = sum((accs[i, j] - rows[i] - cols[j] + grand) ** 2 for i in range(5) for j in range(4)) / 12
    facts = separation(entry(accs))
    assert facts["reliability"] == pytest.approx(max(0.0, (ms_rows - ms_res) / ms_rows))
    assert facts["reliability_once"] == pytest.approx(max(0.0, (ms_rows - ms_res) / (ms_rows + 3 * ms_res)))
    assert separation({"candidates": [{"test_acc": 0.5}, {"test_acc": 0.6}]}) is None  # one seed


def test_top1_gain_is_the_first_ones_accuracy_above_the_sample_mean_per_seed():
    from mednns.evaluation.ranking import ONCE, assess, overall, top1_gains

    rng = np.random.default_rng(3)
    per_target = {}
    for target in "abcd":
        accs = rng.uniform(0.4, 0.8, size=(5, 3))  # candidate x seed
        candidates = [{"zoo_id": i, "test_acc": float(r.mean()), "test_accs": list(r)} for i, r in enumerate(accs)]
        oracle = list(accs.mean(axis=1))
        entry = json.loads(json.dumps(assess(candidates, {"oracle": oracle, "worst": [-v for v in oracle]}).to_dict()))
        per_target[target] = entry
        gains = top1_gains(entry)
        best, worst = int(np.argmax(oracle)), int(np.argmin(oracle))
        # naive: seed by seed, the chosen candidate's ACC minus the five candidates' mean ACC
        assert gains["oracle"] == pytest.approx([accs[best, s] - accs[:, s].mean() for s in range(3)])
        assert gains["worst"] == pytest.approx([accs[worst, s] - accs[:, s].mean() for s in range(3)])
        for s in range(3):  # fine-tuned once: seed s chooses, the other two seeds judge
            others = np.delete(accs, s, axis=1).mean(axis=1)
            assert gains[ONCE][s] == pytest.approx(others[np.argmax(accs[:, s])] - others.mean())
    summary = overall(per_target)
    assert summary["oracle"]["top1_gain"]["mean"] > 0 > summary["worst"]["top1_gain"]["mean"]
    low, high = summary["oracle"]["top1_gain"]["ci"]
    assert 0 < low <= summary["oracle"]["top1_gain"]["mean"] <= high  # the oracle beats the sample mean on every target
    assert summary["worst"]["top1_gain"]["ci"][1] < 0


def test_macs_are_counted_from_the_network():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1, bias=False), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 8 * 8, 2, bias=False))
    assert count_macs(model, (1, 8, 8)) == 8 * 8 * 4 * 9 + 4 * 64 * 2


def test_unloadable_imagenet_weights_give_a_usage_error_with_the_reason(monkeypatch):
    timm_offline(monkeypatch, "We couldn't connect to 'https://huggingface.co'\nmore lines")
    info = tiny_dataset("t").info
    with pytest.raises(UsageError, match="ImageNet weights of resnet18 could not be loaded.*couldn't connect"):
        timm_network("resnet18", info, pretrained=True)
    assert timm_network("resnet18", info, pretrained=False).model["weights"] == "random"


# --- the whole protocol on tiny data --------------------------------------------------------------

TINY_STAGE = {"full_epochs": 1, "shrink_epochs": 1, "batch_size": 16, "num_random": 1, "calibration_images": 32,
              "calibration_batch_size": 16, "final_samples": 3, "progress": False}
ZOO = {"samples": 10, "anchors": 2, "calibration_images": 32, "calibration_batch_size": 16, "progress": False}
META = {"images": 64, "steps": 30, "eval_every": 15, "images_per_set": 32, "models_per_dataset": 8, "embed_dim": 16,
        "hidden": 32, "progress": False, "model_encoder": {"name": "arch", "args": {"embed_dim": 16, "hidden": 32}}}
EVALUATE = {"datasets": ["c", "d"], "methods": ["mednns", "mednns_topk", "random_init", "timm_scratch", "imagenet",
                                               "nearest_fid", "tans", "random_pick", "own_supernet_search",
                                               "mednns_search"],
            "seeds": [0, 1], "epochs": 3, "batch_size": 16, "top_k": 2, "search_budget": 5,
            "train_images": [64, 32], "budgets": ["equal_epochs", "equal_compute"], "equal_compute_seeds": [0],
            "max_epochs": 9, "recalibrate_bn": True, "head_epochs": 1, "fit_head": False,  # published recipe
            "variants": {"auc": {"meta_space": {"target": "val_auc"}},
                         "plain": {"finetune": {"recalibrate_bn": False, "head_epochs": 0}, "top_k": 1},
                         "colour": {"finetune": {"colour_stem": True}, "top_k": 1},
                         "solved": {"finetune": {"fit_head": True, "head_epochs": 0}, "top_k": 1},  # the default
                         "knn": {"rerank": {"score": "knn", "candidates": 3, "images": 24, "calibration_images": 16},
                                 "top_k": 1},
                         "knn_alone": {"rerank": {"score": "knn", "candidates": 3, "images": 24,
                                                  "calibration_images": 16, "combine": "score"},
                                       "top_k": 1, "pool": "random"},
                         "restarts": {"restarts": 2, "top_k": 1}},
            "baseline_restarts": {"random_pick": 2, "own_supernet_search": 2},
            "ranking": {"candidates": 3, "scores": ["knn", "ridge"], "images": 40, "seeds": 3, "train_images": [32]},
            "meta_space": META, "report": True, "progress": False}


def invoke(*args: Any):
    return CliRunner().invoke(cli, [str(a) for a in args], env={"COLUMNS": "300"})


def without_imagenet_weights(patch: pytest.MonkeyPatch) -> None:
    """No internet in tests: timm's pretrained weights fail to load, so the ImageNet baseline is skipped."""
    timm_offline(patch)


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory) -> dict[str, Any]:
    """Three zoo datasets a, b, c and one dataset d without a supernet; c and d are the targets."""
    root = tmp_path_factory.mktemp("evaluation")
    datasets = []
    for seed, name in enumerate("abcd"):
        npz = write_tiny_npz(root / f"{name}.npz", seed=seed, n_classes=2 + seed % 2, channels=3 if name == "b" else 1)
        datasets.append({"name": "npz", "args": {"path": str(npz), "name": name}})
    config = {"name": "run", "seed": 0, "device": "cpu", "output_dir": str(root), "datasets": datasets,
              "stages": [{"name": "train_supernet", "args": {"space": {"name": "ofa_resnet", "args": TINY_RESNET},
                                                             "datasets": ["a", "b", "c"], **TINY_STAGE}},
                         {"name": "build_zoo", "args": ZOO}, {"name": "evaluate", "args": EVALUATE}]}
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch:
            without_imagenet_weights(patch)
            result = invoke("evaluate", path)
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    stage = root / "run" / "stages" / "evaluate"
    return {"root": root, "config": path, "stage": stage, "output": result.output,
            "results": json.loads((stage / "results.json").read_text())}


pipeline = pytest.mark.slow


PRIMARY, SMALL, COMPUTE = "equal_epochs@64", "equal_epochs@32", "equal_compute@64"


def methods_of(results: dict[str, Any], target: str, condition: str = PRIMARY) -> dict[str, Any]:
    return results["datasets"][target]["conditions"][condition]["methods"]


def saved_runs(evaluation: dict[str, Any], target: str) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Every fine-tuning run the fold saved, by (start key, seed, training images, epochs)."""
    records = (json.loads(path.read_text()) for path in (evaluation["stage"] / target / "runs").glob("*.json"))
    return {(r["key"], r["seed"], r["train_images"], r["epochs"]): r for r in records}


@pipeline
def test_every_method_runs_for_every_seed_of_every_condition_on_the_same_subsets(evaluation):
    results = evaluation["results"]
    assert results["format"] == "mednns-evaluation/2"
    assert list(results["datasets"]) == ["c", "d"]
    assert [(c["id"], c["seeds"]) for c in results["protocol"]["conditions"]] == [
        (PRIMARY, [0, 1]), (SMALL, [0, 1]), (COMPUTE, [0])]
    for target, entry in results["datasets"].items():
        for condition in results["protocol"]["conditions"]:
            methods = entry["conditions"][condition["id"]]["methods"]
            assert set(methods) == set(results["protocol"]["methods"])
            subsets = {}
            for name, method in methods.items():
                if name == "imagenet":
                    assert method["status"] == "skipped" and "no internet here" in method["reason"]
                    continue
                if name in ("own_supernet_search", "own_supernet_search:restarts2", "mednns_search") and target == "d":
                    assert method["status"] == "skipped" and "no supernet trained on d" in method["reason"]
                    continue
                if name.endswith(":restarts2") and condition["budget"] == "equal_compute":
                    assert method["status"] == "skipped" and "equal epochs only" in method["reason"]
                    continue
                if name in ("mednns_topk:plain", "mednns_topk:colour", "mednns_topk:solved", "mednns_topk:knn",
                            "mednns_topk:knn_alone"):  # their top-1 only
                    assert method["status"] == "skipped" and "top_k is 1" in method["reason"]
                    continue
                assert method["status"] == "ok", (target, name)
                assert [r["seed"] for r in method["runs"]] == condition["seeds"]
                for run in method["runs"]:
                    assert run["train_images"] == condition["train_images"]
                    assert run["torch_threads"] == 1  # as the fixture set: results depend on it on a CPU
                    subsets.setdefault(run["seed"], set()).add(run["train_subset"])
                    if condition["budget"] == "equal_epochs":
                        assert [row["epoch"] for row in run["history"]] == [1, 2, 3]
                    else:  # as many evaluations as the equal-epochs budget, the last at the last epoch
                        assert len(run["history"]) == 3 and run["history"][-1]["epoch"] == run["epochs"]
            assert all(len(digests) == 1 for digests in subsets.values())  # one training subset per seed
        assert set(entry["conditions"][PRIMARY]["comparison"]) == {
            m for m, v in methods_of(results, target).items() if v["status"] == "ok"} - {"mednns"}


@pipeline
def test_the_target_is_held_out_of_every_meta_space_and_of_the_candidates(evaluation):
    fold = evaluation["stage"] / "c"
    folders = sorted((fold / "meta_spaces").iterdir())
    assert len(folders) == 3  # the default, the variant's (AUC target) and the TANS-style one
    targets, losses = set(), []
    for folder in folders:
        meta = json.loads((folder / "metaspace.json").read_text())
        assert meta["held_out"] == ["c"] and "c" not in meta["train_datasets"]
        assert "c" not in json.loads((folder / "report.json").read_text())["fid"]["datasets"]
        targets.add(json.loads((folder / "arguments.json").read_text()).get("target", "val_acc"))
        losses.append([s["name"] for s in meta["losses"]])
    assert targets == {"val_acc", "val_auc"} and ["contrastive", "performance"] in losses
    for name in ("default", "auc", "tans"):
        query = json.loads((fold / "queries" / f"{name}.json").read_text())
        assert query["results"] and all(r["dataset"] != "c" for r in query["results"])
    methods = methods_of(evaluation["results"], "c")
    for name in ("mednns", "mednns:auc", "tans", "nearest_fid", "random_pick"):
        assert all(r["model"]["source"] != "c" for r in methods[name]["runs"]), name
    assert all(r["model"]["source"] == "c" for r in methods["own_supernet_search"]["runs"])


@pipeline
def test_methods_start_from_the_networks_they_promise(evaluation):
    entry = evaluation["results"]["datasets"]["c"]
    methods = entry["conditions"][PRIMARY]["methods"]
    top1 = methods["mednns"]["runs"][0]["model"]
    assert top1["weights"] == "inherited"
    query = json.loads((evaluation["stage"] / "c" / "queries" / "default.json").read_text())
    assert top1["arch_hash"] and top1["source"] == query["results"][0]["dataset"]
    variant = json.loads((evaluation["stage"] / "c" / "queries" / "auc.json").read_text())
    assert methods["mednns:auc"]["runs"][0]["model"]["source"] == variant["results"][0]["dataset"]
    same_arch = methods["random_init"]["runs"][0]["model"]
    assert same_arch["weights"] == "random" and same_arch["arch_hash"] == top1["arch_hash"]
    assert same_arch["params"] == top1["params"]
    assert methods["mednns"]["runs"][0]["history"] != methods["random_init"]["runs"][0]["history"]
    assert methods["timm_scratch"]["runs"][0]["model"]["params"] > 1_000_000  # ResNet-18
    nearest = min(entry["fid"], key=entry["fid"].get)
    assert methods["nearest_fid"]["runs"][0]["model"]["source"] == nearest
    for run in methods["mednns_topk"]["runs"]:  # the best validation ACC of the top-2 is the one reported
        options = run["chosen_from"]
        assert len(options) == 2
        assert max(row["val_acc"] for row in run["history"]) == max(o["best_val_acc"] for o in options)
    assert methods["mednns_topk"]["runs"][0]["chosen_from"][0]["key"] == methods["mednns"]["runs"][0]["key"]
    saved = saved_runs(evaluation, "c")
    for run in methods["mednns_topk:restarts"]["runs"]:  # the top-1 twice: the same subset, another fine-tuning seed
        first = methods["mednns"]["runs"][[r["seed"] for r in methods["mednns"]["runs"]].index(run["seed"])]
        assert [o["key"] for o in run["chosen_from"]] == [first["key"], first["key"] + "#restart1"]
        again = saved[(first["key"] + "#restart1", run["seed"], first["train_images"], first["epochs"])]
        assert again["train_subset"] == first["train_subset"] and again["history"] != first["history"]
        assert max(row["val_acc"] for row in run["history"]) == max(o["best_val_acc"] for o in run["chosen_from"])
    assert entry["own_supernet_search"]["evaluated"] == 5


@pipeline
def test_a_restarted_baseline_fine_tunes_its_own_start_k_times_at_equal_epochs(evaluation):
    results = evaluation["results"]
    names = results["protocol"]["methods"]
    assert names[names.index("random_pick"):][:4] == ["random_pick", "random_pick:restarts2", "own_supernet_search",
                                                   "own_supernet_search:restarts2"]
    assert results["methods"]["random_pick:restarts2"]["label"] == "random zoo pick [best of 2 restarts]"
    saved = saved_runs(evaluation, "c")
    for condition in (PRIMARY, SMALL):
        methods = methods_of(results, "c", condition)
        for base in ("random_pick", "own_supernet_search"):
            once, restarted = methods[base]["runs"], methods[f"{base}:restarts2"]["runs"]
            for first, run in zip(once, restarted):  # the seed's own start (the same random pick), twice
                assert [o["key"] for o in run["chosen_from"]] == [first["key"], first["key"] + "#restart1"]
                again = saved[(first["key"] + "#restart1", first["seed"], first["train_images"], first["epochs"])]
                assert again["train_subset"] == first["train_subset"] and again["history"] != first["history"]
                assert max(row["val_acc"] for row in run["history"]) == max(
                    o["best_val_acc"] for o in run["chosen_from"])
                if base == "own_supernet_search":  # the run's search counts once, as the baseline's
                    assert run["compute"]["setup"] == first["compute"]["setup"]
                    assert run["compute"]["finetune"]["image_macs"] > first["compute"]["finetune"]["image_macs"]
    stats = results["statistics"][PRIMARY]["mednns_topk"]
    assert "random_pick:restarts2" in stats and "own_supernet_search:restarts2" in stats


@pipeline
def test_own_supernet_search_trains_on_each_runs_subset_only(evaluation):
    fold, entry = evaluation["stage"] / "c", evaluation["results"]["datasets"]["c"]
    searches = {}
    for condition in (PRIMARY, SMALL):
        for run in entry["conditions"][condition]["methods"]["own_supernet_search"]["runs"]:
            search = json.loads((fold / "own_search" / run["train_subset"] / "search.json").read_text())
            assert search["subset"] == run["train_subset"] and search["train_images"] == run["train_images"]
            assert search["evaluated"] == len(search["subnets"]) == 5
            assert search["best"]["val_acc"] == max(s["val_acc"] for s in search["subnets"])
            assert run["model"]["arch"] == search["best"]["arch"] and run["model"]["source"] == "c"
            assert run["key"].startswith(f"inherited:{search['supernet']}:")
            trained = json.loads((Path(search["supernet"]) / "supernet.json").read_text())
            assert trained["training"]["max_train_images"] == run["train_images"]
            assert run["compute"]["setup"]["supernet_training"] == search["spent"]["supernet_training"]
            searches[run["train_subset"]] = search
    assert len(searches) == 4  # two seeds x two training-set sizes, one supernet each


@pipeline
def test_compute_is_counted_per_phase_on_the_target(evaluation):
    entry = evaluation["results"]["datasets"]["c"]
    setup = entry["setup_compute"]
    for run in entry["conditions"][PRIMARY]["methods"]["own_supernet_search"]["runs"]:
        own = run["compute"]["setup"]
        assert own["supernet_training"]["image_macs"] > own["search"]["image_macs"] > 0
        assert own["supernet_training"]["seconds"] > 0
    assert setup["own_supernet_search"] == {}  # everything it spends belongs to one run's subset
    assert setup["mednns"]["query"]["seconds"] > 0 and setup["tans"]["query"]["seconds"] > 0
    assert setup["random_init"] == {} and setup["timm_scratch"] == {}
    for name, method in entry["conditions"][PRIMARY]["methods"].items():
        if method["status"] != "ok":
            continue
        for run in method["runs"]:
            spent = run["compute"]
            options = len(run.get("chosen_from") or [1])
            last = run["history"][-1]["image_macs"]
            assert (spent["finetune"]["image_macs"] == last) if options == 1 else spent["finetune"]["image_macs"] > last
            own = {k: v for k, v in spent["setup"].items() if k in ("rerank", "supernet_training", "search")}
            phases = {**setup[name], **own}
            assert spent["setup"] == phases  # the method's setup, and the run's own re-ranking or search
            setup_macs = sum(p["image_macs"] for p in phases.values())
            assert spent["total_image_macs"] == setup_macs + spent["finetune"]["image_macs"]


@pipeline
def test_equal_compute_brings_every_method_to_the_most_expensive_ones_image_macs(evaluation):
    for target, entry in evaluation["results"]["datasets"].items():
        part = entry["conditions"][COMPUTE]
        budget = part["budget"]["0"]
        equal = methods_of(evaluation["results"], target)
        spent = {name: m["runs"][0]["compute"]["total_image_macs"] for name, m in part["methods"].items()
                 if m["status"] == "ok"}
        # a baseline's restarts (equal epochs only) do not set the budget
        assert budget["image_macs"] == max(m["runs"][0]["compute"]["total_image_macs"] for name, m in equal.items()
                                           if m["status"] == "ok" and not name.endswith(":restarts2"))
        assert part["methods"][budget["method"]]["runs"][0]["epochs"] == 3
        for name, total in spent.items():
            run = part["methods"][name]["runs"][0]
            assert total <= budget["image_macs"] * 1.0001, name
            assert run["epochs"] >= 3
            if run["epochs"] < 9:  # not capped: within one more epoch of the budget
                per_epoch = 3 * run["model"]["macs"] * (run["train_images"] // 16 * 16) * len(run.get("chosen_from")
                                                                                               or [1])
                assert budget["image_macs"] - total < per_epoch, name


@pipeline
def test_statistics_pair_runs_by_dataset_and_seed(evaluation):
    results = evaluation["results"]
    stats = results["statistics"][PRIMARY]
    assert {"mednns", "mednns:auc", "mednns_topk", "mednns_topk:auc"} <= set(stats)
    for other in ("random_init", "mednns:auc"):
        acc = stats["mednns"][other]["test_acc"]
        expected = {}
        for target in ("c", "d"):
            ours = {r["seed"]: r["history"][-1]["test_acc"] for r in methods_of(results, target)["mednns"]["runs"]}
            theirs = {r["seed"]: r["history"][-1]["test_acc"] for r in methods_of(results, target)[other]["runs"]}
            expected[target] = np.mean([ours[s] - theirs[s] for s in (0, 1)])
        assert acc["datasets"] == pytest.approx(expected)
        assert acc["mean"] == pytest.approx(np.mean(list(expected.values())))
        # at equal epochs also test ACC after each earlier report epoch (3 epochs: after the first)
        assert acc["pairs"] == 4 and "p_wilcoxon" in acc and set(stats["mednns"][other]) == {
            "test_acc", "test_auc", "test_bal_acc", "test_acc@1"}
    first = {target: np.mean([a["history"][0]["test_acc"] - b["history"][0]["test_acc"] for a, b in zip(
        *(sorted(methods_of(results, target)[m]["runs"], key=lambda r: r["seed"]) for m in ("mednns", "random_init")))])
             for target in ("c", "d")}
    assert stats["mednns"]["random_init"]["test_acc@1"]["datasets"] == pytest.approx(first)
    assert stats["mednns"]["random_init"]["test_acc"]["ci"] is not None
    assert results["statistics"][COMPUTE]["mednns"]["random_init"]["test_acc"]["pairs"] == 2  # seed 0 only
    assert "test_acc@1" not in results["statistics"][COMPUTE]["mednns"]["random_init"]  # epochs differ there


@pipeline
def test_results_hold_the_fid_matrix_embeddings_overall_numbers_and_the_report(evaluation):
    results = evaluation["results"]
    fid = results["fid_matrix"]
    assert set(fid["datasets"]) == {"a", "b", "c", "d"}
    matrix = np.asarray(fid["matrix"])
    assert matrix.shape == (4, 4) and np.allclose(matrix, matrix.T) and np.allclose(np.diag(matrix), 0, atol=1e-6)
    with np.load(evaluation["stage"] / results["datasets"]["c"]["embeddings"]) as npz:
        assert str(npz["held_out"]) == "c"
        assert list(npz["dataset_names"]) == ["a", "b", "c"]
        assert npz["model_embeddings"].shape[0] == npz["model_acc"].shape[0] == npz["model_dataset"].shape[0]
        np.testing.assert_allclose(np.linalg.norm(npz["dataset_embeddings"], axis=1), 1, atol=1e-4)
        np.testing.assert_allclose(np.linalg.norm(npz["model_embeddings"], axis=1), 1, atol=1e-4)
    overall = results["overall"][PRIMARY]
    assert overall["datasets"]["mednns"] == 2 and overall["datasets"]["own_supernet_search"] == 1
    assert "imagenet" not in overall["mean_test_acc"] and "mednns:auc" in overall["mean_test_bal_acc"]
    assert 0 < results["datasets"]["c"]["info"]["majority_rate"] <= 1
    assert "equal compute" in evaluation["output"] and "95% CI" in evaluation["output"]
    report = evaluation["stage"] / "report"
    for name in ("overview.png", "sizes.png", "forest_equal_epochs_64.png", "forest_equal_compute_64.png",
                 "compute_c.png", "report.html"):
        assert (report / name).is_file(), name
    text = (report / "report.md").read_text()
    assert "## Paired statistics" in text and "## Target-side compute" in text and "## Budgets side by side" in text


@pipeline
def test_the_transfer_recipe_applies_to_every_pretrained_start_and_a_variant_can_turn_it_off(evaluation):
    methods = methods_of(evaluation["results"], "c")
    first = {name: methods[name]["runs"][0] for name in ("mednns", "mednns:plain", "random_init", "nearest_fid",
                                                           "tans", "random_pick", "own_supernet_search",
                                                           "timm_scratch")}
    assert first["mednns"]["key"] == first["mednns:plain"]["key"]  # one start, two recipes, two runs
    assert first["mednns"]["history"] != first["mednns:plain"]["history"]
    # the targets are grey: no start has a colour-blind stem, so colour_stem changes nothing, not even a run's key
    runs = [[(r["key"], r["history"]) for r in methods[name]["runs"]] for name in ("mednns:colour", "mednns")]
    assert runs[0] == runs[1]  # the same run files: their histories, timings included, are equal
    trained = first["mednns"]["train_images"]
    val = evaluation["results"]["datasets"]["c"]["info"]["val"]
    for name, run in first.items():
        macs, epoch1 = run["model"]["macs"], run["history"][0]["image_macs"]
        recipe = name not in ("random_init", "timm_scratch", "mednns:plain")  # pretrained, recipe on
        # BN recalibration and the head-only epoch cost one forward pass per image each; a full epoch three
        passes = 2 if recipe else 3
        assert epoch1 == macs * (passes * (trained // 16 * 16) + val), name
        assert "fit_head" not in run, name
    # the default recipe (BN re-estimated, the head solved with a cross-validated penalty): its penalty is recorded
    solved = methods["mednns:solved"]["runs"][0]
    assert solved["key"] == first["mednns"]["key"] and solved["history"] != first["mednns"]["history"]
    assert solved["fit_head"]["penalty"] in [5e-4 * 10 ** k for k in range(5)]
    # BN recalibration and the probe's features: one forward pass per image each, then three full epochs
    assert solved["history"][0]["image_macs"] == solved["model"]["macs"] * (5 * (trained // 16 * 16) + val)


@pipeline
def test_ranking_quality_fine_tunes_a_candidate_sample_and_correlates_every_ranking(evaluation):
    results = evaluation["results"]
    expected = {"meta-space", "meta-space:auc", "knn", "ridge", "meta-space+knn", "meta-space+ridge",
                "source val ACC", "fine-tuned once"}
    assert set(results["ranking"]) == expected
    for facts in results["ranking"].values():  # over 2 targets: a mean and, with 2 groups, an interval around it
        low, high = facts["top1_gain"]["ci"]
        assert low <= facts["top1_gain"]["mean"] <= high
    for target in ("c", "d"):
        entry = results["datasets"][target]["ranking"]
        # the evaluation's seeds 0 and 1, then seed 2 for the sample alone: a truth less noisy than theirs
        assert entry["condition"] == PRIMARY and entry["seeds"] == [0, 1, 2] and len(entry["candidates"]) == 3
        assert all(c["dataset"] != target for c in entry["candidates"])
        for c in entry["candidates"]:  # the truth: the mean over the ranking's seeds, each seed's run kept
            assert len(c["test_accs"]) == 3 and c["test_acc"] == pytest.approx(np.mean(c["test_accs"]))
        for name, facts in entry["rankings"].items():
            if name == "fine-tuned once":
                continue  # its own truth, tested above
            truth = [c["test_acc"] for c in entry["candidates"]]
            values = [c["values"][name] for c in entry["candidates"]]
            assert facts["top1_regret"] == pytest.approx(max(truth) - truth[int(np.argmax(values))])
            assert facts["kendall"] is None or -1 <= facts["kendall"] <= 1  # None: a constant ranking or truth
        further = results["datasets"][target]["ranking_at"][SMALL]  # the same sample under the smaller size
        assert further["condition"] == SMALL and further["seeds"] == [0, 1, 2]
        assert [c["zoo_id"] for c in further["candidates"]] == [c["zoo_id"] for c in entry["candidates"]]
        assert further["candidates"] != entry["candidates"]  # fine-tuned again: other accuracies and scores
    assert set(results["ranking_at"]) == {SMALL} and set(results["ranking_at"][SMALL]) == expected
    report = (evaluation["stage"] / "report" / "report.md").read_text()
    assert "## Ranking quality" in report and "meta-space+knn" in report and "top-1 vs a random candidate" in report
    assert "## Ranking quality (equal epochs (3), 32 training images)" in report
    assert report.count("Do the candidates differ by more than fine-tuning's noise?") == 2  # per condition


@pipeline
def test_an_interrupted_evaluation_resumes_from_its_saved_runs(evaluation, monkeypatch):
    without_imagenet_weights(monkeypatch)
    stage = evaluation["stage"]
    runs = sorted((stage / "c" / "runs").glob("*.json"))
    before = {p: p.stat().st_mtime_ns for p in runs}
    state = json.loads((stage / "stage.json").read_text())
    state["status"] = "running"  # as if killed before the end
    (stage / "stage.json").write_text(json.dumps(state))
    (stage / "results.json").unlink()
    result = invoke("evaluate", evaluation["config"])
    assert result.exit_code == 0, result.output
    assert {p: p.stat().st_mtime_ns for p in runs} == before  # nothing was trained again
    again = json.loads((stage / "results.json").read_text())
    assert again["overall"] == evaluation["results"]["overall"]


@pipeline
def test_adding_a_seed_trains_only_the_new_seeds_runs(evaluation, monkeypatch):
    without_imagenet_weights(monkeypatch)
    stage = evaluation["stage"]
    before = {p: p.stat().st_mtime_ns for p in stage.glob("*/runs/*.json")}
    meta = {p: p.stat().st_mtime_ns for p in stage.glob("*/meta_spaces/*/metaspace.json")}
    config = yaml.safe_load(evaluation["config"].read_text())
    config["stages"][-1]["args"] = {**config["stages"][-1]["args"], "seeds": [0, 1, 2], "report": False}
    path = evaluation["root"] / "three_seeds.yaml"
    path.write_text(yaml.safe_dump(config))
    result = invoke("evaluate", path)
    assert result.exit_code == 0, result.output
    after = {p: p.stat().st_mtime_ns for p in stage.glob("*/runs/*.json")}
    assert {p: after[p] for p in before} == before  # the stage kept its runs and trained none of them again
    new = set(after) - set(before)
    assert new and all(p.name.endswith("-s2.json") for p in new)
    assert {p: p.stat().st_mtime_ns for p in meta} == meta  # and fitted no meta-space again
    results = json.loads((stage / "results.json").read_text())
    assert [r["seed"] for r in methods_of(results, "c")["mednns"]["runs"]] == [0, 1, 2]
    assert [r["seed"] for r in methods_of(results, "c", COMPUTE)["mednns"]["runs"]] == [0]


def test_the_stage_refuses_bad_arguments_before_any_work():
    from mednns.manager import get_plugin_manager

    manager = get_plugin_manager()
    with pytest.raises(UsageError, match="held_out"):
        manager.create("stages", "evaluate", meta_space={"held_out": ["x"]})
    with pytest.raises(UsageError, match="seeds"):
        manager.create("stages", "evaluate", seeds=[1, 1])
    with pytest.raises(UsageError):
        manager.create("stages", "evaluate", methods=["magic"])
    with pytest.raises(UsageError, match=r"variants.solved.finetune: unknown key\(s\) 'fit_hed'") as error:
        manager.create("stages", "evaluate", variants={"solved": {"finetune": {"fit_hed": True}}})
    assert "did you mean 'fit_head'" in error.value.hint
    stage = manager.create("stages", "evaluate", methods=["random_pick"])
    assert stage.settings.methods == ["mednns", "random_pick"]


def test_evaluate_adds_the_stage_when_the_config_has_none_and_says_what_is_missing(tmp_path):
    npz = write_tiny_npz(tmp_path / "a.npz")
    config = {"name": "bare", "device": "cpu", "output_dir": str(tmp_path),
              "datasets": [{"name": "npz", "args": {"path": str(npz), "name": "a"}}],
              "stages": [{"name": "dataset_summary", "args": {}}]}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = invoke("evaluate", path)
    assert result.exit_code == 2, result.output
    assert "evaluate: no zoo at" in result.output and "build_zoo" in result.output
    assert (tmp_path / "bare" / "stages" / "dataset_summary").is_dir()  # the config's own stages ran first


@pipeline
def test_re_ranking_reads_each_runs_own_fine_tuning_subset_and_counts_as_its_setup(evaluation):
    results, stage = evaluation["results"], evaluation["stage"]
    query = json.loads((stage / "c" / "queries" / "knn.json").read_text())
    top = [r["zoo_id"] for r in query["results"][:3]]  # the meta-space's candidates
    for condition in (PRIMARY, SMALL, COMPUTE):
        for run in methods_of(results, "c", condition)["mednns:knn"]["runs"]:
            saved = json.loads((stage / "c" / "queries" / f"knn@{run['train_subset']}.json").read_text())
            assert sorted(saved["order"]) == sorted(top)  # the same candidates, in the re-ranked order
            assert saved["made_with"]["candidates"] == sorted(top)  # what a rerun checks before reusing it
            assert saved["made_with"]["settings"]["score"]["name"] == "knn"
            first = next(r for r in saved["results"] if r["rank"] == 1)
            assert run["model"]["arch"] == first["arch"] and run["model"]["source"] == first["dataset"]
            facts = saved["rerank"]
            assert facts["images"] == min(24, run["train_images"])  # labelled images of this run's subset only
            assert run["compute"]["setup"]["rerank"] == {"seconds": facts["seconds"],
                                                         "image_macs": facts["image_macs"]}
            assert run["compute"]["total_image_macs"] == (run["compute"]["setup"]["query"]["image_macs"]
                                                          + facts["image_macs"]
                                                          + run["compute"]["finetune"]["image_macs"])
    plain = methods_of(results, "c")["mednns"]["runs"][0]["compute"]["setup"]
    assert "rerank" not in plain


@pipeline
def test_a_random_pool_re_ranks_zoo_models_drawn_per_seed_without_the_meta_space(evaluation):
    import random

    from mednns.evaluation.leave_one_out import slug
    from mednns.layout import zoo_store
    from mednns.seeding import derive_seed
    from mednns.zoo.store import ZooStore

    results, stage = evaluation["results"], evaluation["stage"]
    with ZooStore(zoo_store(evaluation["root"] / "run"), readonly=True) as store:
        others = [r["id"] for r in store.models(["id", "dataset"]) if r["dataset"] != "c"]
    assert not (stage / "c" / "queries" / "knn_alone.json").exists()  # no query was made
    pools = {}
    for condition in (PRIMARY, SMALL, COMPUTE):
        for run in methods_of(results, "c", condition)["mednns:knn_alone"]["runs"]:
            drawn = random.Random(derive_seed(run["seed"], "rerank_pool", "c")).sample(others, 3)
            # named by the subset and the pool: seeds that train on the same images still draw their own
            saved = json.loads((stage / "c" / "queries" / f"knn_alone@{run['train_subset']}+{slug(sorted(drawn))}.json"
                                ).read_text())
            assert sorted(saved["order"]) == sorted(drawn)  # the seed's random draw from other datasets' rows
            assert saved["rerank"]["combine"] == "score" and saved["rerank"]["candidates"] == 3
            scores = [r["transfer_score"] for r in saved["results"]]
            assert scores == sorted(scores, reverse=True)  # the score alone orders them
            first = saved["results"][0]
            assert run["model"]["arch"] == first["arch"] and run["model"]["source"] == first["dataset"]
            assert set(run["compute"]["setup"]) == {"rerank"}  # no meta-space query is charged
            pools[run["seed"]] = sorted(drawn)
    assert pools[0] != pools[1]  # each seed draws its own pool
    assert methods_of(results, "c")["mednns_topk:knn_alone"]["status"] == "skipped"  # top_k 1: as top-1


def test_fold_meta_space_arguments_are_checked_with_their_key_paths_before_any_work():
    from types import SimpleNamespace

    from mednns.errors import ConfigError
    from mednns.manager import get_plugin_manager

    manager = get_plugin_manager()
    for args, path in (({"variants": {"slow": {"meta_space": {"steps": "many"}}}},
                        "evaluate.variants.slow.meta_space.steps"),
                       ({"meta_space": {"losses": [{"name": "performance", "args": {"colour": 1}}]}},
                        "evaluate.meta_space.losses[0].args.colour")):
        stage = manager.create("stages", "evaluate", **args)
        with pytest.raises(ConfigError) as info:
            stage.run(SimpleNamespace(manager=manager))  # fails before it touches the run's files
        assert [issue.path for issue in info.value.issues] == [path]


@pipeline
def test_mednns_search_starts_the_targets_supernet_from_the_top_1_source(evaluation):
    fold, entry = evaluation["stage"] / "c", evaluation["results"]["datasets"]["c"]
    top1 = json.loads((fold / "queries" / "default.json").read_text())["results"][0]
    runs = entry["conditions"][PRIMARY]["methods"]["mednns_search"]["runs"]
    own = {r["train_subset"]: r for r in entry["conditions"][PRIMARY]["methods"]["own_supernet_search"]["runs"]}
    for run in runs:
        [folder] = list((fold / "warm_search").glob(f"{run['train_subset']}-*"))
        search = json.loads((folder / "search.json").read_text())
        assert search["init"] == top1["supernet"] and search["source"] == top1["dataset"]
        assert search["copied"] > 0 and all("classifier" in n or "head" in n or "fc" in n for n in search["kept_names"])
        assert search["train_images"] == run["train_images"] and run["model"]["source"] == "c"
        setup = run["compute"]["setup"]
        assert set(setup) == {"query", "supernet_training", "search"}
        assert setup["query"] == entry["setup_compute"]["mednns"]["query"]
        twin = own[run["train_subset"]]  # the search from scratch: same subset, same training budget
        assert twin["compute"]["setup"]["supernet_training"]["image_macs"] == setup["supernet_training"]["image_macs"]


def test_warm_start_copies_what_fits_converts_the_stem_and_keeps_the_head():
    from mednns.evaluation.own_search import warm_start
    from mednns.testing import tiny_space

    torch.manual_seed(0)
    source = tiny_space(in_channels=3, num_classes=5)
    target = tiny_space(in_channels=1, num_classes=2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    done = warm_start(target, source.state_dict())
    state, given = target.state_dict(), source.state_dict()
    assert done["copied"] and len(done["converted"]) == 1 and done["kept"]
    for name in done["copied"]:
        assert torch.equal(state[name], given[name])
    [stem] = done["converted"]
    assert torch.allclose(state[stem], given[stem].sum(1, keepdim=True))
    for name in done["kept"]:  # the classifier of another number of classes stays as initialized
        assert torch.equal(state[name], before[name]) and state[name].shape != given[name].shape
