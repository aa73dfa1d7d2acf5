"""A fold's meta-space embeddings of zoo models (a sample) and of datasets, saved for the report's t-SNE figure."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from mednns.evaluation.leave_one_out import Fold

#: Zoo models whose embeddings a fold keeps for the t-SNE figure.
EMBEDDING_SAMPLE = 1500


def save_embeddings(fold: Fold, path: Path, dataset_names: list[str]) -> None:
    """The fold's meta-space embeddings of zoo models (a sample) and of datasets, for t-SNE."""
    from mednns.metaspace.features import dataset_features
    from mednns.metaspace.train import load_meta_space
    from mednns.paths import cache_dir

    trained = load_meta_space(fold.meta_space(fold.settings.meta_space), manager=fold.run.manager,
                              device=fold.run.device, with_model_encoder=False)
    spec = trained.metadata["dataset_encoder"]
    encoder = fold.run.manager.create("dataset-encoders", spec["name"], **spec["args"]).to(fold.run.device)
    features = [torch.as_tensor(dataset_features(encoder, fold.run.dataset(n), images=trained.metadata["images"],
                                                 seed=trained.metadata["image_seed"], cache_dir=cache_dir(),
                                                 progress=False), device=fold.run.device)
                for n in dataset_names]
    with torch.no_grad():  # unit length: the predictor and the retrieval score see them so
        datasets = torch.nn.functional.normalize(trained.model.embed_datasets(features), dim=-1).cpu().numpy()
    models = trained.embeddings / np.maximum(np.linalg.norm(trained.embeddings, axis=1, keepdims=True), 1e-12)
    rows = len(trained.table)
    keep = np.sort(np.random.default_rng(0).permutation(rows)[:EMBEDDING_SAMPLE])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, model_embeddings=models[keep].astype(np.float32),
                        model_acc=trained.table.target[keep].astype(np.float32),
                        model_dataset=np.asarray(trained.table.dataset)[keep].astype(str),
                        dataset_embeddings=datasets.astype(np.float32),
                        dataset_names=np.asarray(dataset_names, dtype=str), held_out=np.asarray(fold.target))
