"""The meta-space: datasets and zoo models embedded into one space (MedNNS, step 3).

Modules: :mod:`~mednns.metaspace.contracts` (the plugin contracts: dataset encoders, model
encoders, loss terms, the training batch), :mod:`~mednns.metaspace.features` (image sampling and
cached per-image features), :mod:`~mednns.metaspace.fid` (Fréchet distances between datasets),
:mod:`~mednns.metaspace.model` (the meta-space network: set encoder, predictor) and
:mod:`~mednns.metaspace.fit` (training on a zoo). Built-in encoders and loss terms live in
``mednns.plugins`` and register through the hooks like any third-party plugin.
"""

from __future__ import annotations

from mednns._exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), {
    "DatasetEncoder": "mednns.metaspace.contracts",
    "ModelEncoder": "mednns.metaspace.contracts",
    "LossTerm": "mednns.metaspace.contracts",
    "ModelTable": "mednns.metaspace.contracts",
    "MetaBatch": "mednns.metaspace.contracts",
    "batch_mask": "mednns.metaspace.losses",
    "masked": "mednns.metaspace.losses",
    "masked_mean": "mednns.metaspace.losses",
    "FitConfig": "mednns.metaspace.settings",
    "MetaSpaceSettings": "mednns.metaspace.settings",
    "train_meta_space": "mednns.metaspace.train",
    "load_meta_space": "mednns.metaspace.train",
    "load_members": "mednns.metaspace.train",
    "TrainedMetaSpace": "mednns.metaspace.train",
    "Constraints": "mednns.metaspace.retrieval",
    "query": "mednns.metaspace.retrieval",
    "predict_all": "mednns.metaspace.retrieval",
    "dataset_features": "mednns.metaspace.features",
    "features_key": "mednns.metaspace.features",
    "fid_matrix": "mednns.metaspace.fid",
    "fid_between": "mednns.metaspace.fid",
    "save_heatmap": "mednns.metaspace.fid",
})
