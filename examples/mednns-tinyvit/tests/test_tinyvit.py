"""Tests of the ``tiny_vit`` search space, written as a plugin author would: public mednns API and
``mednns.testing`` only. Run with ``python -m pytest examples/mednns-tinyvit/tests -q``."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import mednns_tinyvit.plugin as tinyvit_plugin
import pytest
import torch
import yaml
from click.testing import CliRunner
from torch import nn

import mednns
from mednns.cli import cli
from mednns.export import adapt_network, export_subnet
from mednns.supernets import InvalidArchitecture, Supernet
from mednns.testing import check_search_space, plugin_manager, using_plugins, write_tiny_npz
from mednns.training import load_supernet
from mednns.zoo import ZooStore

#: A small space for fast tests (16 px images, 4 px patches: 16 tokens).
SMALL = {"image_size": 16, "patch_size": 4, "embed_dim": 32, "depth_choices": [1, 2], "head_choices": [1, 2],
         "mlp_ratio_choices": [1.0, 2.0], "embed_mults": [0.5, 1.0], "head_dim": 8}


@pytest.fixture(autouse=True)
def one_thread():
    """Deterministic, polite timing on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_space(seed: int = 0, **args) -> Supernet:
    """``tiny_vit`` built through the plugin's hook (the installed entry point is not needed)."""
    torch.manual_seed(seed)
    args = {"in_channels": 1, "num_classes": 3, **args}
    return plugin_manager(tinyvit_plugin).create("search-spaces", "tiny_vit", **args)


