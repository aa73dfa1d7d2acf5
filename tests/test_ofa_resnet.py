"""OFA-ResNet supernet: architectures, canonical identity, extraction, cost, encodings, BN recalibration."""

from __future__ import annotations

import copy
import io
import itertools
import json
import random

import pytest
import torch
from torch import nn

from mednns.search_spaces.ofa_resnet import OFAResNet, ResNetSubnet
from mednns.supernets import InvalidArchitecture, Supernet, batch_norms, preserved_bn_statistics, recalibrate_bn

#: a tiny space with make_divisible collisions (stem 0.5/0.75 → 8; expand 0.2/0.25 → 8 at 16 and 24 channels)
TINY = dict(stage_widths=[16, 24], base_depths=[1, 1], depth_choices=[0, 1], expand_choices=[0.2, 0.25, 0.5],
            width_mults=[0.5, 0.75, 1.0], stem_width=16, stage_strides=[1, 2])

PLAIN_LAYERS = (nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.Dropout, nn.Identity)


pytestmark = pytest.mark.usefixtures("one_thread")


@torch.no_grad()
def make_nontrivial(net: OFAResNet, seed: int, size: int = 28, steps: int = 4) -> OFAResNet:
    """Random BN affine parameters, a larger classifier, and running statistics away from their init."""
    torch.manual_seed(seed)
    for bn in batch_norms(net):
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_(0, 0.2)
    net.classifier.weight.normal_(0, 0.2)
    net.classifier.bias.normal_(0, 0.2)
    net.train()
    rng = random.Random(seed)
    for i in range(steps):
        net.set_active(net.largest() if i == 0 else net.sample(rng))
        net(torch.randn(8, net.in_channels, size, size) * 1.5 + 0.3)
    net.eval()
    for bn in batch_norms(net):
        assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var)), "BN statistics still at init"
    return net


def archs_to_check(net: OFAResNet, seed: int, n: int = 3) -> list[dict]:
    rng = random.Random(seed)
    return [net.largest(), net.smallest()] + [net.sample(rng) for _ in range(n)]


@pytest.fixture(scope="module")
def net() -> OFAResNet:
    torch.manual_seed(0)
    return make_nontrivial(OFAResNet(1, 3, "cpu"), seed=0)


def test_contract_and_config_round_trip(net):
    assert isinstance(net, Supernet) and net.dimensions == ("depth", "expand", "width")
    config = net.config()
    assert json.loads(json.dumps(config)) == config
    assert config["stage_strides"] == [2, 2, 2, 1] and config["stem_stride"] == 1 and not config["stem_pool"]
    rebuilt = OFAResNet(**config)
    assert rebuilt.config() == config
    rebuilt.load_state_dict(net.state_dict())
    rebuilt.eval()
    x = torch.randn(4, 1, 28, 28)
    for arch in archs_to_check(net, 1):
        net.set_active(arch)
        rebuilt.set_active(arch)
        assert torch.equal(net(x), rebuilt(x))
    # explicit arguments override the preset; image_size picks the stem
    big = OFAResNet(3, 5, "cpu", image_size=64, stage_widths=[16, 32, 48, 64])
    assert big.config()["stage_widths"] == [16, 32, 48, 64]
    assert (big.stem_stride, big.stem_pool, big.stage_strides) == (2, False, [1, 2, 2, 1])
    assert OFAResNet(3, 5, "cpu", image_size=64, stem_stride=1).config()["stem_stride"] == 1
    with pytest.raises(ValueError, match="preset"):
        OFAResNet(1, 2, "tiny")
    with pytest.raises(ValueError, match="one entry per stage"):
        OFAResNet(1, 2, base_depths=[1, 1])


@pytest.mark.parametrize("in_channels,size", [(1, 28), (3, 28), (1, 64), (3, 64)])
def test_extracted_network_equals_active_supernet(in_channels, size):
    torch.manual_seed(size + in_channels)
    net = make_nontrivial(OFAResNet(in_channels, 4, "cpu", image_size=size, stage_widths=[24, 48, 96, 160]),
                          seed=size, size=size)
    x = torch.randn(6, in_channels, size, size) * 2 + 0.5
    for arch in archs_to_check(net, seed=size + in_channels):
        net.set_active(arch)
        sub = net.extract(arch).eval()
        expected = sub(x)
        # logits of a useful size that depend on the input
        assert expected.abs().mean() > 0.05 and expected.std(0).mean() > 1e-3
        assert (net(x) - expected).abs().max().item() <= 1e-5, arch
        # channels_last: the supernet matches the extracted network run channels_last too
        cl = x.contiguous(memory_format=torch.channels_last)
        sub_cl = copy.deepcopy(sub).to(memory_format=torch.channels_last)(cl)
        assert (net(cl) - sub_cl).abs().max().item() <= 1e-5
        assert torch.allclose(sub_cl, expected, rtol=1e-5, atol=1e-5)


