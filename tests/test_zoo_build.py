"""Building model zoos from trained supernets: the build_zoo stage, ``mednns zoo build/stats/export/merge``,
resuming after a kill, shards, and the evaluator against the reference evaluation path."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from click.testing import CliRunner

from mednns.cli import cli
from mednns.config import validate_config
from mednns.data import NpzDataset, Task, majority_rate
from mednns.errors import ConfigError, UsageError
from mednns.runner import execute
from mednns.runs import prepare_run
from mednns.training import load_supernet
from mednns.training.evaluation import evaluate
from mednns.zoo import BuildSettings, EvaluationData, SubnetEvaluator, ZooProtocol, ZooStore, build_zoo
from mednns.zoo.plan import plan_architectures
from mednns.zoo.report import export_columns
from mednns.zoo.store import METRIC_COLUMNS, sha256_file
from supernet_helpers import TINY_RESNET, make_manager, tiny_dataset, tiny_resnet, write_tiny_npz

#: Same tiny training as tests/test_train_supernet_stage.py (about 2 s on one thread).
TINY_STAGE = {"full_epochs": 1, "shrink_epochs": 1, "batch_size": 16, "num_random": 1, "calibration_images": 32,
              "calibration_batch_size": 16, "final_samples": 3, "progress": False}
TINY_SPACE = {"name": "ofa_resnet", "args": {"preset": "cpu", **TINY_RESNET}}
#: A cheap evaluation protocol (the tiny dataset has 96 / 32 / 32 images of 12x12 px).
SMALL = {"calibration_images": 32, "calibration_batch_size": 16}
SMALL_SET = [a for k, v in SMALL.items() for a in ("--set", f"{k}={v}")]
DATASET = "tiny"
SIZES = {"train": 96, "val": 32, "test": 32}

pytestmark = pytest.mark.usefixtures("one_thread")


# -- helpers -------------------------------------------------------------------------------------

def mednns_subprocess(args: list[str], cwd: Path) -> subprocess.Popen:
    """``python -m mednns ...`` on one thread, run from ``cwd``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDNNS_DEBUG": "1"}
    return subprocess.Popen([sys.executable, "-m", "mednns", *args], env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def invoke(*args: Any):
    """The CLI in-process; a wide terminal so that tables and messages are not wrapped."""
    return CliRunner().invoke(cli, [str(a) for a in args], env={"COLUMNS": "400"})


# -- a trained run, once per module ----------------------------------------------------------------

def run_config(output_dir: Path, name: str, npz: Path, zoo: dict[str, Any] | None = None,
               train: bool = True) -> dict[str, Any]:
    stages = [{"name": "train_supernet", "args": {"space": TINY_SPACE, **TINY_STAGE}}] if train else []
    if zoo is not None:
        stages.append({"name": "build_zoo", "args": zoo})
    return {"name": name, "seed": 0, "device": "cpu", "output_dir": str(output_dir),
            "datasets": [{"name": "npz", "args": {"path": str(npz)}}], "stages": stages}


@dataclass
class Trained:
    root: Path
    npz: Path
    run_dir: Path

    def copy(self, tmp_path: Path, name: str = "run") -> Path:
        """A private copy of the trained run directory (for tests that write into it)."""
        target = tmp_path / name
        shutil.copytree(self.run_dir, target)
        return target


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Trained:
    """A run directory whose train_supernet stage trained one tiny OFA-ResNet on a 3-class 12 px npz."""
    root = tmp_path_factory.mktemp("trained")
    npz = write_tiny_npz(root / f"{DATASET}.npz")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        manager = make_manager()
        results = execute(prepare_run(manager, validate_config(manager, run_config(root / "runs", "trained", npz))))
    finally:
        torch.set_num_threads(threads)
    assert results["stages"]["train_supernet"]["status"] == "complete"
    return Trained(root, npz, root / "runs" / "trained")


def supernet_folder(run_dir: Path) -> Path:
    return run_dir / "stages" / "train_supernet" / DATASET


def plan_hashes(run_dir: Path, samples: int, anchors: int = 0, seed: int = 0) -> list[str]:
    space, metadata = load_supernet(supernet_folder(run_dir), manager=make_manager())
    plan = plan_architectures(space, space_name=metadata["space"]["name"], dataset=DATASET, samples=samples,
                              anchors=anchors, seed=seed)
    return [p.arch_hash for p in plan]


def rows_of(path: Path) -> list[dict[str, Any]]:
    """Every row in id order, the encoding as a list (rows compare with ==)."""
    with ZooStore(path, readonly=True) as store:
        return [{**r, "encoding": r["encoding"].tolist()} for r in store.models()]


def by_hash(path: Path) -> dict[str, dict[str, Any]]:
    return {r["arch_hash"]: r for r in rows_of(path)}


def assert_same_models(a: Path, b: Path, tolerance: float = 1e-6) -> None:
    """Same architectures with the same metrics (within ``tolerance``), costs, encodings and origins."""
    left, right = by_hash(a), by_hash(b)
    assert set(left) == set(right)
    for digest, row in left.items():
        other = right[digest]
        for key in ("arch", "params", "macs", "origin", "val_n", "test_n"):
            assert row[key] == other[key], (digest, key)
        assert row["encoding"] == other["encoding"]
        for column in METRIC_COLUMNS:
            assert row[column] == pytest.approx(other[column], abs=tolerance), (digest, column)


def small_protocol(**kwargs: Any) -> ZooProtocol:
    return ZooProtocol(**{**SMALL, "max_val_images": None, **kwargs})


# -- 1. the stage in a run -----------------------------------------------------------------------

def test_run_with_train_supernet_then_build_zoo_fills_the_store_and_rerun_skips(trained, tmp_path):
    run_dir = trained.copy(tmp_path)
    zoo_args = {"samples": 6, "anchors": 2, **SMALL, "max_val_images": 20, "progress": False}
    config = tmp_path / "zoo.yaml"
    config.write_text(yaml.safe_dump(run_config(tmp_path, "run", trained.npz, zoo_args)))

    result = invoke("run", config)
    assert result.exit_code == 0, result.output
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "complete"
    assert results["stages"]["train_supernet"]["status"] == "skipped"  # the trained supernet is reused
    stage = results["stages"]["build_zoo"]
    assert stage["status"] == "complete"
    store_path = run_dir / "stages" / "build_zoo" / "zoo.sqlite"
    assert Path(stage["results"]["store"]) == store_path and stage["results"]["rows"] == 10
    summary = stage["results"]["datasets"][DATASET]
    assert (summary["planned"], summary["in_shard"], summary["already_stored"], summary["evaluated"]) == (10, 10, 0, 10)
    assert json.loads((run_dir / "stages" / "build_zoo" / "summary.json").read_text()) == stage["results"]

    space, metadata = load_supernet(supernet_folder(run_dir), manager=make_manager())
    rows = rows_of(store_path)
    assert len(rows) == 2 + 2 + 6
    assert [r["arch_hash"] for r in rows] == plan_hashes(run_dir, samples=6, anchors=2)  # plan order
    assert len({r["arch_hash"] for r in rows}) == len(rows)
    assert [r["origin"] for r in rows] == ["extreme"] * 2 + ["anchor"] * 2 + ["sample"] * 6
    assert {(r["dataset"], r["space"]) for r in rows} == {(DATASET, "ofa_resnet")}
    for row in rows:
        arch = space.arch_from_json(row["arch"])
        assert space.arch_to_json(arch) == row["arch"] and space.arch_hash(arch) == row["arch_hash"]
        assert len(row["encoding"]) == space.encoding_dim
        assert row["encoding"] == space.encode(arch).tolist()
        assert {"params": row["params"], "macs": row["macs"]} == space.cost(arch, (12, 12))
        for split in ("val", "test"):
            assert 0.0 <= row[f"{split}_acc"] <= 1.0 and 0.0 <= row[f"{split}_auc"] <= 1.0
            assert math.isfinite(row[f"{split}_loss"]) and row[f"{split}_loss"] > 0
        assert (row["val_n"], row["test_n"]) == (20, SIZES["test"])  # val capped, test whole
        assert row["eval_seconds"] > 0
    assert rows[0]["params"] == max(r["params"] for r in rows)  # largest first, then smallest
    assert rows[1]["params"] == min(r["params"] for r in rows)

    with ZooStore(store_path, readonly=True) as store:
        (supernet,) = store.supernets()
        assert supernet["weights_sha256"] == sha256_file(supernet_folder(run_dir) / "supernet.safetensors")
        assert supernet["metadata"]["dataset"]["name"] == DATASET
        # the supernet's own metadata, plus the validation majority-class rate the source gate compares with
        expected = majority_rate("multi-class", NpzDataset(trained.npz).split("val").labels)
        assert supernet["metadata"].pop("val_majority_rate") == pytest.approx(expected)
        assert supernet["metadata"] == metadata
        (protocol_id,) = store.protocols_of(supernet["id"])
        assert store.protocol(protocol_id) == {**SMALL, "max_val_images": 20, "max_test_images": None, "seed": 0}

    again = invoke("run", config)
    assert again.exit_code == 0, again.output
    results = json.loads((run_dir / "results.json").read_text())
    assert {s: r["status"] for s, r in results["stages"].items()} == {"train_supernet": "skipped",
                                                                     "build_zoo": "skipped"}
    assert rows_of(store_path) == rows  # nothing evaluated or rewritten

    # more samples in the config: the stage runs again on its kept store and evaluates only the new ones
    config.write_text(yaml.safe_dump(run_config(tmp_path, "run", trained.npz, {**zoo_args, "samples": 8})))
    grown = invoke("run", config)
    assert grown.exit_code == 0, grown.output
    stage = json.loads((run_dir / "results.json").read_text())["stages"]["build_zoo"]
    assert stage["status"] == "complete"
    summary = stage["results"]["datasets"][DATASET]
    assert (summary["planned"], summary["already_stored"], summary["evaluated"]) == (12, 10, 2)
    grown_rows = rows_of(store_path)
    assert grown_rows[:10] == rows
    assert [r["arch_hash"] for r in grown_rows] == plan_hashes(run_dir, samples=8, anchors=2)


# -- 2. dedup and resume in-process ----------------------------------------------------------------

def test_growing_the_sample_count_evaluates_only_the_new_architectures(trained, tmp_path):
    folder = supernet_folder(trained.run_dir)
    dataset = NpzDataset(trained.npz)
    store_path, fresh_path = tmp_path / "zoo.sqlite", tmp_path / "fresh.sqlite"
    protocol = small_protocol()
    with ZooStore(store_path) as store:
        first = build_zoo(store, folder, dataset, settings=BuildSettings(samples=4, progress=False),
                          protocol=protocol, manager=make_manager())
        assert (first["planned"], first["already_stored"], first["evaluated"]) == (6, 0, 6)
        before = store.models()
        second = build_zoo(store, folder, dataset, settings=BuildSettings(samples=8, progress=False),
                           protocol=protocol, manager=make_manager())
        assert (second["planned"], second["already_stored"], second["evaluated"]) == (10, 6, 4)
        after = store.models()
        third = build_zoo(store, folder, dataset, settings=BuildSettings(samples=8, progress=False),
                          protocol=protocol, manager=make_manager())
        assert (third["already_stored"], third["evaluated"]) == (10, 0)
        assert store.count() == 10 and len(store.supernets()) == 1
    assert len(after) == 10
    for old, new in zip(before, after[:6]):  # the first six rows are untouched, metrics and all
        assert {k: v for k, v in old.items() if k != "encoding"} == {k: v for k, v in new.items() if k != "encoding"}
        assert old["encoding"].tolist() == new["encoding"].tolist()
    assert [r["arch_hash"] for r in after] == plan_hashes(trained.run_dir, samples=8)

    # evaluations are independent of what ran before them: one build of all ten gives the same numbers
    with ZooStore(fresh_path) as store:
        build_zoo(store, folder, dataset, settings=BuildSettings(samples=8, progress=False, commit_every=3),
                  protocol=protocol, manager=make_manager())
    assert_same_models(store_path, fresh_path, tolerance=0.0)


# -- 3. kill -9 and resume ---------------------------------------------------------------------------

def committed_rows(path: Path) -> int:
    """Rows visible to a read-only reader (0 while the store or its table does not exist yet)."""
    if not path.exists():
        return 0
    try:
        db = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return 0
    try:
        return int(db.execute("SELECT COUNT(*) FROM models").fetchone()[0])
    except sqlite3.Error:
        return 0
    finally:
        db.close()


@pytest.mark.slow
def test_killed_build_resumes_to_the_same_store_as_an_uninterrupted_one(trained, tmp_path):
    run_dir = trained.copy(tmp_path)
    samples, commit_every = 60, 2
    total = samples + 2
    args = ["zoo", "build", str(run_dir), "--samples", str(samples), "--set", f"commit_every={commit_every}",
            *SMALL_SET, "--no-progress"]
    store_path = run_dir / "stages" / "build_zoo" / "zoo.sqlite"

    first = mednns_subprocess(args, cwd=tmp_path)
    deadline = time.monotonic() + 120
    while committed_rows(store_path) < 4 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)
    output, _ = first.communicate(timeout=30)
    assert first.returncode == -signal.SIGKILL, f"the build ended before it could be killed:\n{output}"

    plan = plan_hashes(run_dir, samples=samples)
    assert len(plan) == total
    with ZooStore(store_path, readonly=True) as store:  # opens after the kill
        assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    killed = rows_of(store_path)
    done = len(killed)
    assert 4 <= done < total and done % commit_every == 0  # whole batches only
    assert [r["arch_hash"] for r in killed] == plan[:done]  # a prefix of the plan

    resumed = invoke(*args)
    assert resumed.exit_code == 0, resumed.output
    summary = json.loads((run_dir / "stages" / "build_zoo" / "summary.json").read_text())["datasets"][DATASET]
    assert (summary["planned"], summary["already_stored"], summary["evaluated"]) == (total, done, total - done)
    final = rows_of(store_path)
    assert [r["arch_hash"] for r in final] == plan
    assert final[:done] == killed  # the killed process's rows are kept as they were

    other = tmp_path / "uninterrupted.sqlite"
    whole = invoke(*args, "--store", other)
    assert whole.exit_code == 0, whole.output
    # deterministic: the rows evaluated by the killed subprocess equal those evaluated here in one go
    assert_same_models(store_path, other, tolerance=1e-6)


