"""The built-in model encoders (``arch``, ``functional``, ``arch_functional``) and functional signatures,
on tiny OFA-ResNet and OFA-MobileNetV3 supernets saved the way ``train_supernet`` saves them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import mednns
from mednns.cli import cli
from mednns.errors import UsageError
from mednns.metaspace import functional
from mednns.metaspace.contracts import ModelTable
from mednns.metaspace.model_encoders import ArchEncoder, ArchFunctionalEncoder, FunctionalEncoder, source_features
from mednns.training.checkpoint import save_supernet
from supernet_helpers import make_manager, tiny_mobilenet, tiny_resnet

pytestmark = pytest.mark.usefixtures("one_thread")

P = 8  # probe images in these tests: signatures of 28 numbers


# -- tiny supernets on disk and tables of their subnets -----------------------------------------------

@dataclass
class Supernet:
    folder: Path
    name: str
    space: Any
    image_size: int


def _perturb(space: torch.nn.Module, seed: int) -> None:
    """Trained-looking weights: random BN scales and shifts (fresh OFA nets zero-init residual BNs,
    which makes every depth compute the same function)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in space.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)


def _save(folder: Path, name: str, space: Any, channels: int, image_size: int) -> Supernet:
    _perturb(space, seed=len(name))
    metadata = {"format": "mednns-supernet/1", "space": {"name": name, "args": space.config()},
                "dataset": {"name": f"tiny-{name}", "image_size": [image_size, image_size]},
                "normalization": {"mean": [0.4] * channels, "std": [0.2] * channels, "channels": None}}
    save_supernet(folder, space, metadata)
    return Supernet(folder, name, space, image_size)


@pytest.fixture(scope="module")
def supernets(tmp_path_factory) -> dict[str, Supernet]:
    """A 1-channel 12 px tiny OFA-ResNet and a 3-channel 16 px tiny OFA-MobileNetV3, untrained but saved
    with ``save_supernet`` and a ``supernet.json`` like the trainer writes."""
    root = tmp_path_factory.mktemp("supernets")
    torch.manual_seed(0)
    return {"ofa_resnet": _save(root / "resnet", "ofa_resnet", tiny_resnet(1, 3), 1, 12),
            "ofa_mobilenetv3": _save(root / "mobilenet", "ofa_mobilenetv3", tiny_mobilenet(3, 2), 3, 16)}


def archs(net: Supernet, samples: int) -> list[dict]:
    """Largest, smallest and ``samples`` distinct random architectures."""
    space = net.space
    found = {space.arch_to_json(a): a for a in (space.largest(), space.smallest())}
    seed = 0
    while len(found) < samples + 2:
        arch = space.sample(seed)
        found.setdefault(space.arch_to_json(arch), arch)
        seed += 1
    return list(found.values())


def make_table(rows: list[tuple[Supernet, dict | str]]) -> ModelTable:
    """A ModelTable of (supernet, architecture or architecture JSON) rows."""
    encodings, params, macs, texts = [], [], [], []
    for net, arch in rows:
        arch = net.space.arch_from_json(arch) if isinstance(arch, str) else arch
        encodings.append(net.space.encode(arch).numpy())
        cost = net.space.cost(arch, net.image_size)
        params.append(cost["params"])
        macs.append(cost["macs"])
        texts.append(net.space.arch_to_json(arch))
    texts = [a if isinstance(a, str) else t for (_, a), t in zip(rows, texts)]
    n = len(rows)
    return ModelTable(ids=np.arange(1, n + 1), dataset=[f"tiny-{net.name}" for net, _ in rows],
                      space=[net.name for net, _ in rows], encoding=encodings, params=np.array(params),
                      macs=np.array(macs), target=np.linspace(0.5, 0.9, n), arch=texts,
                      supernet=[str(net.folder) for net, _ in rows])


@pytest.fixture(scope="module")
def mixed(supernets) -> ModelTable:
    """Rows of both spaces, interleaved: 5 ResNets and 4 MobileNets."""
    resnets = [(supernets["ofa_resnet"], a) for a in archs(supernets["ofa_resnet"], 3)]
    mobilenets = [(supernets["ofa_mobilenetv3"], a) for a in archs(supernets["ofa_mobilenetv3"], 2)]
    rows = [r for pair in zip(resnets, mobilenets) for r in pair] + resnets[len(mobilenets):]
    return make_table(rows)


def context(tmp_path: Path | None = None, **extra: Any) -> dict[str, Any]:
    return {"seed": 0, "device": "cpu", "cache_dir": tmp_path, "manager": make_manager(), **extra}


# -- arch ---------------------------------------------------------------------------------------------

