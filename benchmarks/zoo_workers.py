"""Zoo build: one process against local worker processes on the same cores (issue 16, item 2).

Builds the same plan of the same trained supernets (a run's ``train_supernet`` stage) into fresh
stores in three ways: one process with all cores' torch threads (what ``workers: 1`` did before),
the default ``workers: auto`` (``cores // workers`` threads each), and as many workers as cores
forced. Reports wall time, subnets per second, the speed-up over one process, and checks that
every store holds the same rows (ids, architectures, metrics within float32 round-off).

    MEDMNIST_ROOT=../shared/data/medmnist python benchmarks/zoo_workers.py --run runs/evaluation_cpu \\
        --datasets pneumoniamnist retinamnist --samples 150

Writes ``<out>/zoo_workers.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import platform
import sqlite3
import tempfile
import time
from pathlib import Path

import torch

from mednns.config import load_config
from mednns.files import atomic_write_text, write_json
from mednns.manager import get_plugin_manager
from mednns.runs import prepare_run
from mednns.zoo import BuildSettings, ZooProtocol, build_with_workers, choose_workers
from mednns.zoo.parallel import usable_cores


def rows(path: Path) -> tuple[list[str], list[tuple]]:
    with sqlite3.connect(path) as db:
        columns = [r[1] for r in db.execute("PRAGMA table_info(models)") if r[1] not in ("created_at", "eval_seconds")]
        return columns, db.execute(f"SELECT {', '.join(columns)} FROM models ORDER BY id").fetchall()


def differences(reference: tuple[list[str], list[tuple]], other: tuple[list[str], list[tuple]]) -> dict:
    """Whether ids, architectures and every non-float column match row for row, and the largest
    absolute difference of each float column (thread counts change float reductions)."""
    columns, a = reference
    _, b = other
    exact = len(a) == len(b) and all(u == v for x, y in zip(a, b) for u, v in zip(x, y)
                                     if not isinstance(u, float))
    largest: dict[str, float] = {}
    for x, y in zip(a, b):
        for name, u, v in zip(columns, x, y):
            if isinstance(u, float) and isinstance(v, float):
                largest[name] = max(largest.get(name, 0.0), abs(u - v))
    return {"same_rows_and_non_float_columns": exact, "largest_float_difference": largest}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/evaluation_cpu", help="a run whose train_supernet stage is complete")
    parser.add_argument("--datasets", nargs="+", default=["pneumoniamnist", "retinamnist"])
    parser.add_argument("--samples", type=int, default=150, help="random subnets per supernet (+ the two extremes)")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()

    manager = get_plugin_manager()
    run_dir = Path(args.run).resolve()
    config = load_config(manager, run_dir / "config.yaml")
    config.stages = []
    run = prepare_run(manager, config, directory=run_dir)
    targets = [(name, run_dir / "stages" / "train_supernet" / name) for name in args.datasets]
    settings = BuildSettings(samples=args.samples, progress=False)
    protocol = ZooProtocol()
    cores = usable_cores()
    auto, why = choose_workers("auto", todo=(args.samples + 2) * len(targets), device="cpu", manager=manager)
    ways = [("one process", 1, cores), (f"workers: auto ({auto})", auto, cores // auto)]
    if auto != cores:
        ways.append((f"workers: {cores}", cores, 1))
    results: dict = {"run": str(args.run), "datasets": args.datasets, "samples_per_supernet": args.samples,
                     "cores": cores, "auto": {"workers": auto, "why": why}, "torch": torch.__version__,
                     "machine": platform.machine(), "ways": []}
    reference = None
    with tempfile.TemporaryDirectory() as tmp:
        for label, workers, threads in ways:
            store = Path(tmp) / f"{workers}.sqlite"
            torch.set_num_threads(threads)
            start = time.perf_counter()
            summary = build_with_workers(workers, list(config.datasets), targets, run.datasets, store, settings,
                                         protocol, manager=manager)
            wall = time.perf_counter() - start
            found = rows(store)
            reference = reference if reference is not None else found
            entry = {"way": label, "workers": workers, "threads_per_process": threads, "subnets": len(found[1]),
                     "wall_seconds": round(wall, 2), "subnets_per_second": round(len(found[1]) / wall, 3),
                     "versus_one_process": differences(reference, found), "merge": summary.get("merge")}
            results["ways"].append(entry)
            print(entry, flush=True)
    base = results["ways"][0]["wall_seconds"]
    for entry in results["ways"]:
        entry["speedup"] = round(base / entry["wall_seconds"], 2)
    out = Path(args.out)
    write_json(out / "zoo_workers.json", results)
    atomic_write_text(out / "zoo_workers.md", to_markdown(results, args))
    print(to_markdown(results, args))


def to_markdown(r: dict, args) -> str:
    lines = [f"# Zoo build: one process vs local workers ({r['cores']} cores)", "",
             f"Command: `python benchmarks/zoo_workers.py --run {args.run} --datasets {' '.join(args.datasets)} "
             f"--samples {args.samples}`  ",
             f"torch {r['torch']}, {r['machine']}; supernets of `{args.run}` ({', '.join(r['datasets'])}), "
             f"{r['samples_per_supernet']} random subnets + 2 extremes each, the default protocol. "
             f"`auto` chose {r['auto']['workers']} ({r['auto']['why']}).", "",
             "| way | processes x threads | subnets | wall | subnets/s | speed-up | rows vs one process |",
             "|---|---|---|---|---|---|---|"]
    for w in r["ways"]:
        versus = w["versus_one_process"]
        acc = max(versus["largest_float_difference"].get(c, 0.0) for c in ("val_acc", "test_acc"))
        loss = max(versus["largest_float_difference"].get(c, 0.0) for c in ("val_loss", "test_loss"))
        auc = max(versus["largest_float_difference"].get(c, 0.0) for c in ("val_auc", "test_auc"))
        same = ("same ids, architectures and counts" if versus["same_rows_and_non_float_columns"] else "DIFFERENT rows")
        lines.append(f"| {w['way']} | {w['workers']} x {w['threads_per_process']} | {w['subnets']} | "
                     f"{w['wall_seconds']:.1f} s | {w['subnets_per_second']:.2f} | {w['speedup']:.2f}x | "
                     f"{same}; largest ACC difference {acc:.2g}, AUC {auc:.2g}, loss {loss:.2g} |")
    lines += ["", "Wall time includes starting the workers (imports, datasets, supernets: a few seconds each) and "
              "merging their stores. The differences come from one vs two torch threads per float reduction: "
              "logits move in the 7th digit, which can reorder near-ties in the rank-based AUC."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
