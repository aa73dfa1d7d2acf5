"""The whole method on tiny data: supernets → zoo → meta-space (one dataset held out) → query →
export → load_model → fine-tune, through ``mednns run`` and the ``query`` / ``finetune`` commands."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

import mednns
from mednns.cli import cli
from mednns.metaspace.train import load_meta_space
from supernet_helpers import TINY_RESNET, write_tiny_npz

TINY_STAGE = {"full_epochs": 1, "shrink_epochs": 1, "batch_size": 16, "num_random": 1, "calibration_images": 32,
              "calibration_batch_size": 16, "final_samples": 3, "progress": False}
ZOO = {"samples": 12, "anchors": 2, "calibration_images": 32, "calibration_batch_size": 16, "progress": False}
META = {"held_out": ["c"], "images": 64, "steps": 40, "eval_every": 20, "images_per_set": 32,
        "models_per_dataset": 8, "embed_dim": 16, "hidden": 32, "progress": False,
        "model_encoder": {"name": "arch", "args": {"embed_dim": 16, "hidden": 32, "source": True}}}

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


def invoke(*args: Any):
    return CliRunner().invoke(cli, [str(a) for a in args], env={"COLUMNS": "300"})


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("pipeline")
    datasets = []
    for seed, name in enumerate("abc"):
        npz = write_tiny_npz(root / f"{name}.npz", seed=seed, n_classes=2 + seed % 2)
        datasets.append({"name": "npz", "args": {"path": str(npz), "name": name}})
    config = {"name": "run", "seed": 0, "device": "cpu", "output_dir": str(root), "datasets": datasets,
              "stages": [{"name": "train_supernet", "args": {"space": {"name": "ofa_resnet", "args": TINY_RESNET},
                                                             **TINY_STAGE}},
                         {"name": "build_zoo", "args": ZOO},
                         {"name": "fit_meta_space", "args": META},
                         {"name": "query", "args": {"top_k": 5}},
                         {"name": "finetune", "args": {"epochs": 2, "batch_size": 16, "progress": False}}]}
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = invoke("run", path)
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    return {"root": root, "run": root / "run", "output": result.output}


def test_meta_space_trains_without_the_held_out_dataset_and_reports_correlations(pipeline):
    stage = pipeline["run"] / "stages" / "fit_meta_space"
    report = json.loads((stage / "report.json").read_text())
    assert set(report["datasets"]) == {"a", "b", "c"}
    assert report["datasets"]["c"]["kind"] == "held_out"
    assert {report["datasets"][n]["kind"] for n in "ab"} == {"val_models"}
    for entry in report["datasets"].values():
        assert set(entry["predicted"]) == {"spearman", "kendall", "top1_regret"}
        assert -1 <= entry["predicted"]["spearman"] <= 1 or np.isnan(entry["predicted"]["spearman"])
        assert entry["predicted"]["top1_regret"] >= 0
    meta = json.loads((stage / "metaspace.json").read_text())
    assert meta["train_datasets"] == ["a", "b"] and meta["held_out"] == ["c"]
    assert set(report["fid"]["datasets"]) == {"a", "b"}  # the held-out dataset is not a FID target
    trained = load_meta_space(stage, with_model_encoder=True)
    assert trained.embeddings.shape == (len(trained.table), 16)
    with torch.no_grad():  # the saved embeddings are the network's
        again = trained.model.embed_models(torch.arange(len(trained.table))).numpy()
    np.testing.assert_allclose(again, trained.embeddings, atol=1e-5)


def test_query_ranks_by_prediction_and_exports_a_loadable_model_with_a_new_head(pipeline):
    stage = pipeline["run"] / "stages" / "query"
    result = json.loads((stage / "c.json").read_text())
    rows = result["results"]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["predicted"] for r in rows] == sorted((r["predicted"] for r in rows), reverse=True)
    assert result["excluded_sources"] == ["c"] and {r["dataset"] for r in rows} <= {"a", "b"}  # held out of everything
    model = mednns.load_model(stage / "c")
    assert isinstance(model, torch.nn.Module) and not model.training
    exported = json.loads((stage / "c" / "model.json").read_text())
    assert exported["num_classes"] == 2 and exported["target"]["dataset"] == "c"
    assert exported["source"]["dataset"] == rows[0]["dataset"] and exported["arch"] == rows[0]["arch"]
    with torch.no_grad():
        assert model(torch.randn(4, 1, 12, 12)).shape == (4, 2)


def test_finetune_writes_metrics_per_epoch_and_a_best_checkpoint(pipeline):
    folder = pipeline["run"] / "stages" / "finetune" / "c"
    with open(folder / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"val_acc", "test_acc", "val_auc", "test_auc", "train_loss"} <= set(rows[0])
    final = json.loads((folder / "final.json").read_text())
    assert final["best"]["val_acc"] == max(float(r["val_acc"]) for r in rows)
    model = mednns.load_model(folder / "best")
    assert json.loads((folder / "best" / "model.json").read_text())["finetuned"]["epoch"] == final["best_epoch"]
    with torch.no_grad():
        assert model(torch.randn(2, 1, 12, 12)).shape == (2, 2)


def test_query_command_filters_by_hardware_limits(pipeline, tmp_path):
    run = pipeline["run"]
    everything = json.loads(invoke("query", run, "--dataset", "c", "--top-k", 100, "--json").output)
    params = sorted(r["params"] for r in everything["results"])
    limit = params[len(params) // 2]
    limited = json.loads(invoke("query", run, "--dataset", "c", "--top-k", 100, "--max-params", limit,
                                "--json").output)
    assert limited["results"] and all(r["params"] <= limit for r in limited["results"])
    assert limited["candidates"] < everything["candidates"]
    slow = invoke("query", run, "--dataset", "c", "--top-k", 2, "--max-latency-ms", 1e6, "--json",
                  "--export", tmp_path / "export")
    assert slow.exit_code == 0, slow.output
    data = json.loads(slow.output[slow.output.index("{"): slow.output.rindex("}") + 1])
    assert all("latency_ms" in r and r["latency_ms"] > 0 for r in data["results"])
    assert (tmp_path / "export" / "model.safetensors").is_file()
    none = invoke("query", run, "--dataset", "c", "--max-latency-ms", 1e-9, "--export", tmp_path / "none")
    assert none.exit_code == 2 and "relax the limits" in none.output


def test_finetune_command_on_an_export(pipeline, tmp_path):
    export = pipeline["run"] / "stages" / "query" / "c"
    npz = pipeline["root"] / "c.npz"
    result = invoke("finetune", export, "--dataset", npz, "--epochs", 1, "--batch-size", 16, "--out", tmp_path / "ft",
                    "--no-progress")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ft" / "best" / "model.safetensors").is_file()
    penalty = json.loads((tmp_path / "ft" / "final.json").read_text())["fit_head"]["penalty"]  # the default recipe
    assert f"new head solved on the frozen features before the first step (penalty {penalty:g})" in result.output
    plain = invoke("finetune", export, "--dataset", npz, "--epochs", 1, "--batch-size", 16, "--out", tmp_path / "p",
                   "--no-progress", "--no-recalibrate-bn", "--no-fit-head")
    assert plain.exit_code == 0 and "new head solved" not in plain.output
    assert "fit_head" not in json.loads((tmp_path / "p" / "final.json").read_text())
    wrong = invoke("finetune", export, "--dataset", pipeline["root"] / "b.npz", "--epochs", 1, "--out", tmp_path / "x")
    assert wrong.exit_code == 2 and "exported for 2 classes" in wrong.output


def test_rerank_orders_candidates_by_a_transfer_score_on_training_images_only(pipeline):
    from mednns.metaspace.retrieval import query
    from mednns.transfer.reranking import RerankSettings, combined_order
    from supernet_helpers import CountingDataset

    target = CountingDataset(mednns.create("datasets", "npz", path=str(pipeline["root"] / "c.npz"), name="c"))
    meta = pipeline["run"] / "stages" / "fit_meta_space"
    plain = query(meta, target, top_k=4)
    settings = RerankSettings({"name": "ridge", "args": {"folds": 3}}, candidates=4, images=60, calibration_images=32,
                              combine="rank_sum")
    result = query(meta, target, top_k=3, rerank=settings)
    assert set(target.accesses) == {"train"}  # validation and test are never read
    assert result["meta_space_order"] == [r["zoo_id"] for r in plain["results"]]
    assert [r["rank"] for r in result["results"]] == [1, 2, 3]
    facts = result["rerank"]
    assert facts["candidates"] == 4 and facts["images"] == 60 and facts["candidates_per_second"] > 0
    assert facts["image_macs"] == sum(r["macs"] for r in plain["results"]) * (60 + 32)
    scores = {r["zoo_id"]: r["transfer_score"] for r in result["results"]}
    assert all(0 <= s <= 1 for s in scores.values())  # ridge: a cross-validated accuracy
    assert {r["zoo_id"]: r["meta_rank"] for r in result["results"]} == {
        r["zoo_id"]: r["rank"] for r in plain["results"] if r["zoo_id"] in scores}
    again = query(meta, target, top_k=4, rerank=settings)  # the order follows the rank-sum rule
    expected = combined_order([r["meta_rank"] for r in sorted(again["results"], key=lambda r: r["meta_rank"])],
                              [r["transfer_score"] for r in sorted(again["results"], key=lambda r: r["meta_rank"])],
                              "rank_sum")
    assert [r["meta_rank"] for r in again["results"]] == [i + 1 for i in expected]


def test_query_command_reranks_and_shows_both_orders(pipeline):
    run = pipeline["run"]
    result = invoke("query", run, "--dataset", "c", "--top-k", 2, "--rerank", "knn", "--candidates", 3,
                    "--rerank-images", 40)
    assert result.exit_code == 0, result.output
    assert "meta-space rank" in result.output and "transfer score" in result.output and "candidates/s" in result.output
    assert "re-ranked by knn (score)" in result.output  # the score's order unless --combine says otherwise
    guarded = invoke("query", run, "--dataset", "c", "--top-k", 2, "--rerank", "knn", "--candidates", 3,
                     "--rerank-images", 40, "--combine", "guarded")
    assert guarded.exit_code == 0, guarded.output
    assert "re-ranked by knn (guarded)" in guarded.output
    assert "meta-space's first" in " ".join(guarded.output.split())  # the guard's verdict, whatever it is
    unknown = invoke("query", run, "--dataset", "c", "--rerank", "magic")
    assert unknown.exit_code == 2 and "magic" in unknown.output


def test_combined_order_by_score_or_by_rank_sum():
    from mednns.transfer.reranking import combined_order

    meta_ranks, scores = [1, 2, 3, 4], [0.2, 0.9, 0.5, 0.1]
    assert combined_order(meta_ranks, scores, "score") == [1, 2, 0, 3]
    # rank sums: 1+3, 2+1, 3+2, 4+4 -> ties between the first two go to the better score
    assert combined_order(meta_ranks, scores, "rank_sum") == [1, 0, 2, 3]


def test_the_source_gate_leaves_out_supernets_that_learned_nothing(pipeline):
    from mednns.errors import UsageError
    from mednns.metaspace.retrieval import query
    from mednns.zoo import ZooStore, source_quality

    run = pipeline["run"]
    zoo = run / "stages" / "build_zoo" / "zoo.sqlite"
    meta = run / "stages" / "fit_meta_space"
    target = mednns.create("datasets", "npz", path=str(pipeline["root"] / "c.npz"), name="c")
    with ZooStore(zoo, readonly=True) as store:
        quality = source_quality(store)
    assert all(q["val_majority_rate"] is not None and isinstance(q["learned"], bool) for q in quality.values())
    [(weak_id, weak)] = [(i, q) for i, q in quality.items() if q["dataset"] == "a"]
    with ZooStore(zoo) as store:
        store.update_supernet_metadata(weak_id, val_majority_rate=1.0)  # as if a never beat its majority rate
    try:
        plain = query(meta, target, top_k=100)
        gated = query(meta, target, top_k=100, source_gate=True)
        assert {r["dataset"] for r in plain["results"]} == {"a", "b"}
        assert {r["dataset"] for r in gated["results"]} == {"b"}
        assert [q["dataset"] for q in gated["gated_sources"]] == ["a"]
        stats = invoke("zoo", "stats", zoo)
        assert "✗" in stats.output and "learned nothing" in stats.output
        shown = invoke("query", run, "--dataset", "c", "--top-k", 2, "--source-gate")
        assert shown.exit_code == 0 and "left out the models of a" in shown.output
        with ZooStore(zoo) as store:
            store.update_supernet_metadata(weak_id, val_majority_rate=None)  # a zoo built before the fact existed
        with pytest.raises(UsageError, match="majority-class rate of a"):
            query(meta, target, source_gate=True)
    finally:
        with ZooStore(zoo) as store:
            store.update_supernet_metadata(weak_id, val_majority_rate=weak["val_majority_rate"])


def test_one_architecture_from_two_supernets_gets_two_embeddings_and_two_predictions(pipeline):
    """Weights-aware model embeddings: every supernet shares its largest and smallest subnets and
    anchors, and the query must be able to tell whose weights it hands over."""
    trained = load_meta_space(pipeline["run"] / "stages" / "fit_meta_space", with_model_encoder=True)
    table = trained.table
    by_arch: dict[str, dict[str, int]] = {}
    for i, (arch, dataset) in enumerate(zip(table.arch, table.dataset)):
        by_arch.setdefault(arch, {})[dataset] = i
    shared = [rows for rows in by_arch.values() if {"a", "b"} <= set(rows)]
    assert shared, "the supernets share at least their largest subnet"
    pairs = torch.tensor([[rows["a"], rows["b"]] for rows in shared])
    embeddings = torch.as_tensor(trained.embeddings)
    assert not torch.allclose(embeddings[pairs[:, 0]], embeddings[pairs[:, 1]])
    with np.load(pipeline["run"] / "stages" / "fit_meta_space" / "dataset_features.npz") as saved:
        target = torch.as_tensor(saved["c"])
    with torch.no_grad():
        predicted, _ = trained.model.pair(trained.model.embed_datasets([target]),
                                          embeddings[pairs.reshape(-1)].unsqueeze(0))
    predicted = predicted.reshape(-1, 2)
    assert (predicted[:, 0] != predicted[:, 1]).all()


def test_the_lift_target_makes_zoo_accuracies_comparable_across_majority_rates(pipeline):
    from mednns.errors import UsageError
    from mednns.metaspace.table import lift, load_table
    from mednns.zoo import ZooStore

    assert lift(0.9, 0.5) == pytest.approx(0.8) and lift(0.4, 0.5) == 0.0 and lift(1.0, 1.0) == 0.0
    zoo = pipeline["run"] / "stages" / "build_zoo" / "zoo.sqlite"
    with ZooStore(zoo, readonly=True) as store:
        acc, lifted = load_table(store, "val_acc"), load_table(store, "val_lift")
        majority = {s["dataset"]: s["metadata"]["val_majority_rate"] for s in store.supernets()}
        [supernet_id] = [s["id"] for s in store.supernets() if s["dataset"] == "a"]
    np.testing.assert_array_equal(acc.ids, lifted.ids)
    expected = [lift(float(a), majority[d]) for a, d in zip(acc.target, acc.dataset)]
    np.testing.assert_allclose(lifted.target, expected, atol=1e-6)
    assert ((lifted.target >= 0) & (lifted.target <= 1)).all()
    with ZooStore(zoo) as store:
        store.update_supernet_metadata(supernet_id, val_majority_rate=None)
    try:
        with ZooStore(zoo, readonly=True) as store, pytest.raises(UsageError, match="majority-class rate of a"):
            load_table(store, "val_lift")
    finally:
        with ZooStore(zoo) as store:
            store.update_supernet_metadata(supernet_id, val_majority_rate=majority["a"])


def test_the_stage_and_the_evaluation_build_the_same_meta_space_settings():
    from dataclasses import replace

    from mednns.errors import UsageError
    from mednns.manager import get_plugin_manager
    from mednns.metaspace.settings import FitConfig, MetaSpaceSettings

    args = {"held_out": ["c"], "target": "val_lift", "losses": [{"name": "rank"}], "loss_weights": {"rank": 2.0},
            "steps": 40, "images": 64, "model_encoder": {"name": "arch", "args": {"source": True}}}
    stage = get_plugin_manager().create("stages", "fit_meta_space", **args)
    settings = MetaSpaceSettings.from_args(**args)
    assert stage.settings == settings
    assert settings.held_out == ("c",) and settings.fit == replace(FitConfig(), steps=40)
    assert settings.losses == ({"name": "rank", "args": {}},) and settings.weight("rank") == 2.0
    assert settings.dataset_encoder == {"name": "image_stats", "args": {}}
    assert MetaSpaceSettings() == MetaSpaceSettings.from_args()  # one set of defaults
    with pytest.raises(UsageError, match="loss_weights names fid"):
        MetaSpaceSettings.from_args(losses=[{"name": "rank"}], loss_weights={"fid": 1.0})
    with pytest.raises(UsageError, match="unexpected meta-space argument"):
        MetaSpaceSettings.from_args(stepz=3)


def test_transfer_pairs_fine_tune_models_of_other_datasets_and_join_the_meta_space(pipeline, tmp_path, monkeypatch):
    from mednns.config import load_config
    from mednns.manager import get_plugin_manager
    from mednns.metaspace.settings import MetaSpaceSettings
    from mednns.metaspace.table import load_table
    from mednns.metaspace.train import train_meta_space
    from mednns.metaspace.transfers import TransferSettings, measure_pairs, sample_pairs
    from mednns.runs import prepare_run
    from mednns.zoo import ZooStore

    monkeypatch.setenv("MEDNNS_CACHE_DIR", str(tmp_path / "cache"))
    with ZooStore(pipeline["run"] / "stages" / "build_zoo" / "zoo.sqlite", readonly=True) as store:
        table = load_table(store, "val_acc")
    settings = TransferSettings(models=3, images=32, epochs=1, finetune={})
    pairs = sample_pairs(table, ["a", "b"], settings)
    assert sample_pairs(table, ["b"], settings) == [p for p in pairs if p[0] == "b"]  # drawn per dataset alone
    assert len(pairs) == 6 and all(table.dataset[row] != d for d, row in pairs)

    manager = get_plugin_manager()
    config = load_config(manager, pipeline["run"] / "config.yaml")
    config.stages = []
    run = prepare_run(manager, config, directory=pipeline["run"])
    args = {**META, "transfers": {"models": 3, "images": 32, "epochs": 1, "finetune": {}}}
    first = train_meta_space(run, MetaSpaceSettings.from_args(**args), tmp_path / "one")
    report = json.loads((tmp_path / "one" / "report.json").read_text())["transfers"]
    measured = report["measured"]
    assert report["measured_now"] == report["pairs"] == len(measured) > 0
    assert {m["dataset"] for m in measured} <= {"a", "b"} and all(m["source"] not in (m["dataset"], "c")
                                                                   for m in measured)  # c is held out
    assert all(0 <= m["val_acc"] <= 1 for m in measured)
    again = train_meta_space(run, MetaSpaceSettings.from_args(**args), tmp_path / "two")
    assert json.loads((tmp_path / "two" / "report.json").read_text())["transfers"]["measured_now"] == 0  # cached
    assert again["objective"] == pytest.approx(first["objective"])
    assert json.loads((tmp_path / "one" / "metaspace.json").read_text())["transfers"]["models"] == 3
    # repeats: the first fine-tuning of each pair is the one measured above (cached), one more is new
    twice = {**args, "transfers": {**args["transfers"], "repeats": 2}}
    train_meta_space(run, MetaSpaceSettings.from_args(**twice), tmp_path / "three")
    report = json.loads((tmp_path / "three" / "report.json").read_text())["transfers"]
    assert report["measured_now"] == report["pairs"] == len(measured)  # one new fine-tuning per pair
    row_of = {int(i): row for row, i in enumerate(table.ids)}
    again_twice = measure_pairs(table, [(m["dataset"], row_of[m["zoo_id"]]) for m in measured],
                                {n: run.dataset(n) for n in ("a", "b")}, TransferSettings(**twice["transfers"]),
                                cache=tmp_path / "cache", progress=False)
    for once, both in zip(measured, again_twice):
        assert both["cached"] and both["fresh"] == 0 and both["val_accs"][0] == pytest.approx(once["val_acc"])
        assert both["val_acc"] == pytest.approx(np.mean(both["val_accs"]))


def test_a_transfer_pair_keeps_its_cache_key_when_the_default_recipe_changes(pipeline):
    import hashlib

    from mednns.finetune import RECIPE_OFF
    from mednns.metaspace.table import load_table
    from mednns.metaspace.transfers import TransferSettings, _pair_key
    from mednns.training import SUPERNET_WEIGHTS
    from mednns.zoo import ZooStore

    with ZooStore(pipeline["run"] / "stages" / "build_zoo" / "zoo.sqlite", readonly=True) as store:
        table = load_table(store, "val_acc")
    published = TransferSettings()  # the recipe the published pairs were measured with
    assert published.finetune == {"recalibrate_bn": True, "head_epochs": 1, "fit_head": False}
    spelled_out = TransferSettings(finetune={**RECIPE_OFF, "recalibrate_bn": True, "head_epochs": 1})
    key = _pair_key(table, 0, "digest", published)
    assert _pair_key(table, 0, "digest", spelled_out) == key
    # the key such a pair was cached under before the library's default recipe changed
    weights = Path(table.supernet[0]) / SUPERNET_WEIGHTS
    own = {**{k: v for k, v in published.to_dict().items() if k != "repeats"},
           "finetune": {"recalibrate_bn": True, "head_epochs": 1}}
    text = json.dumps([str(weights.resolve()), weights.stat().st_mtime_ns, table.arch[0], "digest", own],
                      sort_keys=True)
    assert key == hashlib.sha256(text.encode()).hexdigest()[:24]
    # the library's default recipe is another fine-tuning, and so another key
    assert _pair_key(table, 0, "digest", TransferSettings(finetune={})) != key
    assert _pair_key(table, 0, "digest", TransferSettings(finetune={"lr": 0.01, **published.finetune})) != key


def test_an_ensemble_of_meta_spaces_ranks_by_its_members_mean_and_travels_in_a_bundle(pipeline, tmp_path,
                                                                                      monkeypatch):
    from mednns.bundle import export_bundle, verify_bundle
    from mednns.config import load_config
    from mednns.errors import UsageError
    from mednns.manager import get_plugin_manager
    from mednns.metaspace.retrieval import predict_all, query
    from mednns.metaspace.settings import MetaSpaceSettings
    from mednns.metaspace.train import member_seeds, train_meta_space
    from mednns.runs import prepare_run

    monkeypatch.setenv("MEDNNS_CACHE_DIR", str(tmp_path / "cache"))
    manager = get_plugin_manager()
    config = load_config(manager, pipeline["run"] / "config.yaml")
    config.stages = []
    run = prepare_run(manager, config, directory=pipeline["run"])
    folder = tmp_path / "run" / "stages" / "fit_meta_space"  # where a run keeps it: the bundle reads it there
    summary = train_meta_space(run, MetaSpaceSettings.from_args(**META, members=3), folder)
    assert summary["members"] == 3
    manifest = json.loads((folder / "metaspace.json").read_text())
    assert manifest["member_seeds"] == member_seeds(0, 3) and len(set(manifest["member_seeds"])) == 3
    assert len(json.loads((folder / "report.json").read_text())["members"]) == 3
    target = run.dataset("c")
    single = predict_all(pipeline["run"] / "stages" / "fit_meta_space", target)
    members = [load_meta_space(folder, with_model_encoder=False, member=k) for k in range(3)]
    features = torch.as_tensor(np.load(folder / "dataset_features.npz")["c"])
    naive = []
    with torch.no_grad():
        for trained in members:
            predicted, _ = trained.model.pair(trained.model.embed_datasets([features]),
                                              torch.as_tensor(trained.embeddings).unsqueeze(0))
            naive.append(predicted[0].numpy())
    np.testing.assert_allclose(naive[0], single.predicted, atol=1e-5)  # the first member is the single meta-space
    assert not np.allclose(naive[0], naive[1])  # the members differ: only their seed does
    ensemble = predict_all(folder, target)
    np.testing.assert_allclose(ensemble.member_predicted, naive, atol=1e-6)
    np.testing.assert_allclose(ensemble.predicted, np.mean(naive, axis=0), atol=1e-6)
    assert single.member_predicted.shape == (1, len(single.predicted))
    with pytest.raises(UsageError, match="3 meta-space member"):
        load_meta_space(folder, member=3)
    with pytest.raises(UsageError, match="members must be >= 1"):
        MetaSpaceSettings.from_args(members=0)

    bundle = tmp_path / "bundle"
    files = export_bundle(tmp_path / "run", bundle)["files"]
    assert {"metaspace/metaspace.member2.safetensors", "metaspace/model_embeddings.member1.npy"} <= set(files)
    verify_bundle(bundle)
    from_bundle = query(bundle / "metaspace", target, top_k=5)["results"]
    assert [r["zoo_id"] for r in from_bundle] == [r["zoo_id"] for r in query(folder, target, top_k=5)["results"]]


def test_pairs_join_each_datasets_draw_with_their_own_targets():
    from mednns.metaspace.contracts import ModelTable
    from mednns.metaspace.fit import MetaSpaceFitter
    from mednns.metaspace.settings import FitConfig

    table = ModelTable(ids=np.arange(6), dataset=["a", "a", "a", "b", "b", "b"], space=["s"] * 6,
                       encoding=[np.zeros(2, np.float32)] * 6, params=np.ones(6), macs=np.ones(6),
                       target=np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4], np.float32), arch=["{}"] * 6)

    class Model(torch.nn.Module):
        def forward(self, sets, index):
            d, m = index.shape
            return torch.zeros(d, 2), torch.zeros(d, m, 2), torch.zeros(d, m), torch.zeros(d, m)

    features = {"a": np.zeros((4, 3), np.float32), "b": np.zeros((4, 3), np.float32)}
    config = FitConfig(models_per_dataset=8, val_fraction=0.0, steps=1)
    pairs = {"a": (np.array([3, 4]), np.array([0.11, 0.22], np.float32))}
    fitter = MetaSpaceFitter(Model(), table, features, ["a", "b"], [], None, [(1.0, lambda b: b.target.sum())],
                             config, progress=False, pairs=pairs)
    batch = fitter.sample_batch()
    rows, targets = fitter.pools["a"]
    assert {(int(i), round(float(t), 2)) for i, t in zip(rows, targets)} == {
        (0, 0.9), (1, 0.8), (2, 0.7), (3, 0.11), (4, 0.22)}  # a's in-domain rows and its pairs
    row_a = sorted(round(float(t), 2) for t, m in zip(batch.target[0], batch.mask[0]) if m)
    assert row_a == [0.11, 0.22, 0.7, 0.8, 0.9]
    row_b = sorted(round(float(t), 2) for t, m in zip(batch.target[1], batch.mask[1]) if m)
    assert row_b == [0.4, 0.5, 0.6]


def test_transfer_settings_are_checked_when_the_config_is():
    from mednns.errors import UsageError
    from mednns.metaspace.settings import MetaSpaceSettings
    from mednns.metaspace.transfers import TransferSettings

    assert MetaSpaceSettings.from_args(transfers=True).transfers == TransferSettings().to_dict()
    assert MetaSpaceSettings.from_args(transfers=False).transfer_settings() is None
    assert MetaSpaceSettings.from_args(transfers={"models": 4}).transfer_settings() == TransferSettings(models=4)
    for spec, message in (({"modles": 4}, "unknown key"), ({"finetune": {"lrr": 0.1}}, "unknown key.*lrr"),
                          ({"finetune": {"epochs": 3}}, "set epochs with the transfer settings"),
                          ({"models": 0}, "models >= 1")):
        with pytest.raises(UsageError, match=message):
            MetaSpaceSettings.from_args(transfers=spec)


def test_a_fine_tuned_model_exports_to_onnx_and_torchscript_with_its_preprocessing(pipeline, tmp_path):
    import onnxruntime

    from mednns.data import dataset_tensors

    folder = pipeline["run"] / "stages" / "finetune" / "c"
    preprocessing = json.loads((folder / "best" / "model.json").read_text())["preprocessing"]
    assert (preprocessing["channels"], preprocessing["image_size"], preprocessing["labels"]) == (1, [12, 12],
                                                                                             ["0", "1"])
    for fmt, file in (("onnx", "model.onnx"), ("torchscript", "model.pt")):
        result = invoke("export-model", folder, "--format", fmt, "--out", tmp_path / fmt)
        assert result.exit_code == 0, result.output
        record = json.loads((tmp_path / fmt / "preprocessing.json").read_text())
        assert record["file"] == file and record["parity"]["max_abs_difference"] < 1e-4
        assert record["mean"] == preprocessing["mean"] and record["input"]["shape"] == ["batch", 1, 12, 12]

    # a deployment: raw uint8 test images, preprocessing.json and the ONNX file, no mednns
    raw = np.load(pipeline["root"] / "c.npz")["test_images"][:7]
    x = (raw.astype(np.float32) / 255).transpose(0, 3, 1, 2)
    mean, std = (np.array(record[k], np.float32)[None, :, None, None] for k in ("mean", "std"))
    x = (x - mean) / std
    session = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    deployed = session.run(None, {"images": x})[0]
    dataset = mednns.create("datasets", "npz", path=str(pipeline["root"] / "c.npz"), name="c")
    test_x, _ = dataset_tensors(dataset, "test", channels=1)
    with torch.no_grad():
        expected = mednns.load_model(folder / "best")(test_x[:7]).numpy()
    np.testing.assert_allclose(deployed, expected, atol=1e-4)

    refused = invoke("export-model", pipeline["run"] / "stages" / "query" / "c", "--out", tmp_path / "query")
    assert refused.exit_code == 2 and "records no preprocessing" in refused.output


def test_a_bundle_exports_pulls_verifies_and_answers_the_query_the_run_answers(pipeline, tmp_path, monkeypatch):
    import functools
    import http.server
    import shutil
    import tarfile
    import threading

    from mednns.bundle import MANIFEST, pull_bundle, verify_bundle

    monkeypatch.setenv("MEDNNS_CACHE_DIR", str(tmp_path / "cache"))
    bundle = tmp_path / "bundle"
    exported = invoke("bundle", "export", pipeline["run"], bundle, "--licence", "a=CC BY 4.0")
    assert exported.exit_code == 0, exported.output
    manifest = json.loads((bundle / MANIFEST).read_text())
    assert {s["dataset"]: s["licence"] for s in manifest["sources"]} == {"a": "CC BY 4.0", "b": "unknown",
                                                                         "c": "unknown"}
    assert "zoo.sqlite" in manifest["files"] and "metaspace/metaspace.safetensors" in manifest["files"]
    assert not any(name.endswith((".pkl", ".pt", "-wal")) for name in manifest["files"])
    info = invoke("bundle", "info", bundle)
    assert info.exit_code == 0 and "CC BY 4.0" in info.output

    query = ["--dataset", pipeline["root"] / "c.npz", "--top-k", 5, "--json"]
    from_run = json.loads(invoke("query", pipeline["run"], *query).output)
    archive = tmp_path / "bundle.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(bundle, arcname="bundle")
    pulled = pull_bundle(str(archive))
    assert pulled != bundle and verify_bundle(pulled) == manifest
    from_bundle = json.loads(invoke("query", pulled, *query).output)
    assert [r["zoo_id"] for r in from_bundle["results"]] == [r["zoo_id"] for r in from_run["results"]]
    assert all(str(pulled) in r["supernet"] for r in from_bundle["results"])  # weights read from the bundle
    assert verify_bundle(pulled) == manifest  # querying wrote nothing into it

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/bundle.tar.gz"
        assert verify_bundle(pull_bundle(url)) == manifest
        with pytest.raises(mednns.UsageError, match="is not the expected"):
            pull_bundle(url + "#sha256=" + "0" * 64)
    finally:
        server.shutdown()

    tampered = tmp_path / "tampered"
    shutil.copytree(bundle, tampered)
    with open(tampered / "metaspace" / "model_embeddings.npy", "r+b") as handle:
        handle.seek(-1, 2)
        handle.write(b"\x01")
    refused = invoke("bundle", "info", tampered)
    assert refused.exit_code == 2 and "does not match its sha256" in refused.output
    assert invoke("query", tampered, *query).exit_code == 2
    (tampered / MANIFEST).write_text(json.dumps({**manifest, "format": "mednns-bundle/99"}))
    refused = invoke("bundle", "pull", tampered)
    assert refused.exit_code == 2 and "bundle format 'mednns-bundle/99'" in refused.output


def test_adapt_goes_from_a_dataset_and_a_bundle_to_a_documented_deployable_model(pipeline, tmp_path, monkeypatch):
    from mednns.transfer import guard_text

    monkeypatch.setenv("MEDNNS_CACHE_DIR", str(tmp_path / "cache"))
    bundle = tmp_path / "bundle"
    assert invoke("bundle", "export", pipeline["run"], bundle).exit_code == 0
    out = tmp_path / "adapted"
    result = invoke("adapt", pipeline["root"] / "c.npz", "--bundle", bundle, "--out", out, "--epochs", 2,
                    "--batch-size", 16, "--top-k", 4, "--no-progress")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "adapt.json").read_text())
    candidates = json.loads((out / "candidates.json").read_text())["results"]
    assert len(candidates) == 4 and summary["chosen"]["zoo_id"] == candidates[0]["zoo_id"]
    exported = json.loads((out / "export" / "model.json").read_text())
    assert exported["source"]["zoo_id"] == candidates[0]["zoo_id"]
    with open(out / "finetune" / "metrics.csv") as handle:
        assert [int(r["epoch"]) for r in csv.DictReader(handle)] == [1, 2]
    deploy = json.loads((out / "deploy" / "preprocessing.json").read_text())
    assert deploy["file"] == "model.onnx" and (out / "deploy" / "model.onnx").is_file()
    assert deploy["parity"]["max_abs_difference"] < 1e-4
    assert (out / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    report = (out / "report.md").read_text()
    assert all(f"| {c['rank']} | {c['dataset']} |" in report for c in candidates)
    ranked = json.loads((out / "candidates.json").read_text())["candidates"]  # every model within the limits
    assert ranked > 4 and f"ranked the {ranked} model(s) that meet the limits" in report
    assert "the first 4 are listed below" in report
    assert f"test ACC {summary['best']['test_acc']:.4f}" in report
    card = (out / "model_card.md").read_text()
    assert "Not validated for clinical use" in card and str(deploy["mean"]) in card
    assert ("transfer recipe: BN statistics re-estimated on the training images, the new head solved on the frozen "
            "features with a cross-validated penalty)") in card  # the default recipe
    again = invoke("export-model", out, "--format", "torchscript", "--out", tmp_path / "ts")  # the adapt folder
    assert again.exit_code == 0 and json.loads((tmp_path / "ts" / "preprocessing.json").read_text())["mean"] == \
        deploy["mean"]
    # re-ranked on the dataset's training images before choosing: the choice is the re-ranked order's first
    reranked_out = tmp_path / "reranked"
    result = invoke("adapt", pipeline["root"] / "c.npz", "--bundle", bundle, "--out", reranked_out, "--epochs", 1,
                    "--batch-size", 16, "--rerank", "knn", "--candidates", 3, "--combine", "score", "--deploy", "none",
                    "--no-progress")
    assert result.exit_code == 0, result.output
    summary = json.loads((reranked_out / "adapt.json").read_text())
    ranked = json.loads((reranked_out / "candidates.json").read_text())
    assert ranked["rerank"]["score"]["name"] == "knn" and ranked["rerank"]["candidates"] == 3
    scores = [r["transfer_score"] for r in ranked["results"][:3]]
    assert scores == sorted(scores, reverse=True) and summary["chosen"]["zoo_id"] == ranked["results"][0]["zoo_id"]
    assert summary["rerank"]["score"]["name"] == "knn"
    assert "re-ranked its top 3 with the `knn` transfer score" in (reranked_out / "report.md").read_text()
    assert "re-ranked with the knn transfer score" in (reranked_out / "model_card.md").read_text()
    result = invoke("adapt", pipeline["root"] / "c.npz", "--bundle", bundle, "--out", tmp_path / "guarded", "--epochs",
                    1, "--batch-size", 16, "--rerank", "knn", "--candidates", 3, "--combine", "guarded", "--deploy",
                    "none", "--no-progress")
    assert result.exit_code == 0, result.output
    guard = json.loads((tmp_path / "guarded" / "candidates.json").read_text())["rerank"]["guard"]
    assert f"(order: guarded; {guard_text(guard)})" in (tmp_path / "guarded" / "report.md").read_text()
    refused = invoke("adapt", pipeline["root"] / "c.npz", "--bundle", bundle, "--rerank", "no_such_score")
    assert refused.exit_code == 2 and "no_such_score" in refused.output


def test_adapt_fine_tunes_the_first_k_and_keeps_the_best_by_validation(pipeline, tmp_path, monkeypatch):
    monkeypatch.setenv("MEDNNS_CACHE_DIR", str(tmp_path / "cache"))
    bundle = tmp_path / "bundle"
    assert invoke("bundle", "export", pipeline["run"], bundle).exit_code == 0
    out = tmp_path / "adapted"
    (out / "tries" / "rank9").mkdir(parents=True)  # a previous call's leftovers
    result = invoke("adapt", pipeline["root"] / "c.npz", "--bundle", bundle, "--out", out, "--epochs", 1,
                    "--batch-size", 16, "--top-k", 2, "--finetune-top", 3, "--deploy", "none", "--no-progress")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "adapt.json").read_text())
    candidates = json.loads((out / "candidates.json").read_text())["results"]
    assert len(candidates) == 3  # the query lists at least as many as are fine-tuned
    tried = summary["tried"]
    assert [t["rank"] for t in tried] == [1, 2, 3] and [t["zoo_id"] for t in tried] == [c["zoo_id"] for c in candidates]
    best = max(t["best_val_acc"] for t in tried)
    kept = next(t for t in tried if t["best_val_acc"] == best)  # the earliest rank among ties
    assert summary["chosen"]["zoo_id"] == kept["zoo_id"] and summary["best"]["val_acc"] == best
    assert json.loads((out / "export" / "model.json").read_text())["source"]["zoo_id"] == kept["zoo_id"]
    finetuned = json.loads((out / "finetune" / "best" / "model.json").read_text())["finetuned"]
    assert finetuned["from"] == str(out / "export")
    left = sorted(p.name for p in (out / "tries").iterdir())
    assert left == [f"rank{t['rank']}" for t in tried if t is not kept]  # the kept one moved, the stale one gone
    assert all((out / "tries" / name / "finetune" / "best" / "model.json").is_file() for name in left)
    report = (out / "report.md").read_text()
    assert "the first 3 were each exported with their inherited weights and fine-tuned" in report
    assert f"Chosen: rank {kept['rank']}," in report and "best validation ACC of the first 3" in report
    assert "the best by validation ACC of its first 3 candidates" in (out / "model_card.md").read_text()
    refused = invoke("adapt", pipeline["root"] / "c.npz", "--bundle", bundle, "--finetune-top", 0)
    assert refused.exit_code == 2 and "--finetune-top" in refused.output


REFERENCE_BUNDLE = Path(__file__).resolve().parents[1] / "benchmarks" / "bundles" / "cpu"
KIDNEY_FOLDER = Path(__file__).resolve().parents[2] / "shared" / "data" / "folders" / "kidney_ct"


def test_the_committed_reference_bundle_verifies_and_never_saw_kidney_ct():
    from mednns.bundle import verify_bundle

    manifest = verify_bundle(REFERENCE_BUNDLE)
    sources = {s["dataset"]: s["licence"] for s in manifest["sources"]}
    assert len(sources) == 7 and "kidney_ct" not in sources
    assert sources["pneumoniamnist"].startswith("CC BY 4.0") and sources["lc25000_lung"] == "not stated by the source"


@pytest.mark.data
def test_adapt_on_the_kidney_ct_image_folder_with_the_reference_bundle(tmp_path, monkeypatch):
    if not KIDNEY_FOLDER.is_dir():
        pytest.skip(f"real data not found at {KIDNEY_FOLDER}")
    monkeypatch.setenv("MEDNNS_CACHE_DIR", str(tmp_path / "cache"))
    result = invoke("adapt", KIDNEY_FOLDER, "--bundle", REFERENCE_BUNDLE, "--out", tmp_path / "out", "--epochs", 3,
                    "--no-progress")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "adapt.json").read_text())
    assert summary["chosen"]["dataset"] != "kidney_ct" and summary["best"]["test_acc"] > 0.5  # largest class: 26%
    assert (tmp_path / "out" / "deploy" / "model.onnx").is_file()


def test_a_bundle_is_pulled_from_the_hugging_face_hub_cache_offline(tmp_path, monkeypatch):
    """hf://owner/name through huggingface_hub with HF_HUB_OFFLINE=1: a snapshot already in the cache
    (laid out as the hub client lays it out) is used and verified; an absent one is a clear error."""
    import shutil

    from mednns.bundle import pull_bundle, verify_bundle

    monkeypatch.setenv("MEDNNS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "cache" / "bundles" / "hub" / "models--mednns--reference-cpu"
    revision = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    shutil.copytree(REFERENCE_BUNDLE, repo / "snapshots" / revision)
    pulled = pull_bundle("hf://mednns/reference-cpu")
    assert pulled == repo / "snapshots" / revision and verify_bundle(pulled)["format"] == "mednns-bundle/1"
    with pytest.raises(mednns.UsageError, match="cannot fetch hf://mednns/absent"):
        pull_bundle("hf://mednns/absent")


def test_guarded_rerank_keeps_the_meta_space_order_unless_the_images_overrule_it(pipeline):
    from mednns.errors import UsageError
    from mednns.metaspace.retrieval import query
    from mednns.transfer.reranking import RerankSettings

    target = mednns.create("datasets", "npz", path=str(pipeline["root"] / "c.npz"), name="c")
    meta = pipeline["run"] / "stages" / "fit_meta_space"
    settings = RerankSettings({"name": "knn", "args": {"k": 3}}, candidates=4, images=60, calibration_images=32,
                              combine="guarded")
    result = query(meta, target, top_k=4, rerank=settings)
    guard = result["rerank"]["guard"]
    assert result["rerank"]["level"] == 0.05 and guard["threshold"] == pytest.approx(0.05 / 3)
    by_meta = sorted(result["results"], key=lambda r: r["meta_rank"])
    by_score = sorted(result["results"], key=lambda r: (-r["transfer_score"], r["meta_rank"]))
    assert guard["incumbent"] == by_meta[0]["zoo_id"] and guard["challenger"] == by_score[0]["zoo_id"]
    expected = by_score if guard["passed"] else by_meta
    assert [r["zoo_id"] for r in result["results"]] == [r["zoo_id"] for r in expected]
    assert guard["passed"] == (guard["p"] < guard["threshold"])
    logme = RerankSettings({"name": "logme", "args": {}}, candidates=4, images=60, calibration_images=32,
                           combine="guarded")
    with pytest.raises(UsageError, match="per-image values; logme has none"):
        query(meta, target, top_k=4, rerank=logme)
    with pytest.raises(UsageError, match="level"):
        RerankSettings(combine="guarded", level=1.5)
