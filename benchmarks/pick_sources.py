"""Which source datasets each method's pick comes from, and whether the source's images have the
target's channel count (grayscale or RGB): a reading of published evaluations, nothing is trained.

    python benchmarks/pick_sources.py benchmarks/results/evaluation_cpu \
        benchmarks/results/evaluation_cpu_full_sources --out benchmarks/results/pick_sources

For every target and method: the source of the model each seed fine-tuned on the primary condition
(equal epochs on the most training images) and the mean final test ACC; and, from the ranking
sample (random transfer candidates, each fine-tuned with every seed), the mean test ACC of the
candidates whose source has the target's channel count against those whose source has not. Writes
``pick_sources.json`` and ``pick_sources.md`` into ``--out``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import readings

from mednns.evaluation.methods import describe

METHODS = ("mednns", "mednns:rerank", "mednns:rerank_alone", "nearest_fid", "tans", "random_pick")


def primary_condition(results: dict[str, Any]) -> str:
    """The condition the main table of docs/results.md reads: equal epochs on the most training images."""
    conditions = next(iter(results["datasets"].values()))["conditions"]
    ids = [c for c in conditions if c.startswith("equal_epochs@")]
    return max(ids, key=lambda c: int(c.split("@")[1]))


def reading(results: dict[str, Any]) -> dict[str, Any]:
    """Per target: its channels, each method's picked sources and test ACC, the ranking sample's split."""
    channels = {name: entry["info"]["n_channels"] for name, entry in results["datasets"].items()}
    condition = primary_condition(results)
    targets = {}
    for target, entry in results["datasets"].items():
        picks = {}
        for method in METHODS:
            found = entry["conditions"][condition]["methods"].get(method) or {}
            if found.get("status") != "ok":
                continue
            runs = sorted(found["runs"], key=lambda run: run["seed"])
            sources = [run["model"]["source"] for run in runs]
            picks[method] = {"sources": sources, "same_channels": [channels[s] == channels[target] for s in sources],
                             "test_acc": float(np.mean([run["history"][-1]["test_acc"] for run in runs]))}
        sample = entry.get("ranking") or {}
        split: dict[str, list[float]] = {"same": [], "other": []}
        if sample.get("condition") == condition:
            for candidate in sample["candidates"]:
                same = channels[candidate["dataset"]] == channels[target]
                split["same" if same else "other"].append(float(candidate["test_acc"]))  # its seeds' mean
        targets[target] = {"channels": channels[target], "picks": picks,
                           "sample": {k: {"n": len(v), "mean_test_acc": float(np.mean(v)) if v else None}
                                      for k, v in split.items()}}
    return {"condition": condition, "targets": targets}


def markdown(name: str, found: dict[str, Any]) -> list[str]:
    methods = [m for m in METHODS if any(m in t["picks"] for t in found["targets"].values())]
    lines = [f"### {name} ({found['condition']})", "",
             "Picked source per seed (* = the target's channel count), mean final test ACC; ranking sample: mean "
             "test ACC of candidates from sources with the target's channel count / the others (n).", "",
             "| target | channels | " + " | ".join(describe(m).label for m in methods)
             + " | sample: same | sample: other |",
             "| --- | ---: |" + " --- |" * len(methods) + " ---: | ---: |"]
    for target, t in found["targets"].items():
        cells = []
        for method in methods:
            pick = t["picks"].get(method)
            cells.append("—" if pick is None else
                         " ".join(s + ("*" if same else "") for s, same in zip(pick["sources"], pick["same_channels"]))
                         + f" ({pick['test_acc']:.3f})")
        sample = [f"{s['mean_test_acc']:.3f} ({s['n']})" if s["n"] else "—" for s in t["sample"].values()]
        lines.append(f"| {target} | {t['channels']} | " + " | ".join(cells) + " | " + " | ".join(sample) + " |")
    return lines + [""]


if __name__ == "__main__":
    readings.main(__doc__, "pick_sources", "Where the picks come from", reading, markdown)
