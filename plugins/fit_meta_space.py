"""Built-in stage ``fit_meta_space``: train the meta-space on a run's zoo.

Reads the zoo (default: this run's ``stages/build_zoo/zoo.sqlite``), encodes a sample of every
zoo dataset's training images with the dataset encoder (cached), computes the FIDs between the
training datasets (cached), sets the model encoder up on every zoo row, and trains
(:mod:`mednns.metaspace.fit`). Files under ``stages/fit_meta_space/``::

    metaspace.safetensors  the trained network (set encoder, model encoder, predictor)
    metaspace.json         how to rebuild it: zoo, target, encoders, losses, datasets, config
    model_embeddings.npy   every zoo row's meta-space embedding (row ids in metaspace.json)
    report.json            per-dataset Spearman / Kendall / top-1 regret, history, FID matrix
    metaspace.member<k>.safetensors, model_embeddings.member<k>.npy
                           the further members of an ensemble (``members`` > 1)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import mednns
from mednns.layout import META_SPACE_STAGE, meta_space_files
from mednns.metaspace import FitConfig, MetaSpaceSettings
from mednns.stages import Stage

STAGE = META_SPACE_STAGE


class FitMetaSpace(Stage):
    """Train the meta-space on the zoo (held-out datasets are validated on, never trained on).

    :param zoo: the zoo store (default: this run's ``stages/build_zoo/zoo.sqlite``).
    :param held_out: datasets whose rows and FIDs stay out of training (they must be run datasets).
    :param target: the zoo metric to learn: ``val_acc``, ``val_auc`` or ``val_lift`` (ACC lift over
        the validation majority-class rate, comparable across datasets; :func:`mednns.metaspace.table.lift`).
    :param dataset_encoder: per-image feature extractor (``mednns list dataset-encoders``).
    :param model_encoder: zoo-row encoder (``mednns list model-encoders``).
    :param losses: loss terms (``mednns list losses``). :param loss_weights: weight per loss name (default 1).
    :param images: training images encoded per dataset.
    :param transfers: cross-dataset supervision: ``true`` or ``{models, images, epochs, finetune,
        seed, repeats}`` fine-tunes, per training dataset, a sample of zoo models of the *other*
        datasets on it (``repeats`` times each) and learns those pairs too
        (:mod:`mednns.metaspace.transfers`; off by default).
    :param members: train this many meta-spaces that differ only in their fit seed (an ensemble);
        a query ranks the zoo by their mean prediction. One meta-space's ranking of the zoo changes
        with its seed (its predictions over the zoo correlate about 0.47 between seeds in the
        CPU evaluation), so its top-1 is partly a draw of the seed; default 1.
    :param progress: show progress bars.
    :param fit: the :class:`mednns.metaspace.FitConfig` settings but its seed (the run's), flat
        beside the others: ``embed_dim``, ``hidden``, ``steps``, ``lr``, ``weight_decay``,
        ``models_per_dataset``, ``images_per_set``, ``val_fraction``, ``eval_every``, ``patience``,
        ``select_by``.
    """

    name = STAGE
    reads = ("build_zoo",)  # the zoo (which names the supernets)
    fingerprint_omits = {"members": 1}  # added later: one member is the meta-space as before

    @mednns.takes_settings(FitConfig, exclude=("seed",))
    def __init__(self, zoo: str | None = None, held_out: list[str] | None = None,
                 target: Literal["val_acc", "val_auc", "val_lift"] = "val_acc",
                 dataset_encoder: mednns.ComponentSpec[Literal["dataset-encoders"]] | None = None,
                 model_encoder: mednns.ComponentSpec[Literal["model-encoders"]] | None = None,
                 losses: list[mednns.ComponentSpec[Literal["losses"]]] | None = None,
                 loss_weights: dict[str, float] | None = None, images: int = 1000,
                 transfers: dict[str, Any] | bool | None = None, members: int = 1, progress: bool = True,
                 **fit: Any):
        self.settings = MetaSpaceSettings.from_args(
            zoo=zoo, held_out=held_out, target=target, dataset_encoder=dataset_encoder, model_encoder=model_encoder,
            losses=losses, loss_weights=loss_weights, images=images, transfers=transfers, members=members,
            progress=progress, **fit)  # validated before any work

    def outputs(self, run) -> list[Path]:
        directory = run.stage_dir(self.name)  # mednns.metaspace.train writes them under these names
        return [directory / f for f in meta_space_files(self.settings.members)]

    def run(self, run) -> dict[str, Any]:
        from mednns.metaspace import train_meta_space

        return train_meta_space(run, self.settings)


@mednns.hookimpl
def register_stages(register):
    register(STAGE, FitMetaSpace, description="Train the meta-space (dataset and model encoders, weighted loss "
                                              "terms) on the zoo; reports rank correlations")
