"""Tests of mednns.testing, the helpers plugin authors test their plugins with."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import mednns
from mednns.data import ArrayDataset, DatasetInfo, MedicalDataset, SplitArrays
from mednns.errors import DatasetError, PluginLoadError, UnknownComponentError
from mednns.manager import PluginManager, get_plugin_manager, set_plugin_manager
from mednns.stages import Stage
from mednns.testing import (
    check_dataset,
    check_loss_term,
    check_search_space,
    plugin_manager,
    tiny_arrays,
    tiny_dataset,
    tiny_space,
    using_plugins,
    write_tiny_npz,
)


# -- plugins used by the tests -----------------------------------------------------------------
def helper_scans(n_train: int = 40, channels: int = 1, seed: int = 0) -> ArrayDataset:
    """A small dataset factory, as a plugin would register it."""
    return tiny_dataset("helper_scans", channels=channels, seed=seed, sizes=(n_train, 10, 10))


class ScansPlugin:
    @mednns.hookimpl
    def register_datasets(self, register):
        register("helper_scans", helper_scans, description="tiny scans for the mednns.testing tests")


#: A module a lazy registration points at (put into ``sys.modules`` by the ``encoder_module`` fixture).
ENCODER_MODULE = """
import torch
from mednns.metaspace.contracts import DatasetEncoder

class MeanIntensity(DatasetEncoder):
    feature_dim = 1

    def cache_key(self):
        return "mean_intensity"

    def encode_images(self, images):
        return images.mean(dim=(1, 2, 3)).unsqueeze(1)
"""


class EncodersPlugin:
    """Lazy registrations of a dataset encoder and of the built-in ``arch`` model encoder."""

    @mednns.hookimpl
    def register_dataset_encoders(self, register):
        register("helper_mean", mednns.lazy("helper_encoder_module:MeanIntensity"),
                 description="mean intensity per image")

    @mednns.hookimpl
    def register_model_encoders(self, register):
        register("helper_arch", mednns.lazy("mednns.metaspace.model_encoders:ArchEncoder"),
                 description="arch under another name")


class MisspelledPlugin:
    @mednns.hookimpl
    def register_dataset(self, register):  # no "s": matches no hook
        pass


class RaisingPlugin:
    @mednns.hookimpl
    def register_losses(self, register):
        raise RuntimeError("boom")


class DuplicatePlugin:
    @mednns.hookimpl
    def register_datasets(self, register):
        register("npz", helper_scans, description="takes the built-in's name")


class CountStage(Stage):
    """Writes the number of training images of every dataset."""

    def outputs(self, run) -> list[Path]:
        return [run.stage_dir(self.name) / "count.json"]

    def run(self, run) -> dict[str, int]:
        counts = {name: len(dataset.split("train")) for name, dataset in run.datasets.items()}
        (run.stage_dir(self.name) / "count.json").write_text(json.dumps(counts))
        return counts


class CliPlugin:
    """A command, a stage and the run lifecycle hooks."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    @mednns.hookimpl
    def register_commands(self, cli):
        import click

        @cli.command("helper-hello")
        @click.argument("who")
        def hello(who: str) -> None:
            click.echo(f"hello {who}")

    @mednns.hookimpl
    def register_stages(self, register):
        register("helper_count", CountStage, description="counts training images")

    @mednns.hookimpl
    def run_started(self, run):
        self.events.append(("started", run.config.name))

    @mednns.hookimpl
    def stage_finished(self, run, stage, results, skipped):
        self.events.append(("stage", stage, skipped, results))

    @mednns.hookimpl
    def run_finished(self, run, results, error):
        self.events.append(("finished", results["status"], error))


@pytest.fixture
def encoder_module(monkeypatch):
    """``helper_encoder_module`` importable (it is not imported before a component is built)."""
    import sys
    import types

    module = types.ModuleType("helper_encoder_module")
    exec(ENCODER_MODULE, module.__dict__)
    monkeypatch.setitem(sys.modules, "helper_encoder_module", module)
    return module


