"""The meta-space network: a set encoder for datasets, a model encoder for zoo rows, a predictor.

A dataset is a *set* of per-image features (from a frozen :class:`~mednns.metaspace.contracts.DatasetEncoder`).
:class:`SetEncoder` standardizes them with statistics fixed at construction, embeds each image with
an MLP, pools mean and standard deviation over the set (so the embedding does not depend on the
set's size or order) and maps the pool to the meta-space. Models are embedded by a
:class:`~mednns.metaspace.contracts.ModelEncoder` plugin and projected to the same size.
:class:`MetaSpace` returns, for D datasets and up to M models each, the fields of a
:class:`~mednns.metaspace.contracts.MetaBatch`: embeddings, the predicted metric of every pair
(an MLP on the two unit-length embeddings and their product, sigmoid) and the retrieval score
(cosine similarity).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from mednns.metaspace.contracts import ModelEncoder


def mlp(sizes: Sequence[int], dropout: float = 0.0) -> nn.Sequential:
    """Linear layers with GELU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.GELU())
            if dropout:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


class SetEncoder(nn.Module):
    """Per-image features ``(N, F)`` → one dataset embedding ``(E,)``, invariant to order and size.

    :param feature_dim: ``F``. :param embed_dim: ``E``. :param hidden: width of both MLPs.
    :param mean: :param std: per-feature standardization (from the training datasets' features).
    """

    mean: torch.Tensor  # buffers
    std: torch.Tensor

    def __init__(self, feature_dim: int, embed_dim: int, hidden: int = 128, *, mean: torch.Tensor | None = None,
                 std: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("mean", mean.float() if mean is not None else torch.zeros(feature_dim))
        self.register_buffer("std", std.float().clamp_min(1e-6) if std is not None else torch.ones(feature_dim))
        self.phi = mlp([feature_dim, hidden, hidden])
        self.rho = mlp([2 * hidden, hidden, embed_dim])

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h = self.phi((features - self.mean) / self.std)
        pooled = torch.cat([h.mean(0), h.std(0, unbiased=False)])
        return self.rho(pooled)


class MetaSpace(nn.Module):
    """Datasets and models in one space.

    :param feature_dim: per-image feature size of the dataset encoder.
    :param model_encoder: a model-encoder plugin, already :meth:`~ModelEncoder.setup` on the zoo.
    :param embed_dim: size of the meta-space.
    :param hidden: width of the set encoder and the predictor.
    :param feature_mean: :param feature_std: feature standardization (training datasets).
    """

    def __init__(self, feature_dim: int, model_encoder: ModelEncoder, embed_dim: int = 64, hidden: int = 128, *,
                 feature_mean: torch.Tensor | None = None, feature_std: torch.Tensor | None = None):
        super().__init__()
        self.dataset_encoder = SetEncoder(feature_dim, embed_dim, hidden, mean=feature_mean, std=feature_std)
        self.model_encoder = model_encoder
        self.model_projection = nn.Linear(model_encoder.embed_dim, embed_dim)
        self.predictor = mlp([3 * embed_dim, hidden, 1])

    def embed_datasets(self, feature_sets: Sequence[torch.Tensor]) -> torch.Tensor:
        """``D`` feature sets → ``(D, E)``."""
        return torch.stack([self.dataset_encoder(f) for f in feature_sets])

    def embed_models(self, index: torch.Tensor) -> torch.Tensor:
        """Zoo-table row indices of any shape ``S`` → ``S + (E,)``."""
        flat = self.model_encoder(index.reshape(-1))
        return self.model_projection(flat).reshape(*index.shape, -1)

    def pair(self, dataset_embedding: torch.Tensor, model_embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted metric and cosine score of every (dataset, model) pair.

        :param dataset_embedding: ``(D, E)``. :param model_embedding: ``(D, M, E)``.
        :returns: two ``(D, M)`` tensors.
        """
        d = F.normalize(dataset_embedding, dim=-1).unsqueeze(1).expand_as(model_embedding)
        m = F.normalize(model_embedding, dim=-1)
        # unit-length inputs bound the predictor's logits: an unseen dataset whose features lie far
        # from the training datasets' cannot push every prediction to 0 or 1
        predicted = torch.sigmoid(self.predictor(torch.cat([d, m, d * m], -1)).squeeze(-1))
        score = (d * m).sum(-1)
        return predicted, score

    def forward(self, feature_sets: Sequence[torch.Tensor], model_index: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(dataset_embedding (D, E), model_embedding (D, M, E), predicted (D, M), score (D, M))``."""
        datasets = self.embed_datasets(feature_sets)
        models = self.embed_models(model_index)
        predicted, score = self.pair(datasets, models)
        return datasets, models, predicted, score
