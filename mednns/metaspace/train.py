"""The ``fit_meta_space`` stage's work: gather the inputs, train, save what a query needs.

Inputs, in order: the zoo's :class:`~mednns.metaspace.contracts.ModelTable`; per-image features of
every zoo dataset and held-out dataset (cached in the user cache, keyed by dataset and encoder);
FIDs between the training datasets, normalized to a maximum of 1; the model encoder set up on every
row; the weighted loss terms. Then :class:`~mednns.metaspace.fit.MetaSpaceFitter` trains, and the
stage directory receives the weights, the metadata to rebuild the network, every row's embedding
and the report.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from rich.markup import escape
from rich.table import Table
from torch import nn

from mednns.errors import UsageError
from mednns.files import atomic_write_bytes, read_manifest, write_json
from mednns.layout import (
    META_SPACE_FEATURES,
    META_SPACE_MANIFEST,
    META_SPACE_REPORT,
    META_SPACE_STAGE,
    member_files,
    zoo_store,
)
from mednns.metaspace.contracts import ModelTable
from mednns.metaspace.features import dataset_features, features_key
from mednns.metaspace.fid import fid_matrix
from mednns.metaspace.fit import MetaSpaceFitter
from mednns.metaspace.model import MetaSpace
from mednns.metaspace.settings import MetaSpaceSettings
from mednns.metaspace.table import load_table
from mednns.paths import cache_dir
from mednns.seeding import derive_seed
from mednns.training.checkpoint import read_weights, save_weights
from mednns.zoo.store import ZooStore

if TYPE_CHECKING:
    from mednns.registry import ComponentSource

log = logging.getLogger("mednns.metaspace")
FORMAT = "mednns-metaspace/1"


def normalized_fid(matrix: np.ndarray) -> np.ndarray:
    """``matrix`` divided by its largest entry (all zeros stay zeros)."""
    top = float(matrix.max()) if matrix.size else 0.0
    return matrix / top if top > 0 else matrix


@torch.no_grad()
def all_model_embeddings(model: MetaSpace, rows: int, batch: int = 4096) -> np.ndarray:
    """Meta-space embeddings of rows ``0 .. rows-1`` of the table, ``(rows, E)`` float32."""
    model.eval()
    device = next(model.parameters()).device
    chunks = [model.embed_models(torch.arange(s, min(s + batch, rows), device=device)).cpu()
              for s in range(0, rows, batch)]
    return torch.cat(chunks).numpy().astype(np.float32)


def correlation_table(report: dict[str, Any]) -> Table:
    table = Table(title="meta-space validation (measured vs predicted metric | vs retrieval score)")
    for column in ("dataset", "kind", "models", "spearman", "kendall", "top-1 regret", "score spearman", "MAE"):
        table.add_column(column, justify="left" if column in ("dataset", "kind") else "right")
    for name, r in report.items():
        p, s = r["predicted"], r["score"]
        table.add_row(escape(name), r["kind"], str(r["models"]), f"{p['spearman']:.3f}", f"{p['kendall']:.3f}",
                      f"{p['top1_regret']:.4f}", f"{s['spearman']:.3f}", f"{r['mae']:.4f}")
    return table


def train_meta_space(run, settings: MetaSpaceSettings, directory: Path | None = None) -> dict[str, Any]:
    """Train and save the meta-space of ``run`` made of ``settings``.

    :param directory: where its files go (default: the run's ``fit_meta_space`` folder).
    """
    zoo_path = Path(settings.zoo) if settings.zoo else zoo_store(run.directory)
    if not zoo_path.is_file():
        raise UsageError(f"fit_meta_space: no zoo at {zoo_path}", hint="run a build_zoo stage first, or set 'zoo'")
    with ZooStore(zoo_path, readonly=True) as store:
        table = load_table(store, settings.target)
    train_names = [d for d in table.datasets if d not in settings.held_out]
    wanted = train_names + [d for d in settings.held_out if d not in train_names]
    missing = [d for d in wanted if d not in run.datasets]
    if missing:
        raise UsageError(f"fit_meta_space: the run has no dataset {', '.join(missing)} (the zoo or held_out names it)",
                         hint="add it under 'datasets' so its images can be encoded")
    cache = cache_dir()
    encoder_spec = settings.dataset_encoder
    encoder = run.manager.create("dataset-encoders", encoder_spec["name"], **encoder_spec["args"]).to(run.device)
    features, keys = {}, {}
    for name in wanted:
        dataset = run.dataset(name)
        features[name] = dataset_features(encoder, dataset, images=settings.images, seed=run.seed, cache_dir=cache,
                                          progress=settings.progress)
        keys[name] = features_key(encoder, dataset, images=settings.images, seed=run.seed)
    fid_names, fid = fid_matrix({n: features[n] for n in train_names}, cache=cache / "fid" / "pairs.json",
                                keys={n: keys[n] for n in train_names})
    order = [fid_names.index(n) for n in train_names]
    fid = fid[np.ix_(order, order)]

    pairs, transfer_facts = _transfer_pairs(run, settings, table, train_names, cache)
    stacked = np.concatenate([features[n] for n in train_names])
    directory = Path(directory) if directory is not None else run.stage_dir(META_SPACE_STAGE)
    directory.mkdir(parents=True, exist_ok=True)
    seeds = member_seeds(run.seed, settings.members)
    fits = []
    for member, seed in enumerate(seeds):
        if len(seeds) > 1:
            run.console.print(f"meta-space member {member + 1} of {len(seeds)} (seed {seed})")
        fits.append(_fit_member(run, settings, table, features, train_names, fid, pairs, stacked, seed,
                                directory, member))
    result, fitter, config = fits[0]
    buffer = io.BytesIO()
    arrays: dict[str, Any] = {n: np.asarray(f, dtype=np.float32) for n, f in features.items()}
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(directory / META_SPACE_FEATURES, buffer.getvalue())  # the model encoder's setup reads them
    metadata = {
        "format": FORMAT, "zoo": str(zoo_path.resolve()), "target": settings.target, "row_ids": table.ids.tolist(),
        "train_datasets": train_names, "held_out": list(settings.held_out), "feature_dim": int(stacked.shape[1]),
        "model_embed_dim": int(fitter.model.model_encoder.embed_dim),
        "dataset_encoder": encoder_spec, "model_encoder": settings.model_encoder, "losses": list(settings.losses),
        "loss_weights": {spec["name"]: settings.weight(spec["name"]) for spec in settings.losses},
        "images": settings.images, "image_seed": run.seed, "config": config.to_dict(),
        "transfers": settings.transfers, **({"member_seeds": seeds} if len(seeds) > 1 else {}),
    }
    write_json(directory / META_SPACE_MANIFEST, metadata)
    members = ({"members": [{"seed": s, "best_step": r["best_step"], "objective": r["objective"],
                             "summary": r["summary"]} for s, (r, _, _) in zip(seeds, fits)]} if len(seeds) > 1 else {})
    write_json(directory / META_SPACE_REPORT, {**result, "history": fitter.history,
                                           "fid": {"datasets": train_names, "matrix": fid.tolist()},
                                           **({"transfers": transfer_facts} if transfer_facts else {}), **members})
    return {"best_step": result["best_step"], "objective": result["objective"], "summary": result["summary"],
            "rows": len(table), "train_datasets": train_names, "held_out": list(settings.held_out),
            **({"members": len(seeds)} if len(seeds) > 1 else {})}


def member_seeds(run_seed: int, members: int) -> list[int]:
    """The fit seed of each ensemble member: the first one's is the seed a single meta-space has
    always had (so ``members: 1`` changes nothing), the others' are derived from it."""
    first = derive_seed(run_seed, META_SPACE_STAGE)
    return [first, *(derive_seed(run_seed, META_SPACE_STAGE, "member", k) for k in range(1, members))]


def _fit_member(run, settings: MetaSpaceSettings, table: ModelTable, features: dict[str, np.ndarray],
                train_names: list[str], fid: np.ndarray, pairs: Any, stacked: np.ndarray, seed: int,
                directory: Path, member: int) -> tuple[dict[str, Any], MetaSpaceFitter, Any]:
    """Train one meta-space (one ensemble member) with ``seed``; save its weights and embeddings."""
    model_spec = settings.model_encoder
    model_encoder = run.manager.create("model-encoders", model_spec["name"], **model_spec["args"])
    model_encoder.setup(table, {"device": run.device, "cache_dir": cache_dir(), "seed": seed,
                                "progress": settings.progress, "dataset_features": features})
    config = replace(settings.fit, seed=seed)
    torch.manual_seed(seed)
    model = MetaSpace(stacked.shape[1], model_encoder, config.embed_dim, config.hidden,
                      feature_mean=torch.as_tensor(stacked.mean(0)), feature_std=torch.as_tensor(stacked.std(0)))
    losses = [(settings.weight(spec["name"]), run.manager.create("losses", spec["name"], **spec["args"]))
              for spec in settings.losses]
    fitter = MetaSpaceFitter(model, table, features, train_names, list(settings.held_out), normalized_fid(fid),
                             losses, config, device=run.device, console=run.console, progress=settings.progress,
                             pairs=pairs)
    result = fitter.fit()
    run.console.print(correlation_table(result["datasets"]))
    weights, embeddings_file = member_files(member)
    buffer = io.BytesIO()
    np.save(buffer, all_model_embeddings(model, len(table)))
    atomic_write_bytes(directory / embeddings_file, buffer.getvalue())
    save_weights(directory / weights, model)
    return result, fitter, config


def _transfer_pairs(run, settings: MetaSpaceSettings, table: ModelTable, train_names: list[str],
                    cache: Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]] | None, dict[str, Any]]:
    """The cross-dataset supervision of ``settings`` (none when off): per training dataset, the rows
    of the other *training* datasets fine-tuned on it (held-out datasets appear in no pair), and the
    facts for the report (pairs, seconds spent now, pairs read from the cache)."""
    from mednns.metaspace.transfers import measure_pairs, pair_targets, sample_pairs

    transfers = settings.transfer_settings()
    if transfers is None:
        return None, {}
    held = set(settings.held_out)
    pairs = [(d, row) for d, row in sample_pairs(table, train_names, transfers) if table.dataset[row] not in held]
    measured = measure_pairs(table, pairs, {n: run.dataset(n) for n in train_names}, transfers, cache=cache,
                             device=run.device, manager=run.manager, console=run.console, progress=settings.progress)
    facts = {"settings": transfers.to_dict(), "pairs": len(measured),
             "measured_now": int(sum(m["fresh"] for m in measured)),  # fine-tunings, each repeat counted
             "seconds_now": round(sum(m["fresh_seconds"] for m in measured), 2),
             "seconds_all": round(sum(m["seconds"] for m in measured), 2),
             "per_dataset": {d: int(np.sum([m["dataset"] == d for m in measured])) for d in train_names},
             "measured": [{k: m[k] for k in ("dataset", "zoo_id", "source", "val_acc", "val_auc")} for m in measured]}
    log.info("meta-space: %d transfer pairs (%d fine-tunings now in %.0f s)", len(measured), facts["measured_now"],
             facts["seconds_now"])
    return pair_targets(measured, settings.target), facts


