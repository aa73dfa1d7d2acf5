"""The evaluation report (mednns.evaluation.report) and ``mednns report``, on a generated results.json."""

from __future__ import annotations

import copy
import html
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from mednns.cli import cli
from mednns.errors import UsageError
from mednns.evaluation import report
from mednns.files import write_json, write_json_gz

K = 4
SEEDS = [0, 1]
METHODS = {"mednns": ("mednns (top-1)", "ours"), "imagenet": ("ImageNet ResNet-18", "baseline"),
           "random_init": ("random init", "baseline"), "timm_scratch": ("timm from scratch", "baseline")}
DATASETS = ["breastmnist", "kidney<ct>&mri"]
SKIP_REASON = "needs <timm> & a GPU"
# per dataset and method: final accuracy level; mednns wins on the first dataset and loses to imagenet on the second
LEVELS = {"breastmnist": {"mednns": 0.86, "imagenet": 0.80, "random_init": 0.70, "timm_scratch": 0.74},
          "kidney<ct>&mri": {"mednns": 0.78, "imagenet": 0.84, "random_init": 0.66}}
INFO = {"breastmnist": {"task": "binary-class", "n_classes": 2, "n_channels": 1, "image_size": [28, 28],
                        "modality": "ultrasound", "train": 546, "val": 78, "test": 156, "majority_rate": 0.731},
        "kidney<ct>&mri": {"task": "multi-class", "n_classes": 4, "n_channels": 1, "image_size": [28, 28],
                           "modality": "CT", "train": 1200, "val": 200, "test": 400}}


def _history(rng: np.random.Generator, level: float) -> list[dict[str, Any]]:
    rows = []
    for epoch in range(1, K + 1):
        acc = level - 0.25 / epoch + float(rng.normal(0, 0.01))
        auc = min(0.99, acc + 0.08 + float(rng.normal(0, 0.01)))
        rows.append({"epoch": epoch, "train_loss": 1.0 / epoch, "val_acc": acc + 0.01, "val_auc": auc,
                     "test_acc": acc, "test_auc": auc, "seconds": 1.5 * epoch, "target_seconds": 1.0 * epoch,
                     "image_macs": epoch * 10**8})
    return rows


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    def stat(metric: str, epoch: int) -> dict[str, float]:
        values = [run["history"][epoch - 1][metric] for run in runs]
        return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}

    epochs = list(range(1, K + 1))
    curve: dict[str, Any] = {"epochs": epochs}
    for metric in ("test_acc", "test_auc", "target_seconds", "image_macs"):
        curve[f"{metric}_mean"] = [stat(metric, e)["mean"] for e in epochs]
        curve[f"{metric}_std"] = [stat(metric, e)["std"] for e in epochs]
    return {"test_acc": {str(e): stat("test_acc", e) for e in (1, 3, K)},
            "test_auc": {str(e): stat("test_auc", e) for e in (1, 3, K)},
            "curve": curve, "params": runs[0]["model"]["params"]}


CONDITIONS = [{"id": "equal_epochs@all", "budget": "equal_epochs", "train_images": None, "seeds": SEEDS,
               "batch_size": 128},
              {"id": "equal_compute@all", "budget": "equal_compute", "train_images": None, "seeds": SEEDS,
               "batch_size": 128}]