# -- 4. shards and merge -------------------------------------------------------------------------------

def merge_table(output: str) -> list[list[str]]:
    """The data rows of ``zoo merge``'s table (source, added, duplicates, conflicts, supernets added)."""
    rows = []
    for line in output.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) == 5 and cells[0] != "source":
            rows.append(cells)
    return rows


def test_shards_merge_to_the_unsharded_zoo_idempotently_and_conflicts_fail(trained, tmp_path):
    run_dir = trained.copy(tmp_path)
    build = ["zoo", "build", run_dir, "--samples", 7, *SMALL_SET, "--no-progress"]
    plan = plan_hashes(run_dir, samples=7)
    stage_dir = run_dir / "stages" / "build_zoo"
    shards = []
    for i in range(3):
        result = invoke(*build, "--shard", f"{i}/3")
        assert result.exit_code == 0, result.output
        shard = stage_dir / f"zoo.shard-{i}-of-3.sqlite"
        assert shard.is_file()
        assert [r["arch_hash"] for r in rows_of(shard)] == plan[i::3]
        summary = json.loads((stage_dir / f"summary.shard-{i}-of-3.json").read_text())
        assert summary["shard"] == f"{i}/3" and summary["datasets"][DATASET]["in_shard"] == len(plan[i::3])
        shards.append(shard)
    assert not (stage_dir / "zoo.sqlite").exists()

    single = tmp_path / "single.sqlite"
    assert invoke(*build, "--store", single).exit_code == 0
    merged = tmp_path / "merged.sqlite"
    result = invoke("zoo", "merge", merged, *shards)
    assert result.exit_code == 0, result.output
    assert [row[1:] for row in merge_table(result.output)] == [[str(len(plan[i::3])), "0", "0", "1" if i == 0 else "0"]
                                                               for i in range(3)]
    assert_same_models(merged, single, tolerance=1e-6)
    with ZooStore(merged, readonly=True) as store:
        assert len(store.supernets()) == 1 and store.count() == len(plan)

    again = invoke("zoo", "merge", merged, *shards)
    assert again.exit_code == 0, again.output
    assert [row[1:] for row in merge_table(again.output)] == [["0", str(len(plan[i::3])), "0", "0"] for i in range(3)]
    assert len(rows_of(merged)) == len(plan)

    edited = tmp_path / "edited.sqlite"
    shutil.copy(shards[1], edited)
    digest = plan[1]
    db = sqlite3.connect(edited)
    with db:
        db.execute("UPDATE models SET val_acc = val_acc + 0.25 WHERE arch_hash = ?", (digest,))
    db.close()
    kept = by_hash(merged)[digest]["val_acc"]
    conflict = invoke("zoo", "merge", merged, edited)
    assert conflict.exit_code == 1, conflict.output
    assert any(line.startswith("conflict") and digest in line for line in conflict.output.splitlines()), \
        conflict.output
    assert by_hash(merged)[digest]["val_acc"] == kept  # the target's row is kept
    assert len(rows_of(merged)) == len(plan)