@pytest.fixture
def previous_manager():
    """A known process-wide manager (built-ins only) that ``using_plugins`` must restore."""
    manager = PluginManager(environ={"MEDNNS_LOAD_PLUGINS": ""})
    set_plugin_manager(manager)
    yield manager
    set_plugin_manager(None)


# -- plugin_manager ----------------------------------------------------------------------------
def test_plugin_manager_registers_a_plugin_object_whose_dataset_is_creatable():
    manager = plugin_manager(ScansPlugin())
    record = manager.records["ScansPlugin"]
    assert record.status == "loaded" and record.hooks == ["register_datasets"]
    assert record.components == {"datasets": ["helper_scans"]}
    dataset = manager.create("datasets", "helper_scans", n_train=24, channels=3)
    assert check_dataset(dataset) == {"train": 24, "val": 10, "test": 10}
    assert dataset.info.n_channels == 3 and dataset.split("train").images.shape == (24, 12, 12, 3)
    assert "npz" in manager.registry("datasets")  # the built-ins are there too
    with pytest.raises(mednns.ConfigError, match=r"helper_scans\.args\.channels: expected int"):
        manager.create("datasets", "helper_scans", channels="three")


def test_plugin_manager_registers_modules_and_several_plugins_lazily(encoder_module):
    import types

    module = types.ModuleType("helper_loss_plugin")
    exec("import mednns\n\n@mednns.hookimpl\ndef register_losses(register):\n"
         "    register('helper_mae', mednns.lazy('mednns.metaspace.losses:PerformanceLoss'), description='x')\n",
         module.__dict__)
    manager = plugin_manager(module, EncodersPlugin())
    assert manager.records["helper_loss_plugin"].components == {"losses": ["helper_mae"]}
    assert manager.records["EncodersPlugin"].components == {"dataset-encoders": ["helper_mean"],
                                                           "model-encoders": ["helper_arch"]}
    import torch

    from mednns.metaspace.contracts import DatasetEncoder, LossTerm, ModelEncoder

    dataset_encoder = manager.create("dataset-encoders", "helper_mean")
    assert isinstance(dataset_encoder, encoder_module.MeanIntensity) and isinstance(dataset_encoder, DatasetEncoder)
    assert dataset_encoder.encode_images(torch.ones(2, 1, 4, 4)).tolist() == [[1.0], [1.0]]
    encoder = manager.create("model-encoders", "helper_arch", embed_dim=8)
    assert isinstance(encoder, ModelEncoder) and encoder.embed_dim == 8
    assert isinstance(manager.create("losses", "helper_mae", kind="huber"), LossTerm)
    with pytest.raises(mednns.ConfigError, match="must be one of 'mse', 'huber'"):
        manager.create("losses", "helper_mae", kind="l1")


def test_plugin_manager_loads_installed_third_party_plugins_only_when_asked():
    alone = [r for r in plugin_manager().records.values() if not r.builtin]
    assert all(r.status == "not-allowed" for r in alone), [(r.name, r.status) for r in alone]
    installed = [r for r in plugin_manager(installed=True).records.values() if not r.builtin]
    assert not any(r.status == "not-allowed" for r in installed)
    assert {r.name for r in alone} == {r.name for r in installed}


@pytest.mark.parametrize("plugin, message", [
    (MisspelledPlugin(), "did you mean 'register_datasets'"),
    (RaisingPlugin(), "register_losses raised RuntimeError: boom"),
    (DuplicatePlugin(), "registered by more than one plugin: 'npz' and 'DuplicatePlugin'"),
    (ScansPlugin, "missing 1 required positional argument"),  # the class, not an instance
])
def test_plugin_manager_raises_when_a_plugin_does_not_load(plugin, message):
    with pytest.raises(PluginLoadError, match="did not load") as caught:
        plugin_manager(plugin)
    assert message in str(caught.value)


