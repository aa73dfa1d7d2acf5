"""Which architectures a zoo evaluates: deterministic, deduplicated, shardable plans."""

from __future__ import annotations

import logging

import pytest

from mednns.errors import UsageError
from mednns.search_spaces.ofa_resnet import OFAResNet
from mednns.zoo import plan as plan_module
from mednns.zoo.plan import Planned, Shard, plan_architectures, shard_plan
from supernet_helpers import tiny_mobilenet, tiny_resnet

ORIGIN_ORDER = {"extreme": 0, "anchor": 1, "sample": 2}



pytestmark = pytest.mark.usefixtures("mednns_logs")  # the zoo's warnings reach caplog

@pytest.fixture(scope="module")
def space() -> OFAResNet:
    """96 distinct subnets."""
    return tiny_resnet()


@pytest.fixture(scope="module")
def mobilenet():
    return tiny_mobilenet()


@pytest.fixture(scope="module")
def two_subnets() -> OFAResNet:
    """One stage, one block, no elastic depth/expand: only 2 distinct subnets (the stem width collides)."""
    net = OFAResNet(1, 3, "cpu", stage_widths=[16], base_depths=[1], depth_choices=[0], expand_choices=[0.5],
                    width_mults=[0.5, 1.0], stem_width=8)
    assert net.count() == 2
    return net


def plan(space, dataset="blood", samples=12, anchors=5, seed=0, **kwargs) -> list[Planned]:
    return plan_architectures(space, space_name="ofa_resnet_tiny", dataset=dataset, samples=samples,
                              anchors=anchors, seed=seed, **kwargs)


def hashes(entries: list[Planned]) -> list[str]:
    return [p.arch_hash for p in entries]


def test_plan_is_deterministic_and_depends_on_seed(space):
    first, again = plan(space), plan(space)
    assert first == again
    assert [(p.arch_hash, p.origin) for p in first] == [(p.arch_hash, p.origin) for p in again]
    other = plan(space, seed=1)
    # the extremes do not depend on the seed, the drawn architectures do
    assert hashes(other)[:2] == hashes(first)[:2]
    assert hashes(other)[2:] != hashes(first)[2:]
    assert hashes(plan(space, seed=1)) == hashes(other)


def test_plan_layout_extremes_anchors_samples(space):
    entries = plan(space, samples=12, anchors=5)
    assert len(entries) == 2 + 5 + 12
    assert [p.origin for p in entries] == ["extreme"] * 2 + ["anchor"] * 5 + ["sample"] * 12
    assert entries[0].arch_hash == space.arch_hash(space.canonical(space.largest()))
    assert entries[1].arch_hash == space.arch_hash(space.canonical(space.smallest()))
    assert entries[0].arch == space.canonical(space.largest())
    assert entries[1].arch == space.canonical(space.smallest())
    ranks = [ORIGIN_ORDER[p.origin] for p in entries]
    assert ranks == sorted(ranks)


def test_plan_hashes_distinct_and_canonical(space, mobilenet):
    for net in (space, mobilenet):
        entries = plan_architectures(net, space_name="s", dataset="d", samples=20, anchors=6, seed=3)
        assert len(entries) == 28
        assert len(set(hashes(entries))) == len(entries)
        for entry in entries:
            assert entry.arch == net.canonical(entry.arch)  # stored canonical
            assert entry.arch_hash == net.arch_hash(net.canonical(entry.arch))
            net.validate(entry.arch)


def test_optional_parts(space):
    no_extremes = plan(space, extremes=False, anchors=3, samples=4)
    assert [p.origin for p in no_extremes] == ["anchor"] * 3 + ["sample"] * 4
    only_extremes = plan(space, anchors=0, samples=0)
    assert [p.origin for p in only_extremes] == ["extreme", "extreme"]
    assert plan(space, extremes=False, anchors=0, samples=0) == []
    # the anchors come from one stream with or without the extremes: those only skip the extremes' hashes
    without = hashes(plan(space, extremes=False, anchors=10, samples=0))
    with_extremes = hashes(plan(space, anchors=10, samples=0))[2:]
    kept = [h for h in without if h not in set(hashes(only_extremes))]
    assert len(kept) >= 8 and kept == with_extremes[:len(kept)]


@pytest.mark.parametrize("samples, anchors", [(-1, 0), (0, -2)])
def test_negative_counts_raise(space, samples, anchors):
    with pytest.raises(UsageError, match=">= 0"):
        plan(space, samples=samples, anchors=anchors)


def test_anchors_shared_across_datasets_samples_not(space):
    blood, derma = plan(space, dataset="blood", anchors=6), plan(space, dataset="derma", anchors=6)
    anchors = lambda entries: [p for p in entries if p.origin == "anchor"]  # noqa: E731
    samples = lambda entries: [p for p in entries if p.origin == "sample"]  # noqa: E731
    assert anchors(blood) == anchors(derma) and len(anchors(blood)) == 6
    assert hashes(samples(blood)) != hashes(samples(derma))
    assert len(samples(blood)) == len(samples(derma)) == 12
    # the anchors depend on the space's name
    other_space = plan_architectures(space, space_name="another", dataset="blood", samples=12, anchors=6, seed=0)
    assert hashes(anchors(other_space)) != hashes(anchors(blood))


