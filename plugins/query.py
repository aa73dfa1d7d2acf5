"""Built-in stages ``query`` and ``finetune`` and the commands ``mednns query`` and ``mednns finetune``.

``query``: for each target dataset, rank every zoo model with the run's trained meta-space, filter
by hardware limits, save ``stages/query/<dataset>.json`` and export the top model with its
inherited weights and a new head (``stages/query/<dataset>/``; :func:`mednns.load_model` reads it).
``finetune``: train each exported model on its dataset for K epochs (``stages/finetune/<dataset>/``:
``metrics.csv``, ``best/``, ``final.json``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import mednns
from mednns.errors import UsageError
from mednns.finetune import RECIPE_OFF, FinetuneConfig
from mednns.layout import META_SPACE_MANIFEST, QUERY_STAGE, meta_space_dir, stage_dir
from mednns.stages import Stage
from mednns.transfer import rerank_from_options, rerank_options

FINETUNE_STAGE = "finetune"


def results_table(result: dict[str, Any]) -> Table:
    measured = any("latency_ms" in r for r in result["results"])
    reranked = result.get("rerank")
    by = (f"{result['by']}, re-ranked by {reranked['score']['name']} ({reranked['combine']})" if reranked
          else result["by"])
    table = Table(title=f"best zoo models for {escape(result['dataset'])} (by {escape(by)}; "
                        f"{result['candidates']:,} of {result['zoo_models']:,} models within the limits)")
    columns = (["rank", *(["meta-space rank"] if reranked else []), "source dataset", "space", "params", "MACs",
                "predicted", "score", *(["transfer score"] if reranked else []), *(["latency ms"] if measured else [])])
    for column in columns:
        table.add_column(column, justify="left" if column in ("source dataset", "space") else "right")
    for r in result["results"]:
        row = [str(r["rank"]), *([str(r["meta_rank"])] if reranked else []), escape(r["dataset"]), escape(r["space"]),
               f"{r['params']:,}", f"{r['macs']:,}", f"{r['predicted']:.4f}", f"{r['score']:.4f}",
               *([f"{r['transfer_score']:.4f}"] if reranked else [])]
        table.add_row(*row, *([f"{r['latency_ms']:.2f}"] if measured else []))
    notes = [f"left out the models of {escape(q['dataset'])} ({escape(q['space'])}): its largest subnet reaches "
             f"validation ACC {q['largest_val_acc']:.3f}, not above the majority-class rate "
             f"{q['val_majority_rate']:.3f}" for q in result.get("gated_sources") or []]
    if reranked:
        notes.append(f"re-ranked {reranked['candidates']} candidates on {reranked['images']} training images in "
                     f"{reranked['seconds']:.1f} s ({reranked['candidates_per_second']:.2f} candidates/s)")
        if "guard" in reranked:
            from mednns.transfer import guard_text

            notes.append(escape(guard_text(reranked["guard"])))
    table.caption = "; ".join(notes) or None
    return table


class Query(Stage):
    """Rank the zoo for target datasets and export the best model of each.

    :param datasets: target datasets (names of run datasets; default: the meta-space's held-out ones).
    :param meta_space: a ``fit_meta_space`` folder (default: this run's).
    :param top_k: models listed. :param by: ranking: ``predicted`` metric, retrieval ``score`` or ``combined``.
    :param max_params: :param max_macs: :param max_latency_ms: hardware limits (latency measured
        on this run's device for the finalists).
    :param export: export the top model of each dataset.
    :param rerank: re-rank the meta-space's top candidates on the target's training images with this
        ``transfer-scores`` component (:mod:`mednns.transfer.reranking`).
    :param candidates: how many candidates are re-ranked.
    :param rerank_images: labelled training images the score sees.
    :param combine: the final order: the ``score``'s, the mean of both ranks (``rank_sum``), or the
        score's only where its first beats the meta-space's first significantly (``guarded``).
    :param source_gate: leave out the models of source supernets that learned nothing (largest
        subnet not above their validation majority-class rate).
    """

    name = QUERY_STAGE
    reads = ("fit_meta_space",)

    def __init__(self, datasets: list[str] | None = None, meta_space: str | None = None, top_k: int = 10,
                 by: Literal["predicted", "score", "combined"] = "predicted", max_params: int | None = None,
                 max_macs: int | None = None, max_latency_ms: float | None = None, export: bool = True,
                 rerank: mednns.ComponentSpec[Literal["transfer-scores"]] | None = None, candidates: int = 20,
                 rerank_images: int = 500, combine: Literal["score", "rank_sum", "guarded"] = "score",
                 source_gate: bool = False):
        from mednns.transfer import RerankSettings

        if top_k < 1:
            raise UsageError("top_k must be >= 1")
        self.datasets, self.meta_space, self.top_k, self.by = datasets, meta_space, top_k, by
        self.limits: dict[str, Any] = {"max_params": max_params, "max_macs": max_macs,
                                       "max_latency_ms": max_latency_ms}
        self.export, self.source_gate = export, source_gate
        self.rerank = (RerankSettings({"name": rerank["name"], "args": dict(rerank.get("args") or {})}, candidates,
                                      rerank_images, combine=combine) if rerank else None)

    def meta_dir(self, run) -> Path:
        return Path(self.meta_space) if self.meta_space else meta_space_dir(run.directory)

    def targets(self, run) -> list[str]:
        if self.datasets is not None:
            return list(self.datasets)
        meta = self.meta_dir(run) / META_SPACE_MANIFEST
        held = json.loads(meta.read_text()).get("held_out", []) if meta.is_file() else []
        if not held:
            raise UsageError("query: no 'datasets' given and the meta-space holds none out",
                             hint="list the target datasets under the query stage's 'datasets'")
        return held

    def outputs(self, run) -> list[Path]:
        directory = run.stage_dir(self.name)
        names = self.datasets or []
        return [directory / f"{n}.json" for n in names] + [directory / n / "model.json" for n in names if self.export]

    def run(self, run) -> dict[str, Any]:
        from mednns.export import export_query_result
        from mednns.files import write_json
        from mednns.metaspace import Constraints, query

        summary = {}
        for name in self.targets(run):
            dataset = run.dataset(name)
            result = query(self.meta_dir(run), dataset, top_k=self.top_k, by=self.by,
                           constraints=Constraints(**self.limits), manager=run.manager, device=run.device,
                           rerank=self.rerank, source_gate=self.source_gate)
            run.console.print(results_table(result))
            directory = run.stage_dir(self.name)
            write_json(directory / f"{name}.json", result)
            if self.export:
                export_query_result(result, dataset, directory / name, manager=run.manager, seed=run.seed)
            top = result["results"][0] if result["results"] else None
            summary[name] = {"top": top and {k: top[k] for k in ("dataset", "space", "params", "macs", "predicted")},
                             "seconds": result["seconds"]}
        return summary


class Finetune(Stage):
    """Fine-tune each model the ``query`` stage exported, on its dataset.

    :param datasets: which (default: every dataset with an export under ``stages/query``).
    :param progress: show a progress bar.
    :param finetune: the :class:`mednns.finetune.FinetuneConfig` settings, flat beside these two
        (``epochs``, ``lr``, ``batch_size``, ``weight_decay``, ``warmup_epochs``, ``label_smoothing``,
        ``crop_padding``, ``hflip``, ``max_train_images`` and the transfer recipe: ``recalibrate_bn``,
        ``head_epochs``, ``body_lr_scale``, ``colour_stem``, ``fit_head``, ``fit_head_cv``).
    """

    name = FINETUNE_STAGE
    reads = ("query",)
    distributed = True  # under torchrun: the datasets' fine-tuning runs are shared out across the ranks
    fingerprint_omits = dict(RECIPE_OFF)  # the recipe, added later: off, it leaves a run's fingerprint as it was

    @mednns.takes_settings(FinetuneConfig, exclude=("momentum", "eval_batch_size", "channels_last", "seed"))
    def __init__(self, datasets: list[str] | None = None, progress: bool = True, **finetune: Any):
        self.datasets = datasets
        self.config_args: dict[str, Any] = finetune
        FinetuneConfig(**self.config_args)  # validate before any work
        self.progress = progress

    def exports(self, run) -> dict[str, Path]:
        root = stage_dir(run.directory, QUERY_STAGE)
        names = self.datasets if self.datasets is not None else sorted(
            p.parent.name for p in root.glob("*/model.json"))
        if not names:
            raise UsageError("finetune: no exported model under stages/query", hint="run a query stage first")
        missing = [n for n in names if not (root / n / "model.json").is_file()]
        if missing:
            raise UsageError(f"finetune: no exported model for {', '.join(missing)} under {root}")
        return {n: root / n for n in names}

    def outputs(self, run) -> list[Path]:
        return [run.stage_dir(self.name) / n / "final.json" for n in (self.datasets or [])]

    def run(self, run) -> dict[str, Any]:
        from mednns.distributed import barrier
        from mednns.files import read_json
        from mednns.finetune import finetune
        from mednns.seeding import derive_seed

        exports = self.exports(run)
        job = run.distributed
        for name in job.share(list(exports)):
            config = FinetuneConfig(**self.config_args, seed=derive_seed(run.seed, self.name, name))
            finetune(exports[name], run.dataset(name), run.stage_dir(self.name) / name, config, device=run.device,
                     manager=run.manager, console=run.console, progress=self.progress)
        barrier(job)
        if not job.is_main:
            return {}
        finals = {name: read_json(run.stage_dir(self.name) / name / "final.json") for name in exports}
        return {name: {"best_epoch": f["best_epoch"], "best": f["best"], "last": f["last"]}
                for name, f in finals.items()}


@mednns.hookimpl
def register_stages(register):
    register(QUERY_STAGE, Query, description="Rank the zoo for target datasets with the meta-space (hardware limits) "
                                             "and export the best model with its inherited weights")
    register(FINETUNE_STAGE, Finetune, description="Fine-tune the exported models on their datasets (metrics.csv, "
                                                   "best checkpoint)")


@mednns.hookimpl
def register_commands(cli):
    @cli.command("query")
    @click.argument("run_dir", type=click.Path(file_okay=False, exists=True))
    @click.option("--dataset", "dataset_spec", required=True, metavar="NAME|PATH",
                  help="A run dataset, a registered dataset (NAME:key=value,...), an .npz file or an image folder.")
    @click.option("--top-k", type=int, default=10, show_default=True)
    @click.option("--by", type=click.Choice(["predicted", "score", "combined"]), default="predicted", show_default=True)
    @click.option("--max-params", type=int, help="Largest parameter count allowed.")
    @click.option("--max-macs", type=int, help="Largest MAC count allowed (per image).")
    @click.option("--max-latency-ms", type=float, help="Largest batch-1 latency on --device, measured for finalists.")
    @click.option("--export", "export_dir", type=click.Path(file_okay=False), help="Export the top model here.")
    @click.option("--output", type=click.Path(dir_okay=False), help="Save the result as JSON here.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
    @click.option("--exclude-source", "exclude", multiple=True, metavar="DATASET",
                  help="Leave out models from this source dataset; repeatable [default: the meta-space's held-out "
                       "datasets].")
    @rerank_options
    @click.option("--source-gate", is_flag=True,
                  help="Leave out the models of source supernets that learned nothing (largest subnet not above "
                       "its validation majority-class rate; mednns zoo stats shows them).")
    @click.option("--device", default="cpu", show_default=True)
    def query_command(run_dir: str, dataset_spec: str, top_k: int, by: str, max_params: int | None,
                      max_macs: int | None, max_latency_ms: float | None, export_dir: str | None, output: str | None,
                      exclude: tuple[str, ...], as_json: bool, rerank_score: str | None, candidates: int,
                      rerank_images: int, combine: str, source_gate: bool, device: str) -> None:
        """Rank every zoo model of a run's trained meta-space (or a bundle's: RUN_DIR may be a pulled
        bundle folder, see 'mednns bundle') for a dataset; optionally export the best."""
        from mednns.config import load_config
        from mednns.data import resolve_dataset
        from mednns.distributed import refuse_torchrun
        from mednns.files import write_json
        from mednns.manager import get_plugin_manager
        from mednns.metaspace import Constraints, query

        refuse_torchrun("mednns query", "run it as one process")
        manager = get_plugin_manager()
        rerank = rerank_from_options(manager, rerank_score, candidates, rerank_images, combine)
        run_path = Path(run_dir)
        known = {}
        if (run_path / "config.yaml").is_file():
            config = load_config(manager, run_path / "config.yaml")
            known = {spec["args"].get("name") or spec["name"]: spec for spec in config.datasets}
        spec = known.get(dataset_spec)
        dataset = (manager.create("datasets", spec["name"], **spec["args"]) if spec
                   else resolve_dataset(manager, dataset_spec))
        from mednns.bundle import MANIFEST, meta_space_of, verify_bundle

        if (run_path / MANIFEST).is_file():
            verify_bundle(run_path)
            meta = meta_space_of(run_path)
        else:
            meta = meta_space_dir(run_path)
        result = query(meta, dataset, top_k=top_k, by=by,
                       constraints=Constraints(max_params, max_macs, max_latency_ms),
                       exclude_sources=list(exclude) if exclude else None, manager=manager, device=device,
                       rerank=rerank, source_gate=source_gate)
        if output:
            write_json(output, result)
        if as_json:
            click.echo(json.dumps(result, indent=2))
        else:
            console = Console(soft_wrap=False)
            console.print(results_table(result))
            console.print(f"scored {result['zoo_models']:,} models in {result['seconds'] * 1000:.1f} ms")
        if export_dir:
            from mednns.export import export_query_result

            folder = export_query_result(result, dataset, Path(export_dir), manager=manager)
            click.echo(f"exported the top model to {folder} (mednns.load_model('{folder}'))", err=True)

    @cli.command("finetune")
    @click.argument("export_dir", type=click.Path(file_okay=False, exists=True))
    @click.option("--dataset", "dataset_spec", required=True, metavar="NAME|PATH",
                  help="A registered dataset (NAME:key=value,...), an .npz file or an image folder.")
    @click.option("--out", "out_dir", type=click.Path(file_okay=False),
                  help="Output folder [default: EXPORT_DIR/finetune].")
    @click.option("--epochs", type=int, default=FinetuneConfig.epochs, show_default=True)
    @click.option("--lr", type=float, default=FinetuneConfig.lr, show_default=True)
    @click.option("--batch-size", type=int, default=FinetuneConfig.batch_size, show_default=True)
    @click.option("--max-train-images", type=int)
    @click.option("--recalibrate-bn/--no-recalibrate-bn", default=FinetuneConfig.recalibrate_bn, show_default=True,
                  help="Re-estimate BN statistics on the target's training images before the first step.")
    @click.option("--head-epochs", type=int, default=FinetuneConfig.head_epochs, show_default=True,
                  help="First epochs train the new head only (linear probe, then full fine-tuning).")
    @click.option("--body-lr-scale", type=float, default=FinetuneConfig.body_lr_scale, show_default=True,
                  help="The body's learning rate relative to --lr.")
    @click.option("--colour-stem/--no-colour-stem", default=FinetuneConfig.colour_stem, show_default=True,
                  help="A grey source's stem on an RGB target: add colour-opponent kernels (grey response kept).")
    @click.option("--fit-head/--no-fit-head", default=FinetuneConfig.fit_head, show_default=True,
                  help="Solve the new head on the frozen features before the first step (LP-FT's probe, L-BFGS).")
    @click.option("--fit-head-cv/--no-fit-head-cv", default=FinetuneConfig.fit_head_cv, show_default=True,
                  help="With --fit-head: the probe's penalty chosen by 5-fold cross-validated loss.")
    @click.option("--seed", type=int, default=0, show_default=True)
    @click.option("--device", default="cpu", show_default=True)
    @click.option("--no-progress", is_flag=True)
    def finetune_command(export_dir: str, dataset_spec: str, out_dir: str | None, epochs: int, lr: float,
                         batch_size: int, max_train_images: int | None, recalibrate_bn: bool, head_epochs: int,
                         body_lr_scale: float, colour_stem: bool, fit_head: bool, fit_head_cv: bool, seed: int,
                         device: str, no_progress: bool) -> None:
        """Fine-tune an exported model: per-epoch val/test metrics in metrics.csv, the best epoch in best/."""
        from mednns.data import resolve_dataset
        from mednns.distributed import refuse_torchrun

        refuse_torchrun("mednns finetune", "run it as one process; the finetune stage of a run shares its datasets' "
                                           "fine-tuning across torchrun ranks")
        from mednns.finetune import finetune
        from mednns.manager import get_plugin_manager

        manager = get_plugin_manager()
        dataset = resolve_dataset(manager, dataset_spec)
        out = Path(out_dir) if out_dir else Path(export_dir) / "finetune"
        config = FinetuneConfig(epochs=epochs, lr=lr, batch_size=batch_size, max_train_images=max_train_images,
                                recalibrate_bn=recalibrate_bn, head_epochs=head_epochs, body_lr_scale=body_lr_scale,
                                colour_stem=colour_stem, fit_head=fit_head, fit_head_cv=fit_head_cv, seed=seed)
        console = Console(soft_wrap=False)
        final = finetune(export_dir, dataset, out, config, device=device, manager=manager, console=console,
                         progress=not no_progress)
        best = final["best"]
        if "fit_head" in final:
            console.print(f"new head solved on the frozen features before the first step (penalty "
                          f"{final['fit_head']['penalty']:g})")
        console.print(f"best epoch {final['best_epoch']}: val acc {best['val_acc']:.4f}, "
                      f"test acc {best['test_acc']:.4f}"
                      f" (auc {best['test_auc']:.4f}); files in {escape(str(out))}")
