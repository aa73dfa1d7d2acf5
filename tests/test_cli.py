"""The command line through click's CliRunner and through real subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fakedist import make_distribution
from mednns.cli import cli

REPOSITORY = Path(__file__).resolve().parents[1]


def write_npz(path: Path, n_classes: int = 3, size: int = 8, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", 30), ("val", 9), ("test", 12)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % n_classes).reshape(-1, 1)
    np.savez_compressed(path, **arrays)
    return path


@pytest.fixture
def config(tmp_path):
    write_npz(tmp_path / "tiny.npz")
    path = tmp_path / "summary.yaml"
    path.write_text(f"""
name: tiny-run
output_dir: {tmp_path / 'runs'}
datasets:
  - name: npz
    args: {{path: {tmp_path / 'tiny.npz'}, modality: CT}}
stages:
  - name: dataset_summary
    args: {{montage_per_class: 2}}
""")
    return path


def invoke(*args, env=None):
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_version_lists_mednns():
    result = invoke("--version")
    assert result.exit_code == 0 and result.output.startswith("mednns 0.1.0")


def test_plugins_json_lists_builtins_with_components():
    result = invoke("plugins", "--json")
    assert result.exit_code == 0
    plugins = {p["name"]: p for p in json.loads(result.output)}
    assert plugins["medmnist"]["status"] == "loaded"
    assert "pneumoniamnist" in plugins["medmnist"]["components"]["datasets"]
    assert plugins["image_folder"]["hooks"] == ["register_datasets"]


def test_plugins_table():
    result = invoke("plugins")
    assert result.exit_code == 0 and "dataset_summary" in result.output


def test_list_datasets_shows_flags_npz_and_image_folder():
    result = invoke("list", "datasets", "--json")
    names = [c["name"] for c in json.loads(result.output)]
    assert {"pneumoniamnist", "chestmnist", "npz", "image_folder"} <= set(names)
    pattern = json.loads(invoke("list", "datasets", "organ*", "--json").output)
    assert [c["name"] for c in pattern] == ["organamnist", "organcmnist", "organmnist3d", "organsmnist"]
    assert "image_folder" in invoke("list", "datasets").output


def test_list_unknown_kind_is_a_usage_error():
    result = invoke("list", "dataset")
    assert result.exit_code == 2 and "Invalid value" in result.output


def test_validate_ok_and_resolved(config):
    result = invoke("validate", str(config), "--resolved")
    assert result.exit_code == 0, result.output
    assert "OK" in result.output and "montage_per_class: 2" in result.output


def test_validate_errors_exit_2_with_paths_and_no_traceback(config):
    result = invoke("validate", str(config), "--set", "datasets.0.name=npzz", "--set", "seed=x")
    assert result.exit_code == 2
    assert "datasets[0].name: Unknown dataset 'npzz'. Did you mean 'npz'? Run 'mednns list datasets'." in result.output
    assert "seed: expected int" in result.output
    assert "Traceback" not in result.output


def test_validate_reports_a_missing_dataset_file(config, tmp_path):
    result = invoke("validate", str(config), "--set", f"datasets.0.args.path={tmp_path / 'nope.npz'}")
    assert result.exit_code == 2
    assert "datasets[0]:" in result.output and "nope.npz" in result.output


def test_run_writes_summary_and_rerun_skips(config, tmp_path):
    result = invoke("run", str(config), "--seed", "3", "--device", "cpu")
    assert result.exit_code == 0, result.output
    run_dir = tmp_path / "runs" / "tiny-run"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "complete"
    assert results["stages"]["dataset_summary"]["results"]["tiny"]["split_sizes"] == {"train": 30, "val": 9, "test": 12}
    summary = json.loads((run_dir / "stages" / "dataset_summary" / "summary.json").read_text())
    assert summary["tiny"]["splits"]["train"]["class_counts"] == {"0": 10, "1": 10, "2": 10}
    assert summary["tiny"]["modality"] == "CT"
    assert (run_dir / "stages" / "dataset_summary" / "montage_tiny.png").exists()
    assert "seed: 3" in (run_dir / "config.yaml").read_text()
    again = invoke("run", str(config), "--seed", "3", "--device", "cpu")
    assert again.exit_code == 0 and "skipped" in again.output


def test_run_output_dir_and_device_validation(config, tmp_path):
    result = invoke("run", str(config), "--output-dir", str(tmp_path / "elsewhere"), "--device", "tpu")
    assert result.exit_code == 2 and "device: invalid device 'tpu'" in result.output


def test_errors_of_the_environment_are_user_errors_with_the_path(config, tmp_path):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(config.read_text().replace("tiny-run", "caf\u00e9").encode("latin-1"))
    result = invoke("validate", str(latin))
    assert result.exit_code == 2 and f"{latin} is not UTF-8 text" in result.output
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    in_a_file = tmp_path / "in_a_file.yaml"
    in_a_file.write_text(config.read_text().replace(str(tmp_path / "runs"), str(blocker)))  # output_dir: a file
    result = invoke("run", str(in_a_file))
    assert result.exit_code == 2 and "Not a directory" in result.output and str(blocker) in result.output
    assert "looks like a bug" not in result.output and "Traceback" not in result.output


def test_environment_error_maps_what_the_machine_raises():
    import sqlite3

    from mednns.errors import environment_error

    assert "No space left on device: /x" in environment_error(OSError(28, "No space left on device", "/x")).message
    assert environment_error(RecursionError("deep")).message == "the input is nested too deeply to read"
    assert environment_error(MemoryError()).message == "out of memory"
    assert "damaged" in environment_error(sqlite3.DatabaseError("file is not a database")).message
    assert environment_error(ValueError("a bug")) is None
    assert environment_error(OSError()) is None  # no path, no reason: not known to be the environment's


def run_mednns(*args, env_extra=None, cwd=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "mednns", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=120)


def test_subprocess_errors_are_one_message_unless_debug(config, tmp_path):
    bad = run_mednns("validate", str(config), "--set", "sed=1")
    assert bad.returncode == 2
    assert "sed: unknown key" in bad.stderr and "did you mean 'seed'" in bad.stderr
    assert "Traceback" not in bad.stderr
    debug = run_mednns("validate", str(config), "--set", "sed=1", "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_subprocess_third_party_plugin_visible_and_hidden_by_allow_list(tmp_path):
    site = make_distribution(tmp_path / "site", "mednns-shown", {"shownplugin": """
        import mednns

        @mednns.hookimpl
        def register_losses(register):
            register("shown_loss", lambda: None, description="from a third party")
        """}, {"shown": "shownplugin"}, version="0.4")
    env = {"PYTHONPATH": str(site)}
    shown = run_mednns("plugins", "--json", env_extra=env)
    assert shown.returncode == 0, shown.stderr
    plugins = {p["name"]: p for p in json.loads(shown.stdout)}
    assert plugins["shown"]["version"] == "0.4" and plugins["shown"]["components"] == {"losses": ["shown_loss"]}
    version = run_mednns("--version", env_extra=env)
    assert "plugin mednns-shown 0.4" in version.stdout
    hidden = run_mednns("plugins", "--json", env_extra={**env, "MEDNNS_LOAD_PLUGINS": ""})
    assert json.loads(hidden.stdout)[-1]["status"] == "not-allowed"
    listed = run_mednns("list", "losses", "--json", env_extra={**env, "MEDNNS_LOAD_PLUGINS": ""})
    assert "shown_loss" not in listed.stdout


def test_subprocess_broken_plugin_warns_but_commands_work(tmp_path):
    site = make_distribution(tmp_path / "site", "mednns-broken", {"brokenplugin2": "import nothing_here\n"},
                             {"broken2": "brokenplugin2"})
    result = run_mednns("list", "datasets", "--json", env_extra={"PYTHONPATH": str(site)})
    assert result.returncode == 0
    assert "plugin 'broken2' (mednns-broken 1.0)" in result.stderr and "nothing_here" in result.stderr
    strict = run_mednns("list", "datasets", env_extra={"PYTHONPATH": str(site), "MEDNNS_STRICT_PLUGINS": "1"})
    assert strict.returncode == 1 and "Error loading plugin 'broken2'" in strict.stderr
    assert "Traceback" not in strict.stderr


def test_subprocess_a_plugin_that_exits_raises_in_its_hooks_or_imports_slowly_is_named_and_contained(
        tmp_path, config):
    site = make_distribution(tmp_path / "site", "mednns-rude", {
        "exitplugin": "import sys\nsys.exit(3)\n",
        "slowplugin": "import time\ntime.sleep(1.2)\n",
        "loudplugin": """
            import mednns

            @mednns.hookimpl
            def register_commands(cli):
                raise RuntimeError("no commands today")

            @mednns.hookimpl
            def stage_finished(run, stage, results, skipped):
                raise RuntimeError("no news today")

            @mednns.hookimpl
            def run_started(run):
                if run.config.name == "refused":
                    raise RuntimeError("no runs today")
            """}, {"exits": "exitplugin", "slow": "slowplugin", "loud": "loudplugin"})
    env = {"PYTHONPATH": str(site)}
    listed = run_mednns("plugins", env_extra=env)
    assert listed.returncode == 0, listed.stderr
    assert "import of 'exitplugin' failed: SystemExit: 3" in listed.stdout
    assert "its import takes 1." in listed.stdout and "'slow'" in listed.stdout
    assert "plugin 'loud': its register_commands hook failed: RuntimeError: no commands today" in listed.stderr
    ran = run_mednns("run", str(config), "--output-dir", str(tmp_path / "out"), env_extra=env)
    assert ran.returncode == 0, ran.stderr  # a notification hook does not end the run
    logged = " ".join(ran.stderr.split())  # the log wraps long lines
    assert "plugin 'loud': its stage_finished hook failed: RuntimeError: no news" in logged
    assert (tmp_path / "out" / "tiny-run" / "results.json").is_file()
    refused = run_mednns("run", str(config), "--set", "name=refused", "--output-dir", str(tmp_path / "out"),
                         env_extra=env)  # run_started may refuse a run: the error names the plugin
    assert refused.returncode == 1 and "plugin 'loud': its run_started hook failed" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_plugins_can_add_commands(tmp_path, monkeypatch):
    site = make_distribution(tmp_path / "site", "mednns-cmd", {"cmdplugin": """
        import click
        import mednns

        @mednns.hookimpl
        def register_commands(cli):
            @cli.command()
            @click.argument("who")
            def greet(who):
                '''Say hello.'''
                click.echo(f"hello {who}")
        """}, {"cmd": "cmdplugin"})
    monkeypatch.syspath_prepend(str(site))
    result = invoke("greet", "radiologist")
    assert result.exit_code == 0 and result.output == "hello radiologist\n"
    assert "greet" in invoke("--help").output
    hidden = invoke("greet", "x", env={"MEDNNS_DISABLE_PLUGINS": "cmd"})
    assert hidden.exit_code == 2 and "No such command 'greet'" in hidden.output
    sys.modules.pop("cmdplugin", None)


@pytest.mark.data
def test_example_config_summarizes_real_medmnist_and_image_folder(shared_data, tmp_path):
    root = REPOSITORY
    env = {"MEDMNIST_ROOT": str(shared_data / "medmnist"), "MEDNNS_DATA": str(shared_data),
           "MEDNNS_CACHE_DIR": str(tmp_path / "cache")}
    validated = run_mednns("validate", "examples/configs/summary.yaml", env_extra=env, cwd=root)
    assert validated.returncode == 0, validated.stderr
    result = run_mednns("run", "examples/configs/summary.yaml", "--output-dir", str(tmp_path), "--device", "cpu",
                        env_extra=env, cwd=root)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "summary" / "stages" / "dataset_summary" / "summary.json").read_text())
    pneumonia, kidney = summary["pneumoniamnist"], summary["kidney_ct"]
    assert pneumonia["task"] == "binary" and pneumonia["split_sizes"] == {"train": 4708, "val": 524, "test": 624}
    assert pneumonia["splits"]["train"]["class_counts"] == {"normal": 1214, "pneumonia": 3494}
    assert kidney["label_names"] == ["Cyst", "Normal", "Stone", "Tumor"] and kidney["n_channels"] == 1
    assert sum(kidney["split_sizes"].values()) == 1914


def test_strict_plugins_config_key_turns_load_problems_into_errors(config, tmp_path):
    site = make_distribution(tmp_path / "site", "mednns-broken3", {"brokenplugin3": "import nothing_here\n"},
                             {"broken3": "brokenplugin3"})
    env = {"PYTHONPATH": str(site)}
    lenient = run_mednns("validate", str(config), env_extra=env)
    assert lenient.returncode == 0 and "Warning: plugin 'broken3'" in lenient.stderr
    strict = run_mednns("validate", str(config), "--set", "strict_plugins=true", env_extra=env)
    assert strict.returncode == 1
    assert "Plugin errors (strict mode): 'broken3' (mednns-broken3 1.0)" in strict.stderr


def test_two_datasets_with_one_name_are_refused(tmp_path):
    write_npz(tmp_path / "tiny.npz")
    path = tmp_path / "twice.yaml"
    path.write_text(f"""
