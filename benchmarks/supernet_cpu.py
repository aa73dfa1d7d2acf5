"""Supernet benchmark on real data (issue: OFA-style supernets), CPU by default.

Measures, for one search space on PneumoniaMNIST at 28x28:

1. supernet training with the ``cpu`` preset (progressive shrinking + sandwich rule):
   wall time and TEST accuracy of the largest / a median / the smallest subnet after BN
   recalibration (from the trainer's ``final.json``);
2. the same largest architecture trained alone (the full phase only: no weight sharing)
   for about the same wall time, or for ``--standalone-epochs`` epochs (for example as many
   epochs as the supernet's phases together: what weight sharing costs the largest network at
   equal epochs rather than equal time);
3. throughput of one sandwich step (images/s of the batch);
4. evaluating one subnet through the supernet (``set_active``) versus through its
   extracted network on the same images (ratio; target <= 1.3).

Writes ``<out>/supernet_<space>.json`` and ``.md``. Not a test: run it by hand::

    python benchmarks/supernet_cpu.py --space ofa_resnet --medmnist-root ../shared/data/medmnist
"""

from __future__ import annotations

import argparse
import csv
import platform
import random
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

import mednns
from mednns.data import dataset_tensors
from mednns.files import atomic_write_text, write_json
from mednns.supernets import preserved_bn_statistics, recalibrate_bn
from mednns.training import DistillationLoss, SupernetTrainer, TrainConfig, sandwich_step, supervised_loss


def _value(text: str):
    """A YAML scalar, with 5e-4 read as a float (YAML 1.1 wants 5.0e-4)."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def timed(fn, repeats: int) -> float:
    """Median seconds of ``repeats`` calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def epoch_seconds(metrics_csv: Path, phase: str) -> float:
    with open(metrics_csv) as handle:
        rows = [r for r in csv.DictReader(handle) if r["phase"] == phase]
    return statistics.median(float(r["seconds"]) for r in rows)


def last_validation(metrics_csv: Path) -> dict:
    """The largest network's validation ACC and AUC after the last epoch (the trainer's metrics.csv):
    the held-out split drawn like the training images, beside a test split that may be shifted."""
    with open(metrics_csv) as handle:
        last = list(csv.DictReader(handle))[-1]
    return {"acc": float(last["val_acc_largest"]), "auc": float(last["val_auc_largest"])}


def sandwich_throughput(space, x, y, task, num_random: int, repeats: int = 5) -> dict:
    space.train()
    rng = random.Random(0)
    largest, smallest = space.largest(), space.smallest()
    sup, distill = supervised_loss(task, 0.1), DistillationLoss(task)

    def step():
        others = [smallest, *(space.sample(rng) for _ in range(num_random))]
        space.zero_grad(set_to_none=True)
        sandwich_step(space, x, y, largest=largest, others=others, supervised=sup, distill=distill)

    seconds = timed(step, repeats)
    return {"batch": int(x.shape[0]), "subnets_per_step": 2 + num_random, "seconds_per_step": round(seconds, 4),
            "images_per_s": round(x.shape[0] / seconds, 1)}


