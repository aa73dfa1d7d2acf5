"""Built-in stage ``train_supernet`` and command ``mednns train-supernet``: one supernet per dataset.

Each selected dataset of the run gets a supernet of the configured search space (``in_channels``
and ``num_classes`` from the dataset's info) trained with progressive shrinking and the sandwich
rule (:mod:`mednns.training`) into ``stages/train_supernet/<dataset>/``::

    metrics.csv  checkpoints/  supernet.safetensors  supernet.json  final.json

Interrupted runs resume from the latest checkpoint when ``mednns run`` is called again with the
same config. :func:`mednns.training.load_supernet` rebuilds a trained supernet from its folder.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import mednns
from mednns.config import parse_key_values
from mednns.data import MedicalDataset
from mednns.errors import MednnsError, UsageError
from mednns.seeding import derive_seed, seed_everything
from mednns.stages import Stage
from mednns.training import FINAL, SUPERNET_METADATA, SUPERNET_WEIGHTS, TrainConfig

STAGE = "train_supernet"
#: The search space used when the stage's ``space`` is not given.
DEFAULT_SPACE: dict[str, Any] = {"name": "ofa_resnet", "args": {"preset": "cpu"}}


class TrainSupernet(Stage):
    """Train one supernet per dataset of the run (or of ``datasets``).

    :param space: the search space ``{name, args}``; default ``{name: ofa_resnet, args: {preset: cpu}}``.
        ``num_classes`` comes from each dataset; ``in_channels`` too unless given (1 ↔ 3 channels are adapted).
    :param datasets: names of the run's datasets to train on (default: all).
    :param training: every :class:`mednns.training.TrainConfig` setting, flat beside these two
        (``full_epochs``, ``shrink_epochs``, ``phases``, ``batch_size``, ``max_train_images``,
        ``min_steps_per_epoch``, ``optimizer``, ``amp``, ...: ``mednns validate`` checks them
        against the dataclass, whose docstring says what each does).
    """

    reads = ()  # the datasets only: an unrelated stage before it does not retrain anything
    expensive = True  # trained supernets: never deleted by a config change without --restart
    fingerprint_omits = {"min_steps_per_epoch": 0}
    distributed = True  # under torchrun: data-parallel, every rank samples the same subnets, rank 0 writes

    @mednns.takes_settings(TrainConfig)
    def __init__(self, space: mednns.ComponentSpec[Literal["search-spaces"]] | None = None,
                 datasets: list[str] | None = None, **training: Any):
        self.space_spec = copy.deepcopy(space) if space is not None else copy.deepcopy(DEFAULT_SPACE)
        self.space_spec.setdefault("args", {})
        if self.space_spec["args"] is None:
            self.space_spec["args"] = {}
        if "num_classes" in self.space_spec["args"]:
            raise UsageError("space.args.num_classes is set from each dataset's info",
                             hint="remove num_classes from the search space's args")
        self._probe_space()
        self.only = datasets
        self.config = TrainConfig(**training)

    def _probe_space(self) -> None:
        """Build the space once with stand-in channels and classes, so that arguments it refuses (or
        bounds it enforces) fail at validation, not after the datasets are read."""
        try:
            mednns.create("search-spaces", self.space_spec["name"],
                          **{"in_channels": 3, **self.space_spec["args"], "num_classes": 2})
        except MednnsError:
            raise
        except Exception as exc:  # the space's own checks raise ValueError / TypeError
            raise UsageError(f"space.args: {exc}", hint=f"mednns list search-spaces; the space is "
                                                         f"{self.space_spec['name']}") from None

    def _selected(self, run) -> dict[str, MedicalDataset]:
        if self.only is None:
            return dict(run.datasets)
        return {name: run.dataset(name) for name in self.only}

    def directory(self, run, dataset: str) -> Path:
        """The output folder of one dataset's supernet."""
        return run.stage_dir(self.name) / dataset

    def outputs(self, run) -> list[Path]:
        return [self.directory(run, name) / file for name in self._selected(run)
                for file in (SUPERNET_WEIGHTS, SUPERNET_METADATA, FINAL)]

    def damaged_outputs(self, run) -> list[str]:
        """Supernet weights that are not whole (truncated by a crash or a full disk)."""
        from mednns.training import weights_problem

        problems = (weights_problem(self.directory(run, name) / SUPERNET_WEIGHTS) for name in self._selected(run))
        return [p for p in problems if p]

    def build_space(self, run, dataset: MedicalDataset) -> Any:
        """The search space for ``dataset`` (``in_channels`` and ``num_classes`` from its info)."""
        info = dataset.info
        args = {"in_channels": info.n_channels, **self.space_spec["args"], "num_classes": info.n_classes}
        return run.manager.create("search-spaces", self.space_spec["name"], **args)

    def run(self, run) -> dict[str, Any]:
        selected = self._selected(run)
        if not selected:
            raise UsageError("train_supernet: the run has no datasets", hint="add datasets to the config")
        results = {}
        for name, dataset in selected.items():
            seed = derive_seed(run.seed, self.name, name)
            seed_everything(seed)  # the supernet's initial weights
            space = self.build_space(run, dataset)
            run.logger.info("train_supernet: %s on %s (%s, %d classes) into %s", self.space_spec["name"], name,
                            dataset.info.task, dataset.info.n_classes, self.directory(run, name))
            from mednns.training import SupernetTrainer  # torch and timm: imported only to train

            trainer = SupernetTrainer(space, dataset, self.directory(run, name), self.config,
                                      space_name=self.space_spec["name"], seed=seed, device=run.device,
                                      console=run.console, rank=run.distributed.rank,
                                      world_size=run.distributed.world_size)
            results[name] = trainer.fit()
        return results