# -- 5. the evaluator against the reference evaluation path --------------------------------------------

@pytest.mark.parametrize("task, kwargs", [("binary", {"n_classes": 2}), ("multi-class", {"n_classes": 4}),
                                          ("multi-label", {"n_classes": 3, "multilabel": True})])
def test_subnet_evaluator_matches_evaluate_for_every_task(task, kwargs):
    dataset = tiny_dataset("t", seed=5, **kwargs)
    assert dataset.info.task is Task(task)
    torch.manual_seed(0)
    space = tiny_resnet(1, kwargs["n_classes"]).eval()
    state = {k: v.clone() for k, v in space.state_dict().items()}
    protocol = ZooProtocol(calibration_images=48, calibration_batch_size=16, max_val_images=24, max_test_images=None)
    data = EvaluationData.from_dataset(dataset, protocol, channels=1)
    assert [len(b) for b in data.calibration] == [16, 16, 16]
    assert (len(data.val_x), len(data.test_x)) == (24, 32) and data.images_per_subnet == 48 + 24 + 32
    if task == "multi-label":
        assert data.val_y.shape == (24, 3)
    # batches of 10 cross the validation/test boundary of the single inference pass
    plain = SubnetEvaluator(space, data, batch_size=10, channels_last=False)
    fast = SubnetEvaluator(space, data, channels_last=True)
    archs = [space.largest(), space.smallest(), space.canonical(space.sample(random.Random(1)))]
    for arch in archs:
        got, channels_last = plain(arch), fast(arch)
        for split, x, y in (("val", data.val_x, data.val_y), ("test", data.test_x, data.test_y)):
            reference = evaluate(space, arch, data.calibration, x, y, task, extract=True)
            assert got[split]["n"] == channels_last[split]["n"] == reference["n"] == len(y)
            for metric in ("acc", "auc", "loss"):
                assert got[split][metric] == pytest.approx(reference[metric], abs=1e-5), (split, metric)
                assert channels_last[split][metric] == pytest.approx(got[split][metric], abs=1e-4), (split, metric)
        assert got["seconds"] > 0
    assert plain(archs[2]) | {"seconds": 0} == plain(archs[2]) | {"seconds": 0}  # repeatable
    # the supernet itself is left alone (weights and BN buffers)
    assert all(torch.equal(v, state[k]) for k, v in space.state_dict().items())


