"""Meta-space speed benchmark (issue: meta-space), CPU.

Targets: scoring a 100,000-model zoo for one dataset in under 1 s (the dataset's feature extraction
not counted), and meta-space training on a 10,000-row zoo in under 2 minutes.

A zoo that large cannot be evaluated here for a benchmark run, so the rows are *synthetic in their
numbers only*: real architectures of the ``cpu``-preset OFA-ResNet space (real encodings, params and
MACs), with a measured-looking target (a fixed random function of the encoding plus noise) and
random image features per dataset. What is timed is the real code: :class:`MetaSpaceFitter` with the
default :class:`FitConfig` and the ``arch`` model encoder, and the query's vectorized scoring,
filtering and ranking over every row (:func:`mednns.metaspace.retrieval.rank_key` and the network's
``pair``), after the meta-space is loaded.

    python benchmarks/metaspace_cpu.py
"""

from __future__ import annotations

import argparse
import platform
import random
import time
from pathlib import Path

import numpy as np
import torch

import mednns
from mednns.files import atomic_write_text, write_json
from mednns.metaspace.contracts import ModelTable
from mednns.metaspace.fit import MetaSpaceFitter
from mednns.metaspace.model import MetaSpace
from mednns.metaspace.retrieval import rank_key
from mednns.metaspace.settings import FitConfig


def synthetic_table(rows: int, datasets: int, seed: int = 0) -> ModelTable:
    space = mednns.create("search-spaces", "ofa_resnet", in_channels=1, num_classes=2, preset="cpu")
    rng, gen = random.Random(seed), np.random.default_rng(seed)
    per = rows // datasets
    unique: dict[str, tuple] = {}
    while len(unique) < min(per, space.count()):
        arch = space.canonical(space.sample(rng))
        digest = space.arch_hash(arch)
        if digest not in unique:
            cost = space.cost(arch, 28)
            unique[digest] = (space.arch_to_json(arch), space.encode(arch).numpy(), cost["params"], cost["macs"])
    archs = list(unique.values())
    weights = gen.normal(size=len(archs[0][1]))
    enc, names, arch_json, params, macs, target = [], [], [], [], [], []
    for d in range(datasets):
        shift = gen.normal(scale=0.5, size=len(weights))
        for a in archs[:per]:
            enc.append(a[1])
            names.append(f"d{d}")
            arch_json.append(a[0])
            params.append(a[2])
            macs.append(a[3])
            target.append(0.8 + 0.05 * np.tanh(a[1] @ (weights + shift) / 4) + gen.normal(scale=0.01))
    n = len(enc)
    return ModelTable(ids=np.arange(1, n + 1), dataset=names, space=["ofa_resnet"] * n, encoding=enc,
                      params=np.array(params, float), macs=np.array(macs, float),
                      target=np.clip(np.array(target, np.float32), 0, 1), arch=arch_json)


def build(table: ModelTable, feature_dim: int, seed: int) -> tuple[MetaSpace, dict[str, np.ndarray]]:
    gen = np.random.default_rng(seed)
    features = {d: gen.normal(loc=i * 0.1, size=(1000, feature_dim)).astype(np.float32)
                for i, d in enumerate(table.datasets)}
    encoder = mednns.create("model-encoders", "arch")
    encoder.setup(table, {"device": "cpu", "seed": seed, "progress": False})
    torch.manual_seed(seed)
    return MetaSpace(feature_dim, encoder), features