@dataclass
class TrainedMetaSpace:
    """A trained meta-space as :func:`load_meta_space` returns it.

    :param model: the network (eval mode). :param metadata: ``metaspace.json``.
    :param embeddings: ``(rows, E)`` meta-space embedding of every zoo row it was trained with.
    :param table: those rows.
    """

    model: MetaSpace
    metadata: dict[str, Any]
    embeddings: np.ndarray
    table: ModelTable


class _SavedEmbeddingsOnly(nn.Module):
    """Stands in for the model encoder when only the saved embeddings are needed (queries)."""

    def __init__(self, embed_dim: int):
        super().__init__()
        self.embed_dim = embed_dim

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        raise UsageError("this meta-space was loaded without its model encoder (with_model_encoder=False)")


def load_meta_space(directory: str | Path, *, manager: ComponentSource | None = None, device: str = "cpu",
                    with_model_encoder: bool = True, member: int = 0) -> TrainedMetaSpace:
    """The trained meta-space of a ``fit_meta_space`` folder (of an ensemble: one ``member``).

    :param with_model_encoder: set the model encoder up again on the zoo rows it was trained with
        (cached inputs make this cheap), so :meth:`MetaSpace.embed_models` works; queries need only
        the saved embeddings and skip it.
    :param member: which member of an ensemble (``members`` > 1); 0, the first, otherwise.
    """
    directory, metadata, table = _read_folder(directory)
    return _member(directory, metadata, table, member, manager, device, with_model_encoder)


