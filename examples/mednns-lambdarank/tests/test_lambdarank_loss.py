"""The ``lambdarank`` loss term: contract, closed forms, top-heavy weighting, masking, training behaviour.

Only public mednns API is used (``mednns``, ``mednns.testing``, ``mednns.metaspace.contracts``).
"""

from __future__ import annotations

import math

import pytest
import torch
from mednns_lambdarank import plugin
from mednns_lambdarank.ndcg import current_ranks, ndcg, rescaled_gains, swap_deltas

import mednns
from mednns.metaspace import LossTerm, MetaBatch
from mednns.testing import check_loss_term, plugin_manager

T = 0.05


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def make(**args) -> LossTerm:
    """Build the term through the registry, arguments validated like a config's."""
    return plugin_manager(plugin).create("losses", "lambdarank", **args)


def batch(score, target, mask=None, predicted=None) -> MetaBatch:
    """A batch of ``D`` datasets x ``M`` models with the given per-pair fields (embeddings unused)."""
    score = torch.tensor(score, dtype=torch.float32, requires_grad=True)
    target = torch.tensor(target, dtype=torch.float32)
    mask = torch.ones_like(target, dtype=torch.bool) if mask is None else torch.tensor(mask)
    predicted = torch.zeros_like(target) if predicted is None else torch.tensor(predicted, requires_grad=True)
    d, m = target.shape
    return MetaBatch(torch.zeros(d, 4), torch.zeros(d, m, 4), predicted, score, target, mask)


def test_satisfies_the_loss_term_contract():
    for args in ({}, {"top_k": 2}, {"on": "predicted", "temperature": 0.2}):
        term = make(**args)
        assert isinstance(term, LossTerm)
        value = check_loss_term(term)
        assert 0 < value < 50


def test_two_models_closed_form_value_and_gradient():
    term = make(temperature=T)
    b = batch([[0.2, 0.1]], [[0.9, 0.5]])  # the better model is ranked first, 0.1 ahead
    value = term(b)
    assert value.item() == pytest.approx(softplus(-0.1 / T), rel=1e-5)  # log(1 + e^-2)
    value.backward()
    sigma = 1 / (1 + math.exp(0.1 / T))  # d softplus(-x)/dx = -sigmoid(-x)
    assert b.score.grad[0, 0].item() == pytest.approx(-sigma / T, rel=1e-5)
    assert b.score.grad[0, 1].item() == pytest.approx(sigma / T, rel=1e-5)
    # misranked: the pair loss grows, the weight is the same single |dNDCG| (so it cancels)
    assert term(batch([[0.1, 0.2]], [[0.9, 0.5]])).item() == pytest.approx(softplus(0.1 / T), rel=1e-5)
    w = term.pair_weights(b.score, b.target, b.mask)
    assert w[0, 0, 1].item() == pytest.approx(1 - 1 / math.log2(3), rel=1e-6) and w[0, 1, 0] == 0


def test_three_models_closed_form_weights_are_delta_ndcg():
    # targets 3 > 2 > 1: gains 1, 0.5, 0; scores rank model 1 first, then model 2, then model 0
    b = batch([[0.0, 0.2, 0.1]], [[3.0, 2.0, 1.0]])
    disc = {0: 1 / math.log2(4), 1: 1.0, 2: 1 / math.log2(3)}  # by model: ranks 3, 1, 2 (1-based)
    gains = {0: 1.0, 1: 0.5, 2: 0.0}
    idcg = 1.0 + 0.5 / math.log2(3)
    expected_w = {(i, j): abs(gains[i] - gains[j]) * abs(disc[i] - disc[j]) / idcg for i, j in [(0, 1), (0, 2), (1, 2)]}
    s = [0.0, 0.2, 0.1]
    term = make(temperature=T)
    w = term.pair_weights(b.score, b.target, b.mask)
    for (i, j), value in expected_w.items():
        assert w[0, i, j].item() == pytest.approx(value, rel=1e-6)
        assert w[0, j, i].item() == 0
    expected = sum(wij * softplus(-(s[i] - s[j]) / T) for (i, j), wij in expected_w.items()) / sum(expected_w.values())
    assert term(b).item() == pytest.approx(expected, rel=1e-5)


def test_top_k_weights_only_swaps_that_change_ndcg_at_k():
    # top_k=1: only pairs with the current top model (model 1) carry weight, |dNDCG@1| = |g_i - g_j|
    s, t = [0.3, 0.4, 0.1, 0.2], [4.0, 3.0, 2.0, 1.0]
    g = [1.0, 2 / 3, 1 / 3, 0.0]
    term = make(temperature=T, top_k=1)
    b = batch([s], [t])
    w = term.pair_weights(b.score, b.target, b.mask)[0]
    pairs = {(0, 1): g[0] - g[1], (1, 2): g[1] - g[2], (1, 3): g[1] - g[3]}
    for i in range(4):
        for j in range(4):
            assert w[i, j].item() == pytest.approx(pairs.get((i, j), 0.0), abs=1e-6)
    expected = sum(wij * softplus(-(s[i] - s[j]) / T) for (i, j), wij in pairs.items()) / sum(pairs.values())
    assert term(b).item() == pytest.approx(expected, rel=1e-5)


