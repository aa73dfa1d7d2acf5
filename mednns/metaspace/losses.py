"""The built-in meta-space loss terms: performance, rank, FID and contrastive.

Each term is a :class:`~mednns.metaspace.contracts.LossTerm`: ``term(batch)`` takes a
:class:`~mednns.metaspace.contracts.MetaBatch` (``D`` datasets x ``M`` models, padded, with a bool
``mask``) and returns a differentiable 0-dim tensor. Padded entries never contribute: every input
is replaced by a constant at padded positions *before* any arithmetic, so whatever they hold (even
``nan``) changes neither the value nor the gradient, and their gradient is exactly 0. A batch that
carries nothing for a term (no masked pair, no ordered pair, no FID, ...) gives a 0 that is still
connected to the graph.

The classes are the factories registered by ``mednns.plugins.losses`` (names ``performance``,
``rank``, ``fid``, ``contrastive``): their ``__init__`` signatures are the config schema.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from mednns.errors import UsageError
from mednns.metaspace.contracts import LossTerm, MetaBatch

#: Finite stand-in for ``-inf`` in masked softmaxes: ``exp`` underflows to exactly 0 while
#: gradients stay finite (``0 * -inf`` would be ``nan``).
_NEG = -1e9


def _require(ok: bool, message: str, hint: str) -> None:
    """Raise :class:`UsageError` with ``hint`` unless ``ok``.

    :param ok: the condition that must hold.
    :param message: what is wrong.
    :param hint: how to fix it.
    """
    if not ok:
        raise UsageError(message, hint=hint)


def _positive(name: str, value: float) -> None:
    """Reject a non-positive hyper-parameter ``value`` called ``name``."""
    _require(value > 0, f"{name} must be positive, got {value!r}", f"set {name} to a number > 0")


def batch_mask(batch: MetaBatch) -> torch.Tensor:
    """The batch's ``(D, M)`` mask as bool, after checking that the per-pair fields agree with it.

    :param batch: the meta-space batch.
    :returns: ``(D, M)`` bool tensor on the batch's device.
    :raises ValueError: when ``predicted``, ``score``, ``target`` or ``mask`` disagree in shape.
    """
    mask = batch.mask
    shapes = {n: tuple(getattr(batch, n).shape) for n in ("predicted", "score", "target", "mask")}
    if mask.dim() != 2 or len(set(shapes.values())) != 1:
        raise ValueError(f"MetaBatch fields must all be (D, M); got {shapes}")
    return mask if mask.dtype == torch.bool else mask.bool()


def masked(values: torch.Tensor, mask: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """``values`` with ``fill`` wherever ``mask`` is false (padded values never reach the arithmetic).

    :param values: any tensor whose leading dimensions are ``mask``'s.
    :param mask: bool, broadcastable to ``values`` once trailing dimensions are added.
    :param fill: the constant put at padded positions.
    :returns: a tensor like ``values``; its gradient at padded positions is exactly 0.
    """
    while mask.dim() < values.dim():
        mask = mask.unsqueeze(-1)
    return torch.where(mask, values, torch.full((), fill, dtype=values.dtype, device=values.device))


def zero_like_loss(*tensors: torch.Tensor) -> torch.Tensor:
    """A 0-dim 0 connected to the graph of ``tensors`` (finite, already masked tensors).

    :param tensors: the term's differentiable inputs, with padded entries already replaced.
    :returns: ``0.0`` whose gradient with respect to every input is 0.
    """
    return sum((t.sum() * 0.0 for t in tensors), torch.zeros((), dtype=tensors[0].dtype, device=tensors[0].device))


def masked_mean(values: torch.Tensor, valid: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``valid``; a graph-connected 0 when nothing is valid.

    :param values: per-entry losses (finite everywhere).
    :param valid: bool, same shape.
    :param inputs: the term's masked inputs, to keep the 0 connected to the graph.
    :returns: a 0-dim tensor.
    """
    count = int(valid.sum())
    if count == 0:
        return zero_like_loss(values, *inputs)
    return torch.where(valid, values, torch.zeros_like(values)).sum() / count


class PerformanceLoss(LossTerm):
    """Regression of the predicted metric onto the measured one, over present pairs."""

    def __init__(self, kind: Literal["mse", "huber"] = "mse", delta: float = 0.05):
        """
        :param kind: ``mse`` (squared error) or ``huber`` (``0.5 x^2`` below ``delta``, linear above).
        :param delta: where the Huber loss turns linear (metrics live in ``[0, 1]``).
        """
        _require(kind in ("mse", "huber"), f"unknown performance loss kind {kind!r}", "use 'mse' or 'huber'")
        _positive("delta", delta)
        self.kind, self.delta = kind, float(delta)

    def __call__(self, batch: MetaBatch) -> torch.Tensor:
        """Mean loss of ``predicted`` against ``target`` over masked pairs.

        :param batch: the meta-space batch.
        :returns: 0-dim tensor.
        """
        mask = batch_mask(batch)
        predicted, target = masked(batch.predicted, mask), masked(batch.target, mask).detach()
        if self.kind == "mse":
            per_pair = (predicted - target) ** 2
        else:
            per_pair = F.huber_loss(predicted, target, reduction="none", delta=self.delta)
        return masked_mean(per_pair, mask, predicted)

    def __repr__(self) -> str:
        return f"PerformanceLoss(kind={self.kind!r}, delta={self.delta})"


