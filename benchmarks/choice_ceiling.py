"""How much can choosing among transfer candidates add at this protocol's budget? A reading of the
ranking samples of published evaluations (``results.json.gz``), nothing is trained.

Per target of a ranking sample fine-tuned with several seeds: for each seed, the candidate with the
best mean test ACC over the *other* seeds, judged by its test ACC under the held-out seed, minus the
sample's mean under that seed (:func:`mednns.evaluation.ranking.choice_ceiling`): the top-1 gain over a
random candidate of a ranking as good as seven fine-tunings of every candidate, measured as the
evaluation measures a pick (one fine-tuning per seed). Its mean over targets, with the 95% interval
of the evaluation's statistics (targets and, within them, seeds resampled), is set beside the top-1
gain each ranking of the evaluation reached on the same sample. A ranking needs a true gain of about
0.03-0.06 over a baseline for its interval to clear 0 at this protocol's resolution (docs/results.md): where the
ceiling is below that, no ranking can show a win over a random pick, however good.

    python benchmarks/choice_ceiling.py benchmarks/results/evaluation_cpu \
        benchmarks/results/evaluation_cpu_full_sources benchmarks/results/evaluation_cpu_guarded

Writes ``choice_ceiling.json`` and ``choice_ceiling.md`` into ``--out`` (default
benchmarks/results/choice_ceiling).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import readings

from mednns.evaluation.ranking import choice_ceiling
from mednns.evaluation.statistics import nested_bootstrap_ci

#: the evaluation's rankings set beside the ceiling (those a sample records; others are combinations)
SHOWN = ("meta-space", "ridge", "logme", "knn", "source val ACC", "fine-tuned once")


def measurement(per_target: dict[str, dict[str, Any]], overall: dict[str, Any]) -> dict[str, Any] | None:
    """One condition's ranking sample: per target the ceiling's per-seed gains, their mean and interval,
    and each shown ranking's top-1 gain from the evaluation's own summary (``overall``)."""
    targets = {}
    for target, entry in per_target.items():
        per_seed = np.array([c.get("test_accs", [c["test_acc"]]) for c in entry["candidates"]], dtype=float)
        if per_seed.shape[1] < 2:
            return None  # one seed: no held-out fine-tuning to judge a choice by
        gains = choice_ceiling(per_seed)
        targets[target] = {"gains": gains, "mean": float(np.mean(gains)), "seeds": per_seed.shape[1],
                           "candidates": per_seed.shape[0]}
    groups = [t["gains"] for t in targets.values()]
    ci = nested_bootstrap_ci(groups)
    return {"targets": targets, "mean": float(np.mean([t["mean"] for t in targets.values()])),
            "ci": list(ci) if ci else None,
            "rankings": {name: overall[name]["top1_gain"] for name in SHOWN
                         if name in overall and overall[name].get("top1_gain")}}


def reading(results: dict[str, Any]) -> dict[str, Any]:
    """Per condition with a ranking sample of two seeds or more: its :func:`measurement`."""
    out: dict[str, Any] = {}
    entries = {t: e for t, e in results["datasets"].items() if e.get("ranking")}
    if entries:
        condition = next(iter(entries.values()))["ranking"]["condition"]
        found = measurement({t: e["ranking"] for t, e in entries.items()}, results.get("ranking", {}))
        if found:
            out[condition] = found
    for condition, overall in (results.get("ranking_at") or {}).items():
        found = measurement({t: e["ranking_at"][condition] for t, e in entries.items()}, overall)
        if found:
            out[condition] = found
    return out


def interval(mean: float, ci: list[float] | None) -> str:
    return f"{mean:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else f"{mean:+.3f}"


def markdown(name: str, found: dict[str, Any]) -> list[str]:
    lines = [f"### {name}", ""]
    if not found:
        return lines + ["No ranking sample with two seeds or more.", ""]
    for condition, m in found.items():
        some = next(iter(m["targets"].values()))
        lines += [f"**{condition}** ({some['candidates']} candidates per target, {some['seeds']} seeds): the "
                  "ceiling of choosing, top-1 gain over a random candidate.", "",
                  "| target | ceiling |", "| --- | ---: |"]
        lines += [f"| {target} | {t['mean']:+.3f} |" for target, t in m["targets"].items()]
        lines += [f"| **mean (95% interval)** | **{interval(m['mean'], m['ci'])}** |", "",
                  "Top-1 gain each ranking of the evaluation reached on the same sample:", "",
                  "| ranking | top-1 gain |", "| --- | ---: |"]
        lines += [f"| {ranking} | {interval(g['mean'], g.get('ci'))} |" for ranking, g in m["rankings"].items()]
        lines.append("")
    return lines


if __name__ == "__main__":
    readings.main(__doc__, "choice_ceiling", "The ceiling of choosing among transfer candidates", reading, markdown)