@torch.inference_mode()
def eval_ratio(space, calibration, x, archs, batch_size: int = 128) -> dict:
    rows = []
    for arch in archs:
        net = space.extract(arch)
        recalibrate_bn(net, calibration)
        net.eval()
        space.eval()
        space.set_active(arch)

        def through(model):
            return lambda: [model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]

        with preserved_bn_statistics(space):
            supernet_s = timed(through(space), 3)
        extracted_s = timed(through(net), 3)
        rows.append({"params": space.cost(arch, x.shape[-1])["params"], "supernet_s": round(supernet_s, 4),
                     "extracted_s": round(extracted_s, 4), "ratio": round(supernet_s / extracted_s, 3)})
    return {"images": int(len(x)), "batch_size": batch_size, "subnets": rows,
            "median_ratio": round(statistics.median(r["ratio"] for r in rows), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="ofa_resnet")
    parser.add_argument("--dataset", default="pneumoniamnist")
    parser.add_argument("--medmnist-root", default="../shared/data/medmnist")
    parser.add_argument("--full-epochs", type=int, default=TrainConfig.full_epochs)
    parser.add_argument("--shrink-epochs", type=int, default=TrainConfig.shrink_epochs)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="runs/benchmarks", help="where the trained supernets go")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--tag", default="", help="suffix of the result files (several schedules side by side)")
    parser.add_argument("--train", action="append", default=[], metavar="KEY=VALUE",
                        help="any other TrainConfig field, e.g. --train weight_decay=5e-4 (repeatable)")
    parser.add_argument("--skip-standalone", action="store_true")
    parser.add_argument("--standalone-epochs", type=int,
                        help="epochs of the largest architecture trained alone [default: as many as fit in the "
                             "supernet's wall time]")
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    dataset = mednns.create("datasets", args.dataset, root=args.medmnist_root)
    info = dataset.info
    make_space = lambda: mednns.create("search-spaces", args.space, in_channels=info.n_channels,  # noqa: E731
                                       num_classes=info.n_classes, preset="cpu")
    tag = "".join(f"_{t}" for t in args.train).replace("=", "-")
    name = f"{args.space}_{args.dataset}_e{args.full_epochs}-{args.shrink_epochs}{tag}_seed{args.seed}"
    work = Path(args.work) / name
    extra = {key: _value(value) for key, _, value in (item.partition("=") for item in args.train)}
    config = TrainConfig(full_epochs=args.full_epochs, shrink_epochs=args.shrink_epochs, progress=False, **extra)
    command = shlex.join(["python", "benchmarks/supernet_cpu.py", *sys.argv[1:]])
    results: dict = {"command": command, "space": args.space, "dataset": args.dataset, "preset": "cpu",
                     "image_size": list(info.image_size),
                     "seed": args.seed, "torch": torch.__version__, "threads": torch.get_num_threads(),
                     "machine": platform.processor() or platform.machine(), "train_config": {
                         "full_epochs": args.full_epochs, "shrink_epochs": args.shrink_epochs, **extra}}

    torch.manual_seed(args.seed)
    space = make_space()
    start = time.perf_counter()
    final = SupernetTrainer(space, dataset, work / "supernet", config, space_name=args.space, seed=args.seed).fit()
    supernet_seconds = time.perf_counter() - start
    results["supernet"] = {"wall_s": round(supernet_seconds, 1), "count": space.count(), "final": final,
                           "val_largest": last_validation(work / "supernet" / "metrics.csv")}

    if not args.skip_standalone:
        full_epoch_s = epoch_seconds(work / "supernet" / "metrics.csv", "full")
        epochs = args.standalone_epochs or max(1, round(supernet_seconds / full_epoch_s))
        torch.manual_seed(args.seed)
        alone_space = make_space()
        alone_config = TrainConfig(full_epochs=epochs, shrink_epochs=0, progress=False, **extra)
        start = time.perf_counter()
        alone = SupernetTrainer(alone_space, dataset, work / "standalone", alone_config, space_name=args.space,
                                seed=args.seed).fit()
        results["standalone_largest"] = {"epochs": epochs, "wall_s": round(time.perf_counter() - start, 1),
                                         "test": alone["test"]["largest"],
                                         "val": last_validation(work / "standalone" / "metrics.csv")}

    x, y = dataset_tensors(dataset, "train")
    results["sandwich_step"] = sandwich_throughput(space, x[:128], y[:128], info.task, config.num_random)
    calibration = [x[i:i + 128] for i in range(0, 512, 128)]
    x_test, _ = dataset_tensors(dataset, "test")
    rng = random.Random(1)
    archs = [space.largest(), space.smallest(), *(space.sample(rng) for _ in range(3))]
    results["subnet_eval"] = eval_ratio(space, calibration, x_test, archs)

    out = Path(args.out)
    stem = f"supernet_{args.space}" + (f"_{args.tag}" if args.tag else "")
    write_json(out / f"{stem}.json", results)
    atomic_write_text(out / f"{stem}.md", to_markdown(results))
    print(to_markdown(results))


def _acc(entry: dict) -> str:
    return f"{100 * entry['acc']:.1f}% (AUC {entry['auc']:.3f})"


def to_markdown(r: dict) -> str:
    final = r["supernet"]["final"]["test"]
    lines = [f"# Supernet benchmark: {r['space']} (cpu preset) on {r['dataset']} {'x'.join(map(str, r['image_size']))}",
             "", f"Command: `{r['command']}`  ",
             f"torch {r['torch']}, {r['threads']} threads, {r['machine']}", "",
             "| what | value |", "|---|---|",
             f"| supernet training wall time | {r['supernet']['wall_s'] / 60:.1f} min |",
             f"| distinct subnets in the space | {r['supernet']['count']:,} |"]
    for key in ("largest", "median", "smallest"):
        if key in final:
            lines.append(f"| {key} subnet test ACC ({final[key].get('params', 0):,} params) | {_acc(final[key])} |")
    if "standalone_largest" in r:
        s = r["standalone_largest"]
        lines.append(f"| largest architecture trained alone, {s['epochs']} epochs, {s['wall_s'] / 60:.1f} min | "
                     f"{_acc(s['test'])} |")
        if "val" in s and "val_largest" in r["supernet"]:
            lines.append(f"| validation ACC of the largest: in the supernet / trained alone | "
                         f"{r['supernet']['val_largest']['acc']:.1%} / {s['val']['acc']:.1%} |")
    sw = r["sandwich_step"]
    lines.append(f"| sandwich step ({sw['subnets_per_step']} subnets, batch {sw['batch']}) | "
                 f"{sw['seconds_per_step']:.3f} s = {sw['images_per_s']:.0f} images/s |")
    ev = r["subnet_eval"]
    lines.append(f"| subnet eval, supernet / extracted ({ev['images']} images) | median ratio {ev['median_ratio']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
