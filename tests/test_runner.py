"""The runner: run directory contents, stage skipping, resume refusal, seeding, lifecycle hooks."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import torch

import mednns
from mednns.config import validate_config
from mednns.errors import UsageError
from mednns.finetune import RECIPE_OFF
from mednns.manager import PluginManager
from mednns.registry import LazyFactory
from mednns.runner import execute
from mednns.runs import prepare_run
from mednns.stages import Stage

CALLS: list[str] = []


class CountingStage(Stage):
    def __init__(self, value: int = 1, fail: bool = False):
        self.value, self.fail = value, fail

    def outputs(self, run):
        return [run.stage_dir(self.name) / "out.json"]

    def run(self, run):
        CALLS.append(self.name)
        (run.stage_dir(self.name) / "partial.txt").write_text("work in progress")
        if self.fail:
            raise RuntimeError("stage failed on purpose")
        draw = {"torch": torch.rand(1).item(), "numpy": float(np.random.rand())}
        (run.stage_dir(self.name) / "out.json").write_text(json.dumps(draw))
        return {"value": self.value, **draw}


class Observer:
    def __init__(self):
        self.events = []

    @mednns.hookimpl
    def register_stages(self, register):
        register("first", CountingStage, description="counts calls")
        register("second", CountingStage, description="counts calls too")

    @mednns.hookimpl
    def run_started(self, run):
        self.events.append(("started", run.config.name))

    @mednns.hookimpl
    def stage_finished(self, run, stage, results, skipped):
        self.events.append(("stage", stage, skipped))

    @mednns.hookimpl
    def run_finished(self, run, results, error):
        self.events.append(("finished", results["status"], type(error).__name__ if error else None))


@pytest.fixture
def setup(tmp_path):
    CALLS.clear()
    manager = PluginManager(environ={})
    observer = Observer()
    manager.register(observer, "observer")

    def run(first_args=None, second_args=None, restart=False, seed=0):
        data = {"name": "test", "seed": seed, "output_dir": str(tmp_path), "device": "cpu",
                "stages": [{"name": "first", "args": first_args or {}},
                           {"name": "second", "args": second_args or {}}]}
        return execute(prepare_run(manager, validate_config(manager, data)), restart=restart)

    return run, observer, tmp_path / "test"


def test_run_directory_holds_config_plugins_environment_log_results(setup):
    run, observer, directory = setup
    results = run()
    assert results["status"] == "complete"
    assert sorted(p.name for p in directory.iterdir()) == [
        "config.yaml", "environment.json", "plugins.json", "results.json", "run.log", "stages"]
    env = json.loads((directory / "environment.json").read_text())
    assert env["torch"] == torch.__version__ and env["device"] == "cpu" and env["mednns"] == mednns.__version__
    assert "git_sha" in env
    plugins = {p["name"]: p for p in json.loads((directory / "plugins.json").read_text())}
    assert plugins["observer"]["components"] == {"stages": ["first", "second"]}
    assert plugins["npz"]["version"] == mednns.__version__
    stored = json.loads((directory / "results.json").read_text())
    assert stored["stages"]["first"]["results"]["value"] == 1
    assert "stage first: complete" in (directory / "run.log").read_text()
    assert observer.events == [("started", "test"), ("stage", "first", False), ("stage", "second", False),
                               ("finished", "complete", None)]


def test_rerun_skips_complete_stages_and_reruns_changed_ones(setup):
    run, observer, directory = setup
    run()
    assert CALLS == ["first", "second"]
    results = run()
    assert CALLS == ["first", "second"]  # nothing ran again
    assert [results["stages"][s]["status"] for s in ("first", "second")] == ["skipped", "skipped"]
    assert results["stages"]["first"]["results"]["value"] == 1
    run(second_args={"value": 2})  # only the second stage's config changed
    assert CALLS == ["first", "second", "second"]
    run(first_args={"value": 3})  # a changed first stage invalidates the one after it
    assert CALLS == ["first", "second", "second", "first", "second"]


def test_missing_outputs_make_a_stage_run_again(setup):
    run, _, directory = setup
    run()
    (directory / "stages" / "first" / "out.json").unlink()
    run()
    assert CALLS == ["first", "second", "first"]  # same fingerprint: the next stage stays valid


def test_each_stage_is_seeded_the_same_whether_or_not_earlier_stages_ran(setup):
    run, _, directory = setup
    first = run()["stages"]["second"]["results"]
    (directory / "stages" / "second" / "out.json").unlink()
    again = run()["stages"]["second"]["results"]  # first skipped, second recomputed
    assert CALLS == ["first", "second", "second"]
    assert again["torch"] == first["torch"] and again["numpy"] == first["numpy"]
    other_seed = run(seed=1)["stages"]["second"]["results"]
    assert other_seed["torch"] != first["torch"]


def test_failed_stage_is_recorded_and_resumed_only_under_the_same_config(setup):
    run, observer, directory = setup
    with pytest.raises(RuntimeError, match="on purpose"):
        run(second_args={"fail": True})
    results = json.loads((directory / "results.json").read_text())
    assert results["status"] == "failed" and "on purpose" in results["error"]
    state = json.loads((directory / "stages" / "second" / "stage.json").read_text())
    assert state["status"] == "failed"
    assert observer.events[-1] == ("finished", "failed", "RuntimeError")
    with pytest.raises(UsageError, match=r"interrupted under a different config \(changed: stage.args.fail\)"):
        run(second_args={"fail": False})
    assert (directory / "stages" / "second" / "partial.txt").exists()  # partial state kept
    results = run(second_args={"fail": False}, restart=True)
    assert results["status"] == "complete"
    assert results["stages"]["first"]["status"] == "skipped"


def test_a_stage_that_keeps_state_keeps_its_directory_when_its_config_changes(setup, monkeypatch):
    run, _, directory = setup
    monkeypatch.setattr(CountingStage, "keeps_state", True)
    with pytest.raises(RuntimeError, match="on purpose"):
        run(second_args={"fail": True})
    marker = directory / "stages" / "second" / "kept.txt"
    marker.write_text("rows of a zoo")
    results = run(second_args={"value": 5})  # interrupted, changed config: resumed on its files
    assert results["stages"]["second"]["results"]["value"] == 5 and marker.exists()
    run(second_args={"value": 6})  # complete, changed config: kept too
    assert marker.exists()
    with pytest.raises(RuntimeError):
        run(second_args={"fail": True})
    run(second_args={"value": 8}, restart=True)  # --restart still discards
    assert not marker.exists()
    assert CALLS.count("second") == 5


def test_a_stage_may_keep_its_state_for_some_changes_only(setup, monkeypatch):
    run, _, directory = setup
    seen = []
    monkeypatch.setattr(CountingStage, "keeps_state_for",
                        lambda self, changed: (seen.append(changed), self.value < 3)[1], raising=False)
    run(second_args={"value": 1})
    marker = directory / "stages" / "second" / "kept.txt"
    marker.write_text("runs")
    run(second_args={"value": 2})
    assert marker.exists() and seen[-1] == ["stage.args.value"]
    run(second_args={"value": 3})  # the stage says no: discarded
    assert not marker.exists()


def test_an_expensive_finished_stage_is_never_deleted_by_a_config_change_without_restart(setup, monkeypatch):
    run, _, directory = setup
    monkeypatch.setattr(CountingStage, "expensive", True)
    run(first_args={"value": 1})
    marker = directory / "stages" / "first" / "supernet.safetensors"
    marker.write_text("hours of training")
    with pytest.raises(UsageError, match=r"stage 'first' finished .* under another config \(changed: "
                                         r"stage.args.value\); running it again would delete .*first \(4 files"):
        run(first_args={"value": 2})
    assert marker.exists() and CALLS == ["first", "second"]
    run(first_args={"value": 1})  # the old config: complete, nothing lost
    assert CALLS == ["first", "second"]
    run(first_args={"value": 2}, restart=True)  # --restart: discarded, as asked
    assert not marker.exists() and CALLS[-2:] == ["first", "second"]


def test_an_option_added_with_its_neutral_value_keeps_finished_stages_finished(setup, monkeypatch):
    run, _, directory = setup
    monkeypatch.setattr(CountingStage, "fingerprint_omits", {"fail": False})  # 'fail' is new, off by default
    run(first_args={"value": 1})
    state = json.loads((directory / "stages" / "first" / "stage.json").read_text())
    assert "fail" not in state["inputs"]["stage"]["args"]  # the fingerprint of a run made before 'fail' existed
    run(first_args={"value": 1, "fail": False})
    assert CALLS == ["first", "second"]  # nothing ran again
    with pytest.raises(RuntimeError, match="on purpose"):
        run(first_args={"value": 1, "fail": True})  # a value that changes the work still counts


def test_the_evaluate_stage_keeps_its_runs_only_for_changes_of_its_own_arguments():
    from mednns.manager import get_plugin_manager

    stage = get_plugin_manager().create("stages", "evaluate")
    assert stage.keeps_state_for(["stage.args.seeds", "stage.args.variants.auc"])
    assert not stage.keeps_state_for(["stage.args.seeds", "previous"])
    assert not stage.keeps_state_for(["datasets.0.args.size"])


def test_every_omitted_fingerprint_argument_is_a_real_argument_at_its_default():
    import inspect

    from mednns.manager import get_plugin_manager

    registry = get_plugin_manager().registry("stages")
    checked = 0
    for name in registry.names():
        factory = registry.get(name).factory
        for key, value in getattr(factory, "fingerprint_omits", {}).items():
            parameter = inspect.signature(factory).parameters.get(key)
            # at its default, or a transfer recipe field off (the loop before it; no longer the default)
            assert parameter is not None and value in (parameter.default, RECIPE_OFF.get(key, parameter.default)), \
                (name, key)
            checked += 1
    assert checked >= 4  # train_supernet's min_steps_per_epoch, finetune's transfer recipe


def test_a_complete_stage_with_damaged_outputs_is_not_skipped_silently(setup, monkeypatch):
    run, _, directory = setup
    run()
    monkeypatch.setattr(CountingStage, "damaged_outputs", lambda self, r: ["out.json: truncated (3 of 9 bytes)"])
    with pytest.raises(UsageError, match=r"stage 'first' is complete, but its outputs are damaged: out.json: "
                                         r"truncated") as error:
        run()
    assert "--restart" in error.value.hint
    run(restart=True)  # --restart makes the damaged outputs again
    assert CALLS.count("first") == 2


def test_weights_problem_reads_the_header_and_sees_a_truncated_file(tmp_path):
    from mednns.training.checkpoint import save_weights, weights_problem

    path = save_weights(tmp_path / "w.safetensors", torch.nn.Linear(20, 30))
    assert weights_problem(path) is None
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    assert "truncated" in weights_problem(path)
    path.write_bytes(b"random bytes, not weights")
    assert weights_problem(path) is not None


def test_a_damaged_stage_json_is_named_and_restart_starts_the_stage_over(setup):
    run, _, directory = setup
    run()
    state = directory / "stages" / "first" / "stage.json"
    state.write_text('{"stage": "first", "fingerp')  # truncated by a crash
    with pytest.raises(UsageError, match=r"stage.json is damaged: not valid JSON") as error:
        run()
    assert "--restart" in error.value.hint
    run(restart=True)
    assert json.loads(state.read_text())["status"] == "complete" and CALLS.count("first") == 2


def test_a_stage_that_reads_only_the_datasets_ignores_changes_of_the_stages_before_it(setup, monkeypatch):
    run, _, _ = setup
    run()
    assert CALLS == ["first", "second"]
    run(first_args={"value": 2})  # by default the stage before counts: both run again
    assert CALLS[2:] == ["first", "second"]
    monkeypatch.setattr(CountingStage, "reads", ())
    run(first_args={"value": 2})  # the first time: fingerprints without 'previous' differ for 'second'
    CALLS.clear()
    run(first_args={"value": 3})
    assert CALLS == ["first"]  # 'second' reads nothing of 'first': it stays complete


def test_the_built_in_stages_say_what_they_read():
    from mednns.manager import get_plugin_manager

    registry = get_plugin_manager().registry("stages")
    reads = {name: getattr(registry.get(name).factory, "reads", None) for name in registry.names()}
    assert reads["train_supernet"] == () and reads["dataset_summary"] == ()
    assert reads["build_zoo"] == ("train_supernet",) and reads["evaluate"] == ("build_zoo",)
    assert reads["fit_meta_space"] == ("build_zoo",) and reads["query"] == ("fit_meta_space",)
    assert reads["finetune"] == ("query",)
    for name, read in reads.items():
        assert read is None or set(read) <= set(reads), name  # they name registered stages


#: Fingerprints of the built-in stages with every argument at its default (the config below), as
#: every finished run directory recorded them. A changed signature default changes them: every run
#: would train its supernets again (or stop and ask for --restart). Change one on purpose only with
#: ``Stage.fingerprint_omits`` for the new value, or when the results really change, and then here.
#: (Computed as the runner computes them, with each stage's fingerprint_omits: pinned without them
#: until the meta-space ensemble, the values of three stages were ones no run ever recorded.)
#: finetune and evaluate changed on purpose with the default transfer recipe (BN re-estimated, the
#: head solved with a cross-validated penalty): their results with default arguments really change;
#: a config that pins the recipe off keeps its fingerprint (the test below). query changed on purpose
#: when its combine default moved from rank_sum to score, the order the commands and the README give:
#: with rerank set its results change; without, a finished query runs again once (seconds), and no
#: omission could keep the old value, which hashed combine: rank_sum.
PINNED_FINGERPRINTS = {"train_supernet": "d5a9ccd3c967fa4d", "build_zoo": "e1c10d7f1ae437eb",
                       "fit_meta_space": "f94bd047d427ab86", "query": "8d78f629787f1220",
                       "finetune": "4f36d4c6c01ba9a6", "evaluate": "070652cf5ed8f23a"}


def test_the_built_in_stages_default_arguments_keep_finished_runs_finished():
    import types

    from mednns.runner import stage_fingerprint

    data = {"name": "pinned", "seed": 0, "datasets": [{"name": "npz", "args": {"path": "pinned.npz", "name": "p"}}],
            "stages": [{"name": name} for name in PINNED_FINGERPRINTS]}
    manager = PluginManager(environ={})
    config = validate_config(manager, data)  # the resolved config: defaults filled in
    run = types.SimpleNamespace(config=config)

    def omits(name: str) -> dict[str, Any] | None:  # as the runner reads them: the stage class's
        factory = manager.registry("stages").get(name).factory
        return getattr(factory.load() if isinstance(factory, LazyFactory) else factory, "fingerprint_omits", None)

    found = {spec["name"]: stage_fingerprint(run, spec, "", omits(spec["name"]))[0] for spec in config.stages}
    assert found == PINNED_FINGERPRINTS

    # a run made before the recipe became the default keeps its fingerprint with the recipe pinned off
    off = {"recalibrate_bn": False, "fit_head": False, "fit_head_cv": False}
    config = validate_config(manager, {**data, "stages": [{"name": n, "args": off} for n in ("finetune", "evaluate")]})
    run = types.SimpleNamespace(config=config)
    found = {spec["name"]: stage_fingerprint(run, spec, "", omits(spec["name"]))[0] for spec in config.stages}
    assert found == {"finetune": "b82a90b792a813eb", "evaluate": "ba2f2f367e7f7a2f"}
