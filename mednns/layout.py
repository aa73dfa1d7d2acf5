"""Where a run directory keeps what its built-in stages make: one owner for each path.

A run directory holds ``stages/<stage>/``; the built-in stages' main outputs sit at fixed places in
it, which other stages, commands and the evaluation read. They are named here once.
"""

from __future__ import annotations

import os
from pathlib import Path

STAGES = "stages"
#: The built-in stages whose files others read.
SUPERNET_STAGE, ZOO_STAGE, META_SPACE_STAGE = "train_supernet", "build_zoo", "fit_meta_space"
QUERY_STAGE, EVALUATE_STAGE = "query", "evaluate"
#: The zoo store of an unsharded build.
ZOO_STORE = "zoo.sqlite"


def stage_dir(run_directory: str | os.PathLike, stage: str) -> Path:
    """``<run>/stages/<stage>`` (not created)."""
    return Path(run_directory) / STAGES / stage


def supernet_root(run_directory: str | os.PathLike) -> Path:
    """The folder holding one trained supernet folder per dataset."""
    return stage_dir(run_directory, SUPERNET_STAGE)


def zoo_store(run_directory: str | os.PathLike) -> Path:
    """The run's zoo store."""
    return stage_dir(run_directory, ZOO_STAGE) / ZOO_STORE


def meta_space_dir(run_directory: str | os.PathLike) -> Path:
    """The run's trained meta-space folder."""
    return stage_dir(run_directory, META_SPACE_STAGE)
