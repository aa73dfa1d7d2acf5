"""Built-in stage ``build_zoo`` and the ``mednns zoo`` commands (build, stats, export, merge).

The stage evaluates subnets of every supernet a ``train_supernet`` stage left in the run (or in
``supernets``) into one SQLite store, by default ``stages/build_zoo/zoo.sqlite`` (a sharded build
writes ``zoo.shard-<i>-of-<n>.sqlite``; ``mednns zoo merge`` combines them). Stopping at any moment
loses at most ``commit_every`` rows; running again resumes (:mod:`mednns.zoo`).

The work is split into parts (:mod:`mednns.zoo.parallel`) across the ranks of a torchrun job, or
across local worker processes (``workers``, by default as many as pay on this machine's cores);
the parts are merged in plan order, so the store equals a single-process build.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import mednns
from mednns.errors import MednnsError, UsageError
from mednns.layout import ZOO_STAGE, ZOO_STORE, supernet_root, zoo_store
from mednns.stages import Stage
from mednns.training import SUPERNET_METADATA
from mednns.zoo import BuildSettings, Shard, ZooProtocol

STAGE, STORE = ZOO_STAGE, ZOO_STORE
_S, _P = BuildSettings(), ZooProtocol()  # defaults: one source of truth


def store_name(shard: Shard) -> str:
    """The default store file of a shard (``zoo.sqlite`` for an unsharded build)."""
    return STORE if shard.whole else f"zoo.shard-{shard.index}-of-{shard.count}.sqlite"


class BuildZoo(Stage):
    """Per trained supernet: evaluate sampled subnets (BN recalibrated) on the val and test splits.

    :param supernets: folder with one trained supernet folder per dataset (default: this run's
        ``stages/train_supernet``).
    :param datasets: only these datasets of the run (default: every dataset with a supernet folder).
    :param store: the SQLite file (default: ``stages/build_zoo/zoo.sqlite``, or one file per shard).
    :param samples: distinct random architectures per supernet.
    :param anchors: extra architectures shared by every dataset of a space.
    :param extremes: also evaluate the largest and smallest subnet.
    :param shard: ``i/n``: evaluate only part ``i`` of ``n`` disjoint parts of the plan.
    :param calibration_images: training images for BN recalibration.
    :param calibration_batch_size: their batch size.
    :param max_val_images: cap on validation images (null: all).
    :param max_test_images: cap on test images (null: all).
    :param batch_size: inference batch size.
    :param channels_last: channels-last memory format.
    :param commit_every: rows per transaction (a kill loses at most these).
    :param workers: local worker processes (``auto``: one per 64 subnets still to evaluate, at most
        one per core; 1 on a GPU). Under torchrun the ranks split the work instead.
    :param progress: show a progress bar.
    """

    name = STAGE
    keeps_state = True  # rows are keyed by supernet weights and protocol: a new 'samples' adds to them
    expensive = True
    reads = ("train_supernet",)
    distributed = True  # under torchrun: each rank evaluates a part, rank 0 merges
    fingerprint_omits = {"workers": "auto"}  # how many processes never changes a row

    def __init__(self, supernets: str | None = None, datasets: list[str] | None = None, store: str | None = None,
                 samples: int = _S.samples, anchors: int = _S.anchors, extremes: bool = _S.extremes,
                 shard: str | None = None, calibration_images: int = _P.calibration_images,
                 calibration_batch_size: int = _P.calibration_batch_size,
                 max_val_images: int | None = _P.max_val_images, max_test_images: int | None = _P.max_test_images,
                 batch_size: int = _S.batch_size, channels_last: bool = _S.channels_last,
                 commit_every: int = _S.commit_every, workers: int | Literal["auto"] = "auto",
                 progress: bool = _S.progress):
        if samples < 0 or anchors < 0:
            raise UsageError("samples and anchors must be >= 0")
        if workers != "auto" and workers < 1:
            raise UsageError(f"workers must be >= 1 or auto, got {workers}")
        self.workers = workers
        self.supernets = supernets
        self.only = datasets
        self.store = store
        self.shard = Shard.parse(shard)
        self.protocol_args: dict[str, Any] = dict(calibration_images=calibration_images,
                                                  calibration_batch_size=calibration_batch_size,
                                                  max_val_images=max_val_images, max_test_images=max_test_images)
        ZooProtocol(**self.protocol_args)  # validate now, before any work
        self.settings_args: dict[str, Any] = dict(samples=samples, anchors=anchors, extremes=extremes,
                                                  shard=self.shard, batch_size=batch_size,
                                                  channels_last=channels_last, commit_every=commit_every,
                                                  progress=progress)
        BuildSettings(**self.settings_args)

    # -- paths -------------------------------------------------------------------------
    def store_path(self, run) -> Path:
        return Path(self.store) if self.store else run.stage_dir(self.name) / store_name(self.shard)

    def supernet_root(self, run) -> Path:
        return Path(self.supernets) if self.supernets else supernet_root(run.directory)

    def summary_path(self, run) -> Path:
        suffix = "" if self.shard.whole else f".shard-{self.shard.index}-of-{self.shard.count}"
        return run.stage_dir(self.name) / f"summary{suffix}.json"

    def outputs(self, run) -> list[Path]:
        return [self.store_path(run), self.summary_path(run)]

    def damaged_outputs(self, run) -> list[str]:
        """A store that fails SQLite's integrity check, or holds no rows (left by a failed build)."""
        import sqlite3

        from mednns.zoo import ZooStore

        path = self.store_path(run)
        try:
            with ZooStore(path, readonly=True) as store:
                verdict = store.db.execute("PRAGMA quick_check").fetchone()[0]
                if verdict != "ok":
                    return [f"{path}: integrity check failed ({verdict})"]
                if store.count() == 0:
                    return [f"{path}: holds no rows"]
        except (sqlite3.DatabaseError, MednnsError) as exc:
            return [f"{path}: {exc}"]
        return []

    def targets(self, run) -> list[tuple[str, Path]]:
        """(dataset name, supernet folder) pairs to evaluate, in the run's dataset order."""
        root = self.supernet_root(run)
        names = (self.only if self.only is not None
                 else [n for n in run.datasets if (root / n / SUPERNET_METADATA).is_file()])
        if not names:
            raise UsageError(f"build_zoo: no trained supernet of the run's datasets under {root}",
                             hint="run a train_supernet stage first, or set 'supernets' to its folder")
        missing = [n for n in names if not (root / n / SUPERNET_METADATA).is_file()]
        if missing:
            raise UsageError(f"build_zoo: no trained supernet for {', '.join(missing)} under {root}",
                             hint="train it first (train_supernet stage) or drop it from 'datasets'")
        return [(n, root / n) for n in names]

    # -- work --------------------------------------------------------------------------
    def run(self, run) -> dict[str, Any]:
        from mednns.files import write_json
        from mednns.locks import held
        from mednns.zoo import ZooStore

        settings = BuildSettings(**self.settings_args, seed=run.seed)
        protocol = ZooProtocol(**self.protocol_args, seed=run.seed)
        path = self.store_path(run)
        job = run.distributed
        if job.active:
            results = self._run_parts(run, self.targets(run), settings, protocol, path)
        else:
            with held(path.with_name(path.name + ".lock"), f"the zoo store {path}"):  # one builder per store
                results = self._run_here(run, self.targets(run), settings, protocol, path)
        if job.is_main:
            with ZooStore(path, readonly=True) as store:
                results = {"store": str(path), "shard": str(self.shard), "rows": store.count(), **results}
            write_json(self.summary_path(run), results)
        return results

    def _run_here(self, run, targets: list[tuple[str, Path]], settings: BuildSettings, protocol: ZooProtocol,
                  path: Path) -> dict[str, Any]:
        """In this process, or in local worker processes when they pay."""
        from mednns.zoo import build_with_workers, choose_workers

        if self.shard.whole or self.workers != "auto":
            workers, why = choose_workers(self.workers, todo=self._todo_estimate(targets, path), device=run.device,
                                          manager=run.manager)
        else:
            workers, why = 1, "auto: 'shard' already splits the plan"
        run.logger.info("build_zoo: %d process(es) (%s)", workers, why)
        if workers > 1 and not self.shard.whole:
            raise UsageError("build_zoo: 'shard' and 'workers' both split the plan", hint="set workers: 1 or auto")
        return build_with_workers(workers, list(run.config.datasets), targets, run.datasets, path, settings, protocol,
                                  device=run.device, manager=run.manager, console=run.console)

    def _run_parts(self, run, targets: list[tuple[str, Path]], settings: BuildSettings, protocol: ZooProtocol,
                   path: Path) -> dict[str, Any]:
        """Under torchrun: this rank's part; rank 0 merges them when every rank is done."""
        from mednns.zoo import build_as_rank

        if not self.shard.whole:
            raise UsageError("build_zoo: 'shard' and torchrun both split the plan", hint="drop 'shard'")
        return build_as_rank(run.distributed, targets, run.datasets, path, settings, protocol, device=run.device,
                             manager=run.manager, console=run.console)

    def _todo_estimate(self, targets: list[tuple[str, Path]], path: Path) -> int:
        """Subnets still to evaluate, from the plan sizes and the rows stored (no supernet loaded)."""
        from mednns.zoo import ZooStore

        args = self.settings_args
        per_supernet = args["samples"] + args["anchors"] + 2 * args["extremes"]
        if not path.is_file():
            return per_supernet * len(targets)
        with ZooStore(path, readonly=True) as store:
            return sum(max(0, per_supernet - store.count(dataset=name)) for name, _ in targets)