def test_a_swap_at_the_top_costs_more_than_a_swap_at_the_bottom():
    target = [[5.0, 4.0, 3.0, 2.0, 1.0]]
    top_swapped = batch([[0.3, 0.4, 0.2, 0.1, 0.0]], target)  # models 0 and 1 exchanged
    bottom_swapped = batch([[0.4, 0.3, 0.2, 0.0, 0.1]], target)  # models 3 and 4 exchanged, same gap
    lambdarank = make(temperature=T)
    top, bottom = lambdarank(top_swapped).item(), lambdarank(bottom_swapped).item()
    assert top > 2 * bottom
    # the built-in RankNet loss cannot tell them apart: same multiset of score gaps
    ranknet = plugin_manager().create("losses", "rank", variant="pairwise", temperature=T)
    assert ranknet(top_swapped).item() == pytest.approx(ranknet(bottom_swapped).item(), rel=1e-6)
    # and the gradient pushes hardest on the misranked top pair
    value = lambdarank(top_swapped)
    value.backward()
    assert top_swapped.score.grad[0, 0] < 0 < top_swapped.score.grad[0, 1]
    assert top_swapped.score.grad.abs().argmax().item() in (0, 1)


def test_padded_models_are_ignored_whatever_they_hold():
    term = make(temperature=T, top_k=3)
    plain = batch([[0.1, 0.5, 0.3], [0.2, 0.0, 0.4]], [[0.7, 0.9, 0.8], [0.6, 0.5, 0.9]])
    expected = term(plain).item()
    # a 4th column that would be the best model with the highest score, were it present
    for pad in (9.0, -9.0, float("nan")):
        padded = batch([[0.1, 0.5, 0.3, pad], [0.2, 0.0, 0.4, pad]], [[0.7, 0.9, 0.8, pad], [0.6, 0.5, 0.9, pad]],
                       mask=[[True, True, True, False], [True, True, True, False]])
        value = term(padded)
        assert value.item() == pytest.approx(expected, rel=1e-6)
        value.backward()
        assert torch.all(padded.score.grad[:, 3] == 0) and torch.isfinite(padded.score.grad).all()
    # datasets with fewer than two present models, or all-equal targets, carry nothing: a connected 0
    empty = batch([[0.1, 0.2], [0.3, 0.4]], [[0.5, 0.9], [0.7, 0.7]], mask=[[True, False], [True, True]])
    value = term(empty)
    assert value.item() == 0.0 and value.requires_grad


def test_on_predicted_ranks_the_predicted_metric():
    b = batch([[0.0, 0.0]], [[0.9, 0.5]], predicted=[[0.2, 0.1]])
    value = make(on="predicted", temperature=T)(b)
    assert value.item() == pytest.approx(softplus(-0.1 / T), rel=1e-5)
    value.backward()
    assert b.score.grad is None and b.predicted.grad[0, 0] < 0


def test_training_free_scores_puts_the_best_model_on_top():
    torch.manual_seed(0)
    target = torch.stack([torch.randperm(12) for _ in range(4)]).float() / 11  # distinct metrics
    scores = torch.nn.Parameter(torch.randn(4, 12) * 0.1)
    mask = torch.ones(4, 12, dtype=torch.bool)
    term = make(temperature=0.1, top_k=3)
    before = ndcg(scores.detach(), target, mask, top_k=3)
    for _ in range(150):  # plain gradient descent (torch.optim is slow to import)
        scores.grad = None
        term(MetaBatch(torch.zeros(4, 2), torch.zeros(4, 12, 2), torch.zeros(4, 12), scores, target, mask)).backward()
        with torch.no_grad():
            scores -= 0.3 * scores.grad
    after = ndcg(scores.detach(), target, mask, top_k=3)
    assert torch.equal(scores.detach().argmax(dim=1), target.argmax(dim=1))
    assert torch.allclose(after, torch.ones(4)) and torch.all(after > before + 0.2)


def test_ndcg_helpers():
    target = torch.tensor([[2.0, 4.0, 3.0, 0.0]])
    mask = torch.tensor([[True, True, True, False]])
    gains = rescaled_gains(target, mask)
    assert torch.allclose(gains, torch.tensor([[0.0, 1.0, 0.5, 0.0]]))
    ranks = current_ranks(torch.tensor([[0.5, 0.5, 0.9, 7.0]]), mask)  # padded last; ties by position
    assert ranks.tolist() == [[1, 2, 0, 3]]
    deltas = swap_deltas(gains, ranks)
    assert torch.allclose(deltas, deltas.transpose(1, 2)) and torch.all(deltas.diagonal(dim1=1, dim2=2) == 0)
    assert ndcg(torch.tensor([[0.0, 0.9, 0.5, 0.0]]), target, mask).item() == pytest.approx(1.0)
    assert ndcg(torch.tensor([[0.9, 0.0, 0.5, 0.0]]), target, mask).item() < 1.0


def test_bad_arguments_are_clear_errors():
    with pytest.raises(mednns.UsageError, match="temperature") as error:
        make(temperature=0.0)
    assert error.value.hint
    with pytest.raises(mednns.UsageError, match="top_k"):
        make(top_k=0)
    with pytest.raises(mednns.ConfigError, match="on"):
        make(on="logits")  # the Literal annotation is the schema
    with pytest.raises(mednns.ConfigError, match="top_k"):
        make(top_k=2.5)
    assert repr(make(top_k=5)) == "LambdaRankLoss(temperature=0.05, top_k=5, on='score')"