datasets:
  - {{name: npz, args: {{path: {tmp_path / 'tiny.npz'}}}}}
  - {{name: npz, args: {{path: {tmp_path / 'tiny.npz'}}}}}
stages: [{{name: dataset_summary}}]
""")
    result = invoke("validate", str(path))
    assert result.exit_code == 2
    assert "datasets[1]: a second dataset named 'tiny'" in result.output and "'name' argument" in result.output


@pytest.mark.data
@pytest.mark.parametrize("config_file", sorted([*(REPOSITORY / "examples" / "configs").glob("*.yaml"),
                                                 *(REPOSITORY / "benchmarks").glob("*.yaml")]),
                         ids=lambda p: p.name)
def test_every_example_config_validates(config_file, shared_data, tmp_path):
    env = {"MEDMNIST_ROOT": str(shared_data / "medmnist"), "MEDNNS_DATA": str(shared_data),
           "MEDNNS_CACHE_DIR": str(tmp_path / "cache")}
    result = run_mednns("validate", str(config_file), env_extra=env, cwd=REPOSITORY)
    assert result.returncode == 0, result.stderr


def test_the_readme_stage_snippets_are_configs_the_stages_accept():
    """Every ```yaml block of the README that lists stages passes the config checks and its stages'
    own argument checks (a stage validates in its constructor, before any work)."""
    import re

    import yaml

    from mednns.config import validate_config
    from mednns.manager import PluginManager

    text = (REPOSITORY / "README.md").read_text()
    snippets = [s for s in (yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, re.S))
                if isinstance(s, list)]
    assert len(snippets) >= 2  # the meta-space stages and the evaluation
    manager = PluginManager(environ={})
    for stages in snippets:
        config = validate_config(manager, {"name": "readme", "seed": 0, "stages": stages,
                                           "datasets": [{"name": "npz", "args": {"path": "x.npz", "name": "x"}}]})
        for spec in config.stages:
            manager.create("stages", spec["name"], **(spec.get("args") or {}))