# -- using_plugins ------------------------------------------------------------------------------
def test_using_plugins_makes_the_public_api_see_the_plugin_and_restores_the_manager(previous_manager):
    with using_plugins(ScansPlugin()) as manager:
        assert get_plugin_manager() is manager and manager is not previous_manager
        assert mednns.list_components("datasets", "helper_*") == ["helper_scans"]
        assert len(mednns.create("datasets", "helper_scans", n_train=12).split("train")) == 12
    assert get_plugin_manager() is previous_manager
    with pytest.raises(UnknownComponentError, match="helper_scans"):
        previous_manager.registry("datasets").get("helper_scans")


def test_using_plugins_restores_the_manager_after_an_exception(previous_manager):
    import mednns.cli
    import mednns.manager

    with pytest.raises(RuntimeError, match="inside the block"):
        with using_plugins(ScansPlugin()):
            with using_plugins(EncodersPlugin()) as inner:
                assert get_plugin_manager() is inner
                assert "helper_scans" not in inner.registry("datasets")  # each block: its own plugins
            assert "helper_scans" in get_plugin_manager().registry("datasets")
            raise RuntimeError("inside the block")
    assert get_plugin_manager() is previous_manager
    assert mednns.cli.set_plugin_manager is mednns.manager.set_plugin_manager


def test_using_plugins_reaches_commands_stages_and_lifecycle_hooks_of_the_cli(tmp_path, previous_manager):
    from mednns.cli import cli

    data = write_tiny_npz(tmp_path / "tiny.npz", n_classes=2)
    config = tmp_path / "run.yaml"
    config.write_text(f"name: helper\noutput_dir: {tmp_path}\ndevice: cpu\n"
                      f"datasets: [{{name: npz, args: {{path: {data}}}}}]\nstages: [{{name: helper_count}}]\n")
    plugin = CliPlugin()
    with using_plugins(plugin):
        hello = CliRunner().invoke(cli, ["helper-hello", "radiologist"])
        first = CliRunner().invoke(cli, ["run", str(config)])
        second = CliRunner().invoke(cli, ["run", str(config)])
    assert hello.exit_code == 0 and hello.output == "hello radiologist\n"
    assert first.exit_code == 0 and second.exit_code == 0, first.output
    assert json.loads((tmp_path / "helper/stages/helper_count/count.json").read_text()) == {"tiny": 96}
    run_once = [("started", "helper"), ("stage", "helper_count", False, {"tiny": 96}), ("finished", "complete", None)]
    skipped = [("started", "helper"), ("stage", "helper_count", True, {"tiny": 96}), ("finished", "complete", None)]
    assert plugin.events == run_once + skipped
    gone = CliRunner().invoke(cli, ["helper-hello", "x"])  # outside the block: installed plugins only
    assert gone.exit_code == 2 and "No such command 'helper-hello'" in gone.output


# -- tiny data ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, task, image_shape, label_shape", [
    ({"n_classes": 2}, "binary", (12, 12, 1), (1,)),
    ({}, "multi-class", (12, 12, 1), (1,)),
    ({"n_classes": 5, "channels": 3, "size": 16}, "multi-class", (16, 16, 3), (1,)),
    ({"multilabel": True, "n_classes": 4}, "multi-label", (12, 12, 1), (4,)),
    ({"depth": 6, "channels": 2}, "multi-class", (6, 12, 12, 2), (1,)),
])
def test_tiny_datasets_of_every_task_pass_check_dataset(kwargs, task, image_shape, label_shape):
    dataset = tiny_dataset(**kwargs)
    assert check_dataset(dataset) == {"train": 96, "val": 32, "test": 32}
    info = dataset.info
    assert info.task == task and info.image_size == image_shape[:-1] and info.n_channels == image_shape[-1]
    train = dataset.split("train")
    assert train.images.shape == (96, *image_shape) and train.labels.shape == (96, *label_shape)
    n_classes = kwargs.get("n_classes", 3)
    if task == "multi-label":
        assert set(np.unique(train.labels)) == {0, 1}
    else:
        assert set(np.unique(train.labels)) == set(range(n_classes))
    again, other = tiny_dataset(**kwargs).split("train"), tiny_dataset(seed=1, **kwargs).split("train")
    np.testing.assert_array_equal(again.images, train.images)
    assert not np.array_equal(other.images, train.images)


