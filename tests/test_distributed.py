"""Scaling out: the torchrun environment, a zoo build split into parts (ranks or local workers) that
equals the single-process build, and real 2-process ``torchrun`` jobs on the CPU (gloo): supernet
training that resumes after a rank is killed, a zoo build, and an evaluation whose runs equal a
single-process one."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from mednns.distributed import Distributed
from mednns.errors import UsageError
from mednns.testing import plugin_manager, write_tiny_npz
from mednns.zoo import BuildSettings, Shard, ZooProtocol, ZooStore, build_zoo
from mednns.zoo.parallel import SUBNETS_PER_WORKER, choose_workers, merge_into, part_path
from supernet_helpers import TINY_RESNET

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "mednns"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
#: Columns whose values depend on when and how fast a row was made, not on what it measured.
CIRCUMSTANTIAL = ("created_at", "eval_seconds")


# --- the environment -------------------------------------------------------------------------------

def test_without_torchrun_variables_the_job_is_one_process():
    job = Distributed.from_environment({})
    assert (job.rank, job.world_size, job.is_main, job.active) == (0, 1, True, False)
    assert job.share([1, 2, 3]) == [1, 2, 3]


def test_torchrun_variables_name_the_rank_and_shares_are_disjoint_and_complete():
    env = {"RANK": "1", "WORLD_SIZE": "3", "LOCAL_RANK": "1", "MASTER_ADDR": "localhost", "MASTER_PORT": "29500"}
    job = Distributed.from_environment(env)
    assert (job.rank, job.world_size, job.local_rank, job.is_main, job.active) == (1, 3, 1, False, True)
    items = list(range(8))
    shares = [Distributed(r, 3).share(items) for r in range(3)]
    assert shares[1] == [1, 4, 7] and sorted(sum(shares, [])) == items


@pytest.mark.parametrize("env, message", [
    ({"RANK": "0", "WORLD_SIZE": "2"}, "without LOCAL_RANK, MASTER_ADDR, MASTER_PORT"),
    ({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "rank 2 of world"),
    ({"RANK": "x", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "h", "MASTER_PORT": "1"}, "integers"),
])
def test_a_broken_torchrun_environment_is_a_clear_error(env, message):
    with pytest.raises(UsageError, match=message):
        Distributed.from_environment(env)


def test_auto_workers_pay_for_their_start_and_never_exceed_the_cores(monkeypatch):
    import mednns.zoo.parallel as parallel

    manager = plugin_manager()
    monkeypatch.setattr(parallel, "usable_cores", lambda: 2)
    assert choose_workers("auto", todo=SUBNETS_PER_WORKER - 1, device="cpu", manager=manager)[0] == 1
    assert choose_workers("auto", todo=10 * SUBNETS_PER_WORKER, device="cpu", manager=manager)[0] == 2
    assert choose_workers("auto", todo=10 * SUBNETS_PER_WORKER, device="cuda", manager=manager)[0] == 1
    assert choose_workers(3, todo=1, device="cpu", manager=manager) == (3, "as configured")


def test_workers_refuse_plugins_registered_in_code_and_auto_stays_in_process():
    class InCode:
        pass

    manager = plugin_manager(InCode())
    assert choose_workers("auto", todo=10**6, device="cpu", manager=manager)[0] == 1
    with pytest.raises(UsageError, match="cannot see plugins registered in code"):
        choose_workers(2, todo=10**6, device="cpu", manager=manager)


# --- a split build equals the single-process build --------------------------------------------------

def rows_of(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        columns = [r[1] for r in db.execute("PRAGMA table_info(models)") if r[1] not in CIRCUMSTANTIAL]
        return db.execute(f"SELECT {', '.join(columns)} FROM models ORDER BY id").fetchall()


def assert_same_rows(a: Path, b: Path) -> None:
    """Row for row, ids included; floats within float32 round-off (thread counts change reductions)."""
    rows_a, rows_b = rows_of(a), rows_of(b)
    assert len(rows_a) == len(rows_b) > 0
    for x, y in zip(rows_a, rows_b):
        for u, v in zip(x, y):
            assert u == pytest.approx(v, rel=1e-5, abs=1e-6) if isinstance(u, float) else u == v


def test_parts_merged_in_plan_order_equal_the_single_build_row_for_row(trained_supernets, tmp_path):
    folders, datasets = trained_supernets
    settings, protocol = BuildSettings(samples=9, anchors=2, progress=False), ZooProtocol(calibration_images=32,
                                                                                          calibration_batch_size=16)
    single = tmp_path / "single.sqlite"
    with ZooStore(single) as store:
        for name, folder in folders:
            build_zoo(store, folder, datasets[name], settings=settings, protocol=protocol)
    split = tmp_path / "split" / "zoo.sqlite"
    for index in (1, 0, 2):  # parts finish in any order
        shard = Shard(index, 3)
        with ZooStore(part_path(split, shard)) as part:
            for name, folder in folders:
                build_zoo(part, folder, datasets[name], settings=BuildSettings(samples=9, anchors=2, shard=shard,
                                                                               progress=False), protocol=protocol)
    merged = merge_into(split, folders, settings)
    assert merged == {"parts": 3, "added": len(rows_of(single)), "duplicates": 0}
    assert_same_rows(single, split)
    assert not [p.name for p in split.parent.iterdir() if ".part-" in p.name]  # the parts are merged and gone


@pytest.fixture(scope="module")
def trained_supernets(tmp_path_factory) -> tuple[list[tuple[str, Path]], dict[str, Any]]:
    """Two tiny trained supernets (one epoch per phase) and their datasets."""
    from mednns.testing import tiny_dataset, tiny_space
    from mednns.training import SupernetTrainer, TrainConfig

    root = tmp_path_factory.mktemp("supernets")
    folders, datasets = [], {}
    for seed, name in enumerate("ab"):
        dataset = tiny_dataset(name, seed=seed, n_classes=2 + seed)
        config = TrainConfig(full_epochs=1, shrink_epochs=1, batch_size=16, num_random=1, calibration_images=32,
                             calibration_batch_size=16, final_samples=3, progress=False)
        SupernetTrainer(tiny_space(num_classes=2 + seed), dataset, root / name, config, space_name="ofa_resnet",
                        seed=seed).fit()
        folders.append((name, root / name))
        datasets[name] = dataset
    return folders, datasets


# --- real torchrun jobs -------------------------------------------------------------------------------

TRAIN = {"space": {"name": "ofa_resnet", "args": TINY_RESNET}, "full_epochs": 2, "shrink_epochs": 1,
         "batch_size": 16, "num_random": 1, "calibration_images": 32, "calibration_batch_size": 16,
         "final_samples": 3, "progress": False}
ZOO = {"samples": 12, "anchors": 2, "calibration_images": 32, "calibration_batch_size": 16, "progress": False}
EVALUATE = {"methods": ["mednns", "random_init"], "seeds": [0], "epochs": 2, "batch_size": 16, "train_images": [48],
            "meta_space": {"images": 48, "steps": 20, "eval_every": 10, "images_per_set": 24,
                           "models_per_dataset": 6, "embed_dim": 8, "hidden": 16, "progress": False,
                           "model_encoder": {"name": "arch", "args": {"embed_dim": 8, "hidden": 16}}},
            "report": False, "progress": False}


def write_config(root: Path, name: str, stages: list[dict[str, Any]], datasets: str = "abc") -> Path:
    specs = []
    for seed, dataset in enumerate(datasets):
        npz = write_tiny_npz(root / f"{dataset}.npz", seed=seed, n_classes=2 + seed % 2)
        specs.append({"name": "npz", "args": {"path": str(npz), "name": dataset}})
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "seed": 0, "device": "cpu", "output_dir": str(root / "runs"),
                                    "datasets": specs, "stages": stages}))
    return path


def mednns(*args: Any, torchrun: bool = False, check: bool = True) -> subprocess.CompletedProcess:
    command = [*(TORCHRUN if torchrun else [sys.executable, "-m", "mednns"]), *map(str, args)]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def weights(run: Path, dataset: str = "a") -> dict[str, Any]:
    return load_file(run / "stages" / "train_supernet" / dataset / "supernet.safetensors")


@pytest.mark.slow
def test_torchrun_trains_data_parallel_and_a_killed_job_resumes_to_the_same_weights(tmp_path):
    stages = [{"name": "train_supernet", "args": {**TRAIN, "full_epochs": 6, "datasets": ["a"]}}]
    whole = write_config(tmp_path, "whole", stages, "a")
    mednns("run", whole, torchrun=True)
    metadata = json.loads((tmp_path / "runs" / "whole" / "stages" / "train_supernet" / "a" / "supernet.json")
                          .read_text())
    assert metadata["world_size"] == 2

    killed = write_config(tmp_path, "killed", stages, "a")
    checkpoints = tmp_path / "runs" / "killed" / "stages" / "train_supernet" / "a" / "checkpoints"
    job = subprocess.Popen([*TORCHRUN, "run", str(killed)], env=ENV, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (checkpoints.is_dir() and any(checkpoints.iterdir())) and job.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint within 5 minutes"
        time.sleep(0.02)
    workers = subprocess.run(["pgrep", "-f", "-P", str(job.pid), "mednns"], capture_output=True, text=True).stdout
    ranks = [int(p) for p in workers.split()]
    assert ranks, "the torchrun agent's workers were not found"
    os.kill(ranks[-1], signal.SIGKILL)  # one rank dies; torchrun's agent stops the other
    output, _ = job.communicate(timeout=300)
    assert job.returncode != 0, output[-2000:]
    assert not (checkpoints.parent / "supernet.safetensors").exists()
    again = mednns("run", killed, torchrun=True)
    assert "resuming from checkpoint" in again.stdout + again.stderr
    a, b = weights(tmp_path / "runs" / "whole"), weights(tmp_path / "runs" / "killed")
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


@pytest.mark.slow
def test_torchrun_builds_the_zoo_and_evaluates_like_one_process(tmp_path):
    stages = [{"name": "train_supernet", "args": TRAIN}, {"name": "build_zoo", "args": {**ZOO, "workers": 1}},
              {"name": "evaluate", "args": {**EVALUATE, "datasets": ["b", "c"]}}]
    config = write_config(tmp_path, "job", stages)
    mednns("run", config)  # one process: supernets, zoo, evaluation
    single = tmp_path / "runs" / "job"

    # the same supernets, a zoo built by two ranks into another store: row for row the single build
    store = tmp_path / "ranks.sqlite"
    mednns("zoo", "build", single, "--store", store, "--no-progress", torchrun=True)
    assert_same_rows(single / "stages" / "build_zoo" / "zoo.sqlite", store)

    # the evaluation alone again, its folds shared out across two ranks
    twin = tmp_path / "twin"
    (twin / "runs").mkdir(parents=True)
    subprocess.run(["cp", "-r", str(single), str(twin / "runs" / "job")], check=True)
    subprocess.run(["rm", "-rf", str(twin / "runs" / "job" / "stages" / "evaluate")], check=True)
    done = mednns("run", config, "--output-dir", twin / "runs", torchrun=True)
    assert "train_supernet: complete for this config, skipped" in done.stdout + done.stderr
    ones = json.loads((single / "stages" / "evaluate" / "results.json").read_text())
    twos = json.loads((twin / "runs" / "job" / "stages" / "evaluate" / "results.json").read_text())
    assert list(twos["datasets"]) == ["b", "c"]
    for target in ("b", "c"):
        for method in ("mednns", "random_init"):
            one = ones["datasets"][target]["conditions"]["equal_epochs@48"]["methods"][method]["runs"]
            two = twos["datasets"][target]["conditions"]["equal_epochs@48"]["methods"][method]["runs"]
            assert [r["key"] for r in one] == [r["key"] for r in two]
            for a, b in zip(one, two):
                assert [h["test_acc"] for h in a["history"]] == pytest.approx([h["test_acc"] for h in b["history"]])


def largest_difference(a: dict[str, Any], b: dict[str, Any]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point())


@pytest.mark.slow
def test_two_ranks_train_the_weights_one_process_trains_with_the_global_batch(tmp_path):
    """Synchronized batch norm, augmentation drawn for the global batch and averaged gradients: two
    ranks of batch 16 end as close to one process of batch 32 as that process is to itself on
    another number of threads (float round-off, amplified by training), and far from batch 16."""
    one = {**TRAIN, "batch_size": 32, "crop_padding": 2, "datasets": ["a"]}
    runs = tmp_path / "runs"
    mednns("run", write_config(tmp_path, "one", [{"name": "train_supernet", "args": one}], "a"))
    mednns("run", write_config(tmp_path, "two", [{"name": "train_supernet", "args": {**one, "batch_size": 16}}], "a"),
           torchrun=True)
    threads = write_config(tmp_path, "threads", [{"name": "train_supernet", "args": one}], "a")
    done = subprocess.run([sys.executable, "-m", "mednns", "run", str(threads)], env={**ENV, "OMP_NUM_THREADS": "2"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    half = write_config(tmp_path, "half", [{"name": "train_supernet", "args": {**one, "batch_size": 16}}], "a")
    mednns("run", half)
    ranks = largest_difference(weights(runs / "one"), weights(runs / "two"))
    noise = largest_difference(weights(runs / "one"), weights(runs / "threads"))
    other = largest_difference(weights(runs / "one"), weights(runs / "half"))
    assert 0 < noise and ranks <= 5 * noise and ranks < other / 100, (ranks, noise, other)


def test_each_rank_gets_the_augmentation_one_process_gives_its_images():
    from mednns.seeding import torch_generator
    from mednns.training.augment import Augmentation

    augment = Augmentation(crop_padding=2, hflip=True)
    batch = torch.randn(8, 1, 12, 12)
    whole = augment(batch, torch_generator(7))
    for rank in range(2):  # rank r holds images r, r + 2, ... of the global batch
        part = augment(batch[rank::2], torch_generator(7), part=(rank, 2))
        assert torch.equal(part, whole[rank::2])
    assert not torch.equal(augment(batch[1::2], torch_generator(7)), whole[1::2])  # a rank's own draws differ


@pytest.mark.parametrize("command", [["finetune", "."], ["query", "."]])
def test_single_job_commands_refuse_torchrun(command, tmp_path):
    from click.testing import CliRunner

    from mednns.cli import cli

    env = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "localhost", "MASTER_PORT": "29500"}
    result = CliRunner().invoke(cli, [*command, "--dataset", "x"], env=env)
    assert result.exit_code == 2 and "is one job: under torchrun every rank would run it" in result.output