def test_evaluation_data_refuses_another_normalization():
    dataset = tiny_dataset("t", seed=5)
    protocol = small_protocol()
    with pytest.raises(UsageError, match="trained with"):
        EvaluationData.from_dataset(dataset, protocol, channels=1, mean=[0.9], std=[0.01])


# -- 6. one protocol per supernet and store -----------------------------------------------------------

def test_building_under_another_protocol_into_the_same_store_is_refused(trained, tmp_path):
    folder = supernet_folder(trained.run_dir)
    dataset = NpzDataset(trained.npz)
    settings = BuildSettings(samples=1, progress=False)
    store_path = tmp_path / "zoo.sqlite"
    with ZooStore(store_path) as store:
        build_zoo(store, folder, dataset, settings=settings, protocol=small_protocol(), manager=make_manager())
        rows = store.models()
        assert len(rows) == 3
        with pytest.raises(UsageError, match="protocol") as error:
            build_zoo(store, folder, dataset, settings=settings, protocol=small_protocol(calibration_images=16),
                      manager=make_manager())
        assert "calibration_images" in str(error.value)
        assert store.count() == 3
        same = build_zoo(store, folder, dataset, settings=settings, protocol=small_protocol(), manager=make_manager())
        assert (same["already_stored"], same["evaluated"]) == (3, 0)

    # in a run: another protocol in the config is refused on the kept store; --restart discards the store
    run_dir = trained.copy(tmp_path)
    config = tmp_path / "zoo.yaml"
    for calibration_images, restart, code in ((32, False, 0), (16, False, 2), (16, True, 0)):
        zoo_args = {"samples": 1, **SMALL, "calibration_images": calibration_images, "progress": False}
        config.write_text(yaml.safe_dump(run_config(tmp_path, "run", trained.npz, zoo_args)))
        result = invoke("run", config, *(["--restart"] if restart else []))
        assert result.exit_code == code, result.output
        if code == 2:
            assert "protocol" in result.output and "--restart" in result.output and "Traceback" not in result.output
    with ZooStore(run_dir / "stages" / "build_zoo" / "zoo.sqlite", readonly=True) as store:
        assert store.count() == 3
        (supernet,) = store.supernets()
        assert [store.protocol(p)["calibration_images"] for p in store.protocols_of(supernet["id"])] == [16]
    shutil.rmtree(run_dir)

    # through the command: the stage's default protocol differs from the small one
    run_dir = trained.copy(tmp_path)
    assert invoke("zoo", "build", run_dir, "--samples", 1, *SMALL_SET, "--no-progress").exit_code == 0
    result = invoke("zoo", "build", run_dir, "--samples", 1, "--no-progress")
    assert result.exit_code == 2 and "protocol" in result.output and "Traceback" not in result.output