def _condition(rng: np.random.Generator, seeds: list[int], shift: float) -> dict[str, Any]:
    """Every dataset's methods and comparison under one condition (levels raised by ``shift``)."""
    datasets: dict[str, Any] = {}
    for d_index, dataset in enumerate(DATASETS):
        methods: dict[str, Any] = {}
        for m_index, method in enumerate(METHODS):
            if method not in LEVELS[dataset]:
                methods[method] = {"status": "skipped", "reason": SKIP_REASON, "runs": []}
                continue
            model = {"name": f"{method} model", "source": "pneumoniamnist" if method == "mednns" else None,
                     "space": "ofa_resnet" if method == "mednns" else "timm",
                     "weights": {"mednns": "inherited", "imagenet": "imagenet"}.get(method, "random"),
                     "params": 100_000 * (m_index + 1) + d_index, "macs": None, "arch_hash": None}
            setup = {"query": {"seconds": 2.0, "image_macs": 1000}} if method == "mednns" else {}
            runs = []
            for s in seeds:
                history = _history(rng, LEVELS[dataset][method] + shift)
                total = 2.0 * (method == "mednns") + history[-1]["target_seconds"]
                runs.append({"seed": s, "model": model, "history": history, "prepare_seconds": 0.5,
                             "finetune_seconds": 6.0,
                             "compute": {"setup": setup, "finetune": {"seconds": history[-1]["target_seconds"],
                                                                      "image_macs": 10**9},
                                         "offset_seconds": 2.0 * (method == "mednns"),
                                         "offset_image_macs": 1000 * (method == "mednns"), "total_seconds": total,
                                         "total_image_macs": 10**9 + 1000 * (method == "mednns"), "capped": False}})
            compute = {"setup": setup, "finetune": {"seconds": 4.0, "image_macs": 1e9},
                       "total_seconds": float(np.mean([r["compute"]["total_seconds"] for r in runs])),
                       "total_image_macs": 1e9, "epochs": [K], "capped": False}
            methods[method] = {"status": "ok", "runs": runs, "summary": _summary(runs), "compute": compute}
        comparison = {}
        ours = methods["mednns"]["summary"]
        for method, entry in methods.items():
            if method == "mednns" or entry["status"] != "ok":
                continue
            final = entry["summary"]["test_acc"][str(K)]["mean"]
            reached = [e for e, m in zip(ours["curve"]["epochs"], ours["curve"]["test_acc_mean"]) if m >= final]
            comparison[method] = {"gain_acc": ours["test_acc"][str(K)]["mean"] - final,
                                  "gain_auc": (ours["test_auc"][str(K)]["mean"]
                                               - entry["summary"]["test_auc"][str(K)]["mean"]),
                                  "epochs_to_match": reached[0] if reached else None}
        datasets[dataset] = {"methods": methods, "comparison": comparison}
    return datasets


def _overall(parts: dict[str, Any]) -> dict[str, Any]:
    overall: dict[str, Any] = {"mean_test_acc": {}, "mean_test_auc": {}, "mean_gain_acc": {}, "wins": {},
                               "mean_compute": {}}
    for method in METHODS:
        ran = [d for d in DATASETS if parts[d]["methods"][method]["status"] == "ok"]
        for metric in ("test_acc", "test_auc"):
            overall[f"mean_{metric}"][method] = float(np.mean(
                [parts[d]["methods"][method]["summary"][metric][str(K)]["mean"] for d in ran]))
        overall["mean_compute"][method] = {"seconds": float(np.mean(
            [parts[d]["methods"][method]["compute"]["total_seconds"] for d in ran]))}
        if method != "mednns":
            gains = [parts[d]["comparison"][method]["gain_acc"] for d in ran]
            overall["mean_gain_acc"][method] = float(np.mean(gains))
            overall["wins"][method] = [sum(g > 0 for g in gains), len(gains)]
    return overall


def make_results(root: Path, seeds: list[int] = SEEDS) -> Path:
    """Write a run directory with ``stages/evaluate/results.json`` (two conditions) and one embeddings
    file; returns the run dir.

    :param root: where to create ``run/``.
    :param seeds: the seeds every method ran with.
    """
    from mednns.evaluation.statistics import compare_methods

    rng = np.random.default_rng(0)
    run = root / "run"
    stage = run / "stages" / "evaluate"
    conditions = [{**c, "seeds": seeds} for c in CONDITIONS]
    parts = {c["id"]: _condition(rng, seeds, shift) for c, shift in zip(conditions, (0.0, 0.01))}
    datasets = {d: {"info": INFO[d], "setup_compute": {}, "fid": {"pneumoniamnist": 10.0 + i, "dermamnist": 20.5},
                    "embeddings": f"embeddings/{report.slug(d)}.npz" if i == 0 else None,
                    "conditions": {cid: part[d] for cid, part in parts.items()}}
                for i, d in enumerate(DATASETS)}
    results = {
        "format": "mednns-evaluation/2", "run": "quickstart",
        "protocol": {"epochs": K, "seeds": seeds, "report_epochs": [1, 3, K], "top_k": 3, "by": "predicted",
                     "search_budget": 100,
                     "finetune": {"lr": 0.05, "batch_size": 128, "momentum": 0.9, "weight_decay": 0.0005,
                                  "warmup_epochs": 1.0, "label_smoothing": 0.0, "crop_padding": 2, "hflip": False,
                                  "eval_batch_size": 256},
                     "max_epochs": 200, "methods": list(METHODS), "datasets": DATASETS, "conditions": conditions},
        "methods": {m: {"label": lab, "kind": kind, "description": f"{lab} fine-tuned for K epochs."}
                    for m, (lab, kind) in METHODS.items()},
        "datasets": datasets,
        "fid_matrix": {"datasets": ["pneumoniamnist", "dermamnist", *DATASETS],
                       "matrix": [[0, 20, 10, 11], [20, 0, 20.5, 20.5], [10, 20.5, 0, 15], [11, 20.5, 15, 0]]},
        "overall": {cid: _overall(part) for cid, part in parts.items()},
        "statistics": {cid: compare_methods({d: part[d]["methods"] for d in DATASETS}, ["mednns"], list(METHODS))
                       for cid, part in parts.items()},
    }
    write_json(stage / "results.json", results)
    write_embeddings(stage / datasets[DATASETS[0]]["embeddings"], DATASETS[0])
    return run


