"""Config loading and validation: every error path names its key and carries a hint."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

import mednns
from mednns.config import apply_overrides, expand_env, load_config, validate_config
from mednns.errors import ConfigError, UsageError
from mednns.manager import PluginManager
from mednns.stages import Stage


class NestedStage(Stage):
    def __init__(self, space: mednns.ComponentSpec["losses"],  # noqa: F821 (a component kind, not a name)
                 mode: Literal["fast", "slow"] = "fast",
                 epochs: int = 1, ratio: float = 0.5, tags: list[str] | None = None):
        self.space = space

    def run(self, run):
        return {}


def weighted_loss(weight: float = 1.0) -> float:
    return weight


class ConfigTestPlugin:
    @mednns.hookimpl
    def register_stages(self, register):
        register("nested", NestedStage, description="a stage with a nested component")

    @mednns.hookimpl
    def register_losses(self, register):
        register("weighted", weighted_loss, description="a weighted loss")


@pytest.fixture(scope="module")
def manager():
    manager = PluginManager(environ={})
    manager.register(ConfigTestPlugin(), "test-plugin")
    return manager


def issues_of(manager, data):
    with pytest.raises(ConfigError) as info:
        validate_config(manager, data)
    assert info.value.exit_code == 2
    return {issue.path: issue for issue in info.value.issues}


GOOD = {"stages": [{"name": "dataset_summary"}],
        "datasets": [{"name": "npz", "args": {"path": "x.npz"}}]}


def test_valid_config_resolves_defaults(manager):
    config = validate_config(manager, GOOD)
    assert config.seed == 0 and config.device == "auto" and config.output_dir == "runs"
    assert config.stages[0] == {"name": "dataset_summary", "args": {"datasets": None, "montage_per_class": 8}}
    assert config.datasets[0]["args"]["path"] == "x.npz"
    assert config.datasets[0]["args"]["modality"] == "unknown"  # default filled in


def test_unknown_top_level_key_suggests(manager):
    issues = issues_of(manager, {**GOOD, "sed": 3})
    assert issues["sed"].message == "unknown key" and "did you mean 'seed'" in issues["sed"].hint


def test_wrong_types(manager):
    issues = issues_of(manager, {**GOOD, "seed": "three", "strict_plugins": "yes", "datasets": {"name": "npz"}})
    assert "expected int" in issues["seed"].message and "'three'" in issues["seed"].message
    assert "expected bool" in issues["strict_plugins"].message
    assert "expected list" in issues["datasets"].message


def test_unknown_component_name_suggests_and_points_to_list(manager):
    issues = issues_of(manager, {"stages": [{"name": "dataset_sumary"}]})
    issue = issues["stages[0].name"]
    assert "Unknown stage 'dataset_sumary'. Did you mean 'dataset_summary'?" in issue.message
    assert "mednns list stages" in issue.message


def test_missing_and_unexpected_arguments(manager):
    data = {"stages": [{"name": "dataset_summary", "args": {"montage_per_clas": 2}}],
            "datasets": [{"name": "npz", "args": {}}]}
    issues = issues_of(manager, data)
    assert issues["datasets[0].args.path"].message == "missing required argument"
    assert "add 'path'" in issues["datasets[0].args.path"].hint
    unexpected = issues["stages[0].args.montage_per_clas"]
    assert unexpected.message == "unexpected argument"
    assert "did you mean 'montage_per_class'" in unexpected.hint


def test_argument_types_literals_and_nested_components(manager):
    data = {"stages": [{"name": "nested", "args": {"space": {"name": "weighted", "args": {"weight": "heavy"}},
                                                     "mode": "medium", "epochs": 1.5, "ratio": 1, "tags": ["a", 2]}}]}
    issues = issues_of(manager, data)
    assert "expected float" in issues["stages[0].args.space.args.weight"].message
    assert "must be one of 'fast', 'slow'" in issues["stages[0].args.mode"].message
    assert "expected int" in issues["stages[0].args.epochs"].message
    assert "stages[0].args.ratio" not in issues  # an int is a fine float
    assert "expected str" in issues["stages[0].args.tags[1]"].message


def test_nested_component_unknown_name(manager):
    issues = issues_of(manager, {"stages": [{"name": "nested", "args": {"space": {"name": "weigted"}}}]})
    assert "Did you mean 'weighted'" in issues["stages[0].args.space.name"].message


def test_component_shape_errors(manager):
    issues = issues_of(manager, {"stages": ["dataset_summary", {"name": "dataset_summary", "arg": {}},
                                            {"args": {}}, {"name": "nested", "args": [1]}]})
    assert "expected a stage component" in issues["stages[0]"].message
    assert "{name: " in issues["stages[0]"].hint
    assert issues["stages[1].arg"].message == "unknown key in a component"
    assert "did you mean 'args'" in issues["stages[1].arg"].hint
    assert issues["stages[2].name"].message == "missing or not a string"
    assert "expected a mapping of arguments" in issues["stages[3].args"].message


def test_stages_required_nonempty_and_unique(manager):
    assert issues_of(manager, {})["stages"].message == "missing required key"
    assert issues_of(manager, {"stages": []})["stages"].message == "no stages to run"
    issues = issues_of(manager, {"stages": [{"name": "dataset_summary"}, {"name": "dataset_summary"}]})
    assert "listed twice" in issues["stages[1].name"].message


def test_invalid_device(manager):
    issues = issues_of(manager, {**GOOD, "device": "gpu"})
    assert "invalid device 'gpu'" in issues["device"].message and "cuda:N" in issues["device"].hint


def test_all_problems_reported_at_once(manager):
    with pytest.raises(ConfigError) as info:
        validate_config(manager, {"stages": [{"name": "nope"}], "seed": "x", "colour": 1})
    assert len(info.value.issues) == 3
    text = str(info.value)
    assert text.startswith("3 configuration errors:")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_yaml_syntax_error_names_line(manager, tmp_path):
    path = write(tmp_path, "stages:\n  - name: dataset_summary\n seed: [\n")
    with pytest.raises(ConfigError, match=r"invalid YAML at line \d+, column \d+"):
        load_config(manager, path)


def test_duplicate_yaml_keys_are_rejected(manager, tmp_path):
    path = write(tmp_path, "seed: 1\nseed: 2\nstages: [{name: dataset_summary}]\n")
    with pytest.raises(ConfigError, match="duplicate key 'seed'"):
        load_config(manager, path)


def test_yaml_is_loaded_safely(manager, tmp_path):
    path = write(tmp_path, "seed: !!python/object/apply:os.system ['echo hacked']\nstages: [{name: dataset_summary}]\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(manager, path)


def test_top_level_must_be_a_mapping_and_file_must_exist(manager, tmp_path):
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(manager, write(tmp_path, "- a\n- b\n"))
    with pytest.raises(UsageError, match="Config file not found"):
        load_config(manager, tmp_path / "missing.yaml")


def test_name_defaults_to_file_stem_and_overrides_apply(manager, tmp_path):
    path = write(tmp_path, "stages: [{name: dataset_summary}]\ndatasets: [{name: npz, args: {path: a.npz}}]\n")
    config = load_config(manager, path, ["seed=7", "datasets.0.args.path=b.npz", "stages.0.args.montage_per_class=0"])
    assert config.name == "config" and config.seed == 7
    assert config.datasets[0]["args"]["path"] == "b.npz"
    assert config.stages[0]["args"]["montage_per_class"] == 0


def test_override_errors():
    with pytest.raises(ConfigError) as info:
        apply_overrides({"datasets": [{"name": "npz"}], "seed": 1}, ["noequals", "datasets.3.name=x", "seed.x=1"])
    paths = [i.path for i in info.value.issues]
    assert paths == ["--set noequals", "--set datasets.3.name", "--set seed.x"]


def test_environment_expansion():
    data = {"a": "${HOME_DIR}/data", "b": ["${MISSING:-fallback}"], "c": 3}
    assert expand_env(data, {"HOME_DIR": "/h"}) == {"a": "/h/data", "b": ["fallback"], "c": 3}
    with pytest.raises(ConfigError) as info:
        expand_env({"x": {"y": "${NOT_SET}"}}, {})
    assert info.value.issues[0].path == "x.y" and "NOT_SET" in info.value.issues[0].message


def test_search_space_inputs_from_the_dataset_are_not_missing_arguments():
    from mednns.testing import plugin_manager

    class Space:
        def __init__(self, in_channels: int, num_classes: int, depth: int):
            pass

    class Plugin:
        @mednns.hookimpl
        def register_search_spaces(self, register):
            register("required_inputs", Space, description="in_channels and num_classes without defaults")

    manager = plugin_manager(Plugin())
    data = {"stages": [{"name": "train_supernet", "args": {"space": {"name": "required_inputs", "args": {}}}}]}
    with pytest.raises(ConfigError) as error:
        validate_config(manager, data)
    messages = str(error.value)
    assert "space.args.depth: missing required argument" in messages  # a real missing argument is reported
    assert "in_channels" not in messages and "num_classes" not in messages  # the stage supplies these
    data["stages"][0]["args"]["space"]["args"]["depth"] = 2
    validate_config(manager, data)


def test_an_alias_bomb_is_refused_quickly_and_nesting_is_bounded(manager, tmp_path):
    import time

    lines = ["stages: [{name: dataset_summary}]", "name: bomb",
             "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]  # 9^10 values
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="expands to more than 200,000 values") as error:
        load_config(manager, path)
    assert time.perf_counter() - start < 10 and str(path) in error.value.message
    deep = tmp_path / "deep.yaml"
    deep.write_text("stages: " + "[" * 100 + "]" * 100 + "\n")
    with pytest.raises(ConfigError, match="nested deeper than 64 levels"):
        load_config(manager, deep)
    deeper = tmp_path / "deeper.yaml"
    deeper.write_text("stages: " + "[" * 100_000 + "]" * 100_000 + "\n")  # deeper than the parser recurses
    with pytest.raises(ConfigError, match="nested too deeply|nested deeper"):
        load_config(manager, deeper)
    huge = tmp_path / "huge.yaml"
    huge.write_text("stages: [{name: dataset_summary}]\n# " + "x" * (3 * 2**20) + "\n")
    with pytest.raises(UsageError, match="a config is at most 2 MB"):
        load_config(manager, huge)


def test_yaml_merge_keys_are_allowed_and_keys_written_beside_them_win(manager, tmp_path):
    path = tmp_path / "merge.yaml"
    path.write_text("""