def test_zoo_build_command_starts_from_the_runs_build_zoo_arguments(trained, tmp_path):
    run_dir = trained.copy(tmp_path)
    config = tmp_path / "zoo.yaml"
    config.write_text(yaml.safe_dump(run_config(tmp_path, "run", trained.npz, {"samples": 1, **SMALL,
                                                                                 "progress": False})))
    assert invoke("run", config).exit_code == 0
    result = invoke("zoo", "build", run_dir, "--samples", 3, "--no-progress")  # no --set: same protocol
    assert result.exit_code == 0, result.output
    with ZooStore(run_dir / "stages" / "build_zoo" / "zoo.sqlite", readonly=True) as store:
        assert store.count() == 2 + 3
        assert {store.protocol(p)["calibration_images"] for p in store.protocols_of(1)} == {SMALL["calibration_images"]}


# -- 7. stats and export ---------------------------------------------------------------------------------

def test_stats_and_export_commands(trained, tmp_path):
    run_dir = trained.copy(tmp_path)
    built = invoke("zoo", "build", run_dir, "--samples", 3, "--anchors", 1, *SMALL_SET, "--no-progress")
    assert built.exit_code == 0, built.output
    store_path = run_dir / "stages" / "build_zoo" / "zoo.sqlite"
    rows = rows_of(store_path)
    assert len(rows) == 6

    table = invoke("zoo", "stats", run_dir)
    assert table.exit_code == 0, table.output
    line = next(line for line in table.output.splitlines() if DATASET in line and "ofa_resnet" in line)
    assert line.split("│")[3].strip() == "6"  # dataset, space, models
    by_file = invoke("zoo", "stats", store_path)
    assert by_file.exit_code == 0 and line in by_file.output

    stats = json.loads(invoke("zoo", "stats", run_dir, "--json").output)
    assert len(stats) == 1
    (group,) = stats
    assert (group["dataset"], group["space"], group["n"]) == (DATASET, "ofa_resnet", 6)
    assert group["origins"] == {"extreme": 2, "anchor": 1, "sample": 3}
    assert group["params"] == {"min": min(r["params"] for r in rows), "max": max(r["params"] for r in rows)}
    assert group["metrics"]["val_acc"]["max"] == pytest.approx(max(r["val_acc"] for r in rows))

    jsonl = tmp_path / "out" / "zoo.jsonl"
    result = invoke("zoo", "export", run_dir, "--format", "jsonl", "-o", jsonl)
    assert result.exit_code == 0 and "6 rows written" in result.output
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(records) == 6 and all(list(r) == export_columns() for r in records)
    assert [r["arch_hash"] for r in records] == [r["arch_hash"] for r in rows]
    assert all(r["protocol"]["calibration_images"] == 32 and isinstance(r["arch"], dict) for r in records)
    assert records[0]["encoding"] == rows[0]["encoding"]

    csv_file = tmp_path / "zoo.csv"
    assert invoke("zoo", "export", run_dir, "--format", "csv", "-o", csv_file).exit_code == 0
    reader = csv.reader(io.StringIO(csv_file.read_text()))
    header, *lines = list(reader)
    assert header == export_columns() and len(lines) == 6
    to_stdout = invoke("zoo", "export", store_path, "--dataset", "nope")
    assert to_stdout.exit_code == 0 and to_stdout.output.splitlines() == [",".join(export_columns())]

    missing = invoke("zoo", "stats", tmp_path / "nowhere")
    assert missing.exit_code == 2
    assert "Traceback" not in missing.output
    errors = [line for line in missing.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "no zoo store" in errors[0] and "nowhere" in errors[0]


# -- 8. stage errors -------------------------------------------------------------------------------------

def test_build_zoo_without_a_trained_supernet_is_a_usage_error_with_a_hint(trained, tmp_path):
    manager = make_manager()
    data = run_config(tmp_path, "untrained", trained.npz, {"samples": 1, "progress": False}, train=False)
    with pytest.raises(UsageError, match="no trained supernet") as error:
        execute(prepare_run(manager, validate_config(manager, data)))
    assert "train_supernet" in error.value.hint
    state = json.loads((tmp_path / "untrained" / "stages" / "build_zoo" / "stage.json").read_text())
    assert state["status"] == "failed"


def test_build_zoo_of_an_unknown_dataset_names_it(trained, tmp_path):
    run_dir = trained.copy(tmp_path)
    manager = make_manager()
    data = run_config(tmp_path, "run", trained.npz, {"samples": 1, "datasets": ["unknown"], "progress": False})
    with pytest.raises(UsageError, match="unknown"):
        execute(prepare_run(manager, validate_config(manager, data)))
    assert not (run_dir / "stages" / "build_zoo" / "zoo.sqlite").exists()
    result = invoke("zoo", "build", run_dir, "--dataset", "unknown", "--no-progress")
    assert result.exit_code == 2 and "unknown" in result.output and "Traceback" not in result.output


def test_a_bad_shard_is_refused_before_any_work(trained, tmp_path):
    manager = make_manager()
    data = run_config(tmp_path, "sharded", trained.npz, {"samples": 1, "shard": "3/3"})
    config = validate_config(manager, data)  # a string, well typed
    with pytest.raises(ConfigError) as error:
        prepare_run(manager, config)
    assert "stages[1]" in str(error.value) and "3/3" in str(error.value)
    assert not (tmp_path / "sharded").exists()

    path = tmp_path / "sharded.yaml"
    path.write_text(yaml.safe_dump(data))
    validated = invoke("validate", path)
    assert validated.exit_code == 2 and "stages[1]" in validated.output and "Traceback" not in validated.output
    run_dir = trained.copy(tmp_path)
    for bad in ("3/3", "1-3", "-1/2"):
        result = invoke("zoo", "build", run_dir, "--shard", bad, "--no-progress")
        assert result.exit_code == 2 and "shard" in result.output, (bad, result.output)
    assert not (run_dir / "stages" / "build_zoo").exists()


# -- the plugin stays light ------------------------------------------------------------------------------


def test_a_manual_shard_builds_in_one_process_and_refuses_explicit_workers(trained, tmp_path):
    run_dir = trained.copy(tmp_path)
    refused = invoke("zoo", "build", run_dir, "--samples", 2, "--shard", "0/2", "--workers", 2, *SMALL_SET,
                     "--no-progress")
    assert refused.exit_code == 2 and "'shard' and 'workers' both split the plan" in refused.output
    built = invoke("zoo", "build", run_dir, "--samples", 2, "--shard", "0/2", *SMALL_SET, "--no-progress")  # auto
    assert built.exit_code == 0, built.output
    with ZooStore(run_dir / "stages" / "build_zoo" / "zoo.shard-0-of-2.sqlite", readonly=True) as store:
        assert store.count() == 2  # every other entry of the 4-entry plan
