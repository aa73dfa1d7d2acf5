"""Re-ranking cost benchmark (issue: make the retrieved model win), CPU by default.

Target: re-ranking 20 candidates on 800 target images at 28 px in at most 60 s on 2 cores. For a
run with a zoo (default: the published CPU protocol's, ``runs/evaluation_cpu``), a target dataset of
that run and every built-in transfer score, it re-ranks ``--candidates`` zoo models of the other
datasets (a seeded random draw: the cost does not depend on how they were chosen) on ``--images``
labelled training images of the target (plus 512 calibration images), through
:func:`mednns.transfer.reranking.rerank` exactly as the query does, and records the wall time,
candidates per second and image-MACs. The target sample is drawn once per score (it is part of
the cost a query pays).

Writes ``<out>/rerank_cpu.json`` and ``.md``. Not a test: run it by hand::

    MEDMNIST_ROOT=../shared/data/medmnist python benchmarks/rerank_cpu.py --run runs/evaluation_cpu --dataset kidney_ct
"""

from __future__ import annotations

import argparse
import platform
import random
import sys
import time
from pathlib import Path

import torch

from mednns.config import load_config
from mednns.files import atomic_write_text, write_json
from mednns.manager import get_plugin_manager
from mednns.transfer.reranking import RerankSettings, rerank
from mednns.zoo import ZooStore

SCORES = ("knn", "ridge", "logme", "leep", "nce")
TARGET_SECONDS = 60.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/evaluation_cpu", help="a run directory with a build_zoo stage")
    parser.add_argument("--dataset", default="kidney_ct", help="the target: a dataset of the run")
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--images", type=int, default=800)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    manager = get_plugin_manager()
    run = Path(args.run)
    config = load_config(manager, run / "config.yaml")
    specs = {spec["args"].get("name") or spec["name"]: spec for spec in config.datasets}
    spec = specs[args.dataset]
    dataset = manager.create("datasets", spec["name"], **spec["args"])
    with ZooStore(run / "stages" / "build_zoo" / "zoo.sqlite", readonly=True) as store:
        folders = {s["id"]: str(Path(s["path"]).parent) for s in store.supernets()}
        rows = [r for r in store.models(["id", "dataset", "space", "arch", "macs", "supernet_id"])
                if r["dataset"] != args.dataset]
    chosen = random.Random(args.seed).sample(rows, args.candidates)
    candidates = [{"rank": i + 1, "zoo_id": r["id"], "dataset": r["dataset"], "space": r["space"], "arch": r["arch"],
                   "macs": r["macs"], "supernet": folders[r["supernet_id"]]} for i, r in enumerate(chosen)]
    from mednns.training import load_supernet

    loaded = {folder: load_supernet(folder, manager=manager) for folder in {c["supernet"] for c in candidates}}
    results = []
    for score in SCORES:
        settings = RerankSettings({"name": score, "args": {}}, candidates=args.candidates, images=args.images,
                                  seed=args.seed)
        start = time.perf_counter()
        _, facts = rerank(candidates, dataset, settings, manager=manager, load=loaded.__getitem__)
        wall = time.perf_counter() - start
        results.append({"score": score, "seconds": round(wall, 2), "candidates": facts["candidates"],
                        "images": facts["images"], "candidates_per_second": round(facts["candidates"] / wall, 2),
                        "image_gmacs": round(facts["image_macs"] / 1e9, 2), "within_target": wall <= TARGET_SECONDS})
        print(f"{score}: {wall:.1f} s for {facts['candidates']} candidates on {facts['images']} images")
    record = {"run": str(run), "dataset": args.dataset, "candidates": args.candidates, "images": args.images,
              "threads": args.threads, "target_seconds": TARGET_SECONDS, "results": results,
              "machine": {"python": platform.python_version(), "torch": torch.__version__,
                          "processor": platform.processor() or platform.machine(), "cpus": torch.get_num_threads()},
              "command": " ".join(["python", *sys.argv])}
    out = Path(args.out)
    write_json(out / "rerank_cpu.json", record)
    lines = [f"# Re-ranking cost: {args.candidates} candidates on {args.images} training images of "
             f"{args.dataset} (28 px), {args.threads} CPU threads", "",
             f"`{record['command']}` (target: at most {TARGET_SECONDS:.0f} s)", "",
             "| score | seconds | candidates/s | image-GMACs | within target |", "| --- | ---: | ---: | ---: | --- |"]
    lines += [f"| {r['score']} | {r['seconds']:.1f} | {r['candidates_per_second']:.2f} | {r['image_gmacs']:.1f} | "
              f"{'yes' if r['within_target'] else 'no'} |" for r in results]
    atomic_write_text(out / "rerank_cpu.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
