"""Ranking quality: does a ranking of transfer candidates order them as fine-tuning does?

Per held-out target, a seeded random sample of transfer candidates (zoo rows of the other datasets)
is fine-tuned under the protocol's primary condition with its first seed: the same loop, budget,
training subset and transfer recipe as every method (the runs are shared with the evaluation's run
store). Every ranking of the sample is then compared with the candidates' final test ACC by
Kendall's tau, and by the top-1 regret (the sample's best test ACC minus that of the ranking's
first):

* ``meta-space`` (and ``meta-space:<variant>``): the fold's meta-space order (its ``by``);
* ``<score>``: a transfer score (kind ``transfer-scores``) computed on the condition's own training
  subset, the labelled images fine-tuning uses and nothing else (BN recalibrated on them);
* ``meta-space+<score>``: the two orders combined by rank sum (the query's ``rank_sum``);
* ``source val ACC``: each candidate's validation ACC on its own source, a naive reference.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mednns.errors import UsageError
from mednns.transfer.reranking import check_keys, component_spec

META, SOURCE = "meta-space", "source val ACC"


@dataclass(frozen=True)
class RankingSettings:
    """The ``ranking`` option of the evaluation.

    :param candidates: transfer candidates per target, fine-tuned each (at least 3).
    :param scores: ``transfer-scores`` names (or ``{name, args}``) to rank the sample with.
    :param images: labelled images of the training subset the scores see (at most).
    """

    candidates: int = 10
    scores: tuple[Any, ...] = ("knn", "ridge", "logme")
    images: int = 500

    def __post_init__(self) -> None:
        if self.candidates < 3 or self.images < 2:
            raise UsageError("ranking needs candidates >= 3 (a rank correlation of fewer says nothing) and images >= 2")

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> "RankingSettings":
        """From a config mapping; unknown keys are an error."""
        check_keys(cls, spec, "ranking")
        return cls(**{**spec, **({"scores": tuple(spec["scores"])} if "scores" in spec else {})})

    def score_specs(self) -> list[dict[str, Any]]:
        """Each score as ``{name, args}``."""
        return [component_spec(s) for s in self.scores]


def draw_sample(rows: list[dict[str, Any]], count: int, target: str) -> list[dict[str, Any]]:
    """A seeded random sample of ``count`` rows (all when fewer), the same for every run of a target."""
    from mednns.seeding import derive_seed

    chosen = random.Random(derive_seed(0, "ranking", target)).sample(rows, min(count, len(rows)))
    return sorted(chosen, key=lambda r: r["id"])


def kendall(values: list[float], truth: list[float]) -> float:
    """Kendall's tau-b of a ranking's values against the truth (NaN when either is constant)."""
    from scipy.stats import kendalltau

    if len(set(values)) < 2 or len(set(truth)) < 2:
        return float("nan")
    return float(kendalltau(values, truth).statistic)


def regret(values: list[float], truth: list[float]) -> float:
    """The sample's best truth minus the truth of the ranking's first (ties: the first listed)."""
    return float(max(truth) - truth[int(np.argmax(values))])


def rank_sum_key(first: list[float], second: list[float]) -> list[float]:
    """Higher is better: minus the mean of the two rankings' ranks (the query's ``rank_sum``)."""
    from scipy.stats import rankdata

    return list(-(rankdata([-v for v in first]) + rankdata([-v for v in second])) / 2)


@dataclass
class RankingResult:
    """One target's ranking quality: per candidate its facts and each ranking's value, per ranking
    Kendall's tau and the top-1 regret."""

    candidates: list[dict[str, Any]] = field(default_factory=list)
    rankings: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"candidates": self.candidates, "rankings": self.rankings}


def assess(candidates: list[dict[str, Any]], values: dict[str, list[float]]) -> RankingResult:
    """Correlate every ranking in ``values`` (name → one value per candidate, higher = better) with
    the candidates' ``test_acc``."""
    truth = [c["test_acc"] for c in candidates]
    result = RankingResult([{**c, "values": {name: v[i] for name, v in values.items()}}
                            for i, c in enumerate(candidates)])
    for name, v in values.items():
        if len(v) != len(truth):
            raise ValueError(f"ranking {name} has {len(v)} values for {len(truth)} candidates")
        result.rankings[name] = {"kendall": kendall(v, truth), "top1_regret": regret(v, truth)}
    return result


def overall(per_target: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per ranking: mean Kendall tau over the targets where it is defined (a constant ranking or
    truth has none), its range and count, and the mean top-1 regret."""
    names = list(dict.fromkeys(n for entry in per_target.values() for n in entry["rankings"]))
    out = {}
    for name in names:
        taus = [e["rankings"][name]["kendall"] for e in per_target.values() if name in e["rankings"]]
        defined = [t for t in taus if t is not None and not math.isnan(t)]  # undefined: NaN, or null from JSON
        regrets = [e["rankings"][name]["top1_regret"] for e in per_target.values() if name in e["rankings"]]
        out[name] = {"mean_kendall": float(np.mean(defined)) if defined else float("nan"),
                     "min_kendall": min(defined) if defined else float("nan"),
                     "max_kendall": max(defined) if defined else float("nan"),
                     "targets": len(defined), "mean_top1_regret": float(np.mean(regrets)) if regrets else float("nan")}
    return out
