"""Leave-one-dataset-out evaluation: the numbers (mean ± std, gains, epochs to match) and the whole
``mednns evaluate`` protocol on tiny data (supernets → zoo → per-fold meta-spaces → every method)."""

from __future__ import annotations

import json
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
from supernet_helpers import TINY_RESNET, write_tiny_npz


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


def test_macs_are_counted_from_the_network():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1, bias=False), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 8 * 8, 2, bias=False))
    assert count_macs(model, (1, 8, 8)) == 8 * 8 * 4 * 9 + 4 * 64 * 2


def test_unloadable_imagenet_weights_give_a_usage_error_with_the_reason(monkeypatch):
    import timm

    def offline(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'\nmore lines")
        return torch.nn.Linear(1, 1)

    monkeypatch.setattr(timm, "create_model", offline)
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
EVALUATE = {"datasets": ["c", "d"], "seeds": [0, 1], "epochs": 3, "batch_size": 16, "top_k": 2, "search_budget": 5,
            "meta_space": META, "report": False, "progress": False}


def invoke(*args: Any):
    return CliRunner().invoke(cli, [str(a) for a in args], env={"COLUMNS": "300"})


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory) -> dict[str, Any]:
    """Three zoo datasets a, b, c and one dataset d without a supernet; c and d are the targets."""
    import timm

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
    original = timm.create_model

    def offline(name, pretrained=False, **kwargs):  # no internet in tests: the ImageNet baseline is skipped
        if pretrained:
            raise OSError("no internet here")
        return original(name, pretrained=False, **kwargs)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(timm, "create_model", offline)
            result = invoke("evaluate", path)
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    stage = root / "run" / "stages" / "evaluate"
    return {"root": root, "config": path, "stage": stage, "output": result.output,
            "results": json.loads((stage / "results.json").read_text())}


pipeline = pytest.mark.slow


@pipeline
def test_every_method_runs_for_every_seed_with_the_same_budget(evaluation):
    results = evaluation["results"]
    assert results["format"] == "mednns-evaluation/1"
    assert list(results["datasets"]) == ["c", "d"]
    for target, entry in results["datasets"].items():
        for name, method in entry["methods"].items():
            if name == "imagenet":
                assert method["status"] == "skipped" and "no internet here" in method["reason"]
                continue
            if name == "own_supernet_search" and target == "d":
                assert method["status"] == "skipped" and "no supernet trained on d" in method["reason"]
                continue
            assert method["status"] == "ok", (target, name)
            assert [r["seed"] for r in method["runs"]] == [0, 1]
            assert all(len(r["history"]) == 3 for r in method["runs"])
            assert set(method["summary"]["test_acc"]) == {"1", "3"}
        assert set(entry["comparison"]) == {m for m, v in entry["methods"].items() if v["status"] == "ok"} - {"mednns"}


@pipeline
def test_the_target_is_held_out_of_the_meta_space_and_of_the_candidates(evaluation):
    fold = evaluation["stage"] / "c"
    meta = json.loads((fold / "meta_space" / "metaspace.json").read_text())
    assert meta["held_out"] == ["c"] and "c" not in meta["train_datasets"]
    report = json.loads((fold / "meta_space" / "report.json").read_text())
    assert "c" not in report["fid"]["datasets"]
    query = json.loads((fold / "query.json").read_text())
    assert query["results"] and all(r["dataset"] != "c" for r in query["results"])
    methods = evaluation["results"]["datasets"]["c"]["methods"]
    for name in ("mednns", "tans", "nearest_fid", "random_pick"):
        assert all(r["model"]["source"] != "c" for r in methods[name]["runs"]), name
    assert all(r["model"]["source"] == "c" for r in methods["own_supernet_search"]["runs"])
    tans = json.loads((fold / "tans" / "metaspace.json").read_text())
    assert [s["name"] for s in tans["losses"]] == ["contrastive", "performance"]


@pipeline
def test_methods_start_from_the_networks_they_promise(evaluation):
    entry = evaluation["results"]["datasets"]["c"]
    methods = entry["methods"]
    top1 = methods["mednns"]["runs"][0]["model"]
    assert top1["weights"] == "inherited"
    query = json.loads((evaluation["stage"] / "c" / "query.json").read_text())
    assert top1["arch_hash"] and top1["source"] == query["results"][0]["dataset"]
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
    search = entry["own_supernet_search"]
    assert search["evaluated"] == 5 and 0 <= search["best_val_acc"] <= 1


@pipeline
def test_results_hold_the_fid_matrix_embeddings_and_overall_numbers(evaluation):
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
    overall = results["overall"]
    assert overall["datasets"]["mednns"] == 2 and overall["datasets"]["own_supernet_search"] == 1
    assert "imagenet" not in overall["mean_test_acc"]
    assert "overall" in evaluation["output"] or "mednns" in evaluation["output"]


@pipeline
def test_an_interrupted_evaluation_resumes_from_its_saved_runs(evaluation, monkeypatch):
    import timm

    original = timm.create_model
    monkeypatch.setattr(timm, "create_model", lambda name, pretrained=False, **kw: (
        (_ for _ in ()).throw(OSError("no internet here")) if pretrained else original(name, **kw)))
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


def test_the_stage_refuses_bad_arguments_before_any_work():
    from mednns.manager import get_plugin_manager

    manager = get_plugin_manager()
    with pytest.raises(UsageError, match="held_out"):
        manager.create("stages", "evaluate", meta_space={"held_out": ["x"]})
    with pytest.raises(UsageError, match="seeds"):
        manager.create("stages", "evaluate", seeds=[1, 1])
    with pytest.raises(UsageError):
        manager.create("stages", "evaluate", methods=["magic"])
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
