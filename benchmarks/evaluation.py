"""Publish a leave-one-dataset-out evaluation: run ``mednns evaluate CONFIG`` and copy its results
and report into ``benchmarks/results/<run name>/``.

Written there: ``results.json`` (every run's per-epoch history), ``report.md`` (the tables),
``report.html`` (one page), the PNG figures, and ``run.json`` (the command, wall time per stage,
machine facts). A rerun of the same command resumes an interrupted evaluation.

    MEDMNIST_ROOT=../shared/data/medmnist python benchmarks/evaluation.py benchmarks/evaluation_cpu.yaml
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from mednns.config import load_config
from mednns.evaluation.report import render_report
from mednns.files import read_json, write_json
from mednns.manager import get_plugin_manager
from mednns.runner import execute
from mednns.runs import environment_facts, prepare_run


def compact_table(results: dict) -> str:
    """Datasets x methods: mean ± std test ACC at the last epoch, the method's mean over datasets and
    mednns's wins against it (the README's table)."""
    methods = [m for m in results["protocol"]["methods"]
               if any(d["methods"][m]["status"] == "ok" for d in results["datasets"].values())]
    k = results["protocol"]["epochs"]
    labels = [results["methods"][m]["label"] for m in methods]
    lines = [f"| dataset (test ACC@{k}) | " + " | ".join(labels) + " |", "| --- |" + " ---: |" * len(methods)]
    for name, entry in results["datasets"].items():
        cells = []
        finals = {m: entry["methods"][m]["summary"]["test_acc"][str(k)] for m in methods
                  if entry["methods"][m]["status"] == "ok"}
        best = max(v["mean"] for v in finals.values())
        for m in methods:
            if m not in finals:
                cells.append("—")
                continue
            text = f"{finals[m]['mean']:.3f} ± {finals[m]['std']:.3f}"
            cells.append(f"**{text}**" if finals[m]["mean"] == best else text)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    overall = results["overall"]
    lines.append("| **mean** | " + " | ".join(f"{overall['mean_test_acc'][m]:.3f}" for m in methods) + " |")
    lines.append("| mednns (top-1) wins | " + " | ".join(
        "" if m == "mednns" else "{}/{}".format(*overall["wins"][m]) for m in methods) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="a config whose last stage is evaluate")
    parser.add_argument("--out", help="results folder [default: benchmarks/results/<run name>]")
    parser.add_argument("--device", help="auto, cpu, cuda")
    args = parser.parse_args()

    manager = get_plugin_manager()
    config = load_config(manager, args.config, [f"device={args.device}"] if args.device else [])
    if config.stages[-1]["name"] != "evaluate":
        sys.exit(f"{args.config}: the last stage must be evaluate")
    run = prepare_run(manager, config)
    start = time.perf_counter()
    results = execute(run)
    wall = time.perf_counter() - start
    stage = run.directory / "stages" / "evaluate"
    out = Path(args.out or Path(__file__).parent / "results" / str(config.name))
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    shutil.copyfile(stage / "results.json", out / "results.json")
    render_report(stage / "results.json", out)  # from the stage: the embedding figures need its npz files
    (out / "table.md").write_text(compact_table(read_json(out / "results.json")))
    command = " ".join(["python", *sys.argv])
    write_json(out / "run.json", {
        "command": command, "config": config.to_dict(), "wall_seconds_this_invocation": round(wall, 1),
        "stages": {name: {"status": r["status"], "seconds": r["seconds"]} for name, r in results["stages"].items()},
        "environment": environment_facts(run.device), "run_directory": str(run.directory)})
    summary = read_json(out / "results.json")["overall"]
    print(f"published {out} (mednns mean test ACC {summary['mean_test_acc'].get('mednns', float('nan')):.4f})")


if __name__ == "__main__":
    main()