@pytest.mark.parametrize("kwargs, task", [
    ({}, "multi-class"), ({"n_classes": 2}, "binary"), ({"multilabel": True, "n_classes": 4}, "multi-label"),
    ({"channels": 3}, "multi-class"), ({"depth": 4}, "multi-class"),
])
def test_write_tiny_npz_round_trips_through_the_npz_dataset(tmp_path, kwargs, task):
    path = write_tiny_npz(tmp_path / "tiny.npz", seed=3, **kwargs)
    dataset = plugin_manager().create("datasets", "npz", path=str(path))
    assert check_dataset(dataset) == {"train": 96, "val": 32, "test": 32}
    assert dataset.info.task == task and dataset.info.name == "tiny"
    expected = tiny_arrays(seed=3, **kwargs)
    for split, arrays in expected.items():
        loaded = dataset.split(split)
        np.testing.assert_array_equal(loaded.images, arrays.images)
        np.testing.assert_array_equal(loaded.labels, arrays.labels)


class _ChannelsDisagree(MedicalDataset):
    """Info says 3 channels, the arrays hold 1."""

    @property
    def info(self) -> DatasetInfo:
        return DatasetInfo("disagreeing", "multi-class", 3, 3, ("a", "b", "c"), (12, 12))

    def load_split(self, split: str) -> SplitArrays:
        return tiny_arrays(channels=1)[split]


def test_check_dataset_fails_when_info_and_arrays_disagree():
    with pytest.raises((DatasetError, AssertionError)) as caught:
        check_dataset(_ChannelsDisagree())
    assert "channels" in str(caught.value) and "disagreeing" in str(caught.value)

    arrays = tiny_arrays()
    wrong_sizes = DatasetInfo("sizes", "multi-class", 1, 3, ("a", "b", "c"), (12, 12),
                              split_sizes={"train": 90, "val": 32, "test": 32})
    with pytest.raises(AssertionError, match="split_sizes says 90 train images, the split holds 96"):
        check_dataset(ArrayDataset(wrong_sizes, arrays))

    empty = {**arrays, "val": SplitArrays(arrays["val"].images[:0], arrays["val"].labels[:0])}
    info = DatasetInfo("empty", "multi-class", 1, 3, ("a", "b", "c"), (12, 12))
    with pytest.raises(AssertionError, match="the val split is empty"):
        check_dataset(ArrayDataset(info, empty))


# -- search spaces ------------------------------------------------------------------------------
@pytest.mark.parametrize("name, in_channels", [("ofa_resnet", 1), ("ofa_mobilenetv3", 3)])
def test_check_search_space_passes_on_the_tiny_builtin_spaces(name, in_channels):
    space = tiny_space(name, in_channels=in_channels)
    space.train()
    chosen = space.smallest()
    space.set_active(chosen)
    report = check_search_space(space, input_size=28, samples=4)
    assert report["count"] == space.count() and report["checked"] == 6
    assert 0.0 <= report["max_abs_diff"] <= 1e-5
    assert space.config()["in_channels"] == in_channels
    assert space.training and space.active() == chosen  # left as it was found


