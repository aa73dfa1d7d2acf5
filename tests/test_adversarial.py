"""Bad inputs a real user could give, through the real command line in a subprocess: each gets exit
code 2 and one message that names the problem, no traceback, nothing written outside the test's
folder, and finished work left alone (issue 14)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from supernet_helpers import write_tiny_npz

pytestmark = pytest.mark.slow  # one Python start per case


def mednns(*args: str, cwd: Path, **env_extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200", **env_extra}
    return subprocess.run([sys.executable, "-m", "mednns", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120)


def config(folder: Path, **changes) -> dict:
    npz = write_tiny_npz(folder / "a.npz", seed=0, n_classes=2)
    return {"name": "run", "seed": 0, "output_dir": str(folder / "runs"),
            "datasets": [{"name": "npz", "args": {"path": str(npz), "name": "a"}}],
            "stages": [{"name": "dataset_summary"}], **changes}


def alias_bomb() -> str:
    lines = ["stages: [{name: dataset_summary}]", "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    return "\n".join(lines) + "\n"


def npz_with(folder: Path, name: str, **arrays) -> Path:
    path = write_tiny_npz(folder / f"{name}.npz", seed=0, n_classes=2)
    with np.load(path) as archive:
        merged = {**dict(archive), **arrays}
    np.savez(path, **merged)
    return path


def dataset_config(folder: Path, path: Path) -> str:
    return yaml.safe_dump({**config(folder), "datasets": [{"name": "npz", "args": {"path": str(path), "name": "d"}}]})


def huge_label_npz(folder: Path) -> Path:
    path = write_tiny_npz(folder / "huge.npz", seed=0, n_classes=2)
    with np.load(path) as archive:
        arrays = dict(archive)
    arrays["train_labels"][0] = 2**31 - 1
    np.savez(path, **arrays)
    return path


CASES = {
    "alias bomb": lambda f: alias_bomb(),
    "latin-1 config": lambda f: (yaml.safe_dump(config(f, name="CAFE")).replace("CAFE", "caf\u00e9")
                                 .encode("latin-1")),
    "deep nesting": lambda f: "stages: " + "[" * 200 + "]" * 200 + "\n",
    "run name escapes": lambda f: yaml.safe_dump(config(f, name="../../escape")),
    "empty run name": lambda f: yaml.safe_dump(config(f, name="")),
    "dataset name escapes": lambda f: yaml.safe_dump(
        {**config(f), "datasets": [{"name": "npz", "args": {"path": str(write_tiny_npz(f / "b.npz")),
                                                            "name": "../../../x"}}]}),
    "huge label": lambda f: yaml.safe_dump(
        {**config(f), "datasets": [{"name": "npz", "args": {"path": str(huge_label_npz(f)), "name": "h"}}]}),
    "space too deep": lambda f: yaml.safe_dump({**config(f), "stages": [{"name": "train_supernet", "args": {
        "space": {"name": "ofa_resnet", "args": {"preset": "cpu", "depth_choices": [0, 1000000]}}}}]}),
    "one-class training split": lambda f: dataset_config(
        f, npz_with(f, "one", train_labels=np.zeros((96, 1), np.int64))),
    "five channels": lambda f: dataset_config(f, npz_with(f, "five", **{
        f"{s}_images": np.zeros((n, 12, 12, 5), np.uint8) for s, n in (("train", 96), ("val", 32), ("test", 32))})),
    "output_dir is a file": lambda f: ((f / "a_file").write_text(""),
                                       yaml.safe_dump(config(f, output_dir=str(f / "a_file"))))[1],
}
EXPECTED = {
    "alias bomb": "expands to more than 200,000 values",
    "latin-1 config": "is not UTF-8 text",
    "deep nesting": "nested deeper than 64 levels",
    "run name escapes": "the run name '../../escape' would leave its folder",
    "empty run name": "the run name must be a non-empty name",
    "dataset name escapes": "the dataset name '../../../x' would leave its folder",
    "huge label": "holds 2147483647",
    "space too deep": "depth_choices must be in [0, 32]",
    "output_dir is a file": "Not a directory",
    "one-class training split": "the training split holds one class only",
    "five channels": "2D images with 5 channels, or volumes",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_input_gets_one_clear_message_and_writes_nothing_outside(tmp_path, case):
    work = tmp_path / "work"
    work.mkdir()
    text = CASES[case](work)
    path = work / "config.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = mednns("run", str(path), cwd=work)
    assert result.returncode == 2, (case, result.stdout, result.stderr)
    output = " ".join((result.stdout + result.stderr).split())
    assert EXPECTED[case] in output, (case, output)
    assert "Traceback" not in output and "looks like a bug" not in output
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    new = [p for p in after if p not in before]
    assert all(p.parts[0] == "work" for p in new), new  # nothing outside the test's folder
    assert not (tmp_path.parent / "escape").exists() and not (tmp_path.parent / "x").exists()


def test_finished_supernets_survive_a_config_change_and_a_second_process(tmp_path):
    """A finished, expensive stage is neither deleted by a changed config nor raced by a second run."""
    from supernet_helpers import TINY_RESNET

    stage = {"name": "train_supernet", "args": {"space": {"name": "ofa_resnet", "args": TINY_RESNET},
                                               "full_epochs": 1, "shrink_epochs": 0, "batch_size": 16,
                                               "calibration_images": 16, "calibration_batch_size": 16,
                                               "final_samples": 1, "progress": False}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config(tmp_path, stages=[stage])))
    first = mednns("run", str(path), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    weights = tmp_path / "runs" / "run" / "stages" / "train_supernet" / "a" / "supernet.safetensors"
    stamp = weights.stat().st_mtime_ns
    stage["args"]["full_epochs"] = 2
    path.write_text(yaml.safe_dump(config(tmp_path, stages=[stage])))
    changed = mednns("run", str(path), cwd=tmp_path)
    output = " ".join((changed.stdout + changed.stderr).split())
    assert changed.returncode == 2 and "running it again would delete" in output and "--restart" in output
    assert weights.stat().st_mtime_ns == stamp


def test_damaged_state_and_stores_are_named_through_the_cli(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config(tmp_path)))
    assert mednns("run", str(path), cwd=tmp_path).returncode == 0
    state = tmp_path / "runs" / "run" / "stages" / "dataset_summary" / "stage.json"
    state.write_text(state.read_text()[:20])  # truncated by a crash
    damaged = mednns("run", str(path), cwd=tmp_path)
    output = " ".join((damaged.stdout + damaged.stderr).split())
    assert damaged.returncode == 2 and "stage.json is damaged" in output and "Traceback" not in output
    assert mednns("run", str(path), "--restart", cwd=tmp_path).returncode == 0  # --restart starts it over
    store = tmp_path / "zoo.sqlite"
    store.write_bytes(os.urandom(8192))
    stats = mednns("zoo", "stats", str(store), cwd=tmp_path)
    output = " ".join((stats.stdout + stats.stderr).split())
    assert stats.returncode == 2 and str(store) in output and "Traceback" not in output


def test_a_plugin_stage_named_to_escape_is_refused_and_named(tmp_path):
    from fakedist import make_distribution

    site = make_distribution(tmp_path / "site", "mednns-escape", {"escapeplugin": """
        import mednns
        from mednns.stages import Stage

        class Victim(Stage):
            def run(self, run):
                return {}

        @mednns.hookimpl
        def register_stages(register):
            register("../../victim", Victim, description="a folder outside the run")
        """}, {"escape": "escapeplugin"})
    listed = mednns("list", "stages", cwd=tmp_path, PYTHONPATH=str(site))
    output = " ".join((listed.stdout + listed.stderr).split())
    assert listed.returncode == 0 and "../../victim" not in listed.stdout.split("Warning")[0]
    assert "plugin 'escape'" in output and "'../../victim' would leave its folder" in output
