"""Model-zoo benchmark (issue: model zoo), CPU by default.

For one trained supernet (default: the one ``examples/configs/supernet.yaml`` trains, OFA-ResNet
``cpu`` preset on PneumoniaMNIST 28x28) and the default protocol (512 calibration images, the
validation split capped at 1,000 images, the test split), measures:

1. **tuning**: seconds per subnet of :class:`mednns.zoo.SubnetEvaluator` for memory format x batch
   size x threads on the same random architectures (how the defaults were chosen);
2. **the build**: ``build_zoo`` of ``--samples`` subnets into a fresh store: wall time, subnets/s,
   minutes per 1,000 subnets, what the paper's 720K pairs would cost at this rate;
3. **bounds**: (a) the same images through the already extracted and calibrated networks alone
   (eval mode, same batch size and memory format) for a random subset of the zoo's architectures,
   against those rows' measured ``eval_seconds``; (b) the FLOP bound: every subnet's MACs x
   images at the peak convolution throughput measured on this machine.

Writes ``<out>/zoo_<space>.json`` and ``.md``. Not a test: run it by hand after training the supernet::

    MEDMNIST_ROOT=../shared/data/medmnist mednns run examples/configs/supernet.yaml
    MEDMNIST_ROOT=../shared/data/medmnist python benchmarks/zoo_cpu.py --run runs/supernet
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from mednns.config import load_config
from mednns.files import atomic_write_text, write_json
from mednns.manager import get_plugin_manager
from mednns.training import load_supernet
from mednns.training.evaluation import predict
from mednns.zoo import BuildSettings, EvaluationData, SubnetEvaluator, ZooProtocol, ZooStore, build_zoo

PAPER_PAIRS = 720_000


def dataset_of(run: Path, name: str):
    manager = get_plugin_manager()
    config = load_config(manager, run / "config.yaml")
    for spec in config.datasets:
        dataset = manager.create("datasets", spec["name"], **spec["args"])
        if dataset.info.name == name:
            return dataset
    raise SystemExit(f"{run} has no dataset {name}")


def per_subnet(evaluator: SubnetEvaluator, archs: list) -> float:
    evaluator(archs[0])  # warm-up
    start = time.perf_counter()
    for arch in archs:
        evaluator(arch)
    return (time.perf_counter() - start) / len(archs)


def tune(space, data, archs: list) -> list[dict]:
    rows = []
    for threads in (2, 1):
        torch.set_num_threads(threads)
        for channels_last in (False, True):
            for batch_size in (128, 256, 512):
                evaluator = SubnetEvaluator(space, data, batch_size=batch_size, channels_last=channels_last)
                seconds = per_subnet(evaluator, archs)
                rows.append({"threads": threads, "channels_last": channels_last, "batch_size": batch_size,
                             "seconds_per_subnet": round(seconds, 4)})
                print(rows[-1], flush=True)
    torch.set_num_threads(2)
    return rows


def peak_macs_per_second(channels_last: bool = True) -> dict:
    """Measured multiply-accumulates per second of large convolutions (the best of a few shapes)."""
    shapes = [(256, 64, 64, 3, 28), (256, 128, 512, 1, 14), (256, 256, 256, 3, 7), (256, 32, 128, 1, 28)]
    best = {"macs_per_second": 0.0}
    with torch.inference_mode():
        for batch, cin, cout, k, size in shapes:
            conv = torch.nn.Conv2d(cin, cout, k, padding=k // 2, bias=False).eval()
            x = torch.randn(batch, cin, size, size)
            if channels_last:
                conv, x = conv.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
            conv(x)
            times = []
            for _ in range(5):
                start = time.perf_counter()
                conv(x)
                times.append(time.perf_counter() - start)
            macs = batch * cout * size * size * cin * k * k
            rate = macs / statistics.median(times)
            if rate > best["macs_per_second"]:
                best = {"macs_per_second": rate, "shape": [batch, cin, cout, k, size]}
    return best


def bound_alone(evaluator: SubnetEvaluator, archs: list) -> list[float]:
    """Seconds per architecture of the same images through pre-extracted, pre-calibrated networks."""
    seconds = []
    with torch.inference_mode():
        for arch in archs:
            model = evaluator.network(arch)
            forward = [*evaluator.calibration, evaluator.inputs]
            predict(model, evaluator.calibration[0], evaluator.batch_size, memory_format=evaluator.memory_format)
            start = time.perf_counter()
            for x in forward:
                predict(model, x, evaluator.batch_size, memory_format=evaluator.memory_format)
            seconds.append(time.perf_counter() - start)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", default="runs/supernet", help="a run whose train_supernet stage is complete")
    parser.add_argument("--dataset", default="pneumoniamnist")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--tune-subnets", type=int, default=16)
    parser.add_argument("--bound-subnets", type=int, default=100)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--skip-tuning", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)

    run = Path(args.run)
    folder = run / "stages" / "train_supernet" / args.dataset
    space, metadata = load_supernet(folder)
    dataset = dataset_of(run, args.dataset)
    protocol = ZooProtocol()
    norm = metadata["normalization"]
    data = EvaluationData.from_dataset(dataset, protocol, channels=norm["channels"], mean=norm["mean"], std=norm["std"])
    results: dict = {"space": metadata["space"], "dataset": args.dataset, "image_size": list(data.val_x.shape[2:]),
                     "protocol": protocol.to_dict(), "images_per_subnet": data.images_per_subnet,
                     "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
                     "processor": platform.processor() or platform.machine()}

    rng = random.Random(1)
    if not args.skip_tuning:
        results["tuning"] = tune(space, data, [space.sample(rng) for _ in range(args.tune_subnets)])

    settings = BuildSettings(samples=args.samples, progress=True)
    with tempfile.TemporaryDirectory() as tmp:
        with ZooStore(Path(tmp) / "zoo.sqlite") as store:
            start = time.perf_counter()
            summary = build_zoo(store, folder, dataset, settings=settings, protocol=protocol)
            wall = time.perf_counter() - start
            rows = store.models(["arch", "arch_hash", "macs", "eval_seconds"])
    n = len(rows)
    rate = n / wall
    results["build"] = {"subnets": n, "wall_seconds": round(wall, 2), "evaluate_seconds": summary["seconds"],
                        "subnets_per_second": round(rate, 3), "minutes_per_1000": round(1000 / rate / 60, 2),
                        "paper_720k_hours": round(PAPER_PAIRS / rate / 3600, 1),
                        "mean_eval_seconds": round(statistics.fmean(r["eval_seconds"] for r in rows), 4)}

    evaluator = SubnetEvaluator(space, data, batch_size=settings.batch_size, channels_last=settings.channels_last)
    subset = random.Random(2).sample(rows, min(args.bound_subnets, n))
    archs = [space.arch_from_json(r["arch"]) for r in subset]
    alone = bound_alone(evaluator, archs)
    measured = sum(r["eval_seconds"] for r in subset)
    peak = peak_macs_per_second(settings.channels_last)
    flop_seconds = sum(r["macs"] for r in rows) * data.images_per_subnet / peak["macs_per_second"]
    results["bounds"] = {
        "subset": len(subset),
        "extracted_alone_seconds_per_subnet": round(sum(alone) / len(alone), 4),
        "measured_seconds_per_subnet_same_subset": round(measured / len(subset), 4),
        "ratio_to_extracted_alone": round(measured / sum(alone), 3),
        "ratio_wall_to_extracted_alone": round((wall / n) / (sum(alone) / len(alone)), 3),
        "peak_conv": {"gmacs_per_second": round(peak["macs_per_second"] / 1e9, 2), "shape": peak["shape"]},
        "flop_bound_seconds": round(flop_seconds, 2),
        "ratio_wall_to_flop_bound": round(wall / flop_seconds, 2),
        "mean_macs_per_image": int(statistics.fmean(r["macs"] for r in rows)),
    }
    out = Path(args.out)
    stem = f"zoo_{metadata['space']['name']}"
    write_json(out / f"{stem}.json", results)
    atomic_write_text(out / f"{stem}.md", to_markdown(results, args))
    print(to_markdown(results, args))


def to_markdown(r: dict, args) -> str:
    b, bd = r["build"], r["bounds"]
    lines = [f"# Model-zoo benchmark: {r['space']['name']} ({r['space'].get('args', {}).get('preset', 'cpu')} preset) "
             f"on {r['dataset']} {'x'.join(map(str, r['image_size']))}", "",
             f"Command: `python benchmarks/zoo_cpu.py --run {args.run} --samples {args.samples}` (supernet from "
             "`mednns run examples/configs/supernet.yaml`)  ",
             f"torch {r['torch']}, {r['threads']} threads, {r['machine']}; protocol: "
             f"{r['protocol']['calibration_images']} calibration images, "
             f"val capped at {r['protocol']['max_val_images']}, "
             f"full test split = {r['images_per_subnet']:,} images per subnet", "",
             "| what | value |", "|---|---|",
             f"| subnets evaluated (distinct, incl. largest and smallest) | {b['subnets']:,} |",
             f"| build wall time | {b['wall_seconds'] / 60:.2f} min |",
             f"| subnets per second | {b['subnets_per_second']:.2f} |",
             f"| minutes per 1,000 subnets | {b['minutes_per_1000']:.2f} |",
             f"| the paper's 720K model-dataset pairs at this rate | {b['paper_720k_hours']:,} h on 2 cores |",
             f"| bound (a): same images through the extracted networks alone, per subnet ({bd['subset']} subnets) | "
             f"{bd['extracted_alone_seconds_per_subnet'] * 1000:.0f} ms |",
             f"| measured per subnet, same subnets (extract + calibrate + infer + metrics) | "
             f"{bd['measured_seconds_per_subnet_same_subset'] * 1000:.0f} ms |",
             f"| ratio to bound (a): same subnets / whole build wall time | {bd['ratio_to_extracted_alone']:.2f}x / "
             f"{bd['ratio_wall_to_extracted_alone']:.2f}x |",
             f"| peak measured convolution throughput | {bd['peak_conv']['gmacs_per_second']} GMAC/s "
             f"(shape {bd['peak_conv']['shape']}) |",
             f"| bound (b): FLOP bound of the whole build | {bd['flop_bound_seconds']:.1f} s |",
             f"| ratio to bound (b) | {bd['ratio_wall_to_flop_bound']:.1f}x |"]
    if "tuning" in r:
        lines += ["", "Tuning (seconds per subnet, same random subnets; the defaults are channels-last, batch 256, "
                      "2 threads):", "", "| threads | channels-last | batch | s/subnet |", "|---|---|---|---|"]
        lines += [f"| {t['threads']} | {t['channels_last']} | {t['batch_size']} | {t['seconds_per_subnet']:.3f} |"
                  for t in r["tuning"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
