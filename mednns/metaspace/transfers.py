"""Cross-dataset supervision: how zoo models do when handed over to the *other* zoo datasets.

A zoo row measures a subnet on the dataset its supernet was trained on; a query asks something
else: which model, taken from another dataset and fine-tuned, does best on a new one. Transfer
pairs measure that directly. For every training dataset ``D`` of a meta-space, a seeded sample of
``models`` zoo rows of other datasets is extracted with its inherited weights, adapted as an export
is (first convolution to ``D``'s channels, a new head), fine-tuned on a seeded subset of ``D``'s
training split with the configured budget and transfer recipe, and ``D``'s **validation** metric
after the last epoch is recorded (the test split is never read for a pair's number). The
meta-space then learns these ``(D, model)`` pairs beside the in-domain rows
(:class:`~mednns.metaspace.fit.MetaSpaceFitter`'s ``pairs``).

The sample of ``D`` depends only on ``D``, the zoo and the seed, so the folds of a
leave-one-dataset-out evaluation share pairs; each pair is cached in the user cache (keyed by the
supernet's weights file, the architecture, the training subset's digest and the settings). A fold
drops the pairs that involve its held-out dataset, as model or as target.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from mednns.errors import UsageError
from mednns.metaspace.contracts import ModelTable

if TYPE_CHECKING:
    from rich.console import Console

    from mednns.data import MedicalDataset
    from mednns.registry import ComponentSource

log = logging.getLogger("mednns.metaspace")


@dataclass(frozen=True)
class TransferSettings:
    """How transfer pairs are measured.

    :param models: zoo rows of other datasets fine-tuned per target dataset.
    :param images: training images of the target per fine-tuning (a seeded subset).
    :param epochs: fine-tuning epochs.
    :param finetune: other :class:`mednns.finetune.FinetuneConfig` fields (default: the transfer
        recipe the published pairs were measured with: BN recalibrated, one head-only epoch, no
        solved head; kept so that a measured pair stays measured, as its cache key and the
        evaluation's meta-space keys are those settings).
    :param seed: seed of the samples and subsets.
    :param repeats: fine-tunings per pair, each with its own seed (subset, head, batch order); the
        pair's value is their mean. A single fine-tuning's seed noise is about as large as the
        differences between candidates, so one repeat teaches mostly noise.
    """

    models: int = 16
    images: int = 800
    epochs: int = 8
    finetune: dict[str, Any] = field(default_factory=lambda: {"recalibrate_bn": True, "head_epochs": 1,
                                                              "fit_head": False})
    seed: int = 0
    repeats: int = 1

    def __post_init__(self) -> None:
        if self.models < 1 or self.images < 2 or self.epochs < 1 or self.repeats < 1:
            raise UsageError("transfers need models >= 1, images >= 2, epochs >= 1 and repeats >= 1")
        own = {"epochs", "max_train_images", "seed"}  # set by the transfer settings themselves
        wrong = sorted(set(self.finetune) & own)
        if wrong:
            raise UsageError(f"transfers.finetune: set {', '.join(wrong)} with the transfer settings themselves")
        from mednns.finetune import FinetuneConfig

        known = {f.name for f in fields(FinetuneConfig)}
        unknown = sorted(set(self.finetune) - known)
        if unknown:
            raise UsageError(f"transfers.finetune: unknown key(s) {', '.join(unknown)}",
                             hint=f"fine-tuning settings: {', '.join(sorted(known - own))}")

    @classmethod
    def from_spec(cls, spec: dict[str, Any] | bool | None) -> "TransferSettings | None":
        """From a config value: ``null``/``false`` (off), ``true`` (defaults) or a mapping."""
        if spec is None or spec is False:
            return None
        if spec is True:
            return cls()
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(spec) - set(known))
        if unknown:
            raise UsageError(f"transfers: unknown key(s) {', '.join(unknown)}", hint=f"known: {', '.join(known)}")
        return cls(**spec)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sample_pairs(table: ModelTable, targets: Sequence[str], settings: TransferSettings) -> list[tuple[str, int]]:
    """``(target dataset, table row)`` pairs: per target, ``models`` rows of the other datasets,
    drawn from a seed of the target alone (every fold draws the same)."""
    pairs = []
    for target in targets:
        others = [i for i, d in enumerate(table.dataset) if d != target]
        rng = random.Random(f"transfers:{settings.seed}:{target}")
        chosen = sorted(rng.sample(others, min(settings.models, len(others))), key=lambda i: int(table.ids[i]))
        pairs += [(target, i) for i in chosen]
    return pairs


def _pair_key(table: ModelTable, row: int, digest: str, settings: TransferSettings) -> str:
    """The cache key of one fine-tuning of a pair: the weights, the architecture, the training
    subset (one per repeat) and the settings but ``repeats`` (a fine-tuning does not depend on how
    many there are, so a pair measured once keeps its first one when repeats are added), the
    transfer recipe as the fields that act."""
    from mednns.finetune import RECIPE_OFF, FinetuneConfig
    from mednns.training import SUPERNET_WEIGHTS

    weights = Path(table.supernet[row]) / SUPERNET_WEIGHTS
    stamp = weights.stat().st_mtime_ns if weights.is_file() else 0
    own = {k: v for k, v in settings.to_dict().items() if k != "repeats"}
    # the recipe as it acts, not as spelled: a pinned recipe keeps its key when FinetuneConfig's recipe defaults change
    recipe = FinetuneConfig(**{**settings.finetune, "epochs": settings.epochs}).active_recipe()
    own["finetune"] = {**{k: v for k, v in settings.finetune.items() if k not in RECIPE_OFF}, **recipe}
    text = json.dumps([str(weights.resolve()), stamp, table.arch[row], digest, own], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def measure_pairs(table: ModelTable, pairs: Sequence[tuple[str, int]], datasets: dict[str, MedicalDataset],
                  settings: TransferSettings, *, cache: Path, device: str = "cpu",
                  manager: ComponentSource | None = None, console: Console | None = None,
                  progress: bool = True) -> list[dict[str, Any]]:
    """Fine-tune every pair ``repeats`` times (or read each from ``cache``): per pair ``{dataset, row,
    val_acc, val_auc, val_majority, seconds, cached, fresh, fresh_seconds}`` (means over the repeats,
    with ``val_accs`` when there are several; ``fresh``: the repeats fine-tuned now) in the order of
    ``pairs``."""
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from mednns.data import majority_rate, tensor_digest
    from mednns.export import adapt_network
    from mednns.files import read_json, write_json
    from mednns.finetune import FinetuneConfig, FinetuneData, train_model
    from mednns.seeding import derive_seed
    from mednns.training import load_supernet

    folder = cache / "transfers"
    data: dict[tuple[str, int], tuple[FinetuneData, str, float, FinetuneConfig]] = {}
    supernets: dict[str, Any] = {}

    def prepared(name: str, repeat: int) -> tuple[FinetuneData, str, float, FinetuneConfig]:
        """The subset, its digest, the validation majority rate and the configuration of one repeat
        (the first keeps the seed pairs were measured with before repeats existed)."""
        if (name, repeat) not in data:
            parts = ("transfers", name) if repeat == 0 else ("transfers", name, repeat)
            config = FinetuneConfig(**{**settings.finetune, "epochs": settings.epochs,
                                       "max_train_images": settings.images,
                                       "seed": derive_seed(settings.seed, *parts)})
            subset = FinetuneData.from_dataset(datasets[name], config)
            majority = majority_rate(datasets[name].info.task, subset.val_y.numpy())
            data[name, repeat] = (subset, tensor_digest(subset.train_x, subset.train_y), majority, config)
        return data[name, repeat]

    def fine_tune(name: str, row: int, repeat: int) -> dict[str, Any]:
        subset, digest, majority, config = prepared(name, repeat)
        path = folder / f"{_pair_key(table, row, digest, settings)}.json"
        if path.is_file():
            return {**read_json(path), "cached": True}
        start = time.perf_counter()
        if table.supernet[row] not in supernets:
            supernets[table.supernet[row]] = load_supernet(table.supernet[row], manager=manager)
        space, _ = supernets[table.supernet[row]]
        info = datasets[name].info
        model = space.extract(space.arch_from_json(table.arch[row])).cpu()
        adapt_network(model, num_classes=info.n_classes, in_channels=info.n_channels, seed=config.seed)
        torch.manual_seed(config.seed)
        trained = train_model(model, subset, config, device=device, progress=False, pretrained=True,
                              eval_epochs=[settings.epochs], label=f"{name} <- zoo row {int(table.ids[row])}")
        last = trained["history"][-1]
        record = {"dataset": name, "zoo_id": int(table.ids[row]), "source": table.dataset[row],
                  "val_acc": float(last["val_acc"]), "val_auc": float(last["val_auc"]),
                  "val_majority": float(majority), "seconds": round(time.perf_counter() - start, 3)}
        write_json(path, record)
        return {**record, "cached": False}

    results = []
    columns = (TextColumn("[bold]transfer pairs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not progress) as bar:
        task = bar.add_task("pairs", total=len(pairs) * settings.repeats)
        for name, row in pairs:
            repeats = []
            for repeat in range(settings.repeats):
                repeats.append(fine_tune(name, row, repeat))
                bar.update(task, advance=1)
            first = repeats[0]
            mean = {key: float(np.mean([r[key] for r in repeats])) for key in ("val_acc", "val_auc", "val_majority")}
            fresh = [r for r in repeats if not r["cached"]]
            results.append({**first, **mean, "seconds": round(sum(r["seconds"] for r in repeats), 3),
                            "cached": not fresh, "fresh": len(fresh),
                            "fresh_seconds": round(sum(r["seconds"] for r in fresh), 3), "row": row,
                            **({"val_accs": [r["val_acc"] for r in repeats]} if settings.repeats > 1 else {})})
    return results


def pair_targets(measured: Sequence[dict[str, Any]], target: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per target dataset, ``(rows, targets)`` arrays of its pairs in the meta-space's target metric
    (``val_lift``: the ACC's lift over the dataset's validation majority-class rate)."""
    from mednns.metaspace.table import lift

    grouped: dict[str, tuple[list[int], list[float]]] = {}
    for m in measured:
        if target == "val_lift":
            value = lift(m["val_acc"], m["val_majority"])
        else:
            value = m[target]
        if value is None or not np.isfinite(value):
            continue
        rows, values = grouped.setdefault(m["dataset"], ([], []))
        rows.append(int(m["row"]))
        values.append(float(value))
    return {d: (np.asarray(r, dtype=np.int64), np.asarray(v, dtype=np.float32)) for d, (r, v) in grouped.items()}
