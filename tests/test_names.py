"""Names that become paths (run, dataset, stage, component) cannot leave their folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

import mednns
from mednns.cli import cli
from mednns.errors import UsageError
from mednns.paths import check_name, inside, name_problem
from mednns.stages import Stage
from mednns.testing import using_plugins
from supernet_helpers import write_tiny_npz


@pytest.mark.parametrize("name", ["", "  ", "..", ".", "../../escape", "a/b", "a\\\\b", "bad\x00name", "x" * 129])
def test_unsafe_names_are_refused(name):
    assert name_problem(name) is not None
    with pytest.raises(UsageError, match="the thing"):
        check_name(name, "the thing")


@pytest.mark.parametrize("name", ["pneumoniamnist", "kidney_ct", "ofa-resnet.v2", "my run", "x" * 128])
def test_ordinary_names_pass(name):
    assert name_problem(name) is None and check_name(name, "the thing") == name


def test_inside_refuses_paths_outside_the_root_and_symlinks_out_of_it(tmp_path):
    root = tmp_path / "run"
    (root / "stages" / "a").mkdir(parents=True)
    assert inside(root / "stages" / "a", root) == (root / "stages" / "a").resolve()
    with pytest.raises(UsageError, match="outside"):
        inside(root / "stages" / ".." / ".." / "victim", root)
    (tmp_path / "victim").mkdir()
    (root / "stages" / "link").symlink_to(tmp_path / "victim")
    with pytest.raises(UsageError, match="outside"):
        inside(root / "stages" / "link", root / "stages")


def write_config(tmp_path: Path, **changes) -> Path:
    npz = write_tiny_npz(tmp_path / "a.npz", seed=0, n_classes=2)
    config = {"name": "run", "seed": 0, "output_dir": str(tmp_path / "runs"),
              "datasets": [{"name": "npz", "args": {"path": str(npz), "name": "a"}}],
              "stages": [{"name": "dataset_summary"}], **changes}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("changes, message", [
    ({"name": "../../escape"}, "name: the run name '../../escape' would leave its folder"),
    ({"name": ""}, "name: the run name must be a non-empty name"),
    ({"datasets": [{"name": "npz", "args": {"path": "NPZ", "name": "../../../x"}}]},
     "the dataset name '../../../x' would leave its folder"),
])
def test_a_run_or_dataset_name_that_leaves_its_folder_is_a_config_error(tmp_path, changes, message):
    if "datasets" in changes:
        npz = write_tiny_npz(tmp_path / "b.npz", seed=0, n_classes=2)
        changes["datasets"][0]["args"]["path"] = str(npz)
    result = CliRunner().invoke(cli, ["run", str(write_config(tmp_path, **changes))])
    assert result.exit_code == 2 and message in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.npz", "config.yaml"]
                                                                 + (["b.npz"] if "datasets" in changes else []))


class _Victim(Stage):
    def run(self, run):
        return {}


class _EscapingStagePlugin:
    @mednns.hookimpl
    def register_stages(self, register):
        register("../../victim", _Victim, description="a stage whose folder would be outside the run")


def test_a_component_name_that_leaves_its_folder_is_not_registered():
    from mednns.errors import PluginLoadError

    with pytest.raises(PluginLoadError, match="stage name '../../victim' would leave its folder"):
        with using_plugins(_EscapingStagePlugin()):
            mednns.list_components("stages")
