"""The prepared GPU check (issue 16): the whole method once on one GPU, in at most about 8 minutes.

    python benchmarks/gpu_check.py                          # CUDA; writes benchmarks/results/gpu_check/
    python benchmarks/gpu_check.py --device cpu --quick     # the same steps, tiny: tests the script itself

On three seeded synthetic 28x28 datasets (a class-dependent bright square on noise: learnable, and
no download needed on a machine without internet) it runs, through the stages a user runs:

1. ``train_supernet``: paper-preset OFA-ResNet supernets (the CUDA path: bf16 autocast,
   channels-last), a few hundred optimizer steps in all: steps/s, images/s, image-MACs/s and the
   peak GPU memory;
2. ``build_zoo``: subnets evaluated per second on the GPU, and the hours the paper's 720K
   model-dataset pairs would take at that rate;
3. ``evaluate`` on the third dataset held out (one seed): a meta-space fitted on the other two, the
   query, the retrieved subnet exported with its weights and fine-tuned, beside the same architecture
   from random init: the seconds of each; and the ``rerank`` variant (issue 13): a 3-member
   meta-space ensemble whose top 20 are re-ranked by the ridge probe on the target's training images
   on the GPU, its candidates per second.

Writes ``gpu_check.json`` and ``gpu_check.md`` into ``--out``. Throughput and time are the point;
the synthetic accuracies only show that the steps learned something.
"""

from __future__ import annotations

import argparse
import platform
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from mednns.config import load_config
from mednns.files import read_json, write_json
from mednns.layout import SUPERNET_STAGE, stage_dir, zoo_store
from mednns.manager import get_plugin_manager
from mednns.runner import execute
from mednns.runs import prepare_run
from mednns.testing import write_tiny_npz

PAPER_PAIRS = 720_000
DATASETS = ("a", "b", "c")
#: (full, quick): training images per dataset, supernet epochs (full phase, each shrinking phase),
#: zoo subnets per supernet, meta-space steps, fine-tuning epochs.
#: Re-ranking: meta-space members, candidates re-ranked.
SIZES = {"images": (6000, 160), "full_epochs": (4, 1), "shrink_epochs": (1, 1), "samples": (300, 6),
         "steps": (300, 20), "epochs": (5, 2), "members": (3, 2), "candidates": (20, 3)}


