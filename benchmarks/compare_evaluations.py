"""Compare two published evaluations of one protocol that were built on different things (sources,
zoo, code): every method's test ACC, paired by (dataset, seed, training subset), and what each
evaluation's source supernets cost and reached.

    python benchmarks/compare_evaluations.py benchmarks/results/evaluation_cpu \
        benchmarks/results/evaluation_cpu_full_sources --out benchmarks/results/full_sources_vs_published

Writes ``compare.json`` and ``compare.md`` into ``--out``. The source cost is read from each
evaluation's run directory (``run.json`` names it): every ``train_supernet`` folder's ``final.json``
(training seconds and image-MACs, the largest subnet's in-domain test ACC). Sources are trained once
for every future target, so this cost is reported apart from the target-side compute.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from mednns.evaluation.methods import describe
from mednns.evaluation.report import fmt_gain_stats, load_results
from mednns.evaluation.statistics import compare_evaluations, compare_methods
from mednns.files import read_json, write_json
from mednns.layout import SUPERNET_STAGE


def source_summary(published: Path) -> dict[str, Any]:
    """Per source supernet of the evaluation in ``published``: training cost and in-domain test ACC."""
    run = read_json(published / "run.json")
    root = Path(run["run_directory"]) / "stages" / SUPERNET_STAGE
    sources = {}
    for final_path in sorted(root.glob("*/final.json")):
        final = read_json(final_path)
        sources[final["dataset"]] = {"train_seconds": final["train_seconds"],
                                     "train_image_macs": final["train_image_macs"], "steps": final["steps"],
                                     "epochs": final["epochs"], "test_acc_largest": final["test"]["largest"]["acc"]}
    return {"run_directory": str(Path(run["run_directory"])), "supernets": sources,
            "total_train_seconds": round(sum(s["train_seconds"] for s in sources.values()), 1),
            "total_train_image_macs": sum(s["train_image_macs"] for s in sources.values()),
            "mean_test_acc_largest": float(np.mean([s["test_acc_largest"] for s in sources.values()]))
            if sources else None}


def condition_methods(results: dict[str, Any], condition: str) -> dict[str, dict[str, Any]]:
    return {name: entry["conditions"][condition]["methods"] for name, entry in results["datasets"].items()
            if condition in entry.get("conditions", {})}


def mean_final(results: dict[str, Any], condition: str, method: str) -> float | None:
    values = [np.mean([r["history"][-1]["test_acc"] for r in methods[method]["runs"]])
              for methods in condition_methods(results, condition).values()
              if methods.get(method, {}).get("status") == "ok"]
    return float(np.mean(values)) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path, help="a published evaluation folder (results.json.gz, run.json)")
    parser.add_argument("after", type=Path, help="another evaluation of the same protocol")
    parser.add_argument("--out", type=Path, required=True, help="where compare.json and compare.md go")
    args = parser.parse_args()

    before, after = load_results(args.before), load_results(args.after)
    conditions = [c["id"] for c in before["protocol"]["conditions"]
                  if c["id"] in {d["id"] for d in after["protocol"]["conditions"]}]
    methods = [m for m in after["protocol"]["methods"] if m in before["protocol"]["methods"]]
    sources = {"before": source_summary(args.before), "after": source_summary(args.after)}
    across = {c: compare_evaluations(before, after, c, methods, metrics=["test_acc"]) for c in conditions}
    transfer = {label: {c: compare_methods(condition_methods(results, c), ["mednns"], ["random_init"],
                                           metrics=["test_acc"]).get("mednns", {}).get("random_init", {})
                        .get("test_acc") for c in conditions}
                for label, results in (("before", before), ("after", after))}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "compare.json", {"before": str(args.before), "after": str(args.after), "sources": sources,
                                          "conditions": across, "inherited_vs_random_init": transfer})

    lines = [f"# {args.after.name} against {args.before.name}", "",
             "## Source supernets (trained once for every target; not target-side compute)", "",
             "| source | before: seconds | before: test ACC (largest) | after: seconds | after: test ACC (largest) |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for name in sources["after"]["supernets"]:
        a, b = sources["before"]["supernets"].get(name), sources["after"]["supernets"][name]
        old = f"{a['train_seconds']} | {a['test_acc_largest']:.3f}" if a else "– | –"
        lines.append(f"| {name} | {old} | {b['train_seconds']} | {b['test_acc_largest']:.3f} |")
    lines.append(f"| **all** | {sources['before']['total_train_seconds']} | "
                 f"{sources['before']['mean_test_acc_largest']:.3f} | {sources['after']['total_train_seconds']} | "
                 f"{sources['after']['mean_test_acc_largest']:.3f} |")
    lines += ["", "## Test ACC of each method, paired by dataset, seed and training subset (after - before)", "",
              "| method | condition | before | after | gain [95% CI], p, wins | pairs |",
              "| --- | --- | ---: | ---: | --- | ---: |"]
    for method in methods:
        for c in conditions:
            entry = across[c].get(method)
            if not entry:
                continue
            unpaired = f" ({entry['unpaired']} unpaired)" if entry["unpaired"] else ""
            lines.append(f"| {describe(method).label} | {c} | {mean_final(before, c, method):.3f} | "
                         f"{mean_final(after, c, method):.3f} | {fmt_gain_stats(entry.get('test_acc'))} | "
                         f"{entry['pairs']}{unpaired} |")
    lines += ["", "## Inherited weights against the same architecture from random init (mednns - random init)", "",
              "| condition | before | after |", "| --- | --- | --- |"]
    for c in conditions:
        lines.append(f"| {c} | {fmt_gain_stats(transfer['before'][c])} | {fmt_gain_stats(transfer['after'][c])} |")
    (args.out / "compare.md").write_text("\n".join(lines) + "\n")
    print((args.out / "compare.md").read_text())


if __name__ == "__main__":
    main()
