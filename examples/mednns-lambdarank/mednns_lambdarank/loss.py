"""The ``lambdarank`` meta-space loss term: RankNet pairs weighted by how much a swap costs in NDCG.

A query needs the *top* of the ranking right (the top-1 model is what gets exported); a plain pairwise
rank loss treats a mistake between the two worst models like one between the two best. LambdaRank
(Burges et al., 2006) weights each pair's logistic loss by ``|ΔNDCG|``, the change in NDCG from
swapping the two models in the current ranking, so mistakes near the top cost most.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from mednns.errors import UsageError
from mednns.metaspace import LossTerm, MetaBatch, batch_mask, masked, masked_mean
from mednns_lambdarank.ndcg import current_ranks, rescaled_gains, swap_deltas


class LambdaRankLoss(LossTerm):
    """LambdaRank on each dataset's models, ranked by ``score`` (or ``predicted``) against ``target``.

    For dataset ``d`` and every pair of its present models with ``target_i > target_j``:

    * the pair loss is ``softplus(-(s_i - s_j) / temperature)`` (RankNet's logistic loss);
    * its weight is ``|ΔNDCG_ij| = |g_i - g_j| * |1/log2(1 + r_i) - 1/log2(1 + r_j)| / IDCG_d``, with
      gains ``g`` the targets rescaled to ``[0, 1]`` per dataset, ``r`` the 1-based ranks by the
      current (detached) scores and, with ``top_k``, discount 0 below rank ``top_k`` (NDCG@k).

    The dataset's loss is the weighted mean of its pair losses, ``sum(w * l) / sum(w)``, so the
    term stays on the scale of the ``rank`` loss (about ``log 2`` for random scores) whatever the
    number of models; the term is the mean over datasets with a pair of positive weight. Padded
    entries never contribute (mednns's masking convention: they are replaced before any arithmetic);
    a batch without a weighted pair gives a 0 connected to the graph.
    """

    def __init__(self, temperature: float = 0.05, top_k: int | None = None,
                 on: Literal["predicted", "score"] = "score"):
        """
        :param temperature: scale of score differences in the logistic loss (> 0).
        :param top_k: weight pairs by ``|ΔNDCG@top_k|`` (pairs that both rank below ``top_k`` are
            ignored); ``None``: full NDCG.
        :param on: which output is ranked: the retrieval ``score`` or the ``predicted`` metric.
        """
        if not temperature > 0:
            raise UsageError(f"lambdarank: temperature must be positive, got {temperature!r}",
                             hint="set temperature to a number > 0, e.g. 0.05")
        if top_k is not None and top_k < 1:
            raise UsageError(f"lambdarank: top_k must be >= 1 or null, got {top_k!r}",
                             hint="null uses the full ranking; top_k: 1 cares about the best model only")
        if on not in ("predicted", "score"):
            raise UsageError(f"lambdarank cannot rank {on!r}", hint="use 'score' or 'predicted'")
        self.temperature, self.top_k, self.on = float(temperature), top_k, on

    def pair_weights(self, scores: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The LambdaRank weight of every ordered pair ``(i, j)`` with ``target_i > target_j``.

        :param scores: ``(D, M)`` masked scores (detached inside).
        :param target: ``(D, M)`` masked targets.
        :param mask: ``(D, M)`` bool.
        :returns: ``(D, M, M)`` weights ``|ΔNDCG_ij|``, 0 for pairs that are not ordered or not present.
        """
        scores, target = scores.detach(), target.detach()
        gains = rescaled_gains(target, mask)
        deltas = swap_deltas(gains, current_ranks(scores, mask), self.top_k)
        ordered = (mask.unsqueeze(2) & mask.unsqueeze(1)) & (target.unsqueeze(2) > target.unsqueeze(1))
        return torch.where(ordered, deltas, torch.zeros_like(deltas))

    def __call__(self, batch: MetaBatch) -> torch.Tensor:
        """The LambdaRank loss of ``batch``.

        :param batch: the meta-space batch.
        :returns: 0-dim tensor.
        """
        mask = batch_mask(batch)
        scores = masked(batch.score if self.on == "score" else batch.predicted, mask)
        target = masked(batch.target, mask).detach()
        weights = self.pair_weights(scores, target, mask)
        diff = (scores.unsqueeze(2) - scores.unsqueeze(1)) / self.temperature  # (D, i, j): s_i - s_j
        pair_loss = F.softplus(-diff)
        total = weights.sum(dim=(1, 2))
        has_pairs = total > 0
        per_dataset = (weights * pair_loss).sum(dim=(1, 2)) / torch.where(has_pairs, total, torch.ones_like(total))
        return masked_mean(per_dataset, has_pairs, scores)

    def __repr__(self) -> str:
        return f"LambdaRankLoss(temperature={self.temperature}, top_k={self.top_k}, on={self.on!r})"
