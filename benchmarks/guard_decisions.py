"""What the guarded re-ranking did in published evaluations: per target and condition, in how many runs
the guard let the transfer score overrule the meta-space (the guarded pick differs from the default
pick), how often the guarded pick is the plain re-ranking's, and the mean final test ACC of the
default pick, the re-ranked one and the guarded one. A reading of ``results.json``, nothing is trained.

    python benchmarks/guard_decisions.py benchmarks/results/evaluation_cpu_guarded \
        benchmarks/results/evaluation_cpu_guarded_second --out benchmarks/results/guard_decisions

Writes ``guard_decisions.json`` and ``guard_decisions.md`` into ``--out``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import readings

DEFAULT, RERANK, GUARDED = "mednns", "mednns:rerank", "mednns:guarded"


def picks(entry: dict[str, Any], condition: str, method: str) -> dict[int, dict[str, Any]]:
    """Per seed, the model a method fine-tuned (source and architecture) and its final test ACC."""
    found = entry["conditions"][condition]["methods"].get(method) or {}
    if found.get("status") != "ok":
        return {}
    return {run["seed"]: {"model": (run["model"]["source"], run["model"]["arch_hash"]),
                          "test_acc": float(run["history"][-1]["test_acc"])} for run in found["runs"]}


def reading(results: dict[str, Any]) -> dict[str, Any]:
    """Per condition and target: runs, overruled, guarded == re-ranked, and the three mean test ACCs."""
    out: dict[str, Any] = {}
    for target, entry in results["datasets"].items():
        for condition in entry["conditions"]:
            default, reranked, guarded = (picks(entry, condition, m) for m in (DEFAULT, RERANK, GUARDED))
            seeds = sorted(set(default) & set(reranked) & set(guarded))
            if not seeds:
                continue
            out.setdefault(condition, {})[target] = {
                "runs": len(seeds),
                "overruled": sum(guarded[s]["model"] != default[s]["model"] for s in seeds),
                "as_reranked": sum(guarded[s]["model"] == reranked[s]["model"] for s in seeds),
                **{f"{name}_test_acc": float(np.mean([picked[s]["test_acc"] for s in seeds]))
                   for name, picked in (("default", default), ("rerank", reranked), ("guarded", guarded))}}
    return out


def markdown(name: str, found: dict[str, Any]) -> list[str]:
    lines = [f"### {name}", ""]
    for condition, targets in found.items():
        lines += [f"**{condition}**: runs where the guard let the score overrule the meta-space, where the guarded "
                  "pick is the plain re-ranking's, and the mean final test ACC of each pick.", "",
                  "| target | overruled | as re-ranked | default pick | re-ranked | guarded |",
                  "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for target, t in targets.items():
            lines.append(f"| {target} | {t['overruled']}/{t['runs']} | {t['as_reranked']}/{t['runs']} | "
                         f"{t['default_test_acc']:.3f} | {t['rerank_test_acc']:.3f} | {t['guarded_test_acc']:.3f} |")
        total = sum(t["runs"] for t in targets.values())
        lines += [f"| **all** | {sum(t['overruled'] for t in targets.values())}/{total} | "
                  f"{sum(t['as_reranked'] for t in targets.values())}/{total} | "
                  + " | ".join(f"{np.mean([t[k] for t in targets.values()]):.3f}"
                               for k in ("default_test_acc", "rerank_test_acc", "guarded_test_acc")) + " |", ""]
    return lines


if __name__ == "__main__":
    readings.main(__doc__, "guard_decisions", "What the guard decided", reading, markdown)