def store_load_seconds(table: ModelTable) -> float:
    """Seconds to read ``table`` back from a zoo store (what ``mednns query`` pays once per call)."""
    import tempfile

    from mednns.metaspace.table import load_table
    from mednns.zoo.store import ModelRow, ZooStore

    with tempfile.TemporaryDirectory() as tmp, ZooStore(Path(tmp) / "zoo.sqlite") as store:
        ids = {d: store.add_supernet(weights_sha256=d * 8, space="ofa_resnet", dataset=d, path=f"/{d}/x.safetensors",
                                     metadata={}) for d in table.datasets}
        protocol = store.add_protocol({"synthetic": True})
        rows = [ModelRow(ids[table.dataset[i]], protocol, table.dataset[i], "ofa_resnet", f"{i:016x}", table.arch[i],
                         table.encoding[i], int(table.params[i]), int(table.macs[i]), "sample",
                         {"val": {"acc": float(table.target[i]), "n": 1}}, 0.0) for i in range(len(table))]
        for start in range(0, len(rows), 10_000):
            store.add_models(rows[start:start + 10_000])
        begin = time.perf_counter()
        load_table(store, "val_acc")
        return time.perf_counter() - begin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fit-rows", type=int, default=10_000)
    parser.add_argument("--query-rows", type=int, default=100_000)
    parser.add_argument("--datasets", type=int, default=10)
    parser.add_argument("--fit-feature-dims", type=int, nargs="+", default=[80, 2048],
                        help="image feature sizes to train with (80: image_stats, the default; 2048: timm resnet50)")
    parser.add_argument("--feature-dim", type=int, default=2048, help="image feature size of the query")
    parser.add_argument("--out", default="benchmarks/results")
    args = parser.parse_args()
    torch.set_num_threads(2)
    results: dict = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine()}

    table = synthetic_table(args.fit_rows, args.datasets)
    config = FitConfig()
    results["fit"] = []
    for feature_dim in args.fit_feature_dims:
        model, features = build(table, feature_dim, 0)
        terms = [(1.0, mednns.create("losses", "performance")), (1.0, mednns.create("losses", "rank"))]
        fitter = MetaSpaceFitter(model, table, features, table.datasets[:-1], table.datasets[-1:], None, terms,
                                 config, progress=False)
        start = time.perf_counter()
        fit = fitter.fit()
        seconds = time.perf_counter() - start
        results["fit"].append({"rows": len(table), "datasets": args.datasets, "feature_dim": feature_dim,
                               "steps_run": fit["steps_run"], "max_steps": config.steps, "seconds": round(seconds, 2),
                               "ms_per_step": round(1000 * seconds / max(fit["steps_run"], 1), 1)})
        print(results["fit"][-1], flush=True)

    big = synthetic_table(args.query_rows, args.datasets, seed=1)
    model, features = build(big, args.feature_dim, 1)
    model.eval()
    with torch.no_grad():
        embeddings = torch.cat([model.embed_models(torch.arange(s, min(s + 8192, len(big))))
                                for s in range(0, len(big), 8192)])
    query_features = torch.as_tensor(features[big.datasets[0]])
    times = []
    for _ in range(5):
        start = time.perf_counter()
        with torch.no_grad():
            d = model.embed_datasets([query_features])
            predicted, score = model.pair(d, embeddings.unsqueeze(0))
        predicted, score = predicted[0].numpy(), score[0].numpy()
        keep = (big.params <= np.median(big.params)) & (big.macs <= np.quantile(big.macs, 0.9))
        key = rank_key(predicted, score, "combined")
        order = [int(i) for i in np.argsort(-key, kind="stable") if keep[i]][:10]
        times.append(time.perf_counter() - start)
    results["query"] = {"rows": len(big), "median_seconds": round(float(np.median(times)), 4),
                        "max_seconds": round(max(times), 4), "top": len(order),
                        "load_table_seconds": round(store_load_seconds(big), 3)}
    print(results["query"], flush=True)

    out = Path(args.out)
    write_json(out / "metaspace_speed.json", results)
    md = ["# Meta-space speed (CPU)", "", "Command: `python benchmarks/metaspace_cpu.py`  ",
          f"torch {results['torch']}, {results['threads']} threads, {results['machine']}; synthetic numbers on real "
          "OFA-ResNet architectures (see the script's docstring)", "", "| what | value | target |", "|---|---|---|",
          *[f"| meta-space training, {f['rows']:,} rows x {args.datasets} datasets, "
            f"{f['feature_dim']}-d image features, "
            f"default config ({f['steps_run']} of {config.steps} steps, early stopping; {f['ms_per_step']} ms/step) | "
            f"{f['seconds']:.1f} s | < 120 s |" for f in results["fit"]],
          f"| query: score, filter and rank {results['query']['rows']:,} models (median of 5) | "
          f"{results['query']['median_seconds'] * 1000:.0f} ms | < 1 s |",
          f"| reading those {results['query']['rows']:,} rows from the SQLite zoo (once per `mednns query` call; "
          f"once per process from Python) | {results['query']['load_table_seconds']:.2f} s | |"]
    atomic_write_text(out / "metaspace_speed.md", "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
