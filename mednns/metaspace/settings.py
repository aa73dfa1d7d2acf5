"""Meta-space training settings (plain data, no torch: the ``fit_meta_space`` plugin and the evaluation import it)."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, Mapping, Sequence

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


#: What a meta-space learns to predict (:func:`mednns.metaspace.table.load_table`).
Target = Literal["val_acc", "val_auc", "val_lift"]
DEFAULT_DATASET_ENCODER: dict[str, Any] = {"name": "image_stats", "args": {}}
DEFAULT_MODEL_ENCODER: dict[str, Any] = {"name": "arch", "args": {}}
DEFAULT_LOSSES: tuple[dict[str, Any], ...] = ({"name": "performance", "args": {}}, {"name": "rank", "args": {}},
                                              {"name": "fid", "args": {}})
#: FitConfig fields a caller sets (the seed is derived from the run's).
FIT_KEYS = tuple(f.name for f in fields(FitConfig) if f.name != "seed")


def component(value: Mapping[str, Any]) -> dict[str, Any]:
    """A component spec with its ``args`` always a dict (a config may leave them out)."""
    return {"name": value["name"], "args": copy.deepcopy(dict(value.get("args") or {}))}


@dataclass(frozen=True)
class MetaSpaceSettings:
    """Everything one meta-space training is made of: what the ``fit_meta_space`` stage and the
    evaluation's per-fold meta-spaces hand to :func:`mednns.metaspace.train.train_meta_space`.

    :param zoo: the zoo store (``None``: the run's ``build_zoo`` store).
    :param held_out: datasets whose rows and FIDs stay out of training.
    :param target: the zoo metric to learn. :param dataset_encoder: :param model_encoder: component
        specs ``{name, args}``. :param losses: loss-term specs. :param loss_weights: weight per loss
        name (default 1). :param images: training images encoded per dataset.
    :param fit: the training hyper-parameters (its seed is replaced by one derived from the run's).
    :param transfers: cross-dataset supervision (:class:`mednns.metaspace.transfers.TransferSettings`
        as a mapping; ``None``: off): zoo models fine-tuned on the other training datasets.
    :param members: meta-spaces trained alike but for their fit seed; a query averages their
        predictions (one meta-space's ranking of the zoo depends on its seed much more than its top-1 can afford).
    :param progress: show progress bars.
    """

    zoo: str | None = None
    held_out: tuple[str, ...] = ()
    target: Target = "val_acc"
    dataset_encoder: dict[str, Any] = field(default_factory=lambda: component(DEFAULT_DATASET_ENCODER))
    model_encoder: dict[str, Any] = field(default_factory=lambda: component(DEFAULT_MODEL_ENCODER))
    losses: tuple[dict[str, Any], ...] = field(default_factory=lambda: tuple(component(s) for s in DEFAULT_LOSSES))
    loss_weights: dict[str, float] = field(default_factory=dict)
    images: int = 1000
    fit: FitConfig = field(default_factory=FitConfig)
    transfers: dict[str, Any] | None = None
    members: int = 1
    progress: bool = True

    def __post_init__(self) -> None:
        names = [spec["name"] for spec in self.losses]
        unknown = sorted(set(self.loss_weights) - set(names))
        if unknown:
            raise UsageError(f"loss_weights names {', '.join(unknown)}, which are not in losses ({', '.join(names)})")
        if self.images < 2:
            raise UsageError("images must be >= 2")
        if self.members < 1:
            raise UsageError(f"members must be >= 1 (got {self.members})")

    @classmethod
    def from_args(cls, *, zoo: str | None = None, held_out: Sequence[str] | None = None, target: Target = "val_acc",
                  dataset_encoder: Mapping[str, Any] | None = None, model_encoder: Mapping[str, Any] | None = None,
                  losses: Sequence[Mapping[str, Any]] | None = None, loss_weights: Mapping[str, float] | None = None,
                  images: int = 1000, transfers: Mapping[str, Any] | bool | None = None, members: int = 1,
                  progress: bool = True, **fit: Any) -> MetaSpaceSettings:
        """The settings from a ``fit_meta_space`` stage's arguments (``fit``: :class:`FitConfig` fields)."""
        unexpected = sorted(set(fit) - set(FIT_KEYS))
        if unexpected:
            raise UsageError(f"unexpected meta-space argument(s): {', '.join(unexpected)}")
        return cls(zoo=zoo, held_out=tuple(held_out or ()), target=target,
                   dataset_encoder=component(dataset_encoder or DEFAULT_DATASET_ENCODER),
                   model_encoder=component(model_encoder or DEFAULT_MODEL_ENCODER),
                   losses=tuple(component(s) for s in (losses if losses is not None else DEFAULT_LOSSES)),
                   loss_weights=dict(loss_weights or {}), images=images, fit=FitConfig(**fit),
                   transfers=_transfers(transfers), members=members, progress=progress)

    def transfer_settings(self) -> Any:
        """The :class:`~mednns.metaspace.transfers.TransferSettings`, or ``None`` (off)."""
        from mednns.metaspace.transfers import TransferSettings

        return TransferSettings.from_spec(self.transfers)

    def weight(self, loss: str) -> float:
        """The weight of the loss term named ``loss``."""
        return float(self.loss_weights.get(loss, 1.0))


def _transfers(spec: Mapping[str, Any] | bool | None) -> dict[str, Any] | None:
    """A ``transfers`` value as a plain mapping (``true``: the defaults), checked; ``None`` when off."""
    from mednns.metaspace.transfers import TransferSettings

    settings = TransferSettings.from_spec(dict(spec) if isinstance(spec, Mapping) else spec)
    return settings.to_dict() if settings is not None else None
