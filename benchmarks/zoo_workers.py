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


def rows(path: Path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        columns = [r[1] for r in db.execute("PRAGMA table_info(models)") if r[1] not in ("created_at", "eval_seconds")]
        return db.execute(f"SELECT {', '.join(columns)} FROM models ORDER BY id").fetchall()


def same(a: list[tuple], b: list[tuple]) -> bool:
    def close(u, v) -> bool:
        return abs(u - v) <= 1e-5 * max(1.0, abs(u)) if isinstance(u, float) and isinstance(v, float) else u == v

    return len(a) == len(b) and all(close(u, v) for x, y in zip(a, b) for u, v in zip(x, y))


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
            entry = {"way": label, "workers": workers, "threads_per_process": threads, "subnets": len(found),
                     "wall_seconds": round(wall, 2), "subnets_per_second": round(len(found) / wall, 3),
                     "same_rows_as_one_process": same(reference, found),
                     "merge": summary.get("merge")}
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
             "| way | processes x threads | subnets | wall | subnets/s | speed-up | same rows as one process |",
             "|---|---|---|---|---|---|---|"]
    for w in r["ways"]:
        lines.append(f"| {w['way']} | {w['workers']} x {w['threads_per_process']} | {w['subnets']} | "
                     f"{w['wall_seconds']:.1f} s | {w['subnets_per_second']:.2f} | {w['speedup']:.2f}x | "
                     f"{'yes' if w['same_rows_as_one_process'] else 'NO'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