def test_arch_embeds_rows_of_two_spaces_into_one_space(mixed, supernets):
    encoder = ArchEncoder(embed_dim=8, hidden=16)
    encoder.setup(mixed, {"seed": 0})
    out = encoder(torch.arange(len(mixed)))
    assert out.shape == (len(mixed), 8) and torch.isfinite(out).all()
    assert sorted(encoder.nets) == ["ofa_mobilenetv3", "ofa_resnet"]
    for name, net in supernets.items():
        assert encoder.input_dim(name) == net.space.encoding_dim + 2  # + log params, log MACs
    plain = ArchEncoder(embed_dim=8, costs=False)
    plain.setup(mixed, {})
    assert plain.input_dim("ofa_resnet") == supernets["ofa_resnet"].space.encoding_dim


def test_arch_gradients_reach_every_space_mlp(mixed):
    encoder = ArchEncoder(embed_dim=8, hidden=16, layers=3, dropout=0.1)
    encoder.setup(mixed, {"seed": 0})
    encoder(torch.arange(len(mixed))).pow(2).sum().backward()
    grads = {name: p.grad for name, p in encoder.named_parameters()}
    assert len(grads) == 2 * 3 * 2  # 2 spaces x 3 linear layers x (weight, bias)
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())


def test_forward_output_follows_index_order(mixed):
    encoder = ArchEncoder(embed_dim=8, hidden=16)
    encoder.setup(mixed, {"seed": 0})
    everything = encoder(torch.arange(len(mixed)))
    index = torch.tensor([5, 0, 8, 1, 1, 3])
    assert torch.allclose(encoder(index), everything[index], atol=1e-6)
    assert encoder(torch.tensor([], dtype=torch.long)).shape == (0, 8)


def test_arch_layers_are_seeded_by_the_context(mixed):
    def embed(seed: int) -> torch.Tensor:
        encoder = ArchEncoder(embed_dim=8, hidden=16)
        torch.manual_seed(seed + 100)  # the global RNG does not matter
        encoder.setup(mixed, {"seed": seed})
        return encoder(torch.arange(len(mixed))).detach()

    assert torch.equal(embed(0), embed(0))
    assert not torch.allclose(embed(0), embed(1))