@mednns.hookimpl
def register_stages(register):
    register(STAGE, BuildZoo, description="Per trained supernet: evaluate sampled subnets into a SQLite model zoo "
                                          "(resumable, shardable)")


# -- commands ----------------------------------------------------------------------------
def resolve_store(path: str) -> Path:
    """A store file, or a run directory holding ``stages/build_zoo/zoo.sqlite``."""
    candidate = Path(path)
    if candidate.is_dir():
        candidate = zoo_store(candidate)
    if not candidate.is_file():
        raise UsageError(f"no zoo store at {candidate}", hint="give a .sqlite file or a run directory with a built zoo")
    return candidate


def _fmt(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def stats_table(stats: list[dict[str, Any]], title: str) -> Table:
    table = Table(title=title)
    for column in ("dataset", "space", "models", "val acc median [min, max]", "test acc median [min, max]",
                   "test auc median", "largest val acc / majority", "params", "MACs", "s/model"):
        table.add_column(column, justify="left" if column in ("dataset", "space") else "right")
    weak = []
    for s in stats:
        val, test = s["metrics"]["val_acc"], s["metrics"]["test_acc"]
        table.add_row(escape(s["dataset"]), escape(s["space"]), f"{s['n']:,}",
                      f"{_fmt(val['median'])} [{_fmt(val['min'])}, {_fmt(val['max'])}]",
                      f"{_fmt(test['median'])} [{_fmt(test['min'])}, {_fmt(test['max'])}]",
                      _fmt(s["metrics"]["test_auc"]["median"]), _quality(s.get("source_quality") or []),
                      f"{s['params']['min']:,}-{s['params']['max']:,}", f"{s['macs']['min']:,}-{s['macs']['max']:,}",
                      f"{s['eval_seconds']['mean']:.2f}")
        weak += [q for q in s.get("source_quality") or [] if q["learned"] is False]
    if weak:
        table.caption = ("learned nothing (largest subnet not above the validation majority-class rate; left out of "
                         "the query's candidates with --source-gate): "
                         + ", ".join(escape(f"{q['dataset']}/{q['space']}") for q in weak))
    return table


def _quality(quality: list[dict[str, Any]]) -> str:
    """``0.742 / 0.731`` per supernet, marked when it learned nothing; ``—`` when unknown."""
    cells = []
    for q in quality:
        if q["largest_val_acc"] is None or q["val_majority_rate"] is None:
            cells.append("—")
        else:
            mark = "" if q["learned"] else " ✗"
            cells.append(f"{q['largest_val_acc']:.3f} / {q['val_majority_rate']:.3f}{mark}")
    return ", ".join(cells) or "—"


@mednns.hookimpl
def register_commands(cli):
    @cli.group("zoo")
    def zoo() -> None:
        """Build, inspect, export and merge model zoos (SQLite stores of evaluated subnets)."""

    @zoo.command("build")
    @click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
    @click.option("--samples", type=int, help=f"Random architectures per supernet [default: {_S.samples}].")
    @click.option("--anchors", type=int, help="Architectures shared by all datasets of a space [default: 0].")
    @click.option("--shard", metavar="I/N", help="Evaluate part I of N disjoint parts (0-based).")
    @click.option("--workers", metavar="N|auto", help="Local worker processes [default: auto, one per core when "
                                                      "the work pays for their start].")
    @click.option("--store", type=click.Path(dir_okay=False), help="Store file [default: RUN_DIR/stages/build_zoo/"
                                                                   "zoo.sqlite, or zoo.shard-I-of-N.sqlite].")
    @click.option("--dataset", "datasets", multiple=True, metavar="NAME", help="Only this dataset; repeatable.")
    @click.option("--set", "stage_args", multiple=True, metavar="KEY=VALUE",
                  help="Any build_zoo stage argument (e.g. batch_size=256); repeatable.")
    @click.option("--device", help="auto, cpu, cuda or cuda:N [default: the run's].")
    @click.option("--no-progress", is_flag=True, help="No progress bar.")
    def zoo_build(run_dir: str, samples: int | None, anchors: int | None, shard: str | None, workers: str | None,
                  store: str | None,
                  datasets: tuple[str, ...], stage_args: tuple[str, ...], device: str | None,
                  no_progress: bool) -> None:
        """Evaluate subnets of the supernets a run trained (RUN_DIR/stages/train_supernet) into a store.

        Starts from the build_zoo arguments of the run's config, when it has that stage; the options
        here override them.

        Resumable: run the same command again after a kill. It uses the cores by itself (--workers);
        under torchrun (torchrun --standalone --nproc-per-node N -m mednns zoo build RUN_DIR) the ranks
        split the work and rank 0 merges it. Shards (--shard 0/4 ... 3/4) can also run by hand as
        separate processes or machines; combine their stores with 'mednns zoo merge'.
        """
        from mednns.config import load_config, parse_key_values
        from mednns.manager import get_plugin_manager
        from mednns.runs import prepare_run

        manager = get_plugin_manager()
        config_path = Path(run_dir) / "config.yaml"
        if not config_path.is_file():
            raise UsageError(f"{run_dir} is not a run directory (no config.yaml)")
        config = load_config(manager, config_path)
        # the run's own build_zoo arguments (same protocol, same store), then the options given here
        configured = [spec for spec in config.stages if spec["name"] == STAGE]
        args = dict(configured[0]["args"]) if configured else {}
        args.update(parse_key_values(stage_args, "--set"))
        for key, value in (("samples", samples), ("anchors", anchors), ("shard", shard), ("store", store)):
            if value is not None:
                args[key] = value
        if workers is not None:
            if workers != "auto" and not workers.isdigit():
                raise click.BadParameter(f"{workers!r} is not a number or auto", param_hint="--workers")
            args["workers"] = workers if workers == "auto" else int(workers)
        if datasets:
            args["datasets"] = list(datasets)
        if no_progress:
            args["progress"] = False
        config.stages = []
        if device is not None:
            config.device = device
        console = Console(soft_wrap=False)
        run = prepare_run(manager, config, directory=run_dir, console=console)
        stage = manager.create("stages", STAGE, **args)
        stage.name = STAGE
        results = stage.run(run)
        if not run.distributed.is_main:
            return  # rank 0 merged the parts and reports
        from mednns.zoo import ZooStore, zoo_stats

        with ZooStore(results["store"], readonly=True) as zoo_store:
            console.print(stats_table(zoo_stats(zoo_store), f"zoo {escape(results['store'])}"))

    @zoo.command("stats")
    @click.argument("store")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
    def zoo_stats_command(store: str, as_json: bool) -> None:
        """Per dataset and space: model count, metric distributions, params and MACs ranges.

        STORE is a .sqlite file or a run directory with a built zoo.
        """
        import json

        from mednns.zoo import ZooStore, zoo_stats

        path = resolve_store(store)
        with ZooStore(path, readonly=True) as zoo_store:
            stats = zoo_stats(zoo_store)
        if as_json:
            click.echo(json.dumps(stats, indent=2))
        else:
            Console(soft_wrap=False).print(stats_table(stats, f"zoo {escape(str(path))}"))

    @zoo.command("export")
    @click.argument("store")
    @click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default="csv", show_default=True)
    @click.option("-o", "--output", help="Output file [default: stdout].")
    @click.option("--dataset", help="Only this dataset.")
    @click.option("--space", help="Only this search space.")
    def zoo_export(store: str, fmt: str, output: str | None, dataset: str | None, space: str | None) -> None:
        """Write every row of a store as CSV or JSON lines."""
        from mednns.zoo import ZooStore, export_zoo

        with ZooStore(resolve_store(store), readonly=True) as zoo_store:
            count = export_zoo(zoo_store, fmt, output, dataset=dataset, space=space)
        if output:
            click.echo(f"{count:,} rows written to {output}", err=True)

    @zoo.command("merge")
    @click.argument("target", type=click.Path(dir_okay=False))
    @click.argument("sources", nargs=-1, required=True)
    def zoo_merge(target: str, sources: tuple[str, ...]) -> None:
        """Merge SOURCES (stores or run directories) into TARGET (created when absent). Idempotent.

        A model present in both with different numbers is a conflict: reported, TARGET's row kept;
        the command then exits with status 1.
        """
        from mednns.zoo import merge_stores

        reports = merge_stores(target, [resolve_store(s) for s in sources])
        console = Console(soft_wrap=False)
        table = Table(title=f"merged into {escape(target)}")
        for column in ("source", "added", "duplicates", "conflicts", "supernets added"):
            table.add_column(column)
        conflicts = 0
        for source, report in reports.items():
            conflicts += len(report.conflicts)
            table.add_row(escape(source), f"{report.added:,}", f"{report.duplicates:,}", f"{len(report.conflicts):,}",
                          str(report.supernets_added))
        console.print(table)
        for source, report in reports.items():
            for c in report.conflicts[:20]:
                console.print(f"[red]conflict[/red] {escape(source)}: {escape(c['dataset'])}/{escape(c['space'])} "
                              f"{c['arch_hash']}: val acc here {c['here_val_acc']}, there {c['other_val_acc']}")
        if conflicts:
            raise SystemExit(1)