def perturb(space: Supernet, seed: int = 0) -> None:
    """Random, non-trivial weights everywhere (LayerNorm scales and biases included), as after training."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in space.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.3)


# -- the contract ------------------------------------------------------------------------------

@pytest.mark.parametrize("in_channels, image_size", [(1, 28), (3, 28), (1, 32), (3, 32)])
def test_contract_of_the_default_space(in_channels, image_size):
    space = make_space(in_channels=in_channels, image_size=image_size)
    perturb(space)
    result = check_search_space(space, input_size=image_size, samples=6)
    # 3 widths x (2 heads x 3 MLP sizes) per block, 2 to 4 blocks
    assert result["count"] == 3 * sum(6 ** d for d in (2, 3, 4)) == 4644
    assert result["max_abs_diff"] <= 1e-5


def test_defaults_are_the_config_schema_and_rebuild_the_space():
    space = make_space()
    config = space.config()
    assert config == {"in_channels": 1, "num_classes": 3, "preset": "cpu", "image_size": 28, "patch_size": 4,
                      "embed_dim": 96, "depth_choices": [2, 3, 4], "head_choices": [2, 3],
                      "mlp_ratio_choices": [1.0, 2.0, 3.0], "embed_mults": [0.5, 0.75, 1.0], "head_dim": 16,
                      "dropout": 0.0}
    again = plugin_manager(tinyvit_plugin).create("search-spaces", "tiny_vit", **config)
    assert again.config() == config and again.dimensions == ("depth", "expand", "heads", "width")
    with pytest.raises(mednns.ConfigError, match="head_choices"):
        plugin_manager(tinyvit_plugin).create("search-spaces", "tiny_vit", in_channels=1, num_classes=2,
                                              head_choices=["two"])
    with pytest.raises(mednns.UsageError, match="patch_size 8 is larger than image_size 4"):
        make_space(image_size=4, patch_size=8)


def test_set_active_and_json_round_trip_of_1000_samples():
    space = make_space(**SMALL)
    rng = random.Random(0)
    seen = set()
    for _ in range(1000):
        arch = space.sample(rng)
        text = space.arch_to_json(arch)
        assert space.arch_from_json(text) == arch == space.canonical(arch)
        space.set_active(space.arch_from_json(text))
        assert space.arch_to_json(space.active()) == text
        assert space.arch_hash(arch) == space.arch_hash(json.loads(text))
        seen.add(text)
    assert len(seen) == space.count() == 2 * (4 + 16)  # every subnet of the small space shows up


def test_sampling_only_released_dimensions():
    space = make_space()
    rng = random.Random(1)
    largest = space.largest()
    for arch in (space.sample(rng, dimensions=["depth"]) for _ in range(50)):
        assert arch["width"] == 1.0 and arch["heads"][: arch["depth"]] == [3] * arch["depth"]
        assert arch["expand"][: arch["depth"]] == [3.0] * arch["depth"]
    widths = {space.sample(rng, dimensions=("depth", "expand", "heads", "width"))["width"] for _ in range(50)}
    assert widths == {0.5, 0.75, 1.0} and space.sample(rng, dimensions=[]) == largest
    with pytest.raises(ValueError, match="unknown dimensions"):
        space.sample(rng, dimensions=["kernel"])


def test_encoding_is_one_hot_with_inactive_blocks_zero():
    space = make_space()
    arch = {"depth": 2, "expand": [1.0, 3.0, 2.0, 2.0], "heads": [3, 2, 3, 3], "width": 0.75}
    code = space.encode(arch)
    assert code.shape == (space.encoding_dim,) == (3 + 4 * 3 + 4 * 2 + 3,)
    depth, expand, heads, width = code[:3], code[3:15].view(4, 3), code[15:23].view(4, 2), code[23:]
    assert depth.tolist() == [1, 0, 0] and width.tolist() == [0, 1, 0]
    assert expand[:2].tolist() == [[1, 0, 0], [0, 0, 1]] and heads[:2].tolist() == [[0, 1], [1, 0]]
    assert expand[2:].abs().sum() == 0 and heads[2:].abs().sum() == 0  # blocks 3 and 4 do not run
    assert torch.equal(space.encode(space.largest())[3:15].view(4, 3).sum(1), torch.ones(4))


def test_equal_networks_written_differently_hash_equally():
    space = make_space(embed_dim=8, mlp_ratio_choices=[1.0, 1.1, 2.0])  # round(1.1 * 4) == round(1.0 * 4)
    base = {"depth": 2, "expand": [2.0, 1.0, None, None], "heads": [2, 3, None, None], "width": 0.5}
    variants = [
        {**base, "expand": [2.0, 1.0, 2.0, 1.1], "heads": [2, 3, 2, 3]},   # choices of inactive blocks
        {**base, "expand": [2.0, 1.1, None, None]},                         # 1.1 x 4 rounds like 1.0 x 4
        {**base, "width": 0.5000000001},                                    # float noise
        {**base, "width": 0.5, "expand": [2, 1, None, None]},              # ints for whole ratios
    ]
    assert space.validate(variants[1])["expand"] == [2.0, 1.0, None, None]
    for variant in variants:
        assert space.arch_to_json(variant) == space.arch_to_json(base)
        assert space.arch_hash(variant) == space.arch_hash(base)
        assert torch.equal(space.encode(variant), space.encode(base))
    assert space.arch_hash({**base, "heads": [3, 3, None, None]}) != space.arch_hash(base)
    with pytest.raises(InvalidArchitecture, match="heads"):
        space.validate({**base, "heads": [2.0, 3, None, None]})  # head counts are integers
    # 0.75 x 8 = 6 channels; the widths 0.5 -> 4 and 1.0 -> 8: all distinct, 1.1 only rounds at width 4
    assert space.validate({**base, "width": 1.0, "expand": [1.1, 1.0, None, None]})["expand"][0] == 1.1


@pytest.mark.parametrize("arch, message", [
    ({"depth": 5, "expand": [1.0] * 4, "heads": [2] * 4, "width": 1.0}, "depth: 5"),
    ({"depth": 2, "expand": [1.0] * 4, "heads": [2] * 4, "width": 2}, "width: 2"),
    ({"depth": 3, "expand": [1.0, 1.0, None, None], "heads": [2] * 4, "width": 1.0}, "expand\\[2\\]"),
    ({"depth": 2, "expand": [1.0] * 4, "heads": [2, 4, 2, 2], "width": 1.0}, "heads\\[1\\]"),
    ({"depth": 2, "expand": [1.0] * 3, "heads": [2] * 4, "width": 1.0}, "expand: expected 4"),
    ({"depth": 2, "heads": [2] * 4, "width": 1.0}, "missing \\['expand'\\]"),
])
def test_invalid_architectures_name_the_key(arch, message):
    with pytest.raises(InvalidArchitecture, match=message):
        make_space().validate(arch)


def test_cost_is_analytic_and_matches_the_extracted_network():
    space = make_space(in_channels=3, num_classes=5)
    rng = random.Random(2)
    for arch in [space.largest(), space.smallest(), *(space.sample(rng) for _ in range(5))]:
        net = space.extract(arch)
        assert space.cost(arch, 28)["params"] == sum(p.numel() for p in net.parameters())
        assert space.cost(arch, (3, 28, 28)) == space.cost(arch, (28, 28))
    big = space.largest()  # 7 x 7 = 49 tokens at 28 px, 8 x 8 = 64 at 32 px: the attention grows with T^2
    tokens_49, tokens_64 = space.cost(big, 28)["macs"], space.cost(big, 32)["macs"]
    linear = 49 * (3 * 16 * 96 + 4 * (96 * 3 * 48 + 48 * 96 + 2 * 96 * 288)) + 96 * 5
    assert tokens_49 == linear + 4 * 2 * 3 * 49 * 49 * 16
    assert tokens_64 > tokens_49 * 64 / 49
    with pytest.raises(ValueError, match="channels"):
        space.cost(big, (1, 28, 28))


# -- extraction and channel sorting --------------------------------------------------------------

def test_extracted_network_is_plain_and_adaptable():
    space = make_space(in_channels=1, num_classes=3, **SMALL)
    perturb(space)
    space.eval()
    net = space.extract(space.sample(random.Random(3)))
    kinds = {type(m) for m in net.modules() if not list(m.children())}
    assert kinds <= {nn.Conv2d, nn.Linear, nn.LayerNorm, nn.Identity}
    linears = [m for m in net.modules() if type(m) is nn.Linear]
    convs = [m for m in net.modules() if type(m) is nn.Conv2d]
    assert linears[-1] is net.classifier and convs[0] is net.patch_embed  # what export adapts
    assert torch.equal(space.extract(space.largest()).state_dict()["pos_embed"], space.pos_embed)
    # other image sizes run: the position embedding is resampled (supernet and extracted alike)
    x = torch.randn(2, 1, 24, 20, generator=torch.Generator().manual_seed(0))
    space.set_active(net.arch)
    with torch.no_grad():
        assert torch.allclose(space(x), net(x), atol=1e-5)
    # mednns.export's adaptation: a new 7-class head, the patch embedding converted to 3 channels
    changes = adapt_network(net, num_classes=7, in_channels=3, seed=0)
    assert changes["head"]["module"] == "classifier" and changes["stem"]["module"] == "patch_embed"
    with torch.no_grad():
        assert net(x.repeat(1, 3, 1, 1)).shape == (2, 7)
    embed = net.patch_embed.out_channels
    assert torch.allclose(net.patch_embed.weight.sum(1, keepdim=True), space.patch_embed.weight[:embed], atol=1e-6)


def test_sort_channels_keeps_the_largest_network_and_reorders_by_importance():
    space = make_space(**SMALL)
    perturb(space, seed=4)
    space.eval()
    x = torch.randn(8, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    small = {"depth": 2, "expand": [1.0, 1.0], "heads": [1, 1], "width": 0.5}
    with torch.no_grad():
        space.set_active(space.largest())
        largest_before = space(x)
        space.set_active(small)
        small_before = space(x)
        space.sort_channels()
        space.set_active(space.largest())
        largest_after = space(x)
        space.set_active(small)
        small_after = space(x)
    assert torch.allclose(largest_after, largest_before, atol=1e-5)
    assert not torch.allclose(small_after, small_before, atol=1e-3)  # narrower subnets got other units
    for block in space.blocks:
        units = block.fc2.weight.abs().sum(0)
        assert torch.all(units[:-1] >= units[1:])  # MLP hidden units by importance
        heads = block.proj.weight.abs().reshape(-1, 2, 8).sum(dim=(0, 2))
        assert heads[0] >= heads[1]
    # sorting again changes nothing: every part is already in order
    before = {k: v.clone() for k, v in space.state_dict().items()}
    space.sort_channels()
    assert all(torch.equal(before[k], v) for k, v in space.state_dict().items())
    check_search_space(space, input_size=16, samples=4)  # extraction still matches after sorting


# -- the plugin ---------------------------------------------------------------------------------

def test_the_entry_point_registers_tiny_vit_without_importing_torch():
    manager = plugin_manager(installed=True)
    assert manager.registry("search-spaces").get("tiny_vit").provider == "tinyvit"
    assert manager.records["tinyvit"].distribution == "mednns-tinyvit"
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("MEDNNS_LOAD_PLUGINS", None)
    listed = subprocess.run([sys.executable, "-m", "mednns", "list", "search-spaces", "--json"], env=env,
                            capture_output=True, text=True, check=True).stdout
    assert "tiny_vit" in {c["name"] for c in json.loads(listed)}
    code = ("import sys; from mednns.manager import PluginManager; m = PluginManager(environ={}); "
            "assert 'tiny_vit' in m.registry('search-spaces'); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# -- the real pipeline --------------------------------------------------------------------------

def test_train_supernet_and_build_zoo_through_the_cli(tmp_path: Path):
    npz = write_tiny_npz(tmp_path / "tiny.npz", size=16, seed=0)
    train = {"space": {"name": "tiny_vit", "args": SMALL}, "full_epochs": 1, "shrink_epochs": 1,
             "batch_size": 16, "num_random": 1, "optimizer": "adamw", "full_lr": 0.002, "shrink_lr": 0.001,
             "weight_decay": 0.05, "calibration_images": 32, "calibration_batch_size": 16, "final_samples": 3,
             "progress": False}
    zoo = {"samples": 6, "anchors": 0,  # + the largest and the smallest
           "calibration_images": 32, "calibration_batch_size": 16, "progress": False}
    config = {"name": "vit", "seed": 0, "device": "cpu", "output_dir": str(tmp_path / "runs"),
              "datasets": [{"name": "npz", "args": {"path": str(npz)}}],
              "stages": [{"name": "train_supernet", "args": train}, {"name": "build_zoo", "args": zoo}]}
    path = tmp_path / "vit.yaml"
    path.write_text(yaml.safe_dump(config))
    with using_plugins(tinyvit_plugin):
        result = CliRunner().invoke(cli, ["run", str(path)], env={"COLUMNS": "400"})
        assert result.exit_code == 0, result.output
        run_dir = tmp_path / "runs" / "vit"
        results = json.loads((run_dir / "results.json").read_text())
        assert {k: v["status"] for k, v in results["stages"].items()} == {"train_supernet": "complete",
                                                                          "build_zoo": "complete"}
        folder = run_dir / "stages" / "train_supernet" / "tiny"
        log = (run_dir / "run.log").read_text()
        assert "phase expand: sorting channels" in log and "phase width: sorting channels" in log
        final = json.loads((folder / "final.json").read_text())
        assert set(final["test"]) == {"largest", "median", "smallest"}
        assert final["epochs"] == {"full": 1, "depth": 1, "expand": 1, "heads": 1, "width": 1}
        space, metadata = load_supernet(folder)
        assert metadata["space"]["name"] == "tiny_vit"
        with ZooStore(run_dir / "stages" / "build_zoo" / "zoo.sqlite", readonly=True) as store:
            rows = store.models(["arch", "params", "val_acc", "test_acc", "space"], space="tiny_vit")
            _, encodings = store.encodings(space="tiny_vit")
        assert len(rows) == 2 + 6 and encodings.shape == (len(rows), space.encoding_dim)
        archs = [space.arch_from_json(r["arch"]) for r in rows]
        assert {space.arch_to_json(a) for a in archs} >= {space.arch_to_json(space.largest()),
                                                          space.arch_to_json(space.smallest())}
        assert all(r["params"] == space.cost(a, 16)["params"] for r, a in zip(rows, archs))
        assert all(0.0 <= r["val_acc"] <= 1.0 and 0.0 <= r["test_acc"] <= 1.0 for r in rows)
        # the export path of the query stage: a new head and 1 -> 3 input channels, then load_model
        export = export_subnet(space, {"name": "tiny_vit", "args": space.config()}, archs[0], tmp_path / "export",
                               num_classes=4, in_channels=3)
        model = mednns.load_model(export)
        assert model(torch.randn(2, 3, 16, 16)).shape == (2, 4)
