"""How much does one meta-space's ranking of the zoo depend on its fit seed? (the case for ``members``)

For every fold of a kept evaluation run, fits the meta-space of one of its variants again as an
ensemble of ``--members`` (the first member is the fold's own meta-space: the same seed), then per
fold: the mean Pearson correlation of the members' predictions over the fold's candidates (zoo rows
of the other datasets), how many different zoo models the members put first, and, on the
evaluation's ranking sample (random candidates fine-tuned with 3 seeds), the top-1 gain over a
random candidate of each member alone and of the ensemble's mean prediction.

    MEDMNIST_ROOT=../shared/data/medmnist python benchmarks/metaspace_seeds.py \\
        runs/evaluation_cpu_full_sources benchmarks/results/evaluation_cpu_full_sources --variant transfers48

Writes ``metaspace_seeds_<run>_<variant>.json`` and ``.md`` into ``--out`` (default benchmarks/results).
Each fit takes about 10 s on one CPU core at the CPU protocol's 600 steps.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from mednns.config import load_config
from mednns.evaluation.ranking import top1_gains
from mednns.evaluation.report import load_results
from mednns.files import atomic_write_text, write_json
from mednns.manager import get_plugin_manager
from mednns.metaspace.retrieval import predict_all
from mednns.metaspace.settings import MetaSpaceSettings
from mednns.metaspace.train import train_meta_space
from mednns.runs import prepare_run


def fold_facts(predictions: np.ndarray, ensemble: np.ndarray, ids: np.ndarray, sources: np.ndarray,
               target: str, ranking: dict[str, Any]) -> dict[str, Any]:
    """One fold: seed correlation and distinct tops over the candidates; top-1 gains on the sample."""
    keep = sources != target
    members = len(predictions)
    correlation = np.corrcoef(predictions[:, keep])[np.triu_indices(members, 1)]
    tops = [int(ids[keep][np.argmax(p[keep])]) for p in predictions]
    row = {int(i): r for r, i in enumerate(ids)}
    sample = {**ranking, "rankings": {f"member {k}": {} for k in range(members)} | {"ensemble": {}}}
    sample["candidates"] = [{**c, "values": {**{f"member {k}": float(predictions[k, row[c["zoo_id"]]])
                                                for k in range(members)},
                                             "ensemble": float(ensemble[row[c["zoo_id"]]])}}
                            for c in ranking["candidates"]]
    gains = {name: float(np.mean(g)) for name, g in top1_gains(sample).items()}
    return {"seed_correlation": float(correlation.mean()), "tops": tops, "distinct_tops": len(set(tops)),
            "ensemble_top": int(ids[keep][np.argmax(ensemble[keep])]),
            "member_gains": [gains[f"member {k}"] for k in range(members)], "ensemble_gain": gains["ensemble"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a kept evaluation run directory")
    parser.add_argument("published", type=Path, help="its published results folder (results.json.gz)")
    parser.add_argument("--variant", default="", help="the evaluation variant whose meta-space is refitted")
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    manager = get_plugin_manager()
    config = load_config(manager, args.run / "config.yaml")
    evaluate = next(s for s in config.stages if s["name"] == "evaluate")
    stage = manager.create("stages", "evaluate", **evaluate["args"])
    variant = next(v for v in stage.settings.variant_list() if v.name == args.variant)
    config.stages = []
    run = prepare_run(manager, config, directory=args.run, console=Console(quiet=True))
    results = load_results(args.published)
    scratch = args.run / "metaspace_seeds" / (args.variant or "default")
    folds: dict[str, Any] = {}
    for target, entry in results["datasets"].items():
        meta = {**variant.meta_space, "zoo": str(args.run / "stages" / "build_zoo" / "zoo.sqlite"),
                "held_out": [target], "members": args.members, "progress": False}
        folder = scratch / target
        if not (folder / "metaspace.json").is_file():
            train_meta_space(run, MetaSpaceSettings.from_args(**meta), folder)
        ensemble = predict_all(folder, run.dataset(target))
        folds[target] = fold_facts(ensemble.member_predicted, ensemble.predicted, np.asarray(ensemble.table.ids),
                                   np.asarray(ensemble.table.dataset), target, entry["ranking"])
        print(target, folds[target], flush=True)
    mean = {key: float(np.mean([f[key] for f in folds.values()]))
            for key in ("seed_correlation", "distinct_tops", "ensemble_gain")}
    mean["member_gain"] = float(np.mean([np.mean(f["member_gains"]) for f in folds.values()]))
    record = {"run": str(args.run), "variant": args.variant or "default", "members": args.members,
              "folds": folds, "mean": mean}
    name = f"metaspace_seeds_{args.run.name}_{args.variant or 'default'}"
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"{name}.json", record)
    lines = [f"# Meta-space seed dependence: {args.run.name}, variant {args.variant or 'default'}, "
             f"{args.members} members", "",
             f"`python benchmarks/metaspace_seeds.py {args.run} {args.published} --variant {args.variant} "
             f"--members {args.members}`", "",
             "| fold | seed correlation | distinct top-1 of the members | top-1 gain over a random candidate: "
             "members (mean) | ensemble |", "| --- | ---: | ---: | ---: | ---: |"]
    for target, f in folds.items():
        lines.append(f"| {target} | {f['seed_correlation']:.2f} | {f['distinct_tops']} of {args.members} | "
                     f"{np.mean(f['member_gains']):+.3f} | {f['ensemble_gain']:+.3f} |")
    lines.append(f"| **mean** | {mean['seed_correlation']:.2f} | {mean['distinct_tops']:.1f} | "
                 f"{mean['member_gain']:+.3f} | {mean['ensemble_gain']:+.3f} |")
    atomic_write_text(args.out / f"{name}.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