def config(root: Path, device: str, quick: bool) -> dict[str, Any]:
    pick = {key: value[1 if quick else 0] for key, value in SIZES.items()}
    datasets = []
    for seed, name in enumerate(DATASETS):
        path = write_tiny_npz(root / f"{name}.npz", seed=seed, size=28, channels=1 + 2 * (seed == 1),
                              n_classes=3 + seed, sizes=(pick["images"], pick["images"] // 8, pick["images"] // 8))
        datasets.append({"name": "npz", "args": {"path": str(path), "name": name}})
    return {"name": "gpu_check", "seed": 0, "device": device, "output_dir": str(root), "datasets": datasets,
            "stages": [
                {"name": "train_supernet", "args": {
                    "space": {"name": "ofa_resnet", "args": {"preset": "cpu" if quick else "paper"}},
                    "full_epochs": pick["full_epochs"], "shrink_epochs": pick["shrink_epochs"], "batch_size": 256,
                    "amp": True, "channels_last": device.startswith("cuda"), "progress": False}},
                {"name": "build_zoo", "args": {"samples": pick["samples"], "anchors": 2, "progress": False}},
                {"name": "evaluate", "args": {
                    "datasets": ["c"], "methods": ["mednns", "random_init"], "seeds": [0], "epochs": pick["epochs"],
                    "meta_space": {"steps": pick["steps"], "eval_every": max(10, pick["steps"] // 6),
                                   "progress": False},
                    "variants": {"rerank": {"meta_space": {"members": pick["members"]}, "top_k": 1, "rerank": {
                        "score": "ridge", "candidates": pick["candidates"], "combine": "score"}}},
                    "report": False, "progress": False}}]}


def supernet_facts(run_dir: Path) -> dict[str, Any]:
    facts = {}
    for name in DATASETS:
        final = read_json(stage_dir(run_dir, SUPERNET_STAGE) / name / "final.json")
        seconds = final["train_seconds"]
        facts[name] = {"steps": final["steps"], "train_seconds": seconds,
                       "steps_per_second": round(final["steps"] / seconds, 2),
                       "image_macs_per_second": final["train_image_macs"] / seconds,
                       "test_acc_largest": final["test"]["largest"]["acc"],
                       "params_largest": final["test"]["largest"]["params"]}
    return facts


def zoo_facts(run_dir: Path, stage_seconds: float) -> dict[str, Any]:
    with sqlite3.connect(f"file:{zoo_store(run_dir)}?mode=ro", uri=True) as db:
        rows, evaluating = db.execute("SELECT COUNT(*), SUM(eval_seconds) FROM models").fetchone()
    rate = rows / stage_seconds
    return {"subnets": rows, "stage_seconds": round(stage_seconds, 1), "subnets_per_second": round(rate, 2),
            "evaluation_seconds": round(evaluating, 1),
            "paper_pairs_hours": round(PAPER_PAIRS / rate / 3600, 1)}


def evaluate_facts(run_dir: Path) -> dict[str, Any]:
    results = read_json(stage_dir(run_dir, "evaluate") / "results.json")
    entry = results["datasets"]["c"]
    condition = next(iter(entry["conditions"].values()))
    facts = {}
    for method, value in condition["methods"].items():
        run = value["runs"][0]
        facts[method] = {"model": run["model"]["name"], "params": run["model"]["params"],
                         "setup_seconds": {k: v["seconds"] for k, v in run["compute"]["setup"].items()},
                         "finetune_seconds": run["finetune_seconds"], "test_acc": run["history"][-1]["test_acc"]}
    return facts


def rerank_facts(run_dir: Path) -> dict[str, Any]:
    """The re-ranking's measured cost (one target subset: the evaluation's one seed)."""
    (path,) = (stage_dir(run_dir, "evaluate") / "c" / "queries").glob("rerank@*.json")
    facts = read_json(path)["rerank"]
    return {key: facts[key] for key in ("candidates", "images", "seconds",
                                        "candidates_per_second", "image_macs")}


def markdown(report: dict[str, Any]) -> str:
    env, stages = report["environment"], report["stage_seconds"]
    lines = [f"# GPU check ({env['device_name']}, torch {env['torch']})", "",
             f"Command: `{report['command']}`; wall time {report['wall_seconds']:.0f} s "
             f"(train_supernet {stages.get('train_supernet', 0):.0f} s, build_zoo {stages.get('build_zoo', 0):.0f} s, "
             f"evaluate {stages.get('evaluate', 0):.0f} s); peak GPU memory "
             f"{report['peak_memory_gib'] if report['peak_memory_gib'] is not None else '–'} GiB.", "",
             "| supernet | steps | seconds | steps/s | TMAC/s (images) | test ACC (largest) |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, s in report["supernets"].items():
        lines.append(f"| {name} | {s['steps']} | {s['train_seconds']:.1f} | {s['steps_per_second']} | "
                     f"{s['image_macs_per_second'] / 1e12:.2f} | {s['test_acc_largest']:.3f} |")
    zoo = report["zoo"]
    lines += ["", f"Zoo: {zoo['subnets']} subnets in {zoo['stage_seconds']} s ({zoo['subnets_per_second']} subnets/s); "
                  f"the paper's 720K model-dataset pairs would take {zoo['paper_pairs_hours']} h at this rate.", "",
              "| method (target c) | model | setup seconds | fine-tuning seconds | test ACC |",
              "| --- | --- | --- | ---: | ---: |"]
    for method, f in report["evaluate"].items():
        setup = ", ".join(f"{k} {v:.1f}" for k, v in f["setup_seconds"].items()) or "–"
        lines.append(f"| {method} | {f['model']} | {setup} | {f['finetune_seconds']:.1f} | {f['test_acc']:.3f} |")
    r = report["rerank"]
    lines += ["", f"Re-ranking (`mednns:rerank`): {r['candidates']} candidates scored on {r['images']} training images "
                  f"in {r['seconds']:.1f} s, "
                  f"{r['candidates_per_second']} candidates/s, {r['image_macs'] / 1e9:.0f} GMACs of images."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and the cpu preset (tests the script)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gpu_check")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run on a GPU machine, or pass --device cpu --quick to test the script")

    with tempfile.TemporaryDirectory(prefix="mednns-gpu-check-") as tmp:
        root = Path(tmp)
        path = root / "gpu_check.yaml"
        path.write_text(yaml.safe_dump(config(root, args.device, args.quick)))
        manager = get_plugin_manager()
        run = prepare_run(manager, load_config(manager, path))
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        results = execute(run)
        wall = time.perf_counter() - start
        stage_seconds = {name: r["seconds"] for name, r in results["stages"].items()}
        peak = (round(torch.cuda.max_memory_allocated() / 2**30, 2) if args.device.startswith("cuda") else None)
        report = {
            "command": " ".join(["python", "benchmarks/gpu_check.py", *sys.argv[1:]]),
            "quick": args.quick, "wall_seconds": round(wall, 1), "stage_seconds": stage_seconds,
            "peak_memory_gib": peak,
            "environment": {"torch": torch.__version__, "python": platform.python_version(),
                            "device": args.device, "cuda": torch.version.cuda,
                            "device_name": (torch.cuda.get_device_name(args.device) if args.device.startswith("cuda")
                                            else platform.processor() or "cpu"),
                            "bf16": bool(args.device.startswith("cuda") and torch.cuda.is_bf16_supported())},
            "supernets": supernet_facts(run.directory),
            "zoo": zoo_facts(run.directory, stage_seconds["build_zoo"]),
            "evaluate": evaluate_facts(run.directory),
            "rerank": rerank_facts(run.directory),
        }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "gpu_check.json", report)
    (args.out / "gpu_check.md").write_text(markdown(report))
    print((args.out / "gpu_check.md").read_text())


if __name__ == "__main__":
    main()