def write_embeddings(path: Path, held_out: str, models: int = 60) -> Path:
    """A fold's meta-space file: ``models`` zoo models of two source datasets and three dataset embeddings.

    :param path: the ``.npz`` to write. :param held_out: the held-out dataset's name.
    :param models: how many model embeddings.
    """
    rng = np.random.default_rng(1)

    def unit(array: np.ndarray) -> np.ndarray:
        return (array / np.linalg.norm(array, axis=1, keepdims=True)).astype(np.float32)

    names = np.array(["pneumoniamnist", "dermamnist", held_out])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, model_embeddings=unit(rng.normal(size=(models, 16))),
             model_acc=rng.uniform(0.5, 0.9, models).astype(np.float32),
             model_dataset=np.array(["pneumoniamnist", "dermamnist"] * (models // 2) + ["dermamnist"] * (models % 2)),
             dataset_embeddings=unit(rng.normal(size=(3, 16))), dataset_names=names, held_out=np.array(held_out))
    return path


def history_stats(results: dict[str, Any], dataset: str, method: str, metric: str, epoch: int) -> tuple[float, float]:
    """Mean and sample std over seeds recomputed from the histories (not the summary)."""
    values = [row[metric] for run in report.as_view(results)["datasets"][dataset]["methods"][method]["runs"]
              for row in run["history"] if row["epoch"] == epoch]
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def table_rows(markdown: str, heading: str) -> dict[str, list[str]]:
    """The rows of the first table after ``heading``, keyed by their first cell (bold markers removed)."""
    section = markdown.split(heading, 1)[1]
    lines = []
    for line in section.splitlines():
        if line.startswith("|"):
            lines.append(line)
        elif lines:
            break
    rows = [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]
    return {"header": rows[0], **{r[0].strip("*"): r for r in rows[2:]}}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_results(tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def results(run_dir) -> dict[str, Any]:
    return report.load_results(run_dir)


@pytest.fixture(scope="module")
def rendered(run_dir) -> Path:
    return report.render_report(run_dir)


def test_markdown_dataset_tables_hold_mean_std_from_the_histories(results):
    markdown = report.markdown_report(results)
    assert "### breastmnist (ultrasound, binary-class, 2 classes, 546 train images, majority-class rate 0.731)" \
        in markdown
    assert "### kidney<ct>&mri (CT, multi-class, 4 classes, 1,200 train images)" in markdown
    for dataset in DATASETS:
        rows = table_rows(markdown, f"### {dataset} (")
        assert rows["header"] == ["method", "params", "ACC@1", "ACC@3", f"ACC@{K}", "AUC@1", "AUC@3", f"AUC@{K}",
                                  f"gain (ACC@{K})", "epochs to match"]
        for method in LEVELS[dataset]:
            row = rows[METHODS[method][0]]
            for column, metric, epoch in [(2, "test_acc", 1), (3, "test_acc", 3), (4, "test_acc", K),
                                          (5, "test_auc", 1), (6, "test_auc", 3), (7, "test_auc", K)]:
                mean, std = history_stats(results, dataset, method, metric, epoch)
                assert row[column] == f"{mean:.3f} ± {std:.3f}", (dataset, method, metric, epoch)
            ours_final = history_stats(results, dataset, "mednns", "test_acc", K)[0]
            if method == "mednns":
                assert row[8] == "" and row[9] == ""
            else:
                gain = ours_final - history_stats(results, dataset, method, "test_acc", K)[0]
                assert row[8] == f"{gain:+.3f}"
        assert rows["mednns (top-1)"][0] == "**mednns (top-1)**"
    # gain signs: mednns beats imagenet on breastmnist and loses to it on the other dataset
    assert table_rows(markdown, "### breastmnist (")["ImageNet ResNet-18"][8].startswith("+")
    assert table_rows(markdown, "### kidney<ct>&mri (")["ImageNet ResNet-18"][8].startswith("-")
    skipped = table_rows(markdown, "### kidney<ct>&mri (")["timm from scratch"]
    assert skipped[1] == f"skipped: {SKIP_REASON}" and all(c == "" for c in skipped[2:])
    assert "](convergence_breastmnist.png)" in markdown
    assert "](embeddings_breastmnist.png)" in markdown
    assert f"](convergence_{report.slug('kidney<ct>&mri')}.png)" in markdown


def test_epochs_to_match_is_the_first_epoch_mednns_reaches_the_baseline(results):
    markdown = report.markdown_report(results)
    for dataset in DATASETS:
        rows = table_rows(markdown, f"### {dataset} (")
        for method in LEVELS[dataset]:
            if method == "mednns":
                continue
            target = history_stats(results, dataset, method, "test_acc", K)[0]
            reached = [e for e in range(1, K + 1)
                       if history_stats(results, dataset, "mednns", "test_acc", e)[0] >= target]
            assert rows[METHODS[method][0]][9] == (str(reached[0]) if reached else "—")
    # imagenet ends above mednns on the second dataset: mednns never matches it
    assert table_rows(markdown, "### kidney<ct>&mri (")["ImageNet ResNet-18"][9] == "—"


def test_overall_table_and_protocol(results):
    markdown = report.markdown_report(results)
    rows = table_rows(markdown, "## Overall")
    assert rows["header"] == ["method", "datasets", "ACC", "AUC", "bal. ACC", "target-side s", "gain (ACC)", "95% CI",
                              "p", "wins"]
    assert [r for r in rows if r != "header"] == [label for label, _ in METHODS.values()]
    finals = {m: [history_stats(results, d, m, "test_acc", K)[0] for d in DATASETS if m in LEVELS[d]] for m in METHODS}
    for method, (label, _) in METHODS.items():
        assert rows[label][2] == f"{np.mean(finals[method]):.3f}"
        assert rows[label][1] == f"{len(finals[method])}/{len(DATASETS)}"
    assert rows["ImageNet ResNet-18"][9] == "1/2" and rows["random init"][9] == "2/2"
    assert rows["timm from scratch"][9] == "1/1" and rows["mednns (top-1)"][6:] == ["", "", "", ""]
    imagenet_gain = np.mean([f - g for f, g in zip(finals["mednns"], finals["imagenet"])])
    assert rows["ImageNet ResNet-18"][6] == f"{imagenet_gain:+.3f}"
    interval = results["statistics"]["equal_epochs@all"]["mednns"]["imagenet"]["test_acc"]["ci"]
    assert rows["ImageNet ResNet-18"][7] == f"[{interval[0]:+.3f}, {interval[1]:+.3f}]"
    assert rows["ImageNet ResNet-18"][8] == "1.000"  # two datasets with opposite signs
    assert "where each method ran" in markdown
    for text in ("**fine-tuning epochs (K)**: 4", "**seeds**: 0, 1", "top_k 3", "by predicted", "search_budget 100",
                 "lr 0.05", "equal epochs (4), all training images (seeds 0, 1); equal compute, all training images"):
        assert text in markdown


def test_statistics_budgets_and_compute_tables(results):
    markdown = report.markdown_report(results)
    section = markdown.split("### equal compute, all training images", 1)[1].split("\n\n*", 1)[0]
    lines = [[c.strip() for c in line.split("|")[1:-1]] for line in section.splitlines() if line.startswith("|")]
    assert lines[0][:7] == ["mednns method", "vs", "datasets", "ACC gain", "95% CI", "p", "wins"]
    rows = {r[1]: r for r in lines[2:]}
    assert set(rows) == {"ImageNet ResNet-18", "random init", "timm from scratch"}
    given = results["statistics"]["equal_compute@all"]["mednns"]["random_init"]["test_acc"]
    assert rows["random init"][3] == f"{given['mean']:+.3f}" and rows["random init"][6] == "2/2"
    budgets = table_rows(markdown, "## Budgets side by side")
    assert budgets["header"] == ["method", "ACC · equal epochs (4), all training images", "s",
                                 "ACC · equal compute, all training images", "s"]
    compute_rows = table_rows(markdown, "## Target-side compute")
    assert compute_rows["header"][:6] == ["method", "supernet training s", "search s", "query s", "fine-tuning s",
                                          "total s"]
    assert compute_rows["mednns (top-1)"][3] == "2.0" and compute_rows["random init"][3] == ""
    assert compute_rows["mednns (top-1)"][-1] == str(K)  # the equal-compute epochs


def test_early_gains_table_appears_where_the_statistics_hold_earlier_epochs(results):
    from mednns.evaluation.results import condition_view
    from mednns.evaluation.statistics import compare_methods

    assert report.early_table(condition_view(results, "equal_epochs@all")) is None  # final metrics only
    early = copy.deepcopy(results)
    methods = {d: e["conditions"]["equal_epochs@all"]["methods"] for d, e in early["datasets"].items()}
    early["statistics"]["equal_epochs@all"] = compare_methods(methods, ["mednns"], list(METHODS),
                                                              ["test_acc", "test_acc@1", "test_acc@3"])
    table = report.early_table(condition_view(early, "equal_epochs@all"))
    assert table is not None and table.headers[2::3] == ["after epoch 1", "after epoch 3", "final"]
    row = next(r.cells for r in table.rows if r.cells[1] == "random init")
    given = early["statistics"]["equal_epochs@all"]["mednns"]["random_init"]
    assert [row[2], row[5], row[8]] == [f"{given[m]['mean']:+.3f}" for m in ("test_acc@1", "test_acc@3", "test_acc")]
    markdown = report.markdown_report(early)
    assert "Does it train faster?" in markdown.split("### equal compute", 1)[0]  # under equal epochs only
    assert "Does it train faster?" not in markdown.split("### equal compute", 1)[1]


def test_single_seed_has_no_plus_minus_and_report_epochs_are_deduplicated(tmp_path):
    results = report.load_results(make_results(tmp_path, seeds=[0]))
    markdown = report.markdown_report(results)
    assert "±" not in markdown.split("## Per dataset")[1].split("\n", 1)[1]
    row = table_rows(markdown, "### breastmnist (")["mednns (top-1)"]
    assert row[4] == f"{history_stats(results, 'breastmnist', 'mednns', 'test_acc', K)[0]:.3f}"
    results["protocol"].update(epochs=3, report_epochs=[1, 3, 3])
    assert table_rows(report.markdown_report(results), "### breastmnist (")["header"][2:6] == \
        ["ACC@1", "ACC@3", "AUC@1", "AUC@3"]


def test_render_report_writes_every_file_and_one_self_contained_page(run_dir, rendered):
    out = run_dir / "stages" / "evaluate" / "report"
    assert rendered == out / "report.html"
    kidney = report.slug("kidney<ct>&mri")
    expected = {"report.md", "report.html", "overview.png", "fid_heatmap.png", "convergence_breastmnist.png",
                f"convergence_{kidney}.png", "embeddings_breastmnist.png", "compute_breastmnist.png",
                f"compute_{kidney}.png", "forest_equal_epochs_all.png", "forest_equal_compute_all.png"}
    assert {p.name for p in out.iterdir()} == expected
    for name in expected - {"report.md", "report.html"}:
        data = (out / name).read_bytes()
        assert data.startswith(report.PNG_SIGNATURE) and len(data) > 10_000, name
    page = rendered.read_text(encoding="utf-8")
    sources = re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]+)""", page, flags=re.IGNORECASE)
    assert len(sources) == len(expected) - 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<link" not in page and "<script" not in page
    assert html.escape("kidney<ct>&mri") in page and "kidney<ct>" not in page
    assert html.escape(f"skipped: {SKIP_REASON}") in page and SKIP_REASON not in page
    assert page.count("<table>") == 1 + 2 + 1 + 1 + len(DATASETS)  # overall, statistics x2, budgets, compute
    markdown = (out / "report.md").read_text(encoding="utf-8")
    assert markdown == report.markdown_report(report.load_results(run_dir), figures=expected)


def test_render_report_is_idempotent(run_dir, rendered):
    before = {p.name: p.read_bytes() for p in rendered.parent.iterdir()}
    assert report.render_report(run_dir / "stages" / "evaluate" / "results.json") == rendered
    after = {p.name: p.read_bytes() for p in rendered.parent.iterdir()}
    assert after.keys() == before.keys()
    assert after["report.md"] == before["report.md"] and after["report.html"] == before["report.html"]


def test_missing_embeddings_file_leaves_that_figure_out(tmp_path):
    run = make_results(tmp_path)
    npz = run / "stages" / "evaluate" / "embeddings" / "breastmnist.npz"
    npz.unlink()
    report.render_report(run)
    assert not (run / "stages" / "evaluate" / "report" / "embeddings_breastmnist.png").exists()
    assert "embeddings_breastmnist" not in (run / "stages" / "evaluate" / "report" / "report.md").read_text()


def test_load_results_accepts_the_path_forms_and_a_published_compressed_copy(run_dir, tmp_path):
    stage = run_dir / "stages" / "evaluate"
    loaded = [report.load_results(p) for p in (run_dir, stage, stage / "results.json", str(run_dir))]
    assert all(r == loaded[0] for r in loaded) and loaded[0]["format"] == "mednns-evaluation/2"
    published = tmp_path / "published"  # as benchmarks/evaluation.py publishes: results.json.gz, no stage folder
    packed = write_json_gz(published / "results.json.gz", loaded[0])
    plain = (stage / "results.json").stat().st_size
    assert packed.read_bytes()[:2] == b"\x1f\x8b" and packed.stat().st_size < plain / 3
    assert write_json_gz(published / "again.json.gz", loaded[0]).read_bytes() == packed.read_bytes()  # no time stamp
    assert report.load_results(published) == report.load_results(packed) == loaded[0]
    packed.write_bytes(packed.read_bytes()[:50])  # truncated: named as damaged, not a bare EOFError
    with pytest.raises(UsageError, match=re.escape(str(packed))):
        report.load_results(published)


def test_load_results_refuses_missing_files_and_other_formats(tmp_path, run_dir):
    with pytest.raises(UsageError) as missing:
        report.load_results(tmp_path)
    assert str(tmp_path / "results.json") in missing.value.message and "mednns evaluate" in missing.value.hint
    (tmp_path / "stages").mkdir()
    with pytest.raises(UsageError, match=re.escape(str(tmp_path / "stages" / "evaluate" / "results.json"))):
        report.load_results(tmp_path)
    with pytest.raises(UsageError, match="does not exist"):
        report.load_results(tmp_path / "nowhere")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"format": "mednns-zoo/1"}))
    with pytest.raises(UsageError) as wrong:
        report.load_results(other)
    assert str(other) in wrong.value.message and "mednns-zoo/1" in wrong.value.message
    other.write_text("{not json")
    with pytest.raises(UsageError, match=re.escape(str(other))):
        report.load_results(other)


def test_plot_embeddings_on_the_fixture_file_and_on_very_few_points(run_dir, tmp_path):
    npz = run_dir / "stages" / "evaluate" / "embeddings" / "breastmnist.npz"
    first = report.plot_embeddings(npz, tmp_path / "a.png")
    assert first.read_bytes().startswith(report.PNG_SIGNATURE) and first.stat().st_size > 10_000
    tiny = write_embeddings(tmp_path / "tiny.npz", "breastmnist", models=3)  # 6 points: perplexity clamped
    assert report.plot_embeddings(tiny, tmp_path / "b.png").read_bytes().startswith(report.PNG_SIGNATURE)
    points = np.random.default_rng(0).normal(size=(20, 4))
    assert np.array_equal(report.tsne(points, seed=0), report.tsne(points, seed=0))
    broken = tmp_path / "broken.npz"
    np.savez(broken, model_embeddings=np.zeros((2, 3), np.float32))
    with pytest.raises(UsageError, match="lacks model_acc"):
        report.plot_embeddings(broken, tmp_path / "c.png")


def test_plot_convergence_refuses_an_unknown_dataset(results, tmp_path):
    with pytest.raises(UsageError, match="no results for dataset 'nope'"):
        report.plot_convergence(results, "nope", tmp_path / "x.png")
    path = report.plot_convergence(results, "kidney<ct>&mri", tmp_path / "k.png")
    assert path.read_bytes().startswith(report.PNG_SIGNATURE)


def test_report_command_renders_and_prints_the_paths(tmp_path):
    run = make_results(tmp_path)
    result = CliRunner().invoke(cli, ["report", str(run), "--out", str(tmp_path / "out")], catch_exceptions=False,
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    flat = result.output.replace("\n", "")
    assert str(tmp_path / "out" / "report.html") in flat and str(tmp_path / "out" / "report.md") in flat
    assert "mednns (top-1)" in result.output and "ImageNet ResNet-18" in result.output
    assert (tmp_path / "out" / "report.html").is_file()
    missing = CliRunner().invoke(cli, ["report", str(tmp_path / "out")])
    assert missing.exit_code == 2 and "no evaluation results found" in missing.output
