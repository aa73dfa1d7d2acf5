"""OFA-MobileNetV3 supernet: extraction, identity, cost, counting, encoding, BN recalibration, sorting."""

from __future__ import annotations

import copy
import itertools
import json
import random

import pytest
import torch
import torch.nn.functional as F
from timm.layers import make_divisible
from torch import nn

from mednns.search_spaces.ofa_mobilenetv3 import OFAMobileNetV3
from mednns.supernets import InvalidArchitecture, depthwise_conv2d, preserved_bn_statistics, recalibrate_bn

pytestmark = pytest.mark.usefixtures("one_thread")


#: a tiny space with make_divisible collisions (expand 2 and 2.1 give the same width) and expand 1
TINY = dict(in_channels=1, num_classes=3, preset="cpu", width_mult=0.5, stem_width=16, first_block_width=16,
            stage_widths=[16, 32], final_expand_width=64, last_channel=64, stage_strides=[2, 1],
            stage_acts=["relu", "hard_swish"], stage_se=[False, True], depth_choices=[1, 2],
            kernel_choices=[3, 5], expand_choices=[1, 2, 2.1], image_size=28)


def perturb(net: OFAMobileNetV3, seed: int = 0, forwards: int = 3, size: int = 28) -> OFAMobileNetV3:
    """Non-trivial BN affine parameters and statistics, kernel transforms away from identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "kernel_transforms" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
        for m in net.modules():
            if isinstance(m, nn.Conv2d) and m.bias is not None:  # the SE's convs
                m.bias.normal_(0, 0.2, generator=gen)
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0, 0.2, generator=gen)
                m.running_mean.normal_(0, 0.2, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
        net.classifier.weight.normal_(0, net.num_features ** -0.5, generator=gen)  # logits of order 1
        net.train()
        rng = random.Random(seed)
        for _ in range(forwards):  # train-mode forwards move the statistics of the active channels
            net.set_active(net.sample(rng))
            net(torch.randn(8, net.config()["in_channels"], size, size, generator=gen))
    return net.eval()


def random_archs(net: OFAMobileNetV3, n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [net.largest(), net.smallest()] + [net.sample(rng) for _ in range(n)]


def calibrate(net: OFAMobileNetV3, arch: dict, size: int = 28, seed: int = 0) -> None:
    """Activate ``arch`` and re-estimate its BN statistics (non-trivial, and they keep the signal alive)."""
    gen = torch.Generator().manual_seed(seed)
    net.set_active(arch)
    recalibrate_bn(net, [torch.randn(16, net.config()["in_channels"], size, size, generator=gen)])


# -- extraction ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("in_channels,size", [(1, 28), (3, 28), (1, 64), (3, 64)])
def test_extracted_network_equals_supernet(in_channels, size):
    torch.manual_seed(in_channels * 100 + size)
    net = perturb(OFAMobileNetV3(in_channels=in_channels, num_classes=5, kernel_choices=[3, 5, 7], image_size=size),
                  seed=size, size=size)
    assert net.config()["stem_stride"] == (1 if size == 28 else 2)
    x = torch.randn(3, in_channels, size, size)
    archs = random_archs(net, 4, seed=size)
    kernels_seen = {k for a in archs for k in a["kernel"] if k is not None}
    assert kernels_seen == {3, 5, 7}
    outputs = []
    for i, arch in enumerate(archs):
        if i % 2:  # half with recalibrated statistics, half with the perturbed ones
            calibrate(net, arch, size, seed=i)
        net.set_active(arch)
        sub = net.extract(arch).eval()
        with torch.no_grad():
            expected, got = net(x), sub(x)
            features = net.forward_features(x)
            assert (features - sub.forward_features(x)).abs().max().item() <= 1e-5, arch
        assert expected.shape == (3, 5)
        assert (expected - got).abs().max().item() <= 1e-5, arch
        outputs.append(expected)
    # the comparison is not vacuous: the outputs depend on the input and on the architecture
    assert all(o.std(0).mean() > 0.01 for o in outputs[1::2])
    assert min((a - b).abs().max() for a, b in itertools.combinations(outputs, 2)) > 1e-3


def test_extracted_network_is_plain_and_state_dict_round_trips():
    torch.manual_seed(0)
    net = perturb(OFAMobileNetV3(in_channels=1, num_classes=4), seed=1)
    arch = net.sample(7)
    sub = net.extract(arch).eval()
    for m in sub.modules():
        assert not type(m).__name__.startswith("Dynamic"), type(m)
        assert type(m).__module__.startswith("torch.nn") or type(m).__module__.endswith("mobilenetv3_layers")
    supernet_storage = {p.data_ptr() for p in net.parameters()} | {b.data_ptr() for b in net.buffers()}
    assert not any(t.data_ptr() in supernet_storage for t in sub.state_dict().values())  # copies
    expected_params = net.cost(arch)["params"]
    assert sum(p.numel() for p in sub.parameters()) == expected_params
    # a fresh supernet (other weights) extracts the same structure and loads the state dict strictly
    torch.manual_seed(1)
    fresh = OFAMobileNetV3(**net.config()).extract(arch).eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        assert not torch.allclose(fresh(x), sub(x))
        fresh.load_state_dict(sub.state_dict(), strict=True)
        torch.testing.assert_close(fresh(x), sub(x), rtol=0, atol=0)
    # and it is independent of the supernet
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        torch.testing.assert_close(fresh(x), sub(x), rtol=0, atol=0)
    assert sub.arch == net.validate(arch) and sub.supernet_config == net.config()
    sub.reset_classifier(7)
    assert sub(x).shape == (4, 7) and sub.forward_head(sub.forward_features(x), pre_logits=True).shape == (4, 640)


def test_channels_last_supernet_and_extracted():
    torch.manual_seed(0)
    net = perturb(OFAMobileNetV3(in_channels=3, num_classes=4), seed=2)
    x = torch.randn(4, 3, 28, 28)
    arch = net.sample(3)
    net.set_active(arch)
    with torch.no_grad():
        ref = net(x)
        cl = copy.deepcopy(net).to(memory_format=torch.channels_last)
        cl.set_active(arch)
        xc = x.contiguous(memory_format=torch.channels_last)
        assert (cl(xc) - ref).abs().max().item() <= 1e-5
        sub = cl.extract(arch).eval()
        assert sub.stem[0].weight.is_contiguous(memory_format=torch.channels_last)
        assert (sub(xc) - ref).abs().max().item() <= 1e-5


def test_training_gradients_match_extracted_network():
    """The supernet's fast depthwise backward gives the gradients of the plain extracted network."""
    torch.manual_seed(0)
    net = perturb(OFAMobileNetV3(in_channels=1, num_classes=3, dropout=0.0, kernel_choices=[3, 5, 7]), seed=3)
    rng = random.Random(0)
    arch = net.sample(rng)
    arch["kernel"] = [None if k is None else 7 for k in arch["kernel"]]  # no transform: the gradients compare 1:1
    arch = net.validate(arch)
    x, y = torch.randn(6, 1, 28, 28), torch.randint(0, 3, (6,))
    sub = net.extract(arch).train()
    net.set_active(arch)
    net.train()
    F.cross_entropy(net(x), y).backward()
    F.cross_entropy(sub(x), y).backward()
    active = [b for b, k in zip(net.blocks, arch["kernel"]) if k is not None]
    for block, plain in zip(active, list(sub.blocks)[1:]):
        dw = plain.depthwise[0]
        torch.testing.assert_close(block.dw_conv.weight.grad[: dw.out_channels], dw.weight.grad, rtol=1e-4, atol=1e-5)
        pw = plain.project[0]
        torch.testing.assert_close(block.project_conv.weight.grad[:, : pw.in_channels], pw.weight.grad,
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kernel,stride", [(3, 1), (5, 1), (5, 2), (7, 2)])
def test_fast_depthwise_conv_gradients(kernel, stride):
    torch.manual_seed(kernel + stride)
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 1, kernel, kernel, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: depthwise_conv2d(a, b, stride, kernel // 2), (x, w))


# -- architectures and identity -----------------------------------------------------------------------
def test_thousand_random_architectures_are_valid_canonical_and_hash_stably():
    net = OFAMobileNetV3(in_channels=1, num_classes=2)
    rng = random.Random(0)
    hashes = set()
    for _ in range(1000):
        a = net.sample(rng)
        assert net.validate(a) == a
        net.set_active(a)
        assert net.active() == a
        text = net.arch_to_json(a)
        assert net.arch_from_json(text) == net.canonical(a) == a
        assert net.arch_hash(copy.deepcopy(a)) == net.arch_hash(a)
        # the same network with junk in its inactive block slots
        junk = copy.deepcopy(a)
        for j, k in enumerate(junk["kernel"]):
            if k is None:
                junk["kernel"][j] = rng.choice(net.kernel_choices)
                junk["expand"][j] = rng.choice(net.expand_choices)
        assert net.arch_to_json(junk) == text and net.arch_hash(junk) == net.arch_hash(a)
        hashes.add(net.arch_hash(a))
    assert len(hashes) > 990  # 1e12 architectures: essentially no repeats


def test_make_divisible_collisions_are_canonicalized():
    net = OFAMobileNetV3(**TINY)
    arch = net.largest()
    assert arch["expand"] == [2, 2, 2, 2]  # 2.1 gives the width of 2
    raw = {"kernel": [5, 3, 3, 5], "expand": [2.1, 1, 2.1, 2.1], "depth": [2, 2]}
    canon = net.validate(raw)
    assert canon["expand"] == [2, 1, 2, 2]
    assert net.arch_hash(raw) == net.arch_hash(canon)
    assert sum(p.numel() for p in net.extract(raw).parameters()) == net.cost(canon)["params"]


def test_validate_names_the_bad_key():
    net = OFAMobileNetV3(in_channels=1, num_classes=2)
    good = net.largest()
    cases = {
        "depth[1]": dict(good, depth=[3, 5, 3, 3, 3]),
        "kernel[2]": dict(good, kernel=good["kernel"][:2] + [4] + good["kernel"][3:]),
        "expand[0]": dict(good, expand=[None] + good["expand"][1:]),
        "'kernel' must be a list": dict(good, kernel=good["kernel"][:-1]),
        "missing ['depth']": {"kernel": good["kernel"], "expand": good["expand"]},
        "unexpected ['width']": dict(good, width=[1]),
        "depth[0]": dict(good, depth=[True] + good["depth"][1:]),
    }
    for needle, arch in cases.items():
        with pytest.raises(InvalidArchitecture, match=needle.replace("[", r"\[").replace("]", r"\]")):
            net.validate(arch)
    with pytest.raises(InvalidArchitecture, match="allowed|not one of"):
        net.validate(dict(good, expand=good["expand"][:-1] + [5]))
    with pytest.raises(InvalidArchitecture):
        net.arch_from_json("[1, 2]")


def test_config_rebuilds_the_same_space():
    net = OFAMobileNetV3(in_channels=3, num_classes=7, preset="paper", width_mult=1.2, image_size=64,
                         kernel_choices=[3, 5])
    cfg = json.loads(json.dumps(net.config()))
    again = OFAMobileNetV3(**cfg)
    assert again.config() == net.config()
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}
    assert cfg["stem_stride"] == 2 and cfg["stage_strides"] == [2, 2, 2, 1, 1]  # small-image strides at 64 px
    with pytest.raises(ValueError, match="preset"):
        OFAMobileNetV3(preset="gpu")
    with pytest.raises(ValueError, match="kernel_choices"):
        OFAMobileNetV3(kernel_choices=[3, 4])


def test_sample_released_dimensions_and_extremes():
    net = OFAMobileNetV3(in_channels=1, num_classes=2)
    largest, smallest = net.largest(), net.smallest()
    assert largest["depth"] == [3] * 5 and set(largest["kernel"]) == {5} and set(largest["expand"]) == {6}
    assert smallest["depth"] == [2] * 5
    assert {k for k in smallest["kernel"] if k is not None} == {3}
    assert {e for e in smallest["expand"] if e is not None} == {3}
    rng = random.Random(1)
    kernels = set()
    for _ in range(50):
        a = net.sample(rng, dimensions=["kernel"])
        assert a["depth"] == largest["depth"] and a["expand"] == largest["expand"]
        kernels.add(tuple(a["kernel"]))
    assert len(kernels) == 50
    depths = {tuple(net.sample(rng, dimensions=["kernel", "depth"])["depth"]) for _ in range(50)}
    assert len(depths) > 10
    lo, hi = net.cost(smallest, 28), net.cost(largest, 28)
    for _ in range(50):
        c = net.cost(net.sample(rng), 28)
        assert lo["params"] <= c["params"] <= hi["params"] and lo["macs"] <= c["macs"] <= hi["macs"]
    with pytest.raises(ValueError, match="width"):
        net.sample(0, dimensions=["width"])
    assert net.sample(5) == net.sample(5)


# -- cost and counting ----------------------------------------------------------------------------------
def hooked_macs(model: nn.Module, x: torch.Tensor) -> int:
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total += output.numel() // output.shape[0] * (module.in_channels // module.groups) * k
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return total


@pytest.mark.parametrize("preset,size", [("cpu", 28), ("cpu", 64), ("cpu", (30, 37))])
def test_cost_matches_extracted_network(preset, size):
    net = OFAMobileNetV3(in_channels=3, num_classes=6, preset=preset, image_size=64 if size == 64 else 28)
    h, w = (size, size) if isinstance(size, int) else size
    for arch in random_archs(net, 3, seed=h):
        sub = net.extract(arch)
        cost = net.cost(arch, size)
        assert cost["params"] == sum(p.numel() for p in sub.parameters())
        assert cost["macs"] == hooked_macs(sub, torch.randn(1, 3, h, w))
        assert net.cost(arch, (3, h, w)) == cost


def test_count_equals_brute_force_enumeration():
    net = OFAMobileNetV3(**TINY)
    cfg = net.config()
    n_slots = net.n_slots
    wm = cfg["width_mult"]
    stage_in = [make_divisible(w * wm, 8) for w in [cfg["first_block_width"], *cfg["stage_widths"]]]

    def signature(arch):  # the network an architecture builds, computed independently of the supernet
        sig = []
        for s, d in enumerate(arch["depth"]):
            for i in range(d):
                j = s * net.max_depth + i
                c_in = stage_in[s] if i == 0 else stage_in[s + 1]
                sig.append((s, i, arch["kernel"][j], make_divisible(round(c_in * arch["expand"][j]), 8)))
        return tuple(sig)

    canon_of_sig: dict[tuple, str] = {}
    jsons = set()
    choices = [cfg["kernel_choices"]] * n_slots + [cfg["expand_choices"]] * n_slots
    for depth in itertools.product(cfg["depth_choices"], repeat=net.n_stages):
        for values in itertools.product(*choices):
            arch = {"kernel": list(values[:n_slots]), "expand": list(values[n_slots:]), "depth": list(depth)}
            text = net.arch_to_json(arch)
            jsons.add(text)
            assert canon_of_sig.setdefault(signature(arch), text) == text  # equal networks, equal JSON
    assert net.count() == len(jsons) == len(canon_of_sig) == 400
    # distinct canonical architectures extract to structurally distinct networks
    shapes = {tuple((k, tuple(v.shape)) for k, v in net.extract(json.loads(t)).state_dict().items())
              for t in sorted(jsons)[::4]}
    assert len(shapes) == len(sorted(jsons)[::4])


def test_paper_preset_size_and_count():
    net = OFAMobileNetV3(in_channels=3, num_classes=1000, preset="paper")
    cfg = net.config()
    assert cfg["kernel_choices"] == [3, 5, 7] and cfg["expand_choices"] == [3, 4, 6]
    assert cfg["depth_choices"] == [2, 3, 4]
    assert cfg["stem_stride"] == 2 and cfg["stage_strides"] == [2, 2, 2, 1, 2]
    largest = net.cost(net.largest(), 224)
    assert 5e6 <= largest["params"] <= 8e6
    assert 4e8 <= largest["macs"] <= 7e8
    assert net.count() == (9 ** 2 + 9 ** 3 + 9 ** 4) ** 5 > 10 ** 19
    cpu = OFAMobileNetV3(in_channels=1, num_classes=2)
    assert cpu.count() == (6 ** 2 + 6 ** 3) ** 5


# -- encoding --------------------------------------------------------------------------------------------
def test_encoding():
    net = OFAMobileNetV3(in_channels=1, num_classes=2, depth_choices=[2, 3, 4])
    nk, ne, nd = len(net.kernel_choices), len(net.expand_choices), len(net.depth_choices)
    assert net.encoding_dim == net.n_slots * (nk + ne) + net.n_stages * nd
    rng = random.Random(0)
    seen: dict[tuple, str] = {}
    for _ in range(300):
        a = net.sample(rng)
        e = net.encode(a)
        assert e.dtype == torch.float32 and e.shape == (net.encoding_dim,)
        assert set(e.tolist()) <= {0.0, 1.0}
        blocks = e[: net.n_slots * (nk + ne)].view(net.n_slots, nk + ne)
        for j in range(net.n_slots):
            active = a["kernel"][j] is not None
            assert blocks[j, :nk].sum() == blocks[j, nk:].sum() == (1 if active else 0)
            if active:
                assert net.kernel_choices[int(blocks[j, :nk].argmax())] == a["kernel"][j]
                assert net.expand_choices[int(blocks[j, nk:].argmax())] == a["expand"][j]
        depth = e[net.n_slots * (nk + ne):].view(net.n_stages, nd)
        assert depth.sum(1).tolist() == [1.0] * net.n_stages
        assert [net.depth_choices[int(i)] for i in depth.argmax(1)] == a["depth"]
        assert seen.setdefault(tuple(e.tolist()), net.arch_to_json(a)) == net.arch_to_json(a)
    assert len(seen) == 300
    # junk in inactive slots does not change the encoding
    a = net.smallest()
    junk = copy.deepcopy(a)
    junk["kernel"] = [k or 5 for k in junk["kernel"]]
    junk["expand"] = [x or 6 for x in junk["expand"]]
    assert torch.equal(net.encode(junk), net.encode(a))


# -- BN recalibration ---------------------------------------------------------------------------------------
def test_bn_recalibration_matches_plain_estimate_and_is_restored():
    torch.manual_seed(0)
    net = perturb(OFAMobileNetV3(in_channels=1, num_classes=2), seed=4)
    arch = net.sample(11)
    net.set_active(arch)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(16, 1, 28, 28, generator=gen) * (1 + i) for i in range(4)]
    j = next(j for j, e in enumerate(arch["expand"]) if e is not None and e != max(net.expand_choices))
    bn = net.blocks[j].dw_bn
    seen: list[torch.Tensor] = []
    handle = bn.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0].detach().clone()))
    with preserved_bn_statistics(net):
        assert recalibrate_bn(net, batches) == 64
        handle.remove()
        c = seen[0].shape[1]
        assert c < bn.num_features
        plain = torch.cat([s.transpose(0, 1).reshape(c, -1) for s in seen], 1).mean(1)
        torch.testing.assert_close(bn.running_mean[:c], plain, rtol=1e-4, atol=1e-5)
        # the extracted network recalibrated on the same batches has the same statistics
        sub = net.extract(arch)
        recalibrate_bn(sub, batches)
        sub_bn = list(sub.blocks)[1 + sum(k is not None for k in arch["kernel"][:j])].depthwise[1]
        torch.testing.assert_close(sub_bn.running_mean, bn.running_mean[:c], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(sub_bn.running_var, bn.running_var[:c], rtol=1e-4, atol=1e-5)
        x = torch.randn(4, 1, 28, 28)
        with torch.no_grad():
            assert (net(x) - sub(x)).abs().max() <= 1e-5
        assert not net.training
    after = net.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), k


