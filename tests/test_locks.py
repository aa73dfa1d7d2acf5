"""One process at a time per run directory and zoo store (mednns.locks)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mednns.cli import cli
from mednns.errors import UsageError
from mednns.locks import held
from supernet_helpers import write_tiny_npz


def dead_pid() -> int:
    """The id of a process that has already exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def write_lock(path: Path, **fields) -> None:
    path.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": "2026-01-01T00:00:00",
                                "command": "mednns run other.yaml", **fields}))


def test_a_held_lock_names_its_holder_and_is_released_after_the_block(tmp_path):
    lock = tmp_path / "x.lock"
    with held(lock, "the thing"):
        holder = json.loads(lock.read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(UsageError, match=rf"the thing is in use by process {os.getpid()} since"):
            with held(lock, "the thing"):
                pass
        assert lock.is_file()  # the refused attempt did not remove the holder's lock
    assert not lock.exists()
    with pytest.raises(RuntimeError):  # released on errors too
        with held(lock, "the thing"):
            raise RuntimeError("boom")
    assert not lock.exists()


def test_a_lock_left_by_a_dead_process_or_damaged_is_taken_over(tmp_path, mednns_logs):
    lock = tmp_path / "x.lock"
    write_lock(lock, pid=dead_pid())
    with held(lock, "the thing"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert "no longer runs" in mednns_logs.text
    lock.write_text("{not json")
    os.utime(lock, (1, 1))  # old: not a lock being written right now
    with held(lock, "the thing"):
        pass
    assert not lock.exists()


def test_a_lock_from_another_host_cannot_be_checked_and_is_respected(tmp_path):
    lock = tmp_path / "x.lock"
    write_lock(lock, pid=dead_pid(), host="elsewhere")
    with pytest.raises(UsageError, match="on host elsewhere") as error:
        with held(lock, "the thing"):
            pass
    assert str(lock) in error.value.hint


def test_a_second_run_on_a_locked_run_directory_exits_2_naming_the_first(tmp_path):
    npz = write_tiny_npz(tmp_path / "a.npz", seed=0, n_classes=2)
    config = {"name": "run", "seed": 0, "output_dir": str(tmp_path),
              "datasets": [{"name": "npz", "args": {"path": str(npz), "name": "a"}}],
              "stages": [{"name": "dataset_summary"}]}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "run").mkdir()
        write_lock(tmp_path / "run" / ".mednns.lock", pid=sleeper.pid)
        result = CliRunner().invoke(cli, ["run", str(path)])
        assert result.exit_code == 2
        assert f"in use by process {sleeper.pid}" in result.output and "mednns run other.yaml" in result.output
        assert not (tmp_path / "run" / "results.json").exists()  # nothing was run
    finally:
        sleeper.kill()
        sleeper.wait()
    result = CliRunner().invoke(cli, ["run", str(path)])  # its holder is gone: the lock is taken over
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "run" / ".mednns.lock").exists()


def test_two_zoo_builds_on_one_store_do_not_run_side_by_side(tmp_path):
    npz = write_tiny_npz(tmp_path / "a.npz", seed=0, n_classes=2)
    config = {"name": "run", "seed": 0, "output_dir": str(tmp_path),
              "datasets": [{"name": "npz", "args": {"path": str(npz), "name": "a"}}],
              "stages": [{"name": "build_zoo", "args": {"samples": 2}}]}
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    store = run_dir / "stages" / "build_zoo" / "zoo.sqlite"
    with held(store.with_name("zoo.sqlite.lock"), "the zoo store"):
        result = CliRunner().invoke(cli, ["zoo", "build", str(run_dir)])
    assert result.exit_code == 2 and f"the zoo store {store} is in use by process {os.getpid()}" in result.output
    result = CliRunner().invoke(cli, ["zoo", "build", str(run_dir)])  # free now: on to the next problem
    assert result.exit_code == 2 and "no trained supernet" in result.output
    assert not store.with_name("zoo.sqlite.lock").exists()
