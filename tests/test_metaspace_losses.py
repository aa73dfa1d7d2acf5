"""The built-in meta-space loss terms (mednns.metaspace.losses) and their plugin registration."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

import mednns
from mednns.cli import cli
from mednns.manager import PluginManager
from mednns.metaspace.contracts import LossTerm, MetaBatch
from mednns.metaspace.losses import ContrastiveLoss, FIDLoss, PerformanceLoss, RankLoss
from mednns.registry import check_component

NAMES = ("performance", "rank", "fid", "contrastive")
DIFFERENTIABLE = ("dataset_embedding", "model_embedding", "predicted", "score")


def leaf(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


def make_batch(target, mask=None, predicted=None, score=None, dataset_embedding=None, model_embedding=None,
               fid=None) -> MetaBatch:
    """A float64 batch from nested lists; unspecified differentiable fields are seeded random leaves."""
    target = torch.tensor(target, dtype=torch.float64)
    count, width = target.shape
    gen = torch.Generator().manual_seed(0)

    def field(values, shape):
        if values is not None:
            return leaf(values)
        return torch.rand(shape, generator=gen, dtype=torch.float64).requires_grad_()

    return MetaBatch(
        dataset_embedding=field(dataset_embedding, (count, 3)),
        model_embedding=field(model_embedding, (count, width, 3)),
        predicted=field(predicted, (count, width)),
        score=field(score, (count, width)),
        target=target,
        mask=torch.ones(count, width, dtype=torch.bool) if mask is None else torch.tensor(mask, dtype=torch.bool),
        fid=None if fid is None else torch.tensor(fid, dtype=torch.float64),
    )


def random_batch(seed: int = 0, lengths=(5, 3, 1, 4), width: int = 6, dim: int = 8) -> MetaBatch:
    """A float32 batch of ``len(lengths)`` datasets with ``lengths[d]`` models each, padded to ``width``."""
    gen = torch.Generator().manual_seed(seed)
    count = len(lengths)
    mask = torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    datasets = torch.randn(count, dim, generator=gen)
    models = torch.randn(count, width, dim, generator=gen)
    score = F.cosine_similarity(datasets.unsqueeze(1), models, dim=-1)
    fid = torch.rand(count, count, generator=gen)
    fid = (fid + fid.T) * (1 - torch.eye(count))
    return MetaBatch(
        dataset_embedding=datasets.requires_grad_(), model_embedding=models.requires_grad_(),
        predicted=torch.rand(count, width, generator=gen).requires_grad_(), score=score.requires_grad_(),
        target=torch.rand(count, width, generator=gen), mask=mask, fid=fid,
    )


def with_garbage(batch: MetaBatch, seed: int, width: int | None = None, nan: bool = False) -> MetaBatch:
    """``batch`` with new values at every padded entry (and optionally ``width - M`` more padded columns)."""
    gen = torch.Generator().manual_seed(seed)
    count, old = batch.mask.shape
    width = width or old
    mask = torch.zeros(count, width, dtype=torch.bool)
    mask[:, :old] = batch.mask

    def refill(tensor: torch.Tensor) -> torch.Tensor:
        shape = (count, width, *tensor.shape[2:])
        noise = torch.randn(shape, generator=gen, dtype=tensor.dtype) * 100
        if nan:
            noise[..., 0] = float("nan")
        new = noise.clone()
        new[:, :old] = tensor.detach()
        keep = mask.reshape(count, width, *([1] * (tensor.dim() - 2)))
        return torch.where(keep, new, noise).requires_grad_(tensor.requires_grad)

    return replace(batch, model_embedding=refill(batch.model_embedding), predicted=refill(batch.predicted),
                   score=refill(batch.score), target=refill(batch.target), mask=mask)


def value_and_grads(term: LossTerm, batch: MetaBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    for name in DIFFERENTIABLE:
        getattr(batch, name).grad = None
    value = term(batch)
    value.backward()
    grads = {}
    for name in DIFFERENTIABLE:
        grad = getattr(batch, name).grad
        grads[name] = torch.zeros_like(getattr(batch, name)) if grad is None else grad
    return value.detach(), grads


ALL_TERMS = [
    PerformanceLoss(), PerformanceLoss(kind="huber", delta=0.1),
    RankLoss(), RankLoss(variant="listwise"), RankLoss(on="predicted", margin_min=0.05),
    RankLoss(variant="listwise", on="predicted", temperature=0.2),
    FIDLoss(), FIDLoss(metric="euclidean"),
    ContrastiveLoss(), ContrastiveLoss(positives=2, hard_negatives=1, temperature=0.3),
]


# ----------------------------------------------------------------------------------------- performance

def test_performance_mse_closed_form_and_gradient_sign():
    batch = make_batch(target=[[0.4, 0.8, 0.7], [0.5, 0.1, 0.0]], mask=[[1, 1, 1], [1, 0, 0]],
                       predicted=[[0.5, 0.8, 0.3], [0.2, 0.9, 0.0]])
    value, grads = value_and_grads(PerformanceLoss(), batch)
    errors = [0.1, 0.0, -0.4, -0.3]
    assert value.item() == pytest.approx(sum(e * e for e in errors) / 4)
    expected = torch.tensor([[0.05, 0.0, -0.2], [-0.15, 0.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(grads["predicted"], expected)
    assert grads["predicted"][0, 0] > 0 and grads["predicted"][0, 2] < 0  # pulled towards the target


def test_performance_huber_closed_form():
    batch = make_batch(target=[[0.4, 0.8, 0.7], [0.5, 0.1, 0.0]], mask=[[1, 1, 1], [1, 0, 0]],
                       predicted=[[0.5, 0.8, 0.3], [0.2, 0.9, 0.0]])
    delta = 0.2

    def huber(e):
        return 0.5 * e * e if abs(e) <= delta else delta * (abs(e) - 0.5 * delta)

    value = PerformanceLoss(kind="huber", delta=delta)(batch)
    assert value.item() == pytest.approx(sum(huber(e) for e in [0.1, 0.0, -0.4, -0.3]) / 4)


# ----------------------------------------------------------------------------------------------- rank

RANK_TARGET = [[0.9, 0.5, 0.1], [0.3, 0.6, 0.0]]
RANK_SCORE = [[0.2, 0.4, 0.0], [0.5, 0.1, 0.7]]
RANK_MASK = [[1, 1, 1], [1, 1, 0]]


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_rank_pairwise_closed_form_and_gradient_sign():
    batch = make_batch(target=RANK_TARGET, mask=RANK_MASK, score=RANK_SCORE)
    value, grads = value_and_grads(RankLoss(temperature=0.1), batch)
    # ordered pairs (better, worse): (0,1) (0,2) (1,2) of dataset 0, (1,0) of dataset 1; loss log(1 + e^-(si-sj)/T)
    expected = (softplus(2.0) + softplus(-2.0) + softplus(-4.0) + softplus(4.0)) / 4
    assert value.item() == pytest.approx(expected)
    g = grads["score"]
    assert g[0, 0] < 0 and g[1, 1] < 0  # raising the better model's score lowers the loss
    assert g[0, 2] > 0 and g[1, 0] > 0  # raising the worse model's score raises it
    assert g[1, 2] == 0 and grads["predicted"].abs().sum() == 0


def test_rank_margin_skips_close_pairs_and_on_predicted_ranks_predictions():
    batch = make_batch(target=RANK_TARGET, mask=RANK_MASK, predicted=RANK_SCORE)
    value = RankLoss(on="predicted", temperature=0.1, margin_min=0.45)(batch)
    assert value.item() == pytest.approx(softplus(-2.0))  # only (0, 2) differs by more than 0.45


def test_rank_listwise_closed_form_and_gradient():
    batch = make_batch(target=RANK_TARGET, mask=RANK_MASK, score=RANK_SCORE)
    value, grads = value_and_grads(RankLoss(variant="listwise", temperature=0.1), batch)

    def softmax(xs):
        exps = [math.exp(x) for x in xs]
        return [e / sum(exps) for e in exps]

    per_dataset, gradient = [], []
    for targets, scores in (([9, 5, 1], [2, 4, 0]), ([3, 6], [5, 1])):
        p, q = softmax(targets), softmax(scores)
        per_dataset.append(-sum(pi * math.log(qi) for pi, qi in zip(p, q)))
        gradient.append([(qi - pi) / 0.1 / 2 for pi, qi in zip(p, q)])
    assert value.item() == pytest.approx(sum(per_dataset) / 2)
    expected = torch.tensor([gradient[0], gradient[1] + [0.0]], dtype=torch.float64)
    assert torch.allclose(grads["score"], expected)
    assert grads["score"][0, 0] < 0 and grads["score"][1, 1] < 0  # the best model is pulled up


@pytest.mark.parametrize("variant", ["pairwise", "listwise"])
@pytest.mark.parametrize("on", ["score", "predicted"])
def test_rank_ordered_batch_beats_reversed(variant, on):
    target = torch.rand(3, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    term = RankLoss(variant=variant, on=on)
    losses = {}
    for name, output in (("ordered", target), ("reversed", -target)):
        batch = make_batch(target=target.tolist(), **{on: output.tolist()})
        losses[name] = term(batch).item()
    assert losses["ordered"] < losses["reversed"]


def test_rank_without_anything_to_order_is_a_connected_zero():
    cases = (("pairwise", [[0.5, 0.5, 0.5], [0.2, 0.9, 0.9]], [[1, 1, 1], [1, 0, 0]]),  # ties, one model
             ("listwise", [[0.5, 0.1, 0.3], [0.2, 0.9, 0.9]], [[1, 0, 0], [0, 0, 0]]))  # fewer than two models
    for variant, target, mask in cases:
        value, grads = value_and_grads(RankLoss(variant=variant), make_batch(target=target, mask=mask))
        assert value.item() == 0 and value.dim() == 0
        assert grads["score"].abs().sum() == 0


# ------------------------------------------------------------------------------------------------ fid

def test_fid_cosine_closed_form():
    batch = make_batch(target=[[0.5]] * 3, dataset_embedding=[[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]],
                       fid=[[0, 3, 1.5], [3, 0, 1.5], [1.5, 1.5, 0]])
    near = 1 - 1 / math.sqrt(2)  # cosine distance of (1, 1) to either axis; the axes are 1 apart (the max)
    assert FIDLoss()(batch).item() == pytest.approx(4 * (near - 0.5) ** 2 / 6)


def test_fid_euclidean_closed_form():
    batch = make_batch(target=[[0.5]] * 3, dataset_embedding=[[0.0, 0.0], [3.0, 4.0], [3.0, 0.0]],
                       fid=[[0, 2, 2], [2, 0, 1], [2, 1, 0]])
    # distances 5, 3, 4 -> 1, .6, .8 against fids 1, 1, .5 (pairs 01, 02, 12), each pair counted twice
    assert FIDLoss(metric="euclidean")(batch).item() == pytest.approx(2 * (0.4**2 + 0.3**2) / 6)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_fid_gradient_pushes_the_most_distant_datasets_apart(metric):
    batch = make_batch(target=[[0.5]] * 3, dataset_embedding=[[1.0, 0.1, 0.0], [1.0, -0.1, 0.0], [0.0, 0.0, 1.0]],
                       fid=[[0, 1, 0.5], [1, 0, 0.5], [0.5, 0.5, 0]])
    term = FIDLoss(metric=metric)
    _, grads = value_and_grads(term, batch)
    embedding = batch.dataset_embedding.detach()
    apart = embedding[0] - embedding[1]
    assert torch.dot(-grads["dataset_embedding"][0], apart) > 0
    assert torch.dot(-grads["dataset_embedding"][1], -apart) > 0
    before = term.distances(embedding)[0, 1]
    after = term.distances(embedding - 0.01 * grads["dataset_embedding"])[0, 1]
    assert after > before


def test_fid_is_a_connected_zero_without_fid_or_with_one_dataset():
    no_fid = replace(random_batch(lengths=(2, 3)), fid=None)
    one_dataset = make_batch(target=[[0.1, 0.2]], fid=[[0.0]])
    for batch in (no_fid, one_dataset):
        value, grads = value_and_grads(FIDLoss(), batch)
        assert value.item() == 0 and value.dim() == 0
        assert grads["dataset_embedding"].abs().sum() == 0


def test_fid_identical_embeddings_keep_finite_gradients():
    batch = make_batch(target=[[0.5]] * 3, dataset_embedding=[[1.0, 2.0]] * 3, fid=[[0, 1, 2], [1, 0, 1], [2, 1, 0]])
    for metric in ("cosine", "euclidean"):
        _, grads = value_and_grads(FIDLoss(metric=metric), batch)
        assert torch.isfinite(grads["dataset_embedding"]).all()


# ---------------------------------------------------------------------------------------- contrastive

def contrastive_batch() -> MetaBatch:
    # dataset 0 has three models, dataset 1 two (one padded column); embeddings are not unit length
    return make_batch(
        target=[[0.9, 0.2, 0.5], [0.8, 0.3, 0.0]], mask=[[1, 1, 1], [1, 1, 0]],
        dataset_embedding=[[2.0, 0.0], [0.0, 1.0]],
        model_embedding=[[[1.0, 0.0], [3.0, 4.0], [0.0, 1.0]], [[0.0, 1.0], [0.8, 0.6], [7.0, -2.0]]],
    )


def info_nce(positive: float, negatives: list[float], temperature: float = 0.5) -> float:
    return -positive / temperature + math.log(sum(math.exp(s / temperature) for s in [positive, *negatives]))


@pytest.mark.parametrize("hard_negatives, expected", [
    # cosine similarities: dataset 0 -> models of 0: 1, .6, 0 and of 1: 0, .8; dataset 1 -> 0, .8, 1 and 1, .6
    (None, (info_nce(1, [0.6, 0.0, 0.0, 0.8]) + info_nce(1, [0.6, 0.0, 0.8, 1.0])) / 2),
    (1, (info_nce(1, [0.6, 0.0, 0.8]) + info_nce(1, [0.6, 0.0, 0.8, 1.0])) / 2),  # dataset 0 keeps its worst
    (0, (info_nce(1, [0.0, 0.8]) + info_nce(1, [0.0, 0.8, 1.0])) / 2),
])
def test_contrastive_closed_form(hard_negatives, expected):
    term = ContrastiveLoss(temperature=0.5, hard_negatives=hard_negatives)
    assert term(contrastive_batch()).item() == pytest.approx(expected)


def test_contrastive_several_positives_closed_form():
    value = ContrastiveLoss(temperature=0.5, positives=2)(contrastive_batch())
    expected = [info_nce(1, [0.6, 0.0, 0.8]), info_nce(0, [0.6, 0.0, 0.8]),  # dataset 0: models 0, 2 positive
                info_nce(1, [0.0, 0.8, 1.0]), info_nce(0.6, [0.0, 0.8, 1.0])]  # dataset 1: no own negative
    assert value.item() == pytest.approx(sum(expected) / 4)


def test_contrastive_roles_break_ties_by_position():
    positive, own = ContrastiveLoss(positives=1, hard_negatives=1).roles(
        torch.tensor([[0.5, 0.5, 0.1, 0.1, 0.9]]), torch.tensor([[True, True, True, True, False]]))
    assert positive.tolist() == [[True, False, False, False, False]]
    assert own.tolist() == [[False, False, False, True, False]]


def test_contrastive_gradient_increases_similarity_to_the_positive():
    batch = random_batch(seed=3)
    term = ContrastiveLoss(temperature=0.2)
    _, grads = value_and_grads(term, batch)
    positive, _ = term.roles(batch.target, batch.mask)
    step = {n: getattr(batch, n).detach() - 0.05 * grads[n] for n in ("dataset_embedding", "model_embedding")}

    def similarity(datasets, models):
        return F.cosine_similarity(datasets.unsqueeze(1), models, dim=-1)[positive]

    before = similarity(batch.dataset_embedding.detach(), batch.model_embedding.detach())
    after = similarity(step["dataset_embedding"], step["model_embedding"])
    assert (after > before).all()
    models = F.normalize(batch.dataset_embedding.detach(), dim=-1).unsqueeze(1).expand_as(batch.model_embedding)
    towards = (-grads["model_embedding"] * models).sum(-1)  # moving a positive towards its dataset helps
    assert (towards[positive] > 0).all()


def test_contrastive_without_negatives_is_a_connected_zero():
    batch = make_batch(target=[[0.9, 0.2]])
    value, grads = value_and_grads(ContrastiveLoss(hard_negatives=0), batch)
    assert value.item() == 0
    assert grads["model_embedding"].abs().sum() == 0


# --------------------------------------------------------------------------------- every term: the mask

@pytest.mark.parametrize("term", ALL_TERMS, ids=repr)
def test_padded_entries_change_nothing(term):
    batch = random_batch()
    value, grads = value_and_grads(term, batch)
    assert value.dim() == 0 and torch.isfinite(value)
    assert all(torch.isfinite(g).all() for g in grads.values())
    for seed, nan in ((1, False), (2, True)):
        other = with_garbage(batch, seed, nan=nan)
        other_value, other_grads = value_and_grads(term, other)
        assert torch.equal(other_value, value)
        for name in DIFFERENTIABLE:
            assert torch.equal(other_grads[name], grads[name])
        pad = ~batch.mask
        assert grads["predicted"][pad].abs().sum() == 0 and grads["score"][pad].abs().sum() == 0
        assert grads["model_embedding"][pad].abs().sum() == 0
    wider_value, wider_grads = value_and_grads(term, with_garbage(batch, 3, width=9))
    assert torch.allclose(wider_value, value, rtol=1e-5, atol=1e-7)
    assert torch.allclose(wider_grads["score"][:, :6], grads["score"], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("term", ALL_TERMS, ids=repr)
def test_every_term_is_a_differentiable_scalar_that_depends_on_its_inputs(term):
    batch = random_batch(seed=5)
    value, grads = value_and_grads(term, batch)
    assert value.shape == () and value.dtype == torch.float32
    assert sum(g.abs().sum() for g in grads.values()) > 0


def test_an_empty_mask_gives_connected_zeros():
    batch = replace(random_batch(seed=6), mask=torch.zeros(4, 6, dtype=torch.bool))
    for term in ALL_TERMS:
        if isinstance(term, FIDLoss):
            continue  # depends on datasets only
        value, _ = value_and_grads(term, batch)
        assert value.item() == 0


def test_mismatched_shapes_are_reported():
    batch = replace(random_batch(), target=torch.rand(4, 5))
    with pytest.raises(ValueError, match=r"\(D, M\)"):
        PerformanceLoss()(batch)
    with pytest.raises(ValueError, match="fid must be"):
        FIDLoss()(replace(random_batch(), fid=torch.rand(3, 3)))


# ----------------------------------------------------------------------------- plugin and configuration

@pytest.fixture(scope="module")
def manager() -> PluginManager:
    return PluginManager(environ={})


def test_the_plugin_registers_every_term_listed_by_the_cli():
    result = CliRunner().invoke(cli, ["list", "losses", "--json"], catch_exceptions=False)
    assert result.exit_code == 0
    listed = {c["name"]: c for c in json.loads(result.output)}
    assert set(NAMES) <= set(listed)
    assert {listed[n]["provider"] for n in NAMES} == {"losses"}
    assert all(listed[n]["description"] for n in NAMES)


def test_create_builds_terms_with_their_arguments(manager):
    term = mednns.create("losses", "rank", variant="listwise")
    assert isinstance(term, RankLoss) and term.variant == "listwise" and term.on == "score"
    built = {name: manager.create("losses", name) for name in NAMES}
    assert [type(t) for t in built.values()] == [PerformanceLoss, RankLoss, FIDLoss, ContrastiveLoss]
    assert manager.create("losses", "contrastive", hard_negatives=None, positives=2).positives == 2
    # ``kind`` collides with create()'s own first parameter, so it goes through a config component
    component = {"name": "performance", "args": {"kind": "huber", "delta": 1}}
    assert check_component(manager, component, "losses", "loss") == []
    huber = manager.registry("losses").get("performance").factory(**component["args"])
    assert huber.kind == "huber" and huber.delta == 1.0


@pytest.mark.parametrize("name, args, message", [
    ("rank", {"variant": "lisstwise"}, "losses:rank.args.variant: must be one of 'pairwise', 'listwise'"),
    ("rank", {"on": "target"}, "losses:rank.args.on: must be one of 'predicted', 'score'"),
    ("fid", {"metric": "cosine", "extra": 1}, "losses:fid.args.extra: unexpected argument"),
    ("contrastive", {"temperature": "cold"}, "expected float, got a string"),
    ("contrastive", {"hard_negatives": 1.5}, "losses:contrastive.args.hard_negatives: expected int"),
])
def test_bad_arguments_are_config_errors(manager, name, args, message):
    with pytest.raises(mednns.ConfigError) as error:
        manager.create("losses", name, **args)
    assert message in str(error.value)


def test_a_bad_performance_kind_is_a_config_error(manager):
    issues = check_component(manager, {"name": "performance", "args": {"kind": "l1"}}, "losses", "loss")
    assert [str(i) for i in issues] == ["loss.args.kind: must be one of 'mse', 'huber', got 'l1'"]


@pytest.mark.parametrize("name, args, field", [
    ("rank", {"temperature": 0.0}, "temperature"), ("rank", {"margin_min": -0.1}, "margin_min"),
    ("performance", {"delta": -1.0}, "delta"), ("contrastive", {"positives": 0}, "positives"),
    ("contrastive", {"hard_negatives": -1}, "hard_negatives"), ("contrastive", {"temperature": -0.1}, "temperature"),
])
def test_out_of_range_values_are_usage_errors_with_a_hint(manager, name, args, field):
    with pytest.raises(mednns.UsageError, match=field) as error:
        manager.create("losses", name, **args)
    assert error.value.hint


def test_loading_the_plugin_does_not_import_torch():
    code = ("import sys; from mednns.manager import PluginManager; m = PluginManager(environ={}); "
            "r = m.registry('losses'); assert {'performance', 'rank', 'fid', 'contrastive'} <= set(r.names()); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