def test_cost_inputs_are_standardized_over_the_table(mixed):
    encoder = ArchEncoder(embed_dim=4)
    encoder.setup(mixed, {})
    costs = torch.cat([encoder.inputs[k].values[:, -2:] for k in encoder.inputs])
    assert torch.allclose(costs.mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(costs.std(0, unbiased=False), torch.ones(2), atol=1e-4)


def test_arch_user_mistakes_are_usage_errors(mixed):
    with pytest.raises(UsageError, match="layers"):
        ArchEncoder(layers=0)
    with pytest.raises(UsageError, match="not set up"):
        ArchEncoder()(torch.tensor([0]))
    empty = ModelTable(np.zeros(0), [], [], [], np.zeros(0), np.zeros(0), np.zeros(0), [])
    with pytest.raises(UsageError, match="empty"):
        ArchEncoder().setup(empty, {})
    encodings = [e[:3] if i == 0 else e for i, e in enumerate(mixed.encoding)]
    broken = ModelTable(**{**mixed.__dict__, "encoding": encodings})
    with pytest.raises(UsageError, match="different lengths"):
        ArchEncoder().setup(broken, {})
    encoder = ArchEncoder(embed_dim=4)
    encoder.setup(mixed, {})
    with pytest.raises(IndexError):
        encoder(torch.tensor([len(mixed)]))


def test_source_aware_arch_gives_one_architecture_from_two_sources_two_embeddings(supernets):
    net = supernets["ofa_resnet"]
    largest = net.space.arch_to_json(net.space.largest())
    table = make_table([(net, largest), (net, largest), (net, net.space.arch_to_json(net.space.smallest()))])
    table.dataset[:] = ["breast", "retina", "breast"]  # rows 0 and 1: one architecture, two supernets' weights
    rng = np.random.default_rng(0)
    features = {"breast": rng.normal(0, 1, (40, 6)), "retina": rng.normal(2, 3, (50, 6))}
    blind = ArchEncoder(embed_dim=8, hidden=16)
    blind.setup(table, {"seed": 0})
    out = blind(torch.arange(3)).detach()
    assert torch.equal(out[0], out[1])  # the architecture alone cannot tell the weights apart
    aware = ArchEncoder(embed_dim=8, hidden=16, source=True)
    aware.setup(table, {"seed": 0, "dataset_features": features})
    out = aware(torch.arange(3)).detach()
    assert not torch.allclose(out[0], out[1])
    assert aware.input_dim("ofa_resnet") == net.space.encoding_dim + 2 + 2 * 6  # + mean and std per feature
    described = source_features(table, {"dataset_features": features})
    np.testing.assert_array_equal(described[0], described[2])  # one source, one descriptor
    np.testing.assert_allclose(np.abs(described[0]), 1.0, atol=1e-5)  # two datasets, standardized: +-1
    with pytest.raises(UsageError, match="lacks retina"):
        ArchEncoder(source=True).setup(table, {"dataset_features": {"breast": features["breast"]}})
    with pytest.raises(UsageError, match="one F"):
        source_features(table, {"dataset_features": {**features, "retina": rng.normal(size=(5, 3))}})


# -- functional signatures ----------------------------------------------------------------------------

def prepared_probe(net: Supernet) -> torch.Tensor:
    channels = net.space.config()["in_channels"]
    return functional.prepare_probe(functional.synthetic_probe(P, 20, seed=0), channels,
                                    [net.image_size] * 2, [0.4] * channels, [0.2] * channels)


def test_synthetic_probe_is_deterministic_smooth_and_in_range():
    probe = functional.synthetic_probe(6, 20, seed=3)
    assert probe.shape == (6, 1, 20, 20) and probe.dtype == torch.float32
    assert probe.min() == 0 and probe.max() == 1
    assert torch.equal(probe, functional.synthetic_probe(6, 20, seed=3))
    assert not torch.equal(probe, functional.synthetic_probe(6, 20, seed=4))
    # smooth: neighbouring pixels are much closer than random pairs
    assert (probe[..., 1:] - probe[..., :-1]).abs().mean() < 0.2 * (probe - probe.flip(0)).abs().mean()


def test_prepare_probe_adapts_channels_size_and_normalization():
    probe = functional.synthetic_probe(3, 20, seed=0)
    x = functional.prepare_probe(probe, 3, [12, 10], [0.5, 0.5, 0.5], [0.25])
    assert x.shape == (3, 3, 12, 10)
    assert torch.equal(x[:, 0], x[:, 2])
    back = functional.prepare_probe(functional.prepare_probe(probe, 3, [20, 20], None, None), 1, [20, 20], None, None)
    assert torch.allclose(back, probe, atol=1e-6)  # 1 -> 3 -> 1 is the identity (luminance weights sum to 1)


@pytest.mark.parametrize("space", ["ofa_resnet", "ofa_mobilenetv3"])
def test_signature_length_does_not_depend_on_width(supernets, space):
    net = supernets[space]
    probe = prepared_probe(net)
    large, small = net.space.extract(net.space.largest()), net.space.extract(net.space.smallest())
    sig_large = functional.subnet_signature(large, probe)
    sig_small = functional.subnet_signature(small, probe)
    assert sig_large.shape == sig_small.shape == (P * (P - 1) // 2,)
    assert np.abs(sig_large).max() <= 1 + 1e-6 and np.isfinite(sig_large).all()
    assert not np.allclose(sig_large, sig_small, atol=1e-4)
    if space == "ofa_resnet":  # the widths really differ: the penultimate features do
        widths = [functional.penultimate_features(n, probe).shape[1] for n in (large, small)]
        assert widths[0] > widths[1]


def test_signature_is_deterministic_and_equal_for_equal_networks(supernets):
    net = supernets["ofa_resnet"]
    probe = prepared_probe(net)
    arch = net.space.sample(5)
    first = functional.subnet_signature(net.space.extract(arch), probe)
    again = functional.subnet_signature(net.space.extract(arch), probe)
    assert np.array_equal(first, again)
    other = functional.subnet_signature(net.space.extract(net.space.sample(11)), probe)
    assert not np.allclose(first, other, atol=1e-4)


def test_equal_networks_written_differently_get_equal_signatures(supernets, tmp_path):
    net = supernets["ofa_resnet"]
    arch = net.space.smallest()  # depth 0: the second block of each stage is inactive
    raw = json.loads(json.dumps(arch))
    raw["expand"] = [net.space.expand_choices[-1] if e is None else e for e in raw["expand"]]
    raw_text = json.dumps(raw)
    assert raw_text != net.space.arch_to_json(arch) and net.space.arch_to_json(raw) == net.space.arch_to_json(arch)
    table = make_table([(net, net.space.arch_to_json(arch)), (net, raw_text), (net, net.space.largest())])
    signatures = functional.table_signatures(table, functional.synthetic_probe(P, 20), cache_dir=tmp_path,
                                             manager=make_manager())
    assert np.array_equal(signatures[0], signatures[1])
    assert not np.allclose(signatures[0], signatures[2], atol=1e-4)


def test_head_input_is_captured_for_any_network_ending_in_a_linear():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))
    signature = functional.subnet_signature(net, functional.synthetic_probe(5, 12))
    assert signature.shape == (10,)
    with pytest.raises(UsageError, match="nn.Linear"):
        with functional.capture_head_input(torch.nn.Conv2d(1, 1, 1)):
            pass


# -- the functional encoder ---------------------------------------------------------------------------

