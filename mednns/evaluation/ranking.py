"""Ranking quality: does a ranking of transfer candidates order them as fine-tuning does?

Per held-out target, a seeded random sample of transfer candidates (zoo rows of the other datasets)
is fine-tuned under the protocol's primary condition (and under the equal-epochs condition of each
further size in ``train_images``) with ``seeds`` seeds (the evaluation's first, then further ones
when it asks for more than the evaluation has): the same loop,
budget, training subsets and transfer recipe as every method (the runs are shared with the
evaluation's run store). Every ranking of the sample is then compared with the candidates' final
test ACC (its mean over those seeds) by Kendall's tau, by the top-1 regret (the sample's best
test ACC minus that of the ranking's first) and by the top-1 gain (the test ACC of the ranking's
first minus the sample's mean: what choosing by the ranking adds over a random candidate, with a
95% interval over targets and seeds, so that "re-ranking alone over a random sample of the zoo" is a
measured selection method and not only a correlation):

* ``meta-space`` (and ``meta-space:<variant>``): the fold's meta-space order (its ``by``);
* ``<score>``: a transfer score (kind ``transfer-scores``) computed on the condition's own training
  subset, the labelled images fine-tuning uses and nothing else (BN recalibrated on them);
* ``meta-space+<score>``: the two orders combined by rank sum (the query's ``rank_sum``);
* ``source val ACC``: each candidate's validation ACC on its own source, a naive reference;
* ``fine-tuned once`` (with two seeds or more): each seed's test ACC as a ranking of the mean of the
  other seeds, averaged over the seeds. It is what a ranker that fine-tuned every candidate once
  would reach, so it bounds what any cheaper ranking can be expected to reach at this budget: when
  it is low, the candidates' differences are within the noise of a single fine-tuning.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mednns.errors import UsageError
from mednns.transfer.reranking import check_keys, component_spec

META, SOURCE, ONCE = "meta-space", "source val ACC", "fine-tuned once"


@dataclass(frozen=True)
class RankingSettings:
    """The ``ranking`` option of the evaluation.

    :param candidates: transfer candidates per target, fine-tuned each (at least 3).
    :param scores: ``transfer-scores`` names (or ``{name, args}``) to rank the sample with.
    :param images: labelled images of the training subset the scores see (at most).
    :param seeds: how many seeds each candidate is fine-tuned with: the evaluation's seeds first,
        then as many further ones as needed (:func:`sample_seeds`; a less noisy truth costs only the
        sample's fine-tuning, not every method's); the truth is the mean test ACC over them (scores
        see the first seed's subset).
    :param train_images: further training-set sizes (each among the evaluation's ``train_images``)
        whose equal-epochs condition the same sample is measured under too, with the same seeds:
        does a smaller budget separate the candidates more? (default: the primary condition only).
    :param draw: which seeded draw of candidates (0, the first, unless set): another draw measures
        every ranking on other candidates of the same zoo, a second sample independent of the first.
    """

    candidates: int = 10
    scores: tuple[Any, ...] = ("knn", "ridge", "logme")
    images: int = 500
    seeds: int = 1
    train_images: tuple[int, ...] = ()
    draw: int = 0

    def __post_init__(self) -> None:
        if self.candidates < 3 or self.images < 2:
            raise UsageError("ranking needs candidates >= 3 (a rank correlation of fewer says nothing) and images >= 2")
        if self.seeds < 1:
            raise UsageError(f"ranking seeds must be >= 1 (got {self.seeds})")
        if self.draw < 0:
            raise UsageError(f"ranking draw must be >= 0 (got {self.draw})")

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> "RankingSettings":
        """From a config mapping; unknown keys are an error."""
        check_keys(cls, spec, "ranking")
        listed = ("scores", "train_images")
        tuples: dict[str, tuple[Any, ...]] = {key: tuple(spec[key]) for key in listed if key in spec}
        return cls(**{**spec, **tuples})

    def score_specs(self) -> list[dict[str, Any]]:
        """Each score as ``{name, args}``."""
        return [component_spec(s) for s in self.scores]


def sample_seeds(seeds: tuple[int, ...] | list[int], count: int) -> list[int]:
    """The first ``count`` of the evaluation's ``seeds``, continued past the largest when ``count``
    is more (seeds 0, 1, 2 and a count of 5 give 0, 1, 2, 3, 4): the runs of the evaluation's seeds are
    shared with its methods, the further ones are the ranking sample's alone."""
    chosen = list(seeds[:count])
    following = max(seeds, default=-1) + 1
    return chosen + list(range(following, following + count - len(chosen)))


def draw_sample(rows: list[dict[str, Any]], count: int, target: str, draw: int = 0) -> list[dict[str, Any]]:
    """A seeded random sample of ``count`` rows (all when fewer), the same for every run of a target
    and ``draw``; another ``draw`` is another sample."""
    from mednns.seeding import derive_seed

    chosen = random.Random(derive_seed(draw, "ranking", target)).sample(rows, min(count, len(rows)))
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
    the candidates' ``test_acc``; with per-seed ``test_accs`` (two or more) also ``fine-tuned once``."""
    truth = [c["test_acc"] for c in candidates]
    result = RankingResult([{**c, "values": {name: v[i] for name, v in values.items()}}
                            for i, c in enumerate(candidates)])
    for name, v in values.items():
        if len(v) != len(truth):
            raise ValueError(f"ranking {name} has {len(v)} values for {len(truth)} candidates")
        result.rankings[name] = {"kendall": kendall(v, truth), "top1_regret": regret(v, truth)}
    per_seed = np.array([c.get("test_accs", [c["test_acc"]]) for c in candidates], dtype=float)  # candidate x seed
    if per_seed.shape[1] >= 2:
        result.rankings[ONCE] = once(per_seed)
    return result


def against_other_seeds(values: np.ndarray, per_seed: np.ndarray) -> dict[str, float]:
    """Each seed's ranking (column s of ``values``, candidate x seed) against the mean of the other
    seeds' accuracies (``per_seed``, candidate x seed): mean Kendall tau over the seeds where it is
    defined, mean top-1 regret, and mean top-1 gain over the sample's mean. A ranking that does not
    depend on the seed repeats one column."""
    taus, regrets, gains = [], [], []
    for s in range(per_seed.shape[1]):
        others = np.delete(per_seed, s, axis=1).mean(axis=1)
        taus.append(kendall(list(values[:, s]), list(others)))
        regrets.append(regret(list(values[:, s]), list(others)))
        gains.append(float(others[int(np.argmax(values[:, s]))] - others.mean()))
    defined = [t for t in taus if not math.isnan(t)]
    return {"kendall": float(np.mean(defined)) if defined else float("nan"), "top1_regret": float(np.mean(regrets)),
            "top1_gain": float(np.mean(gains))}


def choice_ceiling(per_seed: np.ndarray) -> list[float]:
    """What choosing within a sample can add at best, measured as the evaluation measures a pick: per
    seed, the test ACC under that seed of the candidate with the best mean over the *other* seeds,
    minus the sample's mean under that seed (``per_seed``: candidate x seed, at least two seeds). It
    is the top-1 gain of a ranking as good as ``seeds - 1`` fine-tunings of every candidate, judged on
    an independent one, so no cheaper ranking is expected to exceed it; it is not a maximum that
    selects on the noise it is judged by."""
    if per_seed.shape[1] < 2:
        raise ValueError("the ceiling of choosing needs at least two seeds per candidate")
    gains = []
    for s in range(per_seed.shape[1]):
        chosen = int(np.argmax(np.delete(per_seed, s, axis=1).mean(axis=1)))
        gains.append(float(per_seed[chosen, s] - per_seed[:, s].mean()))
    return gains


def once(per_seed: np.ndarray) -> dict[str, float]:
    """Each seed's accuracies (``per_seed``: candidate x seed) as a ranking of the mean of the other
    seeds: mean Kendall tau and mean top-1 regret over the seeds (tau over the seeds where defined)."""
    facts = against_other_seeds(per_seed, per_seed)
    return {"kendall": facts["kendall"], "top1_regret": facts["top1_regret"]}


def separation(entry: dict[str, Any]) -> dict[str, float] | None:
    """Do one target's sampled candidates differ by more than fine-tuning's noise? From the stored
    per-seed test ACC (candidate x seed; ``None`` with fewer than two seeds), read as a two-way
    layout, since a seed's training subset and draw are shared by every candidate:

    * ``spread``: the standard deviation of the candidates' mean test ACC (the truth's spread);
    * ``noise``: one fine-tuning's noise, the residual standard deviation once each candidate's
      and each seed's mean are taken out (a seed that is good for every candidate orders nothing);
    * ``reliability``: the share of the truth's variance that is the candidates' own differences,
      ``1 - noise² / (seeds * spread²)`` (ICC(3,k), clipped at 0): near 0 the truth is noise and no
      ranking can correlate with it, near 1 the truth is settled;
    * ``reliability_once``: the same for one fine-tuning of each candidate (ICC(3,1)).
    """
    per_seed = np.array([c.get("test_accs", [c["test_acc"]]) for c in entry["candidates"]], dtype=float)
    count, seeds = per_seed.shape
    if seeds < 2 or count < 2:
        return None
    means = per_seed.mean(axis=1)
    residual = per_seed - means[:, None] - per_seed.mean(axis=0)[None, :] + per_seed.mean()
    within = float((residual ** 2).sum() / ((count - 1) * (seeds - 1)))
    between = float(seeds * means.var(ddof=1))
    return {"spread": float(np.sqrt(between / seeds)), "noise": float(np.sqrt(within)),
            "reliability": max(0.0, 1 - within / between) if between > 0 else 0.0,
            "reliability_once": max(0.0, (between - within) / (between + (seeds - 1) * within))
            if between + within > 0 else 0.0, "seeds": seeds}


def top1_gains(entry: dict[str, Any]) -> dict[str, list[float]]:
    """Per ranking of one target's measurement: per seed, the test ACC of the ranking's first
    minus the sample's mean test ACC under that seed. For ``fine-tuned once``, per seed: the other
    seeds' mean of the candidate that seed ranks first, minus the other seeds' mean over the sample.
    Read from the stored candidates (``values`` and ``test_accs``), so older results get it too."""
    candidates = entry["candidates"]
    per_seed = np.array([c.get("test_accs", [c["test_acc"]]) for c in candidates], dtype=float)  # candidate x seed
    gains: dict[str, list[float]] = {}
    for name in entry["rankings"]:
        if name == ONCE:
            if per_seed.shape[1] < 2:
                continue
            gains[name] = []
            for s in range(per_seed.shape[1]):
                others = np.delete(per_seed, s, axis=1).mean(axis=1)
                gains[name].append(float(others[int(np.argmax(per_seed[:, s]))] - others.mean()))
        elif all(name in c.get("values", {}) for c in candidates):
            first = int(np.argmax([c["values"][name] for c in candidates]))
            gains[name] = list(per_seed[first] - per_seed.mean(axis=0))
    return gains


def overall(per_target: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per ranking: mean Kendall tau over the targets where it is defined (a constant ranking or
    truth has none), its range and count, the mean top-1 regret, and the mean top-1 gain over a
    random candidate with its 95% interval (targets and, within them, seeds resampled)."""
    from mednns.evaluation.statistics import nested_bootstrap_ci

    names = list(dict.fromkeys(n for entry in per_target.values() for n in entry["rankings"]))
    gains = {target: top1_gains(entry) for target, entry in per_target.items()}
    out = {}
    for name in names:
        groups = [g[name] for g in gains.values() if name in g]
        interval = nested_bootstrap_ci(groups)
        taus = [e["rankings"][name]["kendall"] for e in per_target.values() if name in e["rankings"]]
        defined = [t for t in taus if t is not None and not math.isnan(t)]  # undefined: NaN, or null from JSON
        regrets = [e["rankings"][name]["top1_regret"] for e in per_target.values() if name in e["rankings"]]
        out[name] = {"mean_kendall": float(np.mean(defined)) if defined else float("nan"),
                     "min_kendall": min(defined) if defined else float("nan"),
                     "max_kendall": max(defined) if defined else float("nan"),
                     "targets": len(defined), "mean_top1_regret": float(np.mean(regrets)) if regrets else float("nan"),
                     "top1_gain": {"mean": float(np.mean([np.mean(g) for g in groups])) if groups else None,
                                   "ci": list(interval) if interval else None}}
    return out
