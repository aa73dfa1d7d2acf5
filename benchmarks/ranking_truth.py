"""How well can a ranking of transfer candidates do at the protocol's budget, and what comes close?

Reads a kept evaluation run whose ranking sample was fine-tuned with several seeds (the evaluation's
``ranking.seeds``) and trains nothing: every number comes from the candidates' saved runs. Per target
and ranking condition it measures

* whether the candidates differ by more than fine-tuning's noise (``ranking.separation``);
* every ranking against the same leave-one-seed-out truth: for each seed, the mean final test ACC of
  the *other* seeds, Kendall's tau and the top-1 gain over the sample's mean, averaged over the seeds;
  the evaluation's own rankings (meta-space orders, transfer scores, source validation ACC), the
  subnet's MACs (a naive reference: does size decide?), and **partial fine-tuning**: a seed's
  validation ACC after epoch k of the protocol's schedule, which a user who fine-tuned every
  candidate for k epochs and kept the best by validation would rank by (k/epochs of a fine-tuning per
  candidate; at the last epoch it is "fine-tuned once" judged on validation, as a user would, instead
  of on test).

    MEDMNIST_ROOT=../shared/data/medmnist python benchmarks/ranking_truth.py runs/evaluation_cpu

Writes ``<run name>.json`` and ``.md`` into ``--out`` (default benchmarks/results/ranking_truth);
about a minute (the datasets are loaded to rebuild each run's file name).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from mednns.config import load_config
from mednns.evaluation import ranking
from mednns.evaluation.candidates import SupernetCache
from mednns.evaluation.leave_one_out import Fold, zoo_fingerprint
from mednns.files import atomic_write_text, read_json, write_json
from mednns.layout import zoo_store
from mednns.manager import get_plugin_manager
from mednns.runs import prepare_run

#: the evaluation's rankings judged here (the others are combinations or variants of these)
STORED = ("meta-space", "ridge", "knn", "logme", ranking.SOURCE)


def leave_one_seed_out(values: np.ndarray, final: np.ndarray) -> dict[str, float]:
    """Tau and top-1 gain of ``values`` (candidate x seed) against the other seeds' mean of ``final``."""
    facts = ranking.against_other_seeds(values, final)
    return {"kendall": facts["kendall"], "top1_gain": facts["top1_gain"]}


def history_value(record: dict[str, Any], epoch: int, key: str) -> float:
    row = next((r for r in record["history"] if r["epoch"] == epoch), None)
    if row is None or row.get(key) is None:
        raise SystemExit(f"a saved run has no {key} after epoch {epoch}: was it fine-tuned with every epoch evaluated?")
    return float(row[key])


def measure(fold: Fold, condition: Any, entry: dict[str, Any], seeds: list[int], macs: dict[int, int]
            ) -> dict[str, Any]:
    """One target under one condition (``entry``: its ranking measurement in the results)."""
    sample = ranking.draw_sample(fold.transfer_rows("val_acc"), len(entry["candidates"]), fold.target,
                                 entry.get("draw", 0))
    if [r["id"] for r in sample] != [c["zoo_id"] for c in entry["candidates"]]:
        raise SystemExit(f"{fold.target}: the redrawn sample is not the measured one (another zoo?)")
    records = []
    for row in sample:
        candidate = fold.from_row(row, "")
        paths = [fold.run_path(candidate, s, condition)[0] for s in seeds]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise SystemExit(f"{fold.target}: no saved run {missing[0]} (run the evaluation with these seeds first)")
        records.append([read_json(p) for p in paths])
    epochs = fold.settings.finetune["epochs"]
    final = np.array([[history_value(r, epochs, "test_acc") for r in rs] for rs in records])
    measured = [c.get("test_accs", [c["test_acc"]])[: len(seeds)] for c in entry["candidates"]]  # --seeds: a prefix
    if not np.allclose(final, measured):
        raise SystemExit(f"{fold.target}: the saved runs disagree with the results' truth")
    rankings: dict[str, dict[str, float]] = {}
    for name in STORED:
        values = np.array([[c["values"][name]] * len(seeds) for c in entry["candidates"]])
        rankings[name] = leave_one_seed_out(values, final)
    rankings["MACs"] = leave_one_seed_out(np.array([[macs[r["id"]]] * len(seeds) for r in sample]), final)
    for k in range(1, epochs + 1):
        values = np.array([[history_value(r, k, "val_acc") for r in rs] for rs in records])
        rankings[f"val ACC after epoch {k}"] = leave_one_seed_out(values, final)
    rankings[ranking.ONCE] = leave_one_seed_out(final, final)
    # from the seeds read here (with --seeds, fewer than the results' truth has)
    separation = ranking.separation({"candidates": [{"test_accs": accs, "test_acc": float(np.mean(accs))}
                                                    for accs in final.tolist()]})
    return {"separation": separation, "rankings": rankings}


