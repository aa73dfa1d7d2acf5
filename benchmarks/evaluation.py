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
    command = " ".join(["python", *sys.argv])
    write_json(out / "run.json", {
        "command": command, "config": config.to_dict(), "wall_seconds_this_invocation": round(wall, 1),
        "stages": {name: {"status": r["status"], "seconds": r["seconds"]} for name, r in results["stages"].items()},
        "environment": environment_facts(run.device), "run_directory": str(run.directory)})
    summary = read_json(out / "results.json")["overall"]
    print(f"published {out} (mednns mean test ACC {summary['mean_test_acc'].get('mednns', float('nan')):.4f})")


if __name__ == "__main__":
    main()