# -- channel sorting ------------------------------------------------------------------------------------------
def test_sort_channels_preserves_the_function():
    torch.manual_seed(0)
    base = perturb(OFAMobileNetV3(in_channels=1, num_classes=3), seed=5)
    with torch.no_grad():
        for block in base.blocks:  # distinct importances
            block.project_conv.weight.mul_(torch.rand(1, block.max_mid, 1, 1) * 2)
    rng = random.Random(0)
    x = torch.randn(4, 1, 28, 28)
    full = [base.largest()] + [base.sample(rng, dimensions=["kernel", "depth"]) for _ in range(2)]
    for i, arch in enumerate(full):  # the widest expand: every middle channel is used
        net = copy.deepcopy(base)
        calibrate(net, arch, seed=i)
        narrow = net.validate(dict(arch, expand=[None if e is None else 3 for e in arch["expand"]]))
        with torch.no_grad():
            before = net(x)
            net.set_active(narrow)
            narrow_before = net(x)
            net.sort_channels()
            net.set_active(narrow)
            narrow_after = net(x)
            net.set_active(arch)
            after = net(x)
        assert before.std(0).mean() > 0.01  # not a constant function
        assert (before - after).abs().max() <= 1e-5
        assert not torch.allclose(narrow_before, narrow_after, atol=1e-3)  # narrow subnets keep other channels now
    for block in net.blocks:
        importance = block.project_conv.weight.abs().sum((0, 2, 3))
        assert torch.all(importance[:-1] >= importance[1:])
        if block.se is not None:
            se_importance = block.se.expand.weight.abs().sum((0, 2, 3))
            assert torch.all(se_importance[:-1] >= se_importance[1:])


def test_sort_channels_keeps_nested_bands():
    torch.manual_seed(1)
    net = OFAMobileNetV3(in_channels=1, num_classes=3)
    block = net.blocks[2]
    widths = sorted(set(block.mid_of.values()))  # e.g. 48, 64, 96
    band = {tuple(r.flatten().tolist()) for r in block.dw_conv.weight[: widths[1]]}
    x = torch.randn(2, 1, 28, 28)
    calibrate(net, net.largest())
    with torch.no_grad():
        before = net(x)
        net.sort_channels(expand_stage=1)
        assert (net(x) - before).abs().max() <= 1e-5
    assert {tuple(r.flatten().tolist()) for r in block.dw_conv.weight[: widths[1]]} == band
    importance = block.project_conv.weight.abs().sum((0, 2, 3))
    assert torch.all(importance[: widths[1] - 1] >= importance[1: widths[1]])
