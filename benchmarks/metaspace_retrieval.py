"""Which offline dataset encoder makes the better meta-space? Leave-one-dataset-out on a real zoo.

For every dataset encoder given and every dataset of the zoo: train the meta-space with that dataset
held out (its zoo rows and its FIDs never enter training), then measure how well the meta-space
ranks the held-out dataset's own zoo models, which it has never seen paired with that dataset:
Spearman and Kendall between predicted and measured validation ACC, and the top-1 regret (best
measured ACC minus the measured ACC of the model ranked first). Higher Spearman, lower regret: the
better encoder. Everything else (model encoder, losses, steps, seeds) is the stage's default.

    MEDMNIST_ROOT=../shared/data/medmnist mednns run examples/configs/zoo.yaml
    MEDMNIST_ROOT=../shared/data/medmnist python benchmarks/metaspace_retrieval.py --run runs/zoo
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from mednns.config import load_config, validate_config
from mednns.files import atomic_write_text, write_json
from mednns.manager import get_plugin_manager
from mednns.runner import execute
from mednns.runs import prepare_run

ENCODERS = {
    "image_stats": {"name": "image_stats", "args": {}},
    "timm_random_resnet18": {"name": "timm", "args": {"model": "resnet18", "pretrained": False, "image_size": 64}},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/zoo", help="a run whose build_zoo stage is complete")
    parser.add_argument("--encoders", nargs="+", default=list(ENCODERS), choices=list(ENCODERS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    manager = get_plugin_manager()
    run = Path(args.run)
    config = load_config(manager, run / "config.yaml")
    zoo = run / "stages" / "build_zoo" / "zoo.sqlite"
    names = [spec["args"].get("name") or spec["name"] for spec in config.datasets]
    results: dict = {"zoo": str(zoo), "datasets": names, "seeds": args.seeds, "encoders": {}}
    for label in args.encoders:
        rows = []
        for held in names:
            for seed in args.seeds:
                with tempfile.TemporaryDirectory() as tmp:
                    data = {"name": "retrieval", "seed": seed, "device": "cpu", "output_dir": tmp,
                            "datasets": config.datasets,
                            "stages": [{"name": "fit_meta_space", "args": {
                                "zoo": str(zoo), "held_out": [held], "dataset_encoder": ENCODERS[label],
                                "progress": False}}]}
                    start = time.perf_counter()
                    out = execute(prepare_run(manager, validate_config(manager, yaml.safe_load(yaml.safe_dump(data)))))
                    seconds = time.perf_counter() - start
                report = out["stages"]["fit_meta_space"]["results"]["summary"]["held_out"]["predicted"]
                rows.append({"held_out": held, "seed": seed, "seconds": round(seconds, 1), **report})
                print(label, rows[-1], flush=True)
        results["encoders"][label] = {
            "runs": rows,
            "mean": {k: float(np.nanmean([r[k] for r in rows])) for k in ("spearman", "kendall", "top1_regret")}}
    out_dir = Path(args.out)
    write_json(out_dir / "metaspace_retrieval.json", results)
    lines = ["# Offline dataset encoders: leave-one-dataset-out retrieval quality", "",
             f"Command: `python benchmarks/metaspace_retrieval.py --run {args.run}` (zoo of "
             f"`examples/configs/zoo.yaml`: {', '.join(names)}; seeds {args.seeds})", "",
             "Per held-out dataset: Spearman / Kendall between the meta-space's predicted and the measured validation "
             "ACC of that dataset's zoo models, and the top-1 regret (ACC points lost by taking the top-ranked model).",
             "", "| encoder | held out | seed | Spearman | Kendall | top-1 regret |", "|---|---|---|---|---|---|"]
    for label, entry in results["encoders"].items():
        for r in entry["runs"]:
            lines.append(f"| {label} | {r['held_out']} | {r['seed']} | {r['spearman']:.3f} | {r['kendall']:.3f} | "
                         f"{r['top1_regret'] * 100:.2f} |")
        m = entry["mean"]
        lines.append(f"| **{label}** | **mean** | | **{m['spearman']:.3f}** | **{m['kendall']:.3f}** | "
                     f"**{m['top1_regret'] * 100:.2f}** |")
    atomic_write_text(out_dir / "metaspace_retrieval.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
