"""Built-in stage ``evaluate`` and the command ``mednns evaluate CONFIG``.

Leave-one-dataset-out: every target dataset is held out of the meta-space (rows, FID targets,
normalization) and of the candidates, the query's choice is fine-tuned next to the baselines with
the same epochs, data, augmentation, optimizer and seeds (:mod:`mednns.evaluation`). Files under
``stages/evaluate/``: ``results.json``, ``<dataset>/`` (meta-spaces, queries, one JSON per run),
``embeddings/``, ``report/`` (``mednns report RUN_DIR`` renders it again).
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, Literal, cast

import click

import mednns
from mednns import layout
from mednns.errors import UsageError
from mednns.finetune import RECIPE_OFF, FinetuneConfig
from mednns.stages import Stage
from mednns.typecheck import suggest

STAGE = layout.EVALUATE_STAGE
MethodName = Literal["mednns", "mednns_topk", "random_init", "timm_scratch", "imagenet", "nearest_fid", "tans",
                     "random_pick", "own_supernet_search", "mednns_search"]
#: Every method but ``mednns_search``, which is opt-in: like own-supernet search it trains a supernet
#: per seed and condition.
DEFAULT_METHODS: list[str] = [m for m in MethodName.__args__ if m != "mednns_search"]  # type: ignore[attr-defined]
#: FinetuneConfig fields the stage does not take: kept at their defaults for every method (the
#: training-set sizes come from ``train_images``, the seeds from ``seeds``).
NOT_FINETUNE_ARGS = ("momentum", "max_train_images", "eval_batch_size", "channels_last", "seed")


class Evaluate(Stage):
    """Leave-one-dataset-out evaluation of mednns against baselines.

    :param datasets: targets (run dataset names; default: every zoo dataset in turn).
    :param methods: what to compare (default: all; ``mednns`` is always run, as every gain is
        measured against it).
    :param seeds: fine-tuning seeds per method (data order, crops, new heads, random inits).
    :param finetune: the one fine-tuning configuration of every method, flat beside the others:
        the :class:`mednns.finetune.FinetuneConfig` settings ``epochs``, ``lr``, ``batch_size``,
        ``weight_decay``, ``warmup_epochs``, ``label_smoothing``, ``crop_padding``, ``hflip`` and the
        transfer recipe (``recalibrate_bn``, ``head_epochs``, ``body_lr_scale``, ``colour_stem``,
        ``fit_head``, ``fit_head_cv``), applied alike to every method that starts from pretrained
        weights (inherited or ImageNet).
    :param train_images: training-set sizes per target (a seeded subset, the same for every method;
        default: all images). Each size is a condition of the ``equal_epochs`` budget; the first is
        the primary one (and the size of ``equal_compute``).
    :param budgets: ``equal_epochs`` (every method ``epochs`` epochs) and/or ``equal_compute``
        (every method fine-tunes until its target-side image-MACs reach the most expensive
        method's; :mod:`mednns.evaluation.leave_one_out`).
    :param equal_compute_seeds: the seeds of the ``equal_compute`` budget (default: ``seeds``).
    :param max_epochs: the most epochs ``equal_compute`` gives one run.
    :param variants: named variants of the mednns methods, each run on the same folds, seeds and
        training subsets and reported as its own row (``mednns:<name>``, ``mednns_topk:<name>``):
        ``{name: {meta_space: {...}, by: ..., top_k: ..., rerank: {...}, source_gate: ...,
        finetune: {...}, pool: ...}}`` (``meta_space`` and ``finetune`` entries override the stage's;
        ``finetune`` may not change the shared budget: epochs, batch size, training images; ``pool:
        random`` re-ranks ``rerank.candidates`` zoo models drawn at random per seed instead of the
        meta-space's top: re-ranking without the meta-space).
    :param ranking: measure ranking quality (:mod:`mednns.evaluation.ranking`): ``{candidates: 10,
        scores: [knn, ridge, logme], images: 500, seeds: 1, train_images: [], draw: 0}`` fine-tunes a
        seeded random sample of transfer candidates per target (primary condition, and the
        equal-epochs condition of each further size, with the first ``seeds`` seeds) and reports
        Kendall's tau of every ranking (meta-space, each score on the fine-tuning subset, both
        combined, one fine-tuning of each candidate) against their mean test ACC; another ``draw``
        samples other candidates.
    :param baseline_restarts: ``{baseline: k}``: a further row per baseline (``nearest_fid:restarts4``)
        fine-tunes its start ``k`` times (another fine-tuning seed each: new head, batch order and, for a
        random init, weights; the same training subset) and keeps the one with the best validation
        ACC. It runs at equal epochs only: the control of a best-of-k mednns method (``top_k``, a
        variant's ``restarts``), which spends ``k`` fine-tunings too.
    :param top_k: models of the query fine-tuned by ``mednns_topk`` (the best validation ACC wins).
    :param by: how the query ranks: ``predicted`` metric, retrieval ``score`` or ``combined``.
    :param rerank: re-rank the query's top candidates on each run's own fine-tuning subset (the
        labelled images that run may use; :class:`mednns.transfer.reranking.RerankSettings`:
        ``{score: NAME or {name, args}, candidates, images, calibration_images, combine}``); its
        cost counts as the run's ``rerank`` setup phase.
    :param source_gate: the query leaves out source supernets that learned nothing.
    :param meta_space: ``fit_meta_space`` arguments of every fold's meta-space (``held_out`` and
        ``zoo`` are set per fold).
    :param tans_losses: losses of the TANS-style meta-space.
    :param timm_model: the timm network of the scratch and ImageNet baselines.
    :param search_budget: subnets the search baseline compares on the target's own supernet (trained
        per seed and condition on that run's training subset, like the run's supernet of the target).
    :param zoo: the zoo store (default: this run's ``build_zoo`` store).
    :param report: render the report (PNG, markdown, HTML) at the end.
    :param progress: show progress bars.
    """

    name = STAGE
    reads = ("build_zoo",)  # the zoo (which names the supernets)
    distributed = True  # under torchrun: the targets (folds) are shared out across the ranks
    #: recipe fields and arguments added after runs recorded this stage's fingerprint: off (unset), they
    #: leave it as it was
    fingerprint_omits = {**{k: RECIPE_OFF[k] for k in ("colour_stem", "fit_head", "fit_head_cv")},
                         "baseline_restarts": None}
    #: Runs and meta-spaces are keyed by their configuration: a change of the stage's own arguments
    #: (seeds, sizes, variants, methods) reuses what still applies.
    keeps_state = True

    def keeps_state_for(self, changed: list[str]) -> bool:
        """Only changes of its own arguments: runs are keyed by the supernet folder and architecture,
        so a retrained supernet (an upstream change) or another dataset version must start afresh."""
        return all(key.startswith("stage.") for key in changed)

    @mednns.takes_settings(FinetuneConfig, exclude=NOT_FINETUNE_ARGS)
    def __init__(self, datasets: list[str] | None = None, methods: list[MethodName] | None = None,
                 seeds: list[int] | None = None, train_images: list[int] | None = None,
                 budgets: list[Literal["equal_epochs", "equal_compute"]] | None = None,
                 equal_compute_seeds: list[int] | None = None, max_epochs: int = 200,
                 variants: dict[str, dict[str, Any]] | None = None, ranking: dict[str, Any] | None = None,
                 baseline_restarts: dict[str, int] | None = None, top_k: int = 3,
                 by: Literal["predicted", "score", "combined"] = "predicted",
                 rerank: dict[str, Any] | None = None, source_gate: bool = False,
                 meta_space: dict[str, Any] | None = None,
                 tans_losses: list[mednns.ComponentSpec[Literal["losses"]]] | None = None, timm_model: str = "resnet18",
                 search_budget: int = 100, zoo: str | None = None, report: bool = True, progress: bool = True,
                 **finetune: Any):
        from mednns.evaluation import DEFAULT_TANS_LOSSES, EvaluationSettings

        chosen = list(dict.fromkeys(["mednns", *(methods or DEFAULT_METHODS)]))
        seeds = list(seeds if seeds is not None else [0, 1, 2])
        if not seeds or len(set(seeds)) != len(seeds):
            raise UsageError("seeds must be a non-empty list of distinct integers")
        if top_k < 1 or search_budget < 1:
            raise UsageError("top_k and search_budget must be >= 1")
        meta_space = dict(meta_space or {})
        fixed = sorted({"held_out", "zoo"} & set(meta_space))
        if fixed:
            raise UsageError(f"meta_space must not set {', '.join(fixed)}: each fold holds its target out of the "
                             f"evaluation's zoo")
        config = FinetuneConfig(**finetune)  # validate before any work
        finetune = {f.name: getattr(config, f.name) for f in fields(FinetuneConfig) if f.name not in NOT_FINETUNE_ARGS}
        sizes: list[int | None] = list(train_images) if train_images else [None]
        for name, variant in (variants or {}).items():
            changes = (variant or {}).get("finetune") or {}
            unknown = sorted(set(changes) - set(finetune))
            if unknown:
                close = suggest(unknown[0], finetune)
                raise UsageError(f"variants.{name}.finetune: unknown key(s) {', '.join(map(repr, unknown))}", hint=(
                    f"did you mean '{close}'?" if close else f"fine-tuning keys: {', '.join(finetune)}"))
            FinetuneConfig(**{**finetune, **changes})
        self.settings = EvaluationSettings(
            datasets=datasets, methods=chosen, seeds=seeds, finetune=finetune, top_k=top_k, by=by, rerank=rerank,
            source_gate=source_gate,
            meta_space=meta_space, tans_losses=[{"name": s["name"], "args": dict(s.get("args") or {})}
                                                for s in (tans_losses or DEFAULT_TANS_LOSSES)],
            timm_model=timm_model, search_budget=search_budget, train_images=sizes,
            budgets=list(budgets or ["equal_epochs"]), equal_compute_seeds=equal_compute_seeds, max_epochs=max_epochs,
            variants={name: dict(v or {}) for name, v in (variants or {}).items()}, ranking=ranking,
            baseline_restarts=dict(baseline_restarts or {}), zoo=zoo,
            progress=progress,
            report=report)

    def outputs(self, run) -> list[Path]:
        return [run.stage_dir(self.name) / "results.json"]

    def run(self, run) -> dict[str, Any]:
        from mednns.evaluation import evaluate
        from mednns.metaspace import MetaSpaceSettings

        # check every fold meta-space's arguments now (as a fit_meta_space stage's), not after an hour
        for variant in self.settings.variant_list():
            where = f"{STAGE}.variants.{variant.name}.meta_space" if variant.name else f"{STAGE}.meta_space"
            issues = run.manager.check("stages", layout.META_SPACE_STAGE, variant.meta_space, where)
            if issues:
                raise mednns.ConfigError(issues)
            MetaSpaceSettings.from_args(**variant.meta_space)
            rerank = variant.settings()
            if rerank is not None:
                run.manager.create("transfer-scores", rerank.score["name"], **rerank.score["args"])
        if self.settings.ranking is not None:
            for spec in self.settings.ranking_settings().score_specs():
                run.manager.create("transfer-scores", spec["name"], **spec["args"])
        results = evaluate(run, self.settings, run.stage_dir(self.name))
        if not run.distributed.is_main:
            return {}  # rank 0 summarizes
        return {"datasets": list(results["datasets"]), **results["overall"]}


@mednns.hookimpl
def register_stages(register):
    register(STAGE, Evaluate, description="Leave-one-dataset-out evaluation: mednns's retrieved model vs baselines at "
                                          "the same fine-tuning budget (results.json, report)")


@mednns.hookimpl
def register_commands(cli):
    @cli.command("evaluate")
    @click.argument("config", type=click.Path(dir_okay=False, exists=True))
    @click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value.")
    @click.option("--output-dir", type=click.Path(file_okay=False), help="Parent of the run directory.")
    @click.option("--device", help="auto, cpu, cuda or cuda:N.")
    @click.option("--restart", is_flag=True, help="Discard partial state of stages interrupted under another config.")
    def evaluate_command(config: str, overrides: tuple[str, ...], output_dir: str | None, device: str | None,
                         restart: bool) -> None:
        """Run CONFIG's stages and its leave-one-dataset-out evaluation (an `evaluate` stage with default
        arguments is added when CONFIG has none), then print the overall table and the report's path."""
        from rich.console import Console

        from mednns.config import load_config
        from mednns.evaluation import overall_rich_table
        from mednns.files import read_json
        from mednns.manager import get_plugin_manager
        from mednns.runner import execute
        from mednns.runs import prepare_run

        extra = [f"{key}={value}" for key, value in (("output_dir", output_dir), ("device", device)) if value]
        manager = get_plugin_manager()
        run_config = load_config(manager, config, [*overrides, *extra])
        if not any(spec["name"] == STAGE for spec in run_config.stages):
            run_config.stages.append(cast("mednns.ComponentSpec[Literal['stages']]", {"name": STAGE, "args": {}}))
        console = Console(soft_wrap=False)
        prepared = prepare_run(manager, run_config, console=console)
        execute(prepared, restart=restart)
        if not prepared.distributed.is_main:
            return  # rank 0 reports
        stage_dir = layout.stage_dir(prepared.directory, STAGE)
        results = read_json(stage_dir / "results.json")
        for condition in results["protocol"]["conditions"]:
            console.print(overall_rich_table(results, condition["id"]))
        report = stage_dir / "report" / "report.html"
        console.print(f"report: {report if report.is_file() else 'not rendered (report: false)'}")