def summary(per_target: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    names = list(next(iter(per_target.values()))["rankings"])
    out = {}
    for name in names:
        taus = [t["rankings"][name]["kendall"] for t in per_target.values()]
        defined = [t for t in taus if not np.isnan(t)]
        out[name] = {"mean_kendall": float(np.mean(defined)), "min_kendall": min(defined),
                     "max_kendall": max(defined),
                     "top1_gain": float(np.mean([t["rankings"][name]["top1_gain"] for t in per_target.values()]))}
    return out


def markdown(record: dict[str, Any], command: str) -> str:
    lines = [f"# Ranking sample against a {record['seeds']}-seed truth: {record['run']}", "", f"`{command}`", "",
             "Every ranking against the same truth: per seed, the other seeds' mean final test ACC (tau and "
             "the top-1 gain over the sample's mean, averaged over the seeds). Cost: what the ranking spends "
             "per candidate, in fine-tunings of the protocol's budget.", ""]
    epochs = record["epochs"]
    for condition, measured in record["conditions"].items():
        lines += [f"## {condition}", "", "| ranking | cost per candidate | mean tau | range | top-1 gain |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for name, facts in measured["summary"].items():
            cost = (f"{int(name.rsplit(' ', 1)[1])}/{epochs}" if name.startswith("val ACC after") else
                    "1 (test ACC)" if name == ranking.ONCE else "forward passes" if name in ("ridge", "knn", "logme")
                    else "none")
            lines.append(f"| {name} | {cost} | {facts['mean_kendall']:+.2f} | {facts['min_kendall']:+.2f} to "
                         f"{facts['max_kendall']:+.2f} | {facts['top1_gain']:+.3f} |")
        shown = ("meta-space", "ridge", ranking.SOURCE, "val ACC after epoch 1", f"val ACC after epoch {epochs}")
        lines += ["", "| target | spread | noise | reliability of the truth | of one fine-tuning | "
                  + " | ".join(f"tau: {n}" for n in shown) + " |", "| --- |" + " ---: |" * (4 + len(shown))]
        for target, facts in measured["targets"].items():
            s, r = facts["separation"], facts["rankings"]
            taus = " | ".join(f"{r[n]['kendall']:+.2f}" for n in shown)
            lines.append(f"| {target} | {s['spread']:.3f} | {s['noise']:.3f} | {s['reliability']:.2f} | "
                         f"{s['reliability_once']:.2f} | {taus} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a kept evaluation run directory (its evaluate stage done)")
    parser.add_argument("--results", type=Path, help="its results.json [default: the run's evaluate stage]")
    parser.add_argument("--seeds", type=int, help="the sample's first seeds only [default: ranking.seeds]")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "ranking_truth")
    args = parser.parse_args()

    manager = get_plugin_manager()
    config = load_config(manager, args.run / "config.yaml")
    evaluate = next(s for s in config.stages if s["name"] == "evaluate")
    settings = manager.create("stages", "evaluate", **evaluate["args"]).settings
    config.stages = []
    run = prepare_run(manager, config, directory=args.run, console=Console(quiet=True))
    directory = args.run / "stages" / "evaluate"
    results = read_json(args.results or directory / "results.json")
    zoo_path = Path(settings.zoo) if settings.zoo else zoo_store(args.run)
    supernets, zoo_key = SupernetCache(manager), zoo_fingerprint(zoo_path)
    chosen = settings.ranking_settings()
    record: dict[str, Any] = {"run": args.run.name, "epochs": settings.finetune["epochs"], "conditions": {}}
    for position, condition in enumerate(settings.ranking_conditions()):
        seeds = ranking.sample_seeds(condition.seeds, args.seeds or chosen.seeds)
        record["seeds"] = len(seeds)
        targets = {}
        for target, entry in results["datasets"].items():
            measured = entry["ranking"] if position == 0 else entry["ranking_at"][condition.id]
            fold = Fold(run, settings, target, directory / target, zoo_path, supernets, {}, zoo_key)
            macs = {r["id"]: r["macs"] for r in fold.transfer_rows("macs")}
            targets[target] = measure(fold, condition, measured, seeds, macs)
            print(condition.id, target, {k: round(v["kendall"], 2) for k, v in targets[target]["rankings"].items()},
                  flush=True)
        record["conditions"][condition.id] = {"seeds": seeds, "targets": targets, "summary": summary(targets)}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"{args.run.name}.json", record)
    command = f"python benchmarks/ranking_truth.py {args.run}"
    atomic_write_text(args.out / f"{args.run.name}.md", markdown(record, command))
    print(f"wrote {args.out / args.run.name}.md")


if __name__ == "__main__":
    main()