def broken_spaces() -> type:
    """A plugin registering two subclasses of the tiny ``ofa_resnet`` space that break the contract."""
    import torch

    base = type(tiny_space("ofa_resnet"))

    class CostOffByOne(base):
        def cost(self, arch, input_size):
            cost = dict(super().cost(arch, input_size))
            cost["params"] += 1
            return cost

    class ExtractsAnotherNetwork(base):
        def extract(self, arch):
            network = super().extract(arch)
            with torch.no_grad():
                next(p for p in network.parameters() if p.dim() > 1).add_(0.5)
            return network

    class BrokenSpaces:
        @mednns.hookimpl
        def register_search_spaces(self, register):
            register("helper_cost_off_by_one", CostOffByOne, description="cost() params + 1")
            register("helper_extracts_another", ExtractsAnotherNetwork, description="extract() differs")

    return BrokenSpaces


def test_check_search_space_fails_on_a_space_whose_cost_disagrees_with_its_extracted_network():
    import re

    config = tiny_space("ofa_resnet").config()
    space = plugin_manager(broken_spaces()()).create("search-spaces", "helper_cost_off_by_one", **config)
    with pytest.raises(AssertionError, match="params, the extracted network has") as caught:
        check_search_space(space, input_size=28, samples=1)
    said, has = map(int, re.search(r"cost\(\) says (\d+) params, the extracted network has (\d+)",
                                   str(caught.value)).groups())
    assert said == has + 1


def test_check_search_space_fails_on_a_space_whose_extracted_network_computes_something_else():
    config = tiny_space("ofa_resnet").config()
    space = plugin_manager(broken_spaces()()).create("search-spaces", "helper_extracts_another", **config)
    with pytest.raises(AssertionError, match=r"extracted network differs from the supernet by [0-9.e+-]+ for \{"):
        check_search_space(space, input_size=28, samples=1)


# -- loss terms ---------------------------------------------------------------------------------
@pytest.mark.parametrize("name, args", [
    ("performance", {}), ("performance", {"kind": "huber"}), ("rank", {}),
    ("rank", {"variant": "listwise", "on": "predicted"}), ("fid", {}), ("fid", {"metric": "euclidean"}),
    ("contrastive", {}), ("contrastive", {"positives": 2, "hard_negatives": 1}),
])
def test_check_loss_term_passes_on_the_builtin_losses(name, args):
    value = check_loss_term(plugin_manager().create("losses", name, **args))
    assert np.isfinite(value)
    assert check_loss_term(plugin_manager().create("losses", name, **args)) == value  # seeded


class _UnmaskedError:
    """Mean absolute error over every entry, padded ones included."""

    def __call__(self, batch):
        return (batch.predicted - batch.target).abs().mean()


class _PredictedMean:
    """Depends on padded predictions only (the targets it ignores)."""

    def __call__(self, batch):
        return batch.predicted.mean()


class _ModelNorm:
    """Depends on padded model embeddings."""

    def __call__(self, batch):
        return batch.model_embedding.norm(dim=-1).mean()


class _NotAScalar:
    def __call__(self, batch):
        return batch.predicted.sum(dim=1)


class _NoGradient:
    def __call__(self, batch):
        import torch

        return torch.tensor(0.5)


class BadLosses:
    @mednns.hookimpl
    def register_losses(self, register):
        for name, factory in (("unmasked", _UnmaskedError), ("predicted_mean", _PredictedMean),
                              ("model_norm", _ModelNorm), ("not_scalar", _NotAScalar), ("no_gradient", _NoGradient)):
            register(f"helper_{name}", factory, description=factory.__doc__ or name)


@pytest.mark.parametrize("name, message", [
    ("helper_unmasked", "padded (masked-out) entries change the loss"),
    ("helper_predicted_mean", "padded (masked-out) entries change the loss"),
    ("helper_model_norm", "padded (masked-out) entries change the loss"),
    ("helper_not_scalar", "a loss term returns a 0-dim tensor"),
    ("helper_no_gradient", "the loss has no gradient"),
])
def test_check_loss_term_fails_on_a_term_that_breaks_the_contract(name, message):
    term = plugin_manager(BadLosses()).create("losses", name)
    with pytest.raises(AssertionError) as caught:
        check_loss_term(term)
    assert message in str(caught.value)
