"""NDCG pieces for padded ``(D, M)`` batches: gains, current ranks, discounts and ``|ΔNDCG|`` of swaps.

Everything here works on detached values (it computes the *weights* of LambdaRank, never something
to differentiate). Padded entries (``mask`` false) never change a result: they get gain 0, rank after
every present model, and take part in no pair.
"""

from __future__ import annotations

import torch


def rescaled_gains(target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Targets rescaled to ``[0, 1]`` per dataset: ``(t - min) / (max - min)`` over its present models.

    :param target: ``(D, M)`` measured metric.
    :param mask: ``(D, M)`` bool, true where a model is present.
    :returns: ``(D, M)`` gains; 0 at padded entries and for datasets whose present targets are all equal.
    """
    inf = torch.full((), float("inf"), dtype=target.dtype, device=target.device)
    low = torch.where(mask, target, inf).amin(dim=1, keepdim=True)
    high = torch.where(mask, target, -inf).amax(dim=1, keepdim=True)
    span = high - low  # -inf for a dataset without models, 0 when all targets are equal
    spread = span > 0
    safe_low = torch.where(spread, low, torch.zeros_like(low))
    safe_span = torch.where(spread, span, torch.ones_like(span))
    gains = (target - safe_low) / safe_span
    return torch.where(mask & spread, gains, torch.zeros_like(gains))


def current_ranks(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """0-based rank of every model in its dataset's ranking by ``scores`` (highest first).

    Padded entries rank after every present model; ties keep their order of position (stable).

    :param scores: ``(D, M)``.
    :param mask: ``(D, M)`` bool.
    :returns: ``(D, M)`` int64 ranks, a permutation of ``0..M-1`` per dataset.
    """
    fill = torch.where(mask, scores, torch.full((), float("-inf"), dtype=scores.dtype, device=scores.device))
    order = torch.sort(fill, dim=1, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    positions = torch.arange(scores.shape[1], device=scores.device).expand_as(order).contiguous()
    ranks.scatter_(1, order, positions)
    return ranks


def discounts(ranks: torch.Tensor, top_k: int | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """DCG position discounts ``1 / log2(2 + rank)`` of 0-based ranks (``1 / log2(1 + r)`` for 1-based ``r``).

    :param ranks: int tensor of 0-based ranks.
    :param top_k: NDCG@k: ranks ``>= top_k`` get discount 0; ``None``: every rank counts.
    :param dtype: floating dtype of the result.
    :returns: discounts shaped like ``ranks``.
    """
    values = 1.0 / torch.log2(ranks.to(dtype) + 2.0)
    if top_k is not None:
        values = torch.where(ranks < top_k, values, torch.zeros_like(values))
    return values


def ideal_dcg(gains: torch.Tensor, top_k: int | None = None) -> torch.Tensor:
    """The best DCG each dataset can reach: its gains sorted in decreasing order.

    :param gains: ``(D, M)`` gains (0 at padded entries).
    :param top_k: NDCG@k cut-off, or ``None``.
    :returns: ``(D,)``; 0 for a dataset whose gains are all 0.
    """
    ordered = torch.sort(gains, dim=1, descending=True).values
    positions = torch.arange(gains.shape[1], device=gains.device)
    return (ordered * discounts(positions, top_k, gains.dtype)).sum(dim=1)


def swap_deltas(gains: torch.Tensor, ranks: torch.Tensor, top_k: int | None = None) -> torch.Tensor:
    """``|ΔNDCG|`` of swapping models ``i`` and ``j`` in the current ranking, for every pair.

    Swapping exchanges their discounts, so ``|ΔNDCG_ij| = |g_i - g_j| * |disc_i - disc_j| / IDCG``.

    :param gains: ``(D, M)`` from :func:`rescaled_gains`.
    :param ranks: ``(D, M)`` from :func:`current_ranks`.
    :param top_k: NDCG@k cut-off, or ``None``.
    :returns: ``(D, M, M)``, symmetric, 0 on the diagonal and for datasets with IDCG 0.
    """
    discount = discounts(ranks, top_k, gains.dtype)
    idcg = ideal_dcg(gains, top_k)
    gain_gap = (gains.unsqueeze(2) - gains.unsqueeze(1)).abs()
    discount_gap = (discount.unsqueeze(2) - discount.unsqueeze(1)).abs()
    scale = torch.where(idcg > 0, 1.0 / idcg.clamp_min(torch.finfo(gains.dtype).tiny), torch.zeros_like(idcg))
    return gain_gap * discount_gap * scale.view(-1, 1, 1)


def ndcg(scores: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, top_k: int | None = None) -> torch.Tensor:
    """NDCG (at ``top_k``) of each dataset's ranking by ``scores``, with :func:`rescaled_gains` as gains.

    :param scores: ``(D, M)``.
    :param target: ``(D, M)`` measured metric.
    :param mask: ``(D, M)`` bool.
    :param top_k: cut-off, or ``None``.
    :returns: ``(D,)`` in ``[0, 1]``; 1 for a dataset whose targets are all equal (any order is ideal).
    """
    gains = rescaled_gains(target, mask)
    dcg = (gains * discounts(current_ranks(scores, mask), top_k, gains.dtype)).sum(dim=1)
    idcg = ideal_dcg(gains, top_k)
    return torch.where(idcg > 0, dcg / idcg.clamp_min(torch.finfo(gains.dtype).tiny), torch.ones_like(idcg))