class Counter:
    """Wraps a function and counts its calls."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.fn(*args, **kwargs)


def test_functional_encoder_embeds_two_spaces_and_trains(mixed, tmp_path):
    encoder = FunctionalEncoder(embed_dim=8, hidden=16, probe_images=P, probe_size=20)
    encoder.setup(mixed, context(tmp_path))
    assert encoder.signature_dim == P * (P - 1) // 2
    assert encoder.signatures.shape == (len(mixed), P * (P - 1) // 2)
    index = torch.tensor([3, 0, 7])
    out = encoder(index)
    assert out.shape == (3, 8)
    assert torch.allclose(out, encoder(torch.arange(len(mixed)))[index], atol=1e-6)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())


def test_cache_makes_a_second_setup_extract_nothing(mixed, tmp_path, monkeypatch):
    loads, signatures = Counter(functional.load_supernet), Counter(functional.subnet_signature)
    monkeypatch.setattr(functional, "load_supernet", loads)
    monkeypatch.setattr(functional, "subnet_signature", signatures)
    first = FunctionalEncoder(embed_dim=4, probe_images=P, probe_size=20)
    first.setup(mixed, context(tmp_path))
    assert loads.calls == 2 and signatures.calls == len(mixed)  # one load per supernet, one pass per arch
    assert len(list((tmp_path / "functional").glob("*.npz"))) == 2

    second = FunctionalEncoder(embed_dim=4, probe_images=P, probe_size=20)
    second.setup(mixed, context(tmp_path))
    assert loads.calls == 2 and signatures.calls == len(mixed)
    assert np.array_equal(first.signatures, second.signatures)

    other_probe = FunctionalEncoder(embed_dim=4, probe_images=P, probe_size=20, seed=1)
    other_probe.setup(mixed, context(tmp_path))  # another probe: another cache entry
    assert signatures.calls == 2 * len(mixed)
    assert not np.allclose(other_probe.signatures, first.signatures)


def test_context_probe_replaces_the_synthetic_one(supernets, tmp_path):
    net = supernets["ofa_mobilenetv3"]
    table = make_table([(net, a) for a in archs(net, 1)])
    probe = torch.rand(5, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    encoder = FunctionalEncoder(embed_dim=4, probe_images=P)
    encoder.setup(table, context(tmp_path, probe=probe))
    assert encoder.signature_dim == 10
    with pytest.raises(UsageError, match="probe"):
        FunctionalEncoder().setup(table, context(tmp_path, probe=probe * 3))


def test_functional_user_mistakes_are_usage_errors(mixed, supernets, tmp_path):
    with pytest.raises(UsageError, match="probe_images"):
        FunctionalEncoder(probe_images=1)
    no_supernets = ModelTable(**{**mixed.__dict__, "supernet": []})
    with pytest.raises(UsageError, match="supernet"):
        FunctionalEncoder(probe_images=P).setup(no_supernets, context(tmp_path))
    wrong_space = ModelTable(**{**mixed.__dict__, "supernet": [str(supernets["ofa_resnet"].folder)] * len(mixed)})
    with pytest.raises(UsageError, match="space"):
        FunctionalEncoder(probe_images=P).setup(wrong_space, context(tmp_path))
    missing = ModelTable(**{**mixed.__dict__, "supernet": [str(tmp_path / "nowhere")] * len(mixed)})
    with pytest.raises(UsageError, match="nowhere"):
        FunctionalEncoder(probe_images=P).setup(missing, context(tmp_path))


def test_arch_functional_mixes_both(mixed, tmp_path):
    encoder = ArchFunctionalEncoder(embed_dim=8, hidden=16, probe_images=P, probe_size=20)
    encoder.setup(mixed, context(tmp_path))
    index = torch.tensor([8, 2, 2, 0])
    out = encoder(index)
    assert out.shape == (4, 8)
    assert torch.allclose(out[1], out[2])
    out.pow(2).sum().backward()
    names = {name.split(".")[0] for name, p in encoder.named_parameters()
             if p.grad is not None and p.grad.abs().sum() > 0}
    assert names == {"arch", "functional", "mix"}


# -- registration ---------------------------------------------------------------------------------------

def test_model_encoders_are_registered_and_listed():
    result = CliRunner().invoke(cli, ["list", "model-encoders", "--json"], catch_exceptions=False)
    assert result.exit_code == 0
    assert {"arch", "functional", "arch_functional"} <= {c["name"] for c in json.loads(result.output)}
    manager = make_manager()
    assert isinstance(manager.create("model-encoders", "arch", embed_dim=8, costs=False), ArchEncoder)
    assert isinstance(manager.create("model-encoders", "arch_functional", probe_images=4), ArchFunctionalEncoder)
    with pytest.raises(mednns.MednnsError, match="embed_dim"):
        manager.create("model-encoders", "functional", embed_dim="wide")
