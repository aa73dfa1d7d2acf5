"""A run: its directory, resolved config, datasets, stages and the facts recorded about it.

Layout of a run directory::

    config.yaml        the resolved config (overrides, environment and defaults applied)
    plugins.json       plugin names, versions, hooks and components
    environment.json   python/torch versions, device, git SHA, command line
    run.log            the log of every invocation
    results.json       per-stage status and results
    stages/<name>/     each stage's files and its stage.json (fingerprint, status, results)
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console

import mednns
from mednns import layout
from mednns.config import RunConfig, dump_yaml
from mednns.data import MedicalDataset
from mednns.distributed import Distributed, initialize
from mednns.errors import ConfigError, ConfigIssue, MednnsError, UsageError
from mednns.files import atomic_write_text, write_json
from mednns.manager import PluginManager
from mednns.paths import check_name, name_problem
from mednns.stages import Stage

log = logging.getLogger("mednns")


@dataclass
class Run:
    """Everything a stage may use. Stages write only under :meth:`stage_dir`."""

    directory: Path
    config: RunConfig
    manager: PluginManager
    device: str
    datasets: dict[str, MedicalDataset]
    stages: list[tuple[dict[str, Any], Stage]]
    console: Console = field(default_factory=Console)
    #: This process's place in a torchrun job (a single process without torchrun).
    distributed: Distributed = field(default_factory=Distributed)

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def logger(self) -> logging.Logger:
        return log

    def stage_dir(self, name: str) -> Path:
        path = layout.stage_dir(self.directory, check_name(name, "the stage name"))
        path.mkdir(parents=True, exist_ok=True)
        return path

    def dataset(self, name: str) -> MedicalDataset:
        try:
            return self.datasets[name]
        except KeyError:
            raise UsageError(f"Run has no dataset '{name}'; it has: {', '.join(self.datasets) or 'none'}") from None


def resolve_device(spec: str) -> str:
    """``auto`` → ``cuda`` when available else ``cpu``; a CUDA device that is not there is a usage error."""
    import torch

    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"device '{spec}' requested but CUDA is not available (torch {torch.__version__})",
                             hint="use --device cpu or --device auto")
        index = int(spec.split(":")[1]) if ":" in spec else 0
        if index >= torch.cuda.device_count():
            raise UsageError(f"device '{spec}' requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return spec


def prepare_run(manager: PluginManager, config: RunConfig, directory: str | os.PathLike | None = None,
                console: Console | None = None) -> Run:
    """Build datasets and stages (all cheap) and check them, before any work; no files written yet.

    Under torchrun, joins the job's process group first (:func:`mednns.distributed.initialize`):
    the device becomes this rank's GPU, and ranks other than 0 get a quiet console.
    """
    if config.strict_plugins:
        manager.raise_for_errors()
    job, device = initialize(resolve_device(config.device))
    issues: list[ConfigIssue] = []
    datasets: dict[str, MedicalDataset] = {}
    for i, _, dataset in _build(manager, "datasets", config.datasets, issues):
        problem = name_problem(dataset.name)
        if problem:
            issues.append(ConfigIssue(f"datasets[{i}]", f"the dataset name {problem}",
                                      "its folders are named after it: give it another 'name' argument"))
            continue
        if dataset.name in datasets:
            issues.append(ConfigIssue(f"datasets[{i}]", f"a second dataset named '{dataset.name}'",
                                      "give one of them another 'name' argument"))
        datasets[dataset.name] = dataset
    stages = [(spec, stage) for _, spec, stage in _build(manager, "stages", config.stages, issues)]
    for spec, stage in stages:
        stage.name = spec["name"]
    if issues:
        raise ConfigError(issues)
    directory = Path(directory) if directory is not None else Path(config.output_dir) / str(config.name)
    if not job.is_main:
        console = Console(quiet=True)
    return Run(directory.resolve(), config, manager, device, datasets, stages, console or Console(), job)


def _build(manager: PluginManager, kind: str, specs: Sequence[dict[str, Any]],
           issues: list[ConfigIssue]) -> list[tuple[int, dict[str, Any], Any]]:
    """Call the factory of each validated component spec; failures become issues at ``kind[i]``."""
    built = []
    for i, spec in enumerate(specs):
        try:
            built.append((i, spec, manager.registry(kind).get(spec["name"]).factory(**spec["args"])))
        except MednnsError as exc:
            issues.append(ConfigIssue(f"{kind}[{i}]", exc.message, exc.hint))
    return built


def git_sha(path: Path) -> str | None:
    """The commit of the git checkout holding ``path`` (``+dirty`` when modified), or ``None``."""
    try:
        sha = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}+dirty" if dirty else sha


def environment_facts(device: str) -> dict[str, Any]:
    import numpy
    import torch

    return {
        "mednns": mednns.__version__,
        "git_sha": git_sha(Path(mednns.__file__).resolve().parent),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": platform.node(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "command": sys.argv,
        "cwd": os.getcwd(),
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def write_run_metadata(run: Run) -> None:
    """Write ``config.yaml``, ``plugins.json`` and ``environment.json`` into the run directory."""
    run.directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.directory / "config.yaml", dump_yaml(run.config.to_dict()))
    plugins = [r.to_dict() for r in run.manager.records.values()]
    write_json(run.directory / "plugins.json", plugins)
    write_json(run.directory / "environment.json", environment_facts(run.device))
