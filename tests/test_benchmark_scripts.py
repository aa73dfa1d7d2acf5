"""Benchmark scripts that must keep working although no test times them: run tiny, check what they write."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mednns.evaluation.results import FORMAT
from mednns.files import read_json, write_json_gz

ROOT = Path(__file__).resolve().parents[1]


def results_with(datasets: dict) -> dict:
    """The smallest evaluation results that load (``mednns.evaluation.load_results``) around ``datasets``."""
    return {"format": FORMAT, "protocol": {"conditions": [{"id": "equal_epochs@800"}]}, "methods": {},
            "datasets": datasets}


def run_script(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_gpu_check_runs_every_step_and_reports_rates(tmp_path):
    result = run_script("benchmarks/gpu_check.py", "--device", "cpu", "--quick", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(report["stage_seconds"]) == {"train_supernet", "build_zoo", "evaluate"}
    assert set(report["supernets"]) == {"a", "b", "c"}
    assert all(s["steps"] > 0 and s["steps_per_second"] > 0 for s in report["supernets"].values())
    zoo = report["zoo"]
    assert zoo["subnets"] == 3 * (6 + 2 + 2)  # samples + anchors + largest and smallest, per supernet
    assert zoo["paper_pairs_hours"] == pytest.approx(720_000 / zoo["subnets_per_second"] / 3600, rel=0.01)
    assert set(report["evaluate"]) == {"mednns", "mednns:rerank", "random_init"}
    assert report["evaluate"]["mednns"]["setup_seconds"]["query"] > 0
    assert report["evaluate"]["mednns:rerank"]["setup_seconds"]["rerank"] > 0
    assert report["rerank"]["candidates"] == 3 and report["rerank"]["candidates_per_second"] > 0
    assert "| mednns |" in (tmp_path / "gpu_check.md").read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_gpu_check_says_how_to_run_without_a_gpu(tmp_path):
    result = run_script("benchmarks/gpu_check.py", "--out", str(tmp_path), timeout=120)
    assert result.returncode != 0 and "--device cpu --quick" in result.stderr
    assert not (tmp_path / "gpu_check.json").exists()


def test_guard_decisions_counts_where_the_guard_overruled_the_meta_space(tmp_path):
    def run(seed, source, acc):
        return {"seed": seed, "model": {"source": source, "arch_hash": "a"}, "history": [{"test_acc": acc}]}

    def method(*runs):
        return {"status": "ok", "runs": list(runs)}

    condition = {"methods": {  # seed 0: the guard kept the meta-space's pick; seed 1: it took the re-ranked one
        "mednns": method(run(0, "x", 0.5), run(1, "x", 0.6)),
        "mednns:rerank": method(run(0, "y", 0.7), run(1, "y", 0.8)),
        "mednns:guarded": method(run(0, "x", 0.5), run(1, "y", 0.8))}}
    published = tmp_path / "evaluation"
    write_json_gz(published / "results.json.gz", results_with({"t": {"conditions": {"equal_epochs@800": condition}}}))
    done = run_script("benchmarks/guard_decisions.py", str(published), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    found = json.loads((tmp_path / "out" / "guard_decisions.json").read_text())["evaluation"]["equal_epochs@800"]["t"]
    assert found == {"runs": 2, "overruled": 1, "as_reranked": 1, "default_test_acc": pytest.approx(0.55),
                     "rerank_test_acc": pytest.approx(0.75), "guarded_test_acc": pytest.approx(0.65)}
    assert "| t | 1/2 | 1/2 | 0.550 | 0.750 | 0.650 |" in (tmp_path / "out" / "guard_decisions.md").read_text()


def test_choice_ceiling_reads_the_ranking_samples_of_published_folders(tmp_path):
    def sample(per_seed):
        return {"condition": "equal_epochs@800", "candidates": [{"test_acc": sum(r) / len(r), "test_accs": r}
                                                                for r in per_seed]}

    # target a: candidate 1 is better by 0.1 under every seed; target b: candidates equal, seed by seed
    datasets = {"a": {"ranking": sample([[0.5, 0.5, 0.5], [0.6, 0.6, 0.6], [0.5, 0.5, 0.5]])},
                "b": {"ranking": sample([[0.7, 0.8, 0.6], [0.7, 0.8, 0.6], [0.7, 0.8, 0.6]])}}
    overall = {"meta-space": {"top1_gain": {"mean": 0.01, "ci": [-0.02, 0.04]}}, "ridge": {"top1_gain": None}}
    published = tmp_path / "evaluation"
    write_json_gz(published / "results.json.gz", {**results_with(datasets), "ranking": overall})
    done = run_script("benchmarks/choice_ceiling.py", str(published), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    found = json.loads((tmp_path / "out" / "choice_ceiling.json").read_text())["evaluation"]["equal_epochs@800"]
    assert found["targets"]["a"]["gains"] == pytest.approx([0.1 - 0.1 / 3] * 3)
    assert found["targets"]["b"]["gains"] == pytest.approx([0.0] * 3)
    assert found["mean"] == pytest.approx((0.1 - 0.1 / 3) / 2) and found["rankings"] == {
        "meta-space": {"mean": 0.01, "ci": [-0.02, 0.04]}}
    report = (tmp_path / "out" / "choice_ceiling.md").read_text()
    assert "| a | +0.067 |" in report and "| meta-space | +0.010 [-0.020, +0.040] |" in report


def test_evaluation_trim_leaves_out_per_dataset_figures_and_says_how_to_render_them(tmp_path):
    published = tmp_path / "evaluation"
    published.mkdir()
    (published / "run.json").write_text(json.dumps({"config": {"name": "some_run"}}))
    results = results_with({"kidney_ct": {}})
    (published / "results.json").write_text(json.dumps(results))  # as folders were published before: plain
    for name in ("overview.png", "forest_equal_epochs_800.png", "convergence_kidney_ct.png", "compute_kidney_ct.png",
                 "embeddings_kidney_ct.png"):
        (published / name).write_bytes(b"\x89PNG" + bytes(100))
    (published / "report.md").write_text(
        "# mednns evaluation: some_run\n\nIntro.\n\n![overview](overview.png)\n\n### kidney_ct\n\nTable.\n\n"
        "![kidney_ct: convergence](convergence_kidney_ct.png)\n\n![kidney_ct: compute](compute_kidney_ct.png)\n\n"
        "![kidney_ct: t-SNE](embeddings_kidney_ct.png)\n\n## Next\n")
    for _ in range(2):  # idempotent: a second trim changes nothing
        done = run_script("benchmarks/evaluation.py", "--trim", str(published))
        assert done.returncode == 0, done.stderr
        assert sorted(p.name for p in published.glob("*.png")) == ["forest_equal_epochs_800.png", "overview.png"]
        report = (published / "report.md").read_text()
        title, blank, note, *rest = report.splitlines()
        assert (title, blank) == ("# mednns evaluation: some_run", "")
        assert "mednns report runs/some_run" in note and f"mednns report {published.as_posix()} --out DIR" in note
        assert not (published / "results.json").exists() and read_json(published / "results.json.gz") == results
        assert rest == ["", "Intro.", "", "![overview](overview.png)", "", "### kidney_ct", "", "Table.", "",
                        "## Next"]
    assert "0.0 MiB freed" in done.stdout
    spec = importlib.util.spec_from_file_location("publish_evaluation", ROOT / "benchmarks" / "evaluation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.trim(published, "some_run", root=tmp_path)  # a folder of the repository: named relative to it
    assert "`mednns report evaluation --out DIR`" in (published / "report.md").read_text()