@mednns.hookimpl
def register_stages(register):
    register(STAGE, TrainSupernet,
             description="Per dataset: train a weight-sharing supernet (progressive shrinking, sandwich rule, "
                         "in-place distillation)")


# -- the command ---------------------------------------------------------------------
def build_run_config(dataset: str, *, dataset_args: dict[str, Any] | None = None, space: str = "ofa_resnet",
                     preset: str | None = None, space_args: dict[str, Any] | None = None,
                     stage_args: dict[str, Any] | None = None, name: str | None = None, output_dir: str = "runs",
                     device: str = "auto", seed: int = 0) -> dict[str, Any]:
    """The run config (a plain mapping, before validation) of ``mednns train-supernet``."""
    space_spec_args = dict(space_args or {})
    if preset is not None:
        space_spec_args["preset"] = preset
    return {
        "name": name or f"supernet-{space}-{dataset}",
        "seed": seed,
        "device": device,
        "output_dir": output_dir,
        "datasets": [{"name": dataset, "args": dict(dataset_args or {})}],
        "stages": [{"name": STAGE, "args": {"space": {"name": space, "args": space_spec_args},
                                            **(stage_args or {})}}],
    }


def results_table(results: dict[str, Any]) -> Table:
    """Test metrics of the largest, median-sized and smallest subnet of each trained dataset."""
    table = Table(title="supernet test metrics (after BN recalibration)")
    for column in ("dataset", "subnet", "params", "MACs", "acc", "auc"):
        table.add_column(column)
    for dataset, final in results.items():
        for label in ("largest", "median", "smallest"):
            row = final["test"][label]
            table.add_row(escape(dataset), label, f"{row['params']:,}", f"{row['macs']:,}", f"{row['acc']:.4f}",
                          "" if row["auc"] is None else f"{row['auc']:.4f}")
    return table


@mednns.hookimpl
def register_commands(cli):
    @cli.command("train-supernet")
    @click.option("--dataset", "dataset", required=True, metavar="NAME",
                  help="Registered dataset name, e.g. pneumoniamnist (reads $MEDMNIST_ROOT) or npz.")
    @click.option("--dataset-arg", "dataset_args", multiple=True, metavar="KEY=VALUE",
                  help="Argument of the dataset (e.g. size=64, path=data.npz); repeatable.")
    @click.option("--space", default="ofa_resnet", show_default=True, metavar="NAME",
                  help="Registered search space ('mednns list search-spaces').")
    @click.option("--preset", type=click.Choice(["cpu", "paper"]),
                  help="Search-space preset (the space's default: cpu).")
    @click.option("--space-arg", "space_args", multiple=True, metavar="KEY=VALUE",
                  help="Argument of the search space (e.g. width_mults=[0.5,1.0]); repeatable.")
    @click.option("--epochs", type=click.IntRange(min=0), help="Epochs of every phase (full and each shrinking phase).")
    @click.option("--max-train-images", type=click.IntRange(min=2),
                  help="Train on a random subset of this many images.")
    @click.option("--set", "stage_args", multiple=True, metavar="KEY=VALUE",
                  help="Any train_supernet stage argument (e.g. batch_size=64); repeatable.")
    @click.option("--name", help="Run name (default: supernet-<space>-<dataset>).")
    @click.option("--output-dir", default="runs", show_default=True, type=click.Path(file_okay=False),
                  help="Parent of the run directory.")
    @click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
    @click.option("--seed", type=int, default=0, show_default=True, help="Seed of everything random.")
    @click.option("--restart", is_flag=True, help="Discard a stage interrupted under another config.")
    @click.option("--no-progress", is_flag=True, help="No progress bar.")
    def train_supernet_command(dataset: str, dataset_args: tuple[str, ...], space: str, preset: str | None,
                               space_args: tuple[str, ...], epochs: int | None, max_train_images: int | None,
                               stage_args: tuple[str, ...], name: str | None, output_dir: str, device: str,
                               seed: int, restart: bool, no_progress: bool) -> None:
        """Train a supernet on one dataset (a run of the train_supernet stage: resumable, skipped when done)."""
        from mednns.config import validate_config
        from mednns.manager import get_plugin_manager
        from mednns.runner import execute
        from mednns.runs import prepare_run

        args = parse_key_values(stage_args, "--set")
        if epochs is not None:
            args.setdefault("full_epochs", epochs)
            args.setdefault("shrink_epochs", epochs)
        if max_train_images is not None:
            args.setdefault("max_train_images", max_train_images)
        if no_progress:
            args["progress"] = False
        data = build_run_config(dataset, dataset_args=parse_key_values(dataset_args, "--dataset-arg"), space=space,
                                preset=preset, space_args=parse_key_values(space_args, "--space-arg"), stage_args=args,
                                name=name, output_dir=output_dir, device=device, seed=seed)
        manager = get_plugin_manager()
        config = validate_config(manager, data, source="mednns train-supernet")
        console = Console(soft_wrap=False)
        run = prepare_run(manager, config, console=console)
        results = execute(run, restart=restart)
        if not run.distributed.is_main:
            return  # rank 0 reports
        record = results["stages"][STAGE]
        console.print(results_table(record["results"]))
        console.print(f"{STAGE}: {record['status']}; supernets under "
                      f"{escape(str(run.directory / 'stages' / STAGE))}")
