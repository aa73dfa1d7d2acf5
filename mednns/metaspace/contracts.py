"""The plugin contracts of the meta-space: dataset encoders, model encoders and loss terms.

The meta-space embeds datasets and zoo models into one vector space (MedNNS, step 3):

* a **dataset encoder** (kind ``dataset-encoders``) is a *frozen* per-image feature extractor:
  :class:`DatasetEncoder`. The meta-space puts a learnable set-encoder head on top of a sample of
  a dataset's per-image features; features are cached per (dataset, encoder);
* a **model encoder** (kind ``model-encoders``) is a *trainable* module that embeds zoo rows:
  :class:`ModelEncoder`. It sees the whole zoo once (:meth:`ModelEncoder.setup`) to build its
  per-space layers and precompute its inputs, then embeds rows by index;
* a **loss term** (kind ``losses``) turns one training batch (:class:`MetaBatch`) into a scalar:
  :class:`LossTerm`. The meta-space sums the configured terms with their weights.

Everything here is plain torch; factories registered through the hooks return these objects.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn


class DatasetEncoder(abc.ABC):
    """A frozen feature extractor for medical images.

    Subclasses set :attr:`feature_dim` and implement :meth:`encode_images` and :meth:`cache_key`.
    """

    #: Length of one image's feature vector.
    feature_dim: int

    @abc.abstractmethod
    def cache_key(self) -> str:
        """A string that changes whenever the features would (name, arguments, weights' identity)."""

    @abc.abstractmethod
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Features of a batch of images.

        :param images: float32 ``(N, C, H, W)`` in ``[0, 1]`` (not normalized), ``C`` 1 or 3, any size;
            the encoder resizes, adapts channels and normalizes as it needs.
        :returns: float32 ``(N, feature_dim)`` on the CPU.
        """

    def to(self, device: torch.device | str) -> "DatasetEncoder":
        """Move any weights to ``device`` (default: nothing to move)."""
        return self


@dataclass
class ModelTable:
    """Every zoo row the meta-space sees, as aligned arrays (row ``i`` of each field is one model).

    :param ids: zoo row ids.
    :param dataset: source dataset name per row.
    :param space: search space name per row.
    :param encoding: architecture encoding per row (lengths differ between spaces).
    :param params: :param macs: costs.
    :param target: the measured metric the meta-space learns (e.g. validation ACC).
    :param arch: canonical architecture JSON per row.
    :param supernet: supernet folder per row (to extract weights for functional encodings).
    """

    ids: np.ndarray
    dataset: list[str]
    space: list[str]
    encoding: list[np.ndarray]
    params: np.ndarray
    macs: np.ndarray
    target: np.ndarray
    arch: list[str]
    supernet: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def rows_of(self, dataset: str) -> np.ndarray:
        """Row indices of one dataset."""
        return np.array([i for i, d in enumerate(self.dataset) if d == dataset], dtype=np.int64)

    @property
    def datasets(self) -> list[str]:
        return sorted(set(self.dataset))


class ModelEncoder(nn.Module, abc.ABC):
    """A trainable embedding of zoo models.

    :attr:`embed_dim` is the output size. :meth:`setup` is called once, before training, with the
    table of every model the encoder will ever embed (training and query rows alike); then
    ``forward(index)`` embeds rows of that table.
    """

    embed_dim: int

    @abc.abstractmethod
    def setup(self, table: ModelTable, context: dict[str, Any]) -> None:
        """Build per-space layers and precompute inputs for every row of ``table``.

        :param context: shared facts: ``device``, ``cache_dir`` (where expensive inputs may be
            cached), ``seed``, ``dataset_features`` (per dataset name of the table, the frozen
            dataset encoder's ``(N, F)`` per-image features: what each row's weights learnt from).
        """

    @abc.abstractmethod
    def forward(self, index: torch.Tensor) -> torch.Tensor:
        """``(B,)`` row indices → ``(B, embed_dim)`` embeddings."""


@dataclass
class MetaBatch:
    """One meta-space training step: ``D`` datasets, up to ``M`` models each (padded, masked).

    :param dataset_embedding: ``(D, E)``.
    :param model_embedding: ``(D, M, E)``.
    :param predicted: ``(D, M)`` predicted metric of each (dataset, model) pair.
    :param score: ``(D, M)`` retrieval score (cosine similarity of dataset and model embeddings).
    :param target: ``(D, M)`` measured metric.
    :param mask: ``(D, M)`` bool, true where a model is present.
    :param fid: ``(D, D)`` normalized Fréchet distances between the batch's datasets, or ``None``.
    """

    dataset_embedding: torch.Tensor
    model_embedding: torch.Tensor
    predicted: torch.Tensor
    score: torch.Tensor
    target: torch.Tensor
    mask: torch.Tensor
    fid: torch.Tensor | None = None


class LossTerm(abc.ABC):
    """One term of the meta-space loss; ``term(batch)`` returns a scalar tensor (differentiable)."""

    @abc.abstractmethod
    def __call__(self, batch: MetaBatch) -> torch.Tensor:
        """The term's value on ``batch`` (0 when the batch carries nothing for it)."""