def test_more_than_the_space_holds_takes_all_and_warns(two_subnets, caplog):
    with caplog.at_level(logging.WARNING, logger="mednns.zoo"):
        entries = plan_architectures(two_subnets, space_name="two", dataset="d", samples=3, anchors=1)
    assert [p.origin for p in entries] == ["extreme", "extreme"]
    assert len(set(hashes(entries))) == 2
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("2 distinct subnets" in m for m in messages)
    assert not any("only 0 distinct" in m for m in messages)  # nothing left to draw: no draws at all


def test_small_space_without_extremes_finds_every_subnet(two_subnets, caplog):
    with caplog.at_level(logging.WARNING, logger="mednns.zoo"):
        entries = plan_architectures(two_subnets, space_name="two", dataset="d", samples=5, extremes=False)
    assert len(entries) == 2 and all(p.origin == "sample" for p in entries)
    assert set(hashes(entries)) == {two_subnets.arch_hash(two_subnets.canonical(a))
                                    for a in (two_subnets.largest(), two_subnets.smallest())}
    assert any("two has 2 distinct subnets" in r.getMessage() for r in caplog.records)


def test_exhausting_a_space_enumerates_it(caplog):
    net = OFAResNet(1, 3, "cpu", stage_widths=[16, 32], base_depths=[1, 1], depth_choices=[0],
                    expand_choices=[0.5, 1.0], width_mults=[0.5, 1.0], stem_width=8)
    assert net.count() == 12
    with caplog.at_level(logging.WARNING, logger="mednns.zoo"):
        entries = plan_architectures(net, space_name="twelve", dataset="d", samples=20, anchors=3)
    assert len(entries) == 12  # every distinct subnet once, no more
    assert len(set(hashes(entries))) == 12
    assert [p.origin for p in entries][:5] == ["extreme", "extreme", "anchor", "anchor", "anchor"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("twelve has 12 distinct subnets; the zoo of d asks for 25" in m for m in messages)


def test_a_huge_samples_on_a_small_space_returns_at_once(space):
    import time

    start = time.perf_counter()
    entries = plan(space, samples=20_000, anchors=0)
    assert time.perf_counter() - start < 5  # it drew 1,000,000 times before
    assert len(entries) <= space.count() and len(set(hashes(entries))) == len(entries)


def test_draw_budget_limits_the_plan(space, monkeypatch, caplog):
    monkeypatch.setattr(plan_module, "MAX_DRAWS_PER_ARCH", 1)
    with caplog.at_level(logging.WARNING, logger="mednns.zoo"):
        entries = plan(space, samples=60, anchors=0)
    drawn = [p for p in entries if p.origin == "sample"]
    assert 0 < len(drawn) < 60  # 60 draws among 96 subnets collide
    assert len(set(hashes(entries))) == len(entries)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"only {len(drawn)} distinct new sample architectures found in 60 draws" in r.getMessage()
               for r in warnings)
    assert not any("distinct subnets" in r.getMessage() for r in warnings)  # 62 <= 96: not the whole space


def test_no_warning_when_plan_fits(space, caplog):
    with caplog.at_level(logging.WARNING, logger="mednns.zoo"):
        plan(space, samples=10, anchors=4)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


# -- shards --------------------------------------------------------------------------------------

def test_shard_parse():
    assert Shard.parse("1/4") == Shard(1, 4)
    assert Shard.parse(" 2 / 3 ") == Shard(2, 3)
    assert Shard.parse("0/1") == Shard() and Shard.parse("0/1").whole
    assert Shard.parse(None) == Shard(0, 1) and Shard.parse(None).whole
    shard = Shard(3, 5)
    assert Shard.parse(shard) is shard
    assert str(Shard.parse("1/4")) == "1/4" and not Shard.parse("1/4").whole
    assert Shard.parse(str(Shard(6, 7))) == Shard(6, 7)


@pytest.mark.parametrize("text", ["4/4", "5/4", "a/b", "-1/2", "1/-2", "0/0", "1", "1/2/3", "", "1.0/2", "1\\2"])
def test_shard_parse_rejects(text):
    with pytest.raises(UsageError, match="shard"):
        Shard.parse(text)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_shards_partition_the_plan(space, n):
    whole = plan(space, samples=15, anchors=4)  # 21 entries: not a multiple of 2, 3 or 4
    assert len(whole) == 21
    parts = [shard_plan(whole, Shard.parse(f"{i}/{n}")) for i in range(n)]
    sets = [set(hashes(p)) for p in parts]
    for i in range(n):
        for j in range(i + 1, n):
            assert not sets[i] & sets[j]
    assert set().union(*sets) == set(hashes(whole))
    assert sum(len(p) for p in parts) == len(whole)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    for part in parts:  # each part keeps the plan's order (extremes first)
        positions = [hashes(whole).index(h) for h in hashes(part)]
        assert positions == sorted(positions)
    assert hashes(parts[0])[0] == hashes(whole)[0]
    if n == 1:
        assert parts[0] == whole


def test_shard_of_empty_plan_and_more_shards_than_entries(space):
    assert shard_plan([], Shard(1, 3)) == []
    entries = plan(space, samples=1, anchors=0)
    parts = [shard_plan(entries, Shard(i, 5)) for i in range(5)]
    assert [len(p) for p in parts] == [1, 1, 1, 0, 0]
