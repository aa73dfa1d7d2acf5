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
#: The files of a trained meta-space folder (``fit_meta_space``, each evaluation fold, a bundle):
#: its network, its manifest, every zoo row's embedding, the fit's report, the training datasets'
#: encoded images (the model encoders' setup reads them).
META_SPACE_WEIGHTS, META_SPACE_MANIFEST, META_SPACE_EMBEDDINGS, META_SPACE_REPORT, META_SPACE_FEATURES = (
    "metaspace.safetensors", "metaspace.json", "model_embeddings.npy", "report.json", "dataset_features.npz")
META_SPACE_FILES = (META_SPACE_WEIGHTS, META_SPACE_MANIFEST, META_SPACE_EMBEDDINGS, META_SPACE_REPORT,
                    META_SPACE_FEATURES)


def member_files(member: int) -> tuple[str, str]:
    """The weights and the zoo-row embeddings of one member of a meta-space ensemble (``members``
    > 1): the first member's are the single meta-space's files, the others' are numbered."""
    if member == 0:
        return META_SPACE_WEIGHTS, META_SPACE_EMBEDDINGS
    return f"metaspace.member{member}.safetensors", f"model_embeddings.member{member}.npy"


def meta_space_files(members: int = 1) -> tuple[str, ...]:
    """Every file of a meta-space folder of ``members`` members."""
    return (*META_SPACE_FILES, *(f for member in range(1, members) for f in member_files(member)))


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