def load_members(directory: str | Path, *, device: str = "cpu") -> list[TrainedMetaSpace]:
    """Every member of a meta-space folder (one unless ``members`` > 1), with their saved zoo-row
    embeddings only (what a query needs); the manifest and the zoo are read once."""
    directory, metadata, table = _read_folder(directory)
    return [_member(directory, metadata, table, k, None, device, False)
            for k in range(len(metadata.get("member_seeds", [None])))]


def _read_folder(directory: str | Path) -> tuple[Path, dict[str, Any], ModelTable]:
    """A meta-space folder's manifest and the zoo rows it was trained with (checked unchanged)."""
    directory, metadata = read_manifest(directory, META_SPACE_MANIFEST, FORMAT, what="trained meta-space",
                                        hint="run a fit_meta_space stage; its folder is <run>/stages/fit_meta_space")
    metadata["zoo"] = str(directory / metadata["zoo"])  # a bundle's is relative to the folder; absolute stays
    with ZooStore(metadata["zoo"], readonly=True) as store:
        table = load_table(store, metadata["target"])
    if not np.array_equal(table.ids, np.asarray(metadata["row_ids"], dtype=np.int64)):
        raise UsageError(f"the zoo {metadata['zoo']} changed since the meta-space was trained",
                         hint="train the meta-space again (its stage reruns when the zoo stage changes)")
    return directory, metadata, table


