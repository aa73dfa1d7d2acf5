"""The train_supernet stage and the ``mednns train-supernet`` command: config, runs, resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from mednns.config import validate_config
from mednns.errors import ConfigError
from mednns.runner import execute
from mednns.runs import prepare_run
from mednns.training import load_supernet, read_metrics_csv
from supernet_helpers import TINY_RESNET, make_manager, write_tiny_npz

#: Stage args that keep a run to a few seconds.
TINY_STAGE = {"full_epochs": 1, "shrink_epochs": 1, "batch_size": 16, "num_random": 1, "calibration_images": 32,
              "calibration_batch_size": 16, "final_samples": 3, "progress": False}
TINY_SPACE = {"name": "ofa_resnet", "args": {"preset": "cpu", **TINY_RESNET}}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def manager():
    return make_manager()


def run_config(tmp_path: Path, datasets: list[dict], **stage_args) -> dict:
    return {"name": "supernets", "seed": 0, "device": "cpu", "output_dir": str(tmp_path / "runs"),
            "datasets": datasets,
            "stages": [{"name": "train_supernet", "args": {"space": TINY_SPACE, **TINY_STAGE, **stage_args}}]}


def test_stage_args_are_validated_and_defaults_resolved(manager, tmp_path):
    npz = write_tiny_npz(tmp_path / "tiny.npz")
    data = {"stages": [{"name": "train_supernet"}], "datasets": [{"name": "npz", "args": {"path": str(npz)}}]}
    config = validate_config(manager, data)
    args = config.stages[0]["args"]
    assert args["space"] is None and args["datasets"] is None
    assert args["full_epochs"] >= 1 and args["batch_size"] == 128 and args["hflip"] is False
    run = prepare_run(manager, config, tmp_path / "run")
    assert run.stages[0][1].space_spec == {"name": "ofa_resnet", "args": {"preset": "cpu"}}

    bad = {"stages": [{"name": "train_supernet", "args": {"batch_size": "big", "space": {"name": "ofa_resnt"},
                                                          "phases": {"depth": {"epochs": "x"}}}}]}
    with pytest.raises(ConfigError) as error:
        validate_config(manager, bad)
    text = str(error.value)
    assert "stages[0].args.batch_size: expected int" in text
    assert "stages[0].args.space.name: Unknown search space 'ofa_resnt'. Did you mean 'ofa_resnet'?" in text
    assert "stages[0].args.phases.depth.epochs: expected float" in text

    for args, message in (({"space": {"name": "ofa_resnet", "args": {"num_classes": 4}}}, "num_classes is set from"),
                          ({"phases": {"depth": {"epoch": 1}}}, "unknown key(s) epoch")):
        config = validate_config(manager, {"stages": [{"name": "train_supernet", "args": args}]})
        with pytest.raises(ConfigError, match="stages\\[0\\]") as error:
            prepare_run(manager, config, tmp_path / "bad")
        assert message in str(error.value)


def test_stage_trains_one_supernet_per_dataset_and_skips_when_complete(manager, tmp_path):
    gray = write_tiny_npz(tmp_path / "gray.npz", n_classes=3)
    rgb = write_tiny_npz(tmp_path / "rgb.npz", channels=3, n_classes=2, seed=1)
    data = run_config(tmp_path, [{"name": "npz", "args": {"path": str(gray)}},
                                 {"name": "npz", "args": {"path": str(rgb)}}],
                      phases={"expand": {"epochs": 0}, "width": {"epochs": 0}})
    results = execute(prepare_run(manager, validate_config(manager, data)))
    stage = results["stages"]["train_supernet"]
    assert results["status"] == "complete" and stage["status"] == "complete"
    root = tmp_path / "runs" / "supernets" / "stages" / "train_supernet"
    for name, channels, classes in (("gray", 1, 3), ("rgb", 3, 2)):
        final = json.loads((root / name / "final.json").read_text())
        assert stage["results"][name] == final and final["dataset"] == name
        space, metadata = load_supernet(root / name, manager=manager)
        args = metadata["space"]["args"]
        assert (args["in_channels"], args["num_classes"]) == (channels, classes)
        net = space.extract(space.smallest()).eval()
        assert net(torch.zeros(2, channels, 12, 12)).shape == (2, classes)
        assert [r["phase"] for r in read_metrics_csv(root / name / "metrics.csv")] == ["full", "depth"]
    again = execute(prepare_run(manager, validate_config(manager, data)))
    assert again["stages"]["train_supernet"]["status"] == "skipped"


def mednns_subprocess(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDNNS_DEBUG": "1"}
    return subprocess.Popen([sys.executable, "-m", "mednns", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


@pytest.mark.slow
def test_killed_run_resumes_from_its_checkpoint(tmp_path):
    npz = write_tiny_npz(tmp_path / "tiny.npz", sizes=(192, 32, 32))
    config = tmp_path / "train.yaml"
    data = run_config(tmp_path, [{"name": "npz", "args": {"path": str(npz)}}], full_epochs=4, shrink_epochs=2)
    config.write_text(yaml.safe_dump(data))
    folder = tmp_path / "runs" / "supernets" / "stages" / "train_supernet" / "tiny"
    latest = folder / "checkpoints" / "latest.json"

    first = mednns_subprocess(["run", str(config)])
    deadline = time.monotonic() + 120
    while not latest.exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    output, _ = first.communicate(timeout=30)
    assert first.returncode == -signal.SIGKILL, f"the run ended before it could be killed:\n{output}"
    done_before = len(read_metrics_csv(folder / "metrics.csv"))
    assert done_before >= 1

    second = mednns_subprocess(["run", str(config)])
    output, _ = second.communicate(timeout=300)
    assert second.returncode == 0, output
    log = (tmp_path / "runs" / "supernets" / "run.log").read_text()
    second_part = log[log.rindex("run supernets in"):]
    assert "tiny: resuming from checkpoint" in second_part
    assert "tiny: full epoch 1/4" not in second_part  # did not start over
    rows = read_metrics_csv(folder / "metrics.csv")
    assert [(r["phase"], r["epoch"]) for r in rows] == [("full", "1"), ("full", "2"), ("full", "3"), ("full", "4"),
                                                        ("depth", "1"), ("depth", "2"), ("expand", "1"),
                                                        ("expand", "2"), ("width", "1"), ("width", "2")]
    steps = [int(r["step"]) for r in rows]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    results = json.loads((tmp_path / "runs" / "supernets" / "results.json").read_text())
    assert results["status"] == "complete"
    assert results["stages"]["train_supernet"]["results"]["tiny"]["test"]["largest"]["n"] == 32


def test_train_supernet_command_on_a_generated_npz(tmp_path):
    from mednns.cli import cli

    npz = write_tiny_npz(tmp_path / "scans.npz", n_classes=2)
    args = ["train-supernet", "--dataset", "npz", "--dataset-arg", f"path={npz}", "--dataset-arg", "modality=CT",
            "--space", "ofa_resnet", "--preset", "cpu", *[a for k, v in TINY_RESNET.items()
                                                          for a in ("--space-arg", f"{k}={json.dumps(v)}")],
            "--epochs", "1", "--max-train-images", "64", "--device", "cpu", "--seed", "2",
            "--output-dir", str(tmp_path / "runs"), "--no-progress",
            *[a for k, v in TINY_STAGE.items() if k not in ("full_epochs", "shrink_epochs", "progress")
              for a in ("--set", f"{k}={v}")]]
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "supernet test metrics" in result.output and "largest" in result.output
    run_dir = tmp_path / "runs" / "supernet-ofa_resnet-npz"
    final = json.loads((run_dir / "stages" / "train_supernet" / "scans" / "final.json").read_text())
    assert final["test"]["smallest"]["n"] == 32 and final["epochs"] == {"full": 1, "depth": 1, "expand": 1, "width": 1}
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    stage_args = resolved["stages"][0]["args"]
    assert resolved["seed"] == 2 and stage_args["max_train_images"] == 64 and stage_args["batch_size"] == 16
    assert stage_args["space"]["args"]["stage_widths"] == [16, 32]
    again = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert again.exit_code == 0 and "train_supernet: skipped" in again.output
    bad = CliRunner().invoke(cli, [*args, "--set", "batch_size=0"])
    assert bad.exit_code == 2 and "batch_size must be >= 1" in bad.output
    sys.modules.pop("mednns_test_spaces", None)


def test_search_space_arguments_are_checked_when_the_stage_is_built():
    from mednns.errors import UsageError
    from mednns.manager import get_plugin_manager

    manager = get_plugin_manager()
    bad = {"name": "ofa_resnet", "args": {"preset": "cpu", "depth_choices": [0, 1_000_000]}}
    with pytest.raises(UsageError, match=r"space.args: OFAResNet: depth_choices must be in \[0, 32\]"):
        manager.create("stages", "train_supernet", space=bad)
    wide = {"name": "ofa_resnet", "args": {"preset": "cpu", "stage_widths": [10**6, 10**6, 10**6, 10**6]}}
    with pytest.raises(UsageError, match="at most 16384 channels"):
        manager.create("stages", "train_supernet", space=wide)
    manager.create("stages", "train_supernet", space={"name": "ofa_resnet", "args": {"preset": "cpu"}})
    deep = {"name": "ofa_mobilenetv3", "args": {"preset": "cpu", "depth_choices": [1, 10_000]}}
    with pytest.raises(UsageError, match=r"space.args: .*at most 8 stages, 32 blocks per stage"):
        manager.create("stages", "train_supernet", space=deep)
