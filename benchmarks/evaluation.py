"""Publish a leave-one-dataset-out evaluation: run ``mednns evaluate CONFIG`` and copy its results
and report into ``benchmarks/results/<run name>/``.

Written there: ``results.json.gz`` (every run's per-epoch history, compact and gzip-compressed: it is
read by programs, ``mednns report FOLDER`` and ``mednns.files.read_json`` among them, and plain it was
five times the size), ``report.md`` (the tables), the PNG figures,
``table.md`` (the tables of docs/results.md) and ``run.json`` (the command, wall time per stage, machine facts).
``report.html``, the same report with every figure inlined, is not published (it repeated the PNG
files beside it, 8-10 MB per evaluation); it stays in the run's ``stages/evaluate/report/``, and
``mednns report RUN_DIR`` writes it again. Nor are the per-dataset figures (convergence, compute and
meta-space t-SNE, about 5 MB per evaluation: the repository must stay small enough to travel to a
device machine); ``report.md`` says how to render them. A rerun of the same command resumes an
interrupted evaluation.

    MEDMNIST_ROOT=../shared/data/medmnist python benchmarks/evaluation.py benchmarks/evaluation_cpu.yaml
    python benchmarks/evaluation.py --trim benchmarks/results/NAME   # trim a folder published before
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from mednns.config import load_config
from mednns.evaluation.report import load_results, render_report
from mednns.files import atomic_write_text, read_json, write_json, write_json_gz
from mednns.manager import get_plugin_manager
from mednns.runner import execute
from mednns.runs import environment_facts, prepare_run


def compact_table(results: dict) -> str:
    """The tables of docs/results.md: (1) datasets x methods, mean ± std final test ACC of the primary condition
    beside each dataset's majority-class rate; (2) mednns (top-1) against every other method under
    every condition: mean gain, 95% interval, Wilcoxon p, wins; (3) target-side compute per method."""
    from mednns.evaluation.report import (
        as_view,
        compute_table,
        condition_label,
        conditions,
        fmt_gain_stats,
        label,
        method_order,
        metric_at,
    )
    from mednns.evaluation.results import condition_view, separates

    view = as_view(results)
    k = results["protocol"]["epochs"]
    methods = [m for m in method_order(view)
               if any(d["methods"].get(m, {}).get("status") == "ok" for d in view["datasets"].values())]
    labels = [label(view, m) for m in methods]
    lines = [f"| dataset ({condition_label(view['condition'], k)}: test ACC) | majority | " + " | ".join(labels) + " |",
             "| --- | ---: |" + " ---: |" * len(methods)]
    for name, entry in view["datasets"].items():
        finals = {m: dict(zip(("mean", "std"), metric_at(entry["methods"][m], "test_acc", k))) for m in methods
                  if entry["methods"].get(m, {}).get("status") == "ok"}
        best = max(v["mean"] for v in finals.values())
        cells = [MISSING if m not in finals else
                 (lambda text: f"**{text}**" if finals[m]["mean"] == best else text)(
                     f"{finals[m]['mean']:.3f} ± {finals[m]['std']:.3f}") for m in methods]
        majority = entry["info"].get("majority_rate")
        flag = "" if separates(entry["methods"], majority) is not False else " (no method above it)"
        lines.append(f"| {name} | {MISSING if majority is None else f'{majority:.3f}'}{flag} | "
                     + " | ".join(cells) + " |")
    lines.append("| **mean** | | " + " | ".join(f"{view['overall']['mean_test_acc'][m]:.3f}" for m in methods) + " |")

    chosen = conditions(results)
    lines += ["", "| mednns (top-1) vs | " + " | ".join(f"{condition_label(c, k)}: gain [95% CI], p, wins"
                                                      for c in chosen) + " |",
              "| --- |" + " --- |" * len(chosen)]
    for other in [m for m in methods if m != "mednns"]:
        cells = []
        for condition in chosen:
            stats = ((condition_view(results, condition["id"])["statistics"].get("mednns") or {}).get(other)
                     or {}).get("test_acc")
            cells.append(fmt_gain_stats(stats))
        lines.append(f"| {label(view, other)} | " + " | ".join(cells) + " |")
    lines += ["", compute_table(results).to_markdown()]
    return "\n".join(lines) + "\n"


MISSING = "—"
TRIM_NOTE = "*Published copy: the per-dataset figures"
REPOSITORY = Path(__file__).resolve().parents[1]


def compress(out: Path) -> int:
    """Replace a published folder's plain ``results.json`` by ``results.json.gz`` (idempotent).
    Returns the bytes freed."""
    plain = out / "results.json"
    if not plain.is_file():
        return 0
    before = plain.stat().st_size
    packed = write_json_gz(out / "results.json.gz", read_json(plain))
    plain.unlink()
    return before - packed.stat().st_size


def trim(out: Path, run_name: str, root: Path = REPOSITORY) -> int:
    """Leave the per-dataset figures out of a published folder: delete them, drop their lines from
    ``report.md`` and say there how to render them, naming ``out`` relative to the repository
    ``root`` when it is inside it; compress its results (idempotent). Returns the bytes freed."""
    from mednns.evaluation.report import compute_curves_name, convergence_name, embeddings_name

    freed = compress(out)
    figures = {name(dataset) for dataset in load_results(out)["datasets"]
               for name in (convergence_name, compute_curves_name, embeddings_name)}
    for path in out.iterdir():
        if path.name in figures:
            freed += path.stat().st_size
            path.unlink()
    report = out / "report.md"
    title, *rest = report.read_text().splitlines()
    kept: list[str] = []
    for line in rest:
        if not (any(f"]({name})" in line for name in figures) or line.startswith(TRIM_NOTE)
                or line == "" and (not kept or kept[-1] == "")):
            kept.append(line)  # the figures' lines, the note and the blank lines they leave doubled go
    try:
        shown = out.resolve().relative_to(root.resolve())
    except ValueError:
        shown = out
    note = (f"{TRIM_NOTE} (convergence, compute, meta-space t-SNE) are left out to keep the repository "
            f"small; `mednns report {shown.as_posix()} --out DIR` renders the convergence and "
            f"compute ones from this folder, `mednns report runs/{run_name}` all of them from the run.*")
    atomic_write_text(report, "\n".join([title, "", note, "", *kept]) + "\n")
    return freed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", nargs="?", help="a config whose last stage is evaluate")
    parser.add_argument("--out", help="results folder [default: benchmarks/results/<run name>]")
    parser.add_argument("--device", help="auto, cpu, cuda")
    parser.add_argument("--trim", nargs="+", metavar="FOLDER", type=Path,
                        help="only leave the per-dataset figures out of folders published before "
                             "(and compress their results.json)")
    args = parser.parse_args()
    if args.trim:
        for folder in args.trim:
            name = read_json(folder / "run.json")["config"]["name"]
            print(f"{folder}: {trim(folder, name) / 2**20:.1f} MiB freed")
        return
    if args.config is None:
        parser.error("a config is needed (or --trim FOLDER)")

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
    write_json_gz(out / "results.json.gz", read_json(stage / "results.json"))
    page = render_report(stage / "results.json", out)  # from the stage: the embedding figures need its npz files
    page.unlink()  # report.html: the figures beside it again, inlined (see the module's docstring)
    trim(out, str(config.name))
    published = load_results(out)
    (out / "table.md").write_text(compact_table(published))
    command = " ".join(["python", *sys.argv])
    write_json(out / "run.json", {
        "command": command, "config": config.to_dict(), "wall_seconds_this_invocation": round(wall, 1),
        "stages": {name: {"status": r["status"], "seconds": r["seconds"]} for name, r in results["stages"].items()},
        "environment": environment_facts(run.device), "run_directory": str(run.directory)})
    from mednns.evaluation.results import condition_view

    summary = condition_view(published)["overall"]
    print(f"published {out} (mednns mean test ACC {summary['mean_test_acc'].get('mednns', float('nan')):.4f})")


if __name__ == "__main__":
    main()