def _member(directory: Path, metadata: dict[str, Any], table: ModelTable, member: int,
            manager: ComponentSource | None, device: str, with_model_encoder: bool) -> TrainedMetaSpace:
    """One member's network and zoo-row embeddings (see :func:`load_meta_space`)."""
    from mednns.manager import get_plugin_manager

    config = metadata["config"]
    seeds = metadata.get("member_seeds", [config["seed"]])
    if not 0 <= member < len(seeds):
        raise UsageError(f"{directory} has {len(seeds)} meta-space member(s), not a member {member}")
    config = {**config, "seed": seeds[member]}
    weights, embeddings_file = member_files(member)
    if with_model_encoder:
        spec = metadata["model_encoder"]
        model_encoder = (manager or get_plugin_manager()).create("model-encoders", spec["name"], **spec["args"])
        features_path = directory / META_SPACE_FEATURES
        features = {}
        if features_path.is_file():
            with np.load(features_path, allow_pickle=False) as saved:
                features = {n: saved[n] for n in saved.files}
        model_encoder.setup(table, {"device": device, "cache_dir": cache_dir(), "seed": config["seed"],
                                    "progress": False, "dataset_features": features})
    else:
        model_encoder = _SavedEmbeddingsOnly(metadata["model_embed_dim"])
    model = MetaSpace(metadata["feature_dim"], model_encoder, config["embed_dim"], config["hidden"]).to(device)
    state = read_weights(directory / weights, device)
    if not with_model_encoder:
        state = {k: v for k, v in state.items() if not k.startswith("model_encoder.")}
    missing, unexpected = model.load_state_dict(state, strict=with_model_encoder)
    if unexpected or (with_model_encoder and missing):
        raise UsageError(f"{directory / weights} does not fit the meta-space it describes")
    model.eval()
    embeddings = np.load(directory / embeddings_file)
    return TrainedMetaSpace(model, metadata, embeddings, table)
