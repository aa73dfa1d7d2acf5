"""Meta-space training hyper-parameters (plain data, no torch: the ``fit_meta_space`` plugin imports it)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from mednns.errors import UsageError


@dataclass(frozen=True)
class FitConfig:
    """Hyper-parameters of meta-space training.

    :param embed_dim: size of the meta-space. :param hidden: width of its MLPs.
    :param steps: optimizer steps (at most). :param lr: peak AdamW learning rate (cosine decay).
    :param weight_decay: AdamW weight decay.
    :param models_per_dataset: models per dataset per step.
    :param images_per_set: image features per dataset per step.
    :param val_fraction: share of each training dataset's rows kept out for validation.
    :param eval_every: steps between validations. :param patience: validations without improvement
        before stopping.
    :param select_by: which output chooses the best step: the ``predicted`` metric or the
        retrieval ``score``.
    :param seed: seed of the splits, the batches and the initial weights.
    """

    embed_dim: int = 64
    hidden: int = 128
    steps: int = 3000
    lr: float = 1e-3
    weight_decay: float = 1e-4
    models_per_dataset: int = 64
    images_per_set: int = 256
    val_fraction: float = 0.2
    eval_every: int = 100
    patience: int = 8
    select_by: Literal["predicted", "score"] = "predicted"
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.embed_dim, self.hidden, self.steps, self.models_per_dataset, self.images_per_set,
               self.eval_every, self.patience) < 1:
            raise UsageError("embed_dim, hidden, steps, models_per_dataset, images_per_set, eval_every and "
                             "patience must be >= 1")
        if not 0 <= self.val_fraction < 1:
            raise UsageError(f"val_fraction must be in [0, 1), got {self.val_fraction}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