class RankLoss(LossTerm):
    """Ranking of each dataset's models by ``score`` (or ``predicted``) as by their measured metric."""

    def __init__(
        self,
        variant: Literal["pairwise", "listwise"] = "pairwise",
        on: Literal["predicted", "score"] = "score",
        temperature: float = 0.05,
        margin_min: float = 0.0,
    ):
        """
        :param variant: ``pairwise`` (RankNet: logistic loss on ``(s_i - s_j) / temperature`` for
            every pair of the same dataset with ``target_i > target_j + margin_min``, averaged over
            pairs) or ``listwise`` (ListNet: cross-entropy between ``softmax(target / temperature)``
            and ``softmax(s / temperature)`` over each dataset's models, averaged over datasets
            with at least two models).
        :param on: which output is ranked: the retrieval ``score`` or the ``predicted`` metric.
        :param temperature: scale of score differences (and, listwise, of the target distribution).
        :param margin_min: pairwise only: pairs whose targets differ by this much or less are skipped.
        """
        _require(variant in ("pairwise", "listwise"), f"unknown rank loss variant {variant!r}",
                 "use 'pairwise' or 'listwise'")
        _require(on in ("predicted", "score"), f"rank loss cannot rank {on!r}", "use 'score' or 'predicted'")
        _positive("temperature", temperature)
        _require(margin_min >= 0, f"margin_min must be >= 0, got {margin_min!r}", "use 0 to keep every pair")
        self.variant, self.on = variant, on
        self.temperature, self.margin_min = float(temperature), float(margin_min)

    def __call__(self, batch: MetaBatch) -> torch.Tensor:
        """The rank loss of ``batch``.

        :param batch: the meta-space batch.
        :returns: 0-dim tensor.
        """
        mask = batch_mask(batch)
        scores = masked(batch.score if self.on == "score" else batch.predicted, mask)
        target = masked(batch.target, mask).detach()
        if self.variant == "pairwise":
            return self._pairwise(scores, target, mask)
        return self._listwise(scores, target, mask)

    def _pairwise(self, scores: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        both = mask.unsqueeze(2) & mask.unsqueeze(1)  # (D, i, j)
        better = target.unsqueeze(2) > target.unsqueeze(1) + self.margin_min
        diff = (scores.unsqueeze(2) - scores.unsqueeze(1)) / self.temperature
        return masked_mean(F.softplus(-diff), both & better, scores)

    def _listwise(self, scores: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        wanted = torch.softmax(masked(target / self.temperature, mask, _NEG), dim=1)
        log_q = torch.log_softmax(masked(scores / self.temperature, mask, _NEG), dim=1)
        per_dataset = -masked(wanted * log_q, mask).sum(dim=1)
        return masked_mean(per_dataset, mask.sum(dim=1) >= 2, scores)

    def __repr__(self) -> str:
        return (f"RankLoss(variant={self.variant!r}, on={self.on!r}, temperature={self.temperature}, "
                f"margin_min={self.margin_min})")


class FIDLoss(LossTerm):
    """Distances between dataset embeddings that follow the batch's normalized Fréchet distances."""

    def __init__(self, metric: Literal["euclidean", "cosine"] = "cosine"):
        """
        :param metric: embedding distance: ``cosine`` (``1 - cos``) or ``euclidean``.
        """
        _require(metric in ("euclidean", "cosine"), f"unknown FID loss metric {metric!r}",
                 "use 'cosine' or 'euclidean'")
        self.metric = metric

    def distances(self, embedding: torch.Tensor) -> torch.Tensor:
        """Pairwise distances between the rows of ``embedding``.

        :param embedding: ``(D, E)``.
        :returns: ``(D, D)``, 0 on the diagonal, gradients finite even for identical rows.
        """
        if self.metric == "cosine":
            unit = F.normalize(embedding, dim=1)
            return 1.0 - unit @ unit.T
        # vector_norm's gradient at 0 is 0 (a subgradient), where cdist/sqrt would give nan
        return torch.linalg.vector_norm(embedding.unsqueeze(1) - embedding.unsqueeze(0), dim=2)

    def __call__(self, batch: MetaBatch) -> torch.Tensor:
        """MSE between unit-max embedding distances and unit-max FIDs over off-diagonal pairs.

        :param batch: the meta-space batch; 0 (with grad) when ``fid`` is ``None`` or ``D < 2``.
        :returns: 0-dim tensor.
        """
        embedding = batch.dataset_embedding
        count = embedding.shape[0]
        if batch.fid is None or count < 2:
            return zero_like_loss(embedding)
        fid = batch.fid.to(dtype=embedding.dtype, device=embedding.device).detach()
        if tuple(fid.shape) != (count, count):
            raise ValueError(f"MetaBatch.fid must be ({count}, {count}) for {count} datasets, got {tuple(fid.shape)}")
        off = ~torch.eye(count, dtype=torch.bool, device=embedding.device)
        tiny = torch.finfo(embedding.dtype).eps
        distance = self.distances(embedding)[off]
        fid = fid[off]
        distance = distance / distance.max().clamp_min(tiny)
        fid = fid / fid.max().clamp_min(tiny)
        return ((distance - fid) ** 2).mean()

    def __repr__(self) -> str:
        return f"FIDLoss(metric={self.metric!r})"


class ContrastiveLoss(LossTerm):
    """TANS-style InfoNCE: each dataset's best models against other datasets' and its own worst models.

    For dataset ``d`` the positives are its ``positives`` best models by target; the negatives are
    every present model of the other datasets in the batch plus ``d``'s hard negatives. Similarities
    come from the embeddings, ``sim[d, d', m] = <dataset_d, model_{d', m}>`` after L2 normalization
    (for ``d' = d`` this is ``batch.score`` when the score is that cosine similarity). Each
    (dataset, positive) pair contributes ``-log(exp(sim_p / T) / (exp(sim_p / T) + sum_n exp(sim_n / T)))``;
    the loss is their mean over datasets that have at least one negative.
    """

    def __init__(self, temperature: float = 0.1, positives: int = 1, hard_negatives: int | None = None):
        """
        :param temperature: InfoNCE temperature ``T``.
        :param positives: how many of a dataset's best models are its positives.
        :param hard_negatives: how many of a dataset's lowest-target models are also its negatives
            (never a positive); ``None``: all its non-positive models; 0: none.
        """
        _positive("temperature", temperature)
        _require(positives >= 1, f"positives must be >= 1, got {positives!r}", "use 1 for the best model only")
        _require(hard_negatives is None or hard_negatives >= 0,
                 f"hard_negatives must be >= 0 or null, got {hard_negatives!r}",
                 "null uses every non-positive model of the dataset, 0 none")
        self.temperature, self.positives, self.hard_negatives = float(temperature), positives, hard_negatives

    def roles(self, target: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Which of each dataset's own models are positives and which are hard negatives.

        Ties are broken by position (stable sort), so the choice is deterministic.

        :param target: ``(D, M)`` measured metric (padded entries ignored).
        :param mask: ``(D, M)`` bool.
        :returns: ``(positive, own_negative)``, two disjoint ``(D, M)`` bool masks within ``mask``.
        """
        fill = masked(target, mask, float("-inf"))
        order = torch.sort(fill, dim=1, descending=True, stable=True).indices
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(mask.shape[1], device=mask.device).expand_as(order).contiguous())
        positive = mask & (rank < self.positives)
        own_negative = mask & ~positive
        if self.hard_negatives is not None:
            from_bottom = mask.sum(dim=1, keepdim=True) - 1 - rank  # 0 = the worst present model
            own_negative = own_negative & (from_bottom < self.hard_negatives)
        return positive, own_negative

    def __call__(self, batch: MetaBatch) -> torch.Tensor:
        """The InfoNCE loss of ``batch``.

        :param batch: the meta-space batch.
        :returns: 0-dim tensor.
        """
        mask = batch_mask(batch)
        count = mask.shape[0]
        datasets = F.normalize(batch.dataset_embedding, dim=-1)
        models = F.normalize(masked(batch.model_embedding, mask), dim=-1)
        logits = torch.einsum("de,fme->dfm", datasets, models) / self.temperature  # (D, D', M)
        positive, own_negative = self.roles(masked(batch.target, mask).detach(), mask)
        same = torch.eye(count, dtype=torch.bool, device=mask.device).unsqueeze(2)
        negative = torch.where(same, own_negative.unsqueeze(1), mask.unsqueeze(0))  # (D, D', M)
        negative_lse = torch.logsumexp(masked(logits, negative, _NEG).flatten(1), dim=1)  # (D,)
        own = torch.diagonal(logits, dim1=0, dim2=1).T  # (D, M): sim[d, d, m] / T
        per_positive = torch.logaddexp(own, negative_lse.unsqueeze(1)) - own
        has_negative = negative.flatten(1).any(dim=1, keepdim=True)
        return masked_mean(per_positive, positive & has_negative, datasets, models)

    def __repr__(self) -> str:
        return (f"ContrastiveLoss(temperature={self.temperature}, positives={self.positives}, "
                f"hard_negatives={self.hard_negatives})")