stages: [{name: dataset_summary}]
datasets:
  - &base {name: npz, args: {path: a.npz, modality: CT}}
  - <<: *base
    args: {path: b.npz}
""")
    config = load_config(manager, path)
    assert [d["args"]["path"] for d in config.datasets] == ["a.npz", "b.npz"]
    duplicate = tmp_path / "duplicate.yaml"
    duplicate.write_text("stages: [{name: dataset_summary}]\nseed: 1\nseed: 2\n")
    with pytest.raises(ConfigError, match="duplicate key 'seed'"):
        load_config(manager, duplicate)


def test_component_spec_takes_a_literal_kind_or_the_string_shorthand():
    from mednns.typecheck import ComponentOf

    literal, shorthand = mednns.ComponentSpec[Literal["losses"]], mednns.ComponentSpec["losses"]
    assert literal == shorthand and literal.__metadata__ == (ComponentOf("losses"),)
    with pytest.raises(TypeError, match="component kind"):
        mednns.ComponentSpec[Literal[1]]


@dataclass
class Schedule:
    epochs: int
    lr: float = 0.1
    phases: list[str] = field(default_factory=list)
    mode: Literal["fast", "slow"] = "fast"


class ScheduledStage(Stage):
    def __init__(self, schedule: Schedule, space: mednns.ComponentSpec[Literal["losses"]] | None = None):
        self.schedule = Schedule(**schedule) if isinstance(schedule, dict) else schedule

    def run(self, run):
        return {}


class DataclassPlugin:
    @mednns.hookimpl
    def register_stages(self, register):
        register("scheduled", ScheduledStage, description="a stage taking a dataclass")


def test_a_dataclass_parameter_takes_a_mapping_checked_field_by_field_with_key_paths():
    manager = PluginManager(environ={})
    manager.register(DataclassPlugin(), "dataclass-plugin")
    good = {"schedule": {"epochs": 3, "lr": 1, "phases": ["a"]}}
    assert manager.check("stages", "scheduled", good, "stages[0].args") == []
    assert manager.create("stages", "scheduled", **good).schedule == Schedule(3, 1, ["a"])
    issues = manager.check("stages", "scheduled", {"schedule": {"epoch": 3, "lr": "x", "mode": "medium"}},
                           "stages[0].args")
    by_path = {issue.path: issue for issue in issues}
    assert set(by_path) == {"stages[0].args.schedule.epoch", "stages[0].args.schedule.lr",
                            "stages[0].args.schedule.mode", "stages[0].args.schedule.epochs"}
    assert "did you mean 'epochs'?" in by_path["stages[0].args.schedule.epoch"].hint
    assert by_path["stages[0].args.schedule.epochs"].message == "missing required setting"
    assert manager.check("stages", "scheduled", {"schedule": [3]}, "s")[0].message.startswith(
        "expected a mapping of Schedule settings")


@dataclass
class Recipe:
    epochs: int = 4
    lr: float = 0.1
    tags: list[str] = field(default_factory=list)
    mode: Literal["fast", "slow"] = "fast"
    seed: int = 0


class FlatStage(Stage):
    @mednns.takes_settings(Recipe, exclude=("seed",))
    def __init__(self, name: str = "x", **recipe):
        self.name_, self.recipe = name, Recipe(**recipe)

    def run(self, run):
        return {}


class FlatPlugin:
    @mednns.hookimpl
    def register_stages(self, register):
        register("flat", FlatStage, description="a stage taking a dataclass's fields flat")


def test_takes_settings_makes_a_dataclass_s_fields_flat_typed_arguments_of_the_factory():
    import inspect

    parameters = inspect.signature(FlatStage).parameters
    assert list(parameters) == ["name", "epochs", "lr", "tags", "mode"]  # the dataclass's order, seed left out
    assert parameters["epochs"].default == 4 and parameters["tags"].default == []  # default_factory called
    assert parameters["mode"].annotation == Literal["fast", "slow"]
    stage = FlatStage(epochs=2, mode="slow")
    assert stage.recipe == Recipe(epochs=2, mode="slow") and stage.name_ == "x"
    with pytest.raises(TypeError, match=r"FlatStage.__init__\(\) got an unexpected keyword argument 'seed'"):
        FlatStage(seed=1)  # excluded: not an argument, though Recipe has it
    manager = PluginManager(environ={})
    manager.register(FlatPlugin(), "flat-plugin")
    assert manager.check("stages", "flat", {"epochs": 3, "lr": 1, "tags": ["a"]}, "stages[0].args") == []
    issues = {i.path: i for i in manager.check("stages", "flat", {"epoch": 3, "lr": "x", "mode": "medium"},
                                               "stages[0].args")}
    assert set(issues) == {"stages[0].args.epoch", "stages[0].args.lr", "stages[0].args.mode"}
    assert "did you mean 'epochs'?" in issues["stages[0].args.epoch"].hint
    with pytest.raises(TypeError, match="needs \\*\\*kwargs"):
        mednns.takes_settings(Recipe)(lambda self, name="x": None)
    with pytest.raises(TypeError, match="lr are both"):
        mednns.takes_settings(Recipe)(lambda self, lr=1.0, **rest: None)


def test_the_built_in_stages_take_their_settings_dataclasses_fields_with_the_same_defaults():
    import dataclasses
    import inspect

    from mednns.finetune import FinetuneConfig
    from mednns.metaspace import FitConfig
    from mednns.training import TrainConfig

    manager = PluginManager(environ={})
    for stage, settings, left_out in (("train_supernet", TrainConfig, set()), ("fit_meta_space", FitConfig, {"seed"}),
                                      ("evaluate", FinetuneConfig, {"momentum", "max_train_images", "eval_batch_size",
                                                                    "channels_last", "seed"}),
                                      ("finetune", FinetuneConfig, {"momentum", "eval_batch_size", "channels_last",
                                                                    "seed"})):
        parameters = inspect.signature(manager.registry("stages").get(stage).factory).parameters
        for f in dataclasses.fields(settings):
            if f.name in left_out:
                assert f.name not in parameters, (stage, f.name)
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            assert parameters[f.name].default == default, (stage, f.name)
    issues = manager.check("stages", "train_supernet", {"full_epochs": "many", "optimiser": "sgd"}, "stages[1].args")
    assert {i.path for i in issues} == {"stages[1].args.full_epochs", "stages[1].args.optimiser"}