def test_channels_last_supernet_trains(net):
    model = copy.deepcopy(net).to(memory_format=torch.channels_last).train()
    model.set_active(model.sample(3))
    x = torch.randn(8, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    model(x).sum().backward()
    assert model.stem_conv.weight.grad is not None and model.stem_conv.weight.grad.abs().sum() > 0


def test_extracted_network_is_plain_and_standalone(net):
    arch = net.sample(7)
    sub = net.extract(arch).eval()
    assert isinstance(sub, ResNetSubnet) and sub.arch == net.canonical(arch)
    leaves = [m for m in sub.modules() if not list(m.children())]
    assert leaves and all(isinstance(m, PLAIN_LAYERS) for m in leaves), {type(m).__name__ for m in leaves}
    assert not any("Dynamic" in type(m).__name__ for m in sub.modules())
    x = torch.randn(5, 1, 28, 28)
    expected = sub(x)
    # the copy holds its own weights: changing the supernet does not change it
    copied = copy.deepcopy(sub)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    try:
        assert torch.equal(sub(x), expected) and torch.equal(copied(x), expected)
    finally:
        with torch.no_grad():
            for p in net.parameters():
                p.sub_(1.0)
    # state_dict into a fresh extraction of another supernet; and pickling the whole module
    other = OFAResNet(**net.config()).extract(arch).eval()
    other.load_state_dict(sub.state_dict())
    assert torch.equal(other(x), expected)
    buffer = io.BytesIO()
    torch.save(sub, buffer)
    buffer.seek(0)
    assert torch.equal(torch.load(buffer, weights_only=False)(x), expected)


def test_thousand_random_architectures(net):
    rng = random.Random(1234)
    seen = set()
    for _ in range(1000):
        arch = net.sample(rng)
        assert net.validate(arch) == arch and net.canonical(arch) == arch
        net.set_active(arch)
        assert net.active() == arch
        text = net.arch_to_json(arch)
        assert net.arch_from_json(text) == arch
        assert net.arch_hash(arch) == net.arch_hash(json.loads(text)) == net.arch_hash(copy.deepcopy(arch))
        # inactive blocks' expand choices do not change identity
        variant = copy.deepcopy(arch)
        variant["expand"] = [rng.choice(net.expand_choices) if e is None else e for e in arch["expand"]]
        assert net.arch_to_json(variant) == text and net.arch_hash(variant) == net.arch_hash(arch)
        seen.add(text)
    assert len(seen) > 900  # the space is large: few repeats
    net.set_active(net.largest())


def test_equal_networks_have_equal_identity(net):
    arch = net.largest()
    # cpu stem: 16 x {0.65, 0.8, 1.0} all round to 16 channels → one canonical stem choice
    variants = [dict(arch, width=[w] + arch["width"][1:]) for w in net.width_mults]
    assert len({net.arch_to_json(v) for v in variants}) == 1
    assert net.canonical(variants[-1])["width"][0] == net.width_mults[0]
    # at 32 output channels (stage 0, width 1.0) expand 0.2 and 0.25 both give 8 middle channels
    a = dict(arch, expand=[0.25] + arch["expand"][1:])
    b = dict(arch, expand=[0.2] + arch["expand"][1:])
    assert net.arch_hash(a) == net.arch_hash(b) and net.canonical(a)["expand"][0] == 0.2
    c = dict(arch, expand=[0.35] + arch["expand"][1:])
    assert net.arch_hash(c) != net.arch_hash(b)


def test_validate_rejects_bad_architectures(net):
    good = net.largest()
    bad = [
        ([], "dict"),
        ({k: v for k, v in good.items() if k != "width"}, "missing \\['width'\\]"),
        (dict(good, kernel=[3]), "unknown \\['kernel'\\]"),
        (dict(good, depth=good["depth"][:-1]), "depth: expected 4 values"),
        (dict(good, expand=good["expand"] + [0.2]), "expand: expected 8 values"),
        (dict(good, width="1.0"), "width: expected a list"),
        (dict(good, depth=[1, 1, 2, 1]), "depth\\[2\\]: 2 is not one of \\[0, 1\\]"),
        (dict(good, depth=[1, 1, True, 1]), "depth\\[2\\]"),
        (dict(good, depth=[1, 1, 1.0, 1]), "depth\\[2\\]"),
        (dict(good, expand=[0.2, 0.3] + good["expand"][2:]), "expand\\[1\\]: 0.3 is not one of \\[0.2, 0.25, 0.35\\]"),
        (dict(good, expand=[None] + good["expand"][1:]), "expand\\[0\\]: block 0 of stage 0 is active"),
        (dict(good, expand=["0.2"] + good["expand"][1:]), "expand\\[0\\]"),
        (dict(good, width=[1.0, 1.0, 2, 1.0, 1.0]), "width\\[2\\]: 2 is not one of"),
        (dict(good, width=[1.0, 1.0, None, 1.0, 1.0]), "width\\[2\\]"),
    ]
    for arch, message in bad:
        with pytest.raises(InvalidArchitecture, match=message):
            net.validate(arch)
    with pytest.raises(InvalidArchitecture):
        net.arch_from_json("{not json")
    with pytest.raises(InvalidArchitecture):
        net.set_active(dict(good, depth=[3, 0, 0, 0]))
    # ints equal to a choice are accepted and written as the choice
    assert net.validate(dict(good, width=[1, 1, 1, 1, 1])) == good


def test_cost_matches_extracted_network(net):
    def counted_macs(model: nn.Module, shape: tuple[int, ...]) -> int:
        total = 0

        def hook(module, inputs, output):
            nonlocal total
            if isinstance(module, nn.Conv2d):
                k = module.kernel_size[0] * module.kernel_size[1]
                total += output[0].numel() * module.in_channels // module.groups * k
            elif isinstance(module, nn.Linear):
                total += output[0].numel() * module.in_features

        handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        with torch.no_grad():
            model.eval()(torch.zeros(1, *shape))
        for h in handles:
            h.remove()
        return total

    rng = random.Random(5)
    for arch in [net.largest(), net.smallest()] + [net.sample(rng) for _ in range(12)]:
        sub = net.extract(arch)
        for size in (28, 37, (64, 45)):
            hw = (size, size) if isinstance(size, int) else size
            cost = net.cost(arch, size)
            assert cost["params"] == sum(p.numel() for p in sub.parameters())
            assert cost["macs"] == counted_macs(sub, (1, *hw)), (arch, size)
    assert net.cost(net.largest(), (1, 28, 28)) == net.cost(net.largest(), 28)
    with pytest.raises(ValueError, match="channels"):
        net.cost(net.largest(), (3, 28, 28))
    # 64 px stem with max-pool, odd sizes through the strided average pools
    pooled = OFAResNet(3, 7, "cpu", image_size=128, stage_widths=[16, 24, 32, 40])
    assert pooled.stem_pool
    arch = pooled.sample(2)
    assert pooled.cost(arch, 77)["macs"] == counted_macs(pooled.extract(arch), (3, 77, 77))


def test_cost_reproduces_resnet50():
    """With ResNet-50's depths and expand ratio the space contains ResNet-50 (torchvision/timm numbers)."""
    net = OFAResNet(3, 1000, "paper", base_depths=[3, 4, 6, 3], depth_choices=[0], expand_choices=[0.25],
                    width_mults=[1.0])
    assert (net.stem_kernel, net.stem_stride, net.stem_pool) == (7, 2, True)
    assert net.cost(net.largest(), 224) == {"params": 25_557_032, "macs": 4_089_184_256}
    assert net.count() == 1


def test_count_equals_brute_force_enumeration():
    net = OFAResNet(1, 2, "cpu", **TINY)
    n_slots = sum(b + max(TINY["depth_choices"]) for b in TINY["base_depths"])
    raw = 0
    canonical, shapes = set(), set()
    for depth in itertools.product(TINY["depth_choices"], repeat=2):
        for width in itertools.product(TINY["width_mults"], repeat=3):
            for expand in itertools.product(TINY["expand_choices"], repeat=n_slots):
                arch = {"depth": list(depth), "expand": list(expand), "width": list(width)}
                raw += 1
                canonical.add(net.arch_to_json(arch))
                shapes.add(json.dumps(net._channels(net.canonical(arch))))
    assert raw == 4 * 27 * 81
    # collisions exist in this space, and canonical forms are exactly the distinct networks
    assert len(canonical) < raw // 10
    assert net.count() == len(canonical) == len(shapes)


def test_count_of_presets():
    assert OFAResNet(1, 2, "cpu").count() == 120_960
    paper = OFAResNet(3, 1000, "paper")
    assert paper.count() > 10**11


def test_encode(net):
    rng = random.Random(9)
    by_text: dict[str, tuple] = {}
    archs = [net.largest(), net.smallest()] + [net.sample(rng) for _ in range(300)]
    for arch in archs:
        vec = net.encode(arch)
        assert vec.dtype == torch.float32 and vec.shape == (net.encoding_dim,)
        assert set(vec.unique().tolist()) <= {0.0, 1.0}
        nd, ne, nw = len(net.depth_choices), len(net.expand_choices), len(net.width_mults)
        depth = vec[: 4 * nd].view(4, nd)
        expand = vec[4 * nd: 4 * nd + net.n_slots * ne].view(net.n_slots, ne)
        width = vec[4 * nd + net.n_slots * ne:].view(5, nw)
        assert torch.equal(depth.sum(1), torch.ones(4)) and torch.equal(width.sum(1), torch.ones(5))
        for e, row in zip(arch["expand"], expand):
            assert row.sum().item() == (0.0 if e is None else 1.0)
            if e is not None:
                assert net.expand_choices[int(row.argmax())] == e
        by_text[net.arch_to_json(arch)] = tuple(vec.tolist())
    assert len(set(by_text.values())) == len(by_text) > 250
    assert net.encoding_dim == 4 * 2 + 8 * 3 + 5 * 3


def test_sample_dimensions_and_extremes(net):
    rng = random.Random(3)
    big, small = net.largest(), net.smallest()
    assert big["depth"] == [1, 1, 1, 1] and big["width"] == [0.65, 1.0, 1.0, 1.0, 1.0]
    assert set(big["expand"]) == {0.35} and small["depth"] == [0, 0, 0, 0]
    assert small["expand"][1::2] == [None] * 4 and small["width"] == [0.65] * 5
    depths, expands, widths = set(), set(), set()
    for _ in range(100):
        arch = net.sample(rng, dimensions=["depth"])
        depths.add(tuple(arch["depth"]))
        assert arch["width"] == big["width"]
        assert all(e in (None, 0.35) for e in arch["expand"])
        assert arch == net.canonical(dict(big, depth=arch["depth"]))
        arch = net.sample(rng, dimensions=("depth", "expand"))
        expands.add(tuple(arch["expand"]))
        assert arch["width"] == big["width"]
        widths.add(tuple(net.sample(rng)["width"]))
    assert len(depths) > 8 and len(expands) > 20 and len(widths) > 20
    costs = [net.cost(net.sample(rng), 28) for _ in range(50)]
    top, bottom = net.cost(big, 28), net.cost(small, 28)
    assert all(bottom[k] <= c[k] <= top[k] for c in costs for k in ("params", "macs"))
    assert net.sample(11) == net.sample(11)
    with pytest.raises(ValueError, match="unknown dimensions"):
        net.sample(0, dimensions=["kernel"])


def test_paper_preset():
    paper = OFAResNet(3, 1000, "paper")
    cfg = paper.config()
    assert cfg["stage_widths"] == [256, 512, 1024, 2048] and cfg["base_depths"] == [2, 2, 4, 2]
    assert (paper.stem_kernel, paper.stem_stride, paper.stem_pool) == (7, 2, True)
    big = paper.largest()
    assert big["depth"] == [2, 2, 2, 2] and len(big["expand"]) == 18
    params = paper.cost(big, 224)["params"]
    assert params == sum(p.numel() for p in paper.parameters())  # the largest uses every weight
    assert 40e6 < params < 55e6  # depths 4/4/6/4 at expand 0.35 (ResNet-50: 25.6M at 3/4/6/3, 0.25)
    assert 6e6 < paper.cost(paper.smallest(), 224)["params"] < 8e6
    small_images = OFAResNet(3, 10, "paper", image_size=28)
    assert (small_images.stem_stride, small_images.stem_pool, small_images.stage_strides) == (1, False, [2, 2, 2, 1])


def test_bn_recalibration_of_extracted_network(net):
    torch.manual_seed(4)
    arch = net.sample(4)
    sub = net.extract(arch).eval()
    batches = [torch.randn(16, 1, 28, 28) * 1.7 + 0.4 for _ in range(4)]
    captured: dict[nn.Module, list[torch.Tensor]] = {}

    def hook(module, inputs):
        captured.setdefault(module, []).append(inputs[0].detach().clone())

    layers = batch_norms(sub)
    handles = [bn.register_forward_pre_hook(hook) for bn in layers]
    assert recalibrate_bn(sub, batches) == 64
    for h in handles:
        h.remove()
    assert not sub.training
    for bn in layers:
        inputs = captured[bn]
        assert len(inputs) == 4
        # running mean = mean of this layer's inputs over all 64 calibration images (what it saw in train mode)
        mean = torch.cat(inputs).mean(dim=(0, 2, 3))
        assert torch.allclose(bn.running_mean, mean, atol=1e-5, rtol=1e-4)
        # running var = average of the per-batch unbiased variances (equal batch sizes)
        var = torch.stack([x.var(dim=(0, 2, 3), unbiased=True) for x in inputs]).mean(0)
        assert torch.allclose(bn.running_var, var, atol=1e-5, rtol=1e-4)
        assert bn.num_batches_tracked.item() == 4
    # the stem BN's inputs do not depend on other BN layers: eval-mode inputs after calibration agree
    stem_bn = sub.stem.bn
    seen = []
    handle = stem_bn.register_forward_pre_hook(lambda m, i: seen.append(i[0]))
    with torch.no_grad():
        for x in batches:
            sub(x)
    handle.remove()
    assert torch.allclose(stem_bn.running_mean, torch.cat(seen).mean(dim=(0, 2, 3)), atol=1e-5)
    # momenta are restored
    assert all(bn.momentum == 0.1 for bn in layers)


def test_bn_recalibration_in_supernet_is_preserved_and_matches_extracted(net):
    torch.manual_seed(5)
    arch = net.sample(5)
    batches = [torch.randn(16, 1, 28, 28) + 0.3 for _ in range(3)]
    x = torch.randn(6, 1, 28, 28)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    sub = net.extract(arch)
    recalibrate_bn(sub, batches)
    with preserved_bn_statistics(net):
        net.set_active(arch)
        recalibrate_bn(net, batches)
        assert (net(x) - sub(x)).abs().max().item() <= 1e-5
        changed = [k for k, v in net.state_dict().items() if "running" in k and not torch.equal(v, before[k])]
        assert changed, "calibration did not touch the supernet"
    after = net.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert not net.training


def test_training_touches_only_the_active_subnet(net):
    model = copy.deepcopy(net).train()
    small = model.smallest()
    model.set_active(small)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model(torch.randn(8, 1, 28, 28)).sum().backward()
    inactive = [j for j, e in enumerate(small["expand"]) if e is None]
    assert inactive
    for j in inactive:
        assert all(p.grad is None for p in model.blocks[j].parameters())
        prefix = f"blocks.{j}."
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items() if k.startswith(prefix))
    # active BN layers update only their active channels
    stem_channels = model._channels(small)[0]
    bn = model.blocks[0].bn3
    out = model._channels(small)[1][0]
    assert not torch.equal(bn.running_mean[:out], before["blocks.0.bn3.running_mean"][:out])
    assert torch.equal(bn.running_mean[out:], before["blocks.0.bn3.running_mean"][out:])
    assert model.stem_conv.weight.grad[stem_channels:].abs().sum() == 0
    grad = model.blocks[0].conv2.weight.grad
    mid = model._channels(small)[2][0]
    assert grad[:mid, :mid].abs().sum() > 0 and grad[mid:].abs().sum() == 0 and grad[:, mid:].abs().sum() == 0
    with pytest.raises(ValueError, match="expected input"):
        model(torch.randn(2, 3, 28, 28))


def test_sort_channels_preserves_the_function(net):
    model = copy.deepcopy(net).eval()
    x = torch.randn(6, 1, 28, 28)
    model.set_active(model.largest())
    expected = model(x)
    weights = model.blocks[0].conv3.weight.clone()
    model.sort_channels()
    assert (model(x) - expected).abs().max().item() <= 1e-5
    assert not torch.equal(model.blocks[0].conv3.weight, weights), "nothing was reordered"
    for block in model.blocks:
        importance = block.conv3.weight.abs().sum(dim=(0, 2, 3))
        assert torch.all(importance[:-1] >= importance[1:])
    # with the largest expand ratio at full width every arch using all middle channels is unchanged;
    # OFA's protected ordering (expand_stage) keeps the function too
    model.sort_channels(expand_stage=1)
    assert (model(x) - expected).abs().max().item() <= 1e-5
    deeper_only = model.sample(2, dimensions=["depth"])
    model.set_active(deeper_only)
    net.set_active(deeper_only)
    assert (model(x) - net(x)).abs().max().item() <= 1e-5
    net.set_active(net.largest())
