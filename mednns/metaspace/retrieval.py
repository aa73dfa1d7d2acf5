"""The query: an unseen dataset → a ranked, constraint-filtered list of zoo models.

The dataset's training images are encoded with the meta-space's dataset encoder (cached), embedded
by the set encoder, and every zoo model is scored in one vectorized pass against the saved model
embeddings: the predicted metric (the predictor), the retrieval score (cosine similarity) or the
mean of their ranks (``combined``). Parameter and MAC limits filter before ranking; a latency limit
is checked on the finalists only, by measuring each extracted subnet on this device (batch 1, the
target's image size; cached per architecture, device and input size).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

import numpy as np
import torch
from scipy import stats

from mednns.data import MedicalDataset
from mednns.errors import UsageError
from mednns.files import read_json, write_json
from mednns.metaspace.features import dataset_features
from mednns.metaspace.train import load_members
from mednns.paths import cache_dir

if TYPE_CHECKING:
    from mednns.registry import ComponentSource

RankBy = Literal["predicted", "score", "combined"]
#: Latency is measured for at most this many candidates per requested result (in rank order).
MAX_LATENCY_MEASUREMENTS_PER_RESULT = 10


@dataclass(frozen=True)
class Constraints:
    """Hardware limits; ``None`` = no limit."""

    max_params: int | None = None
    max_macs: int | None = None
    max_latency_ms: float | None = None


def rank_key(predicted: np.ndarray, score: np.ndarray, by: RankBy) -> np.ndarray:
    """Higher is better: the predicted metric, the score, or minus the mean of their ranks."""
    if by == "predicted":
        return predicted
    if by == "score":
        return score
    if by == "combined":
        return -(stats.rankdata(-predicted) + stats.rankdata(-score)) / 2
    raise UsageError(f"rank by must be predicted, score or combined, got {by!r}")


def weak_sources(zoo: str | Path) -> list[dict[str, Any]]:
    """The zoo's supernets that learned nothing (:func:`mednns.zoo.source_quality`).

    :raises UsageError: when the zoo does not record the facts the gate needs.
    """
    from mednns.zoo import ZooStore, source_quality

    with ZooStore(zoo, readonly=True) as store:
        quality = list(source_quality(store).values())
    unknown = [q["dataset"] for q in quality if q["learned"] is None]
    if unknown:
        raise UsageError(f"the zoo {zoo} does not record the validation majority-class rate of "
                         f"{', '.join(sorted(set(unknown)))}, which the source gate compares with",
                         hint="run the zoo build again (mednns zoo build RUN_DIR records it without evaluating "
                              "anything new), or query without the source gate")
    return [q for q in quality if q["learned"] is False]


class LatencyMeter:
    """Median latency (ms) of extracted subnets at batch 1, cached in a JSON file."""

    def __init__(self, device: str = "cpu", repeats: int = 20, cache: Path | None = None):
        self.device, self.repeats = device, repeats
        self.cache_path = cache or cache_dir() / "latency.json"
        self.cache: dict[str, float] = read_json(self.cache_path) if self.cache_path.is_file() else {}
        self._spaces: dict[str, tuple[Any, int]] = {}

    def _space(self, supernet: str) -> tuple[Any, int]:
        """The supernet of a folder (loaded once) and its input channel count."""
        if supernet not in self._spaces:
            from mednns.training import load_supernet

            space, metadata = load_supernet(supernet)
            self._spaces[supernet] = (space, int(metadata["normalization"]["channels"]))
        return self._spaces[supernet]

    @torch.inference_mode()
    def __call__(self, supernet: str, arch_json: str, image_size: Sequence[int]) -> float:
        """Median batch-1 latency of ``arch_json`` of ``supernet`` on images of ``image_size`` (H, W)."""
        space, channels = self._space(supernet)
        input_shape = (channels, *image_size)
        arch = space.arch_from_json(arch_json)
        key = f"{type(space).__name__}:{space.arch_hash(arch)}:{self.device}:{'x'.join(map(str, input_shape))}"
        if key not in self.cache:
            model = space.extract(arch).to(self.device).eval()
            x = torch.randn(1, *input_shape, device=self.device)
            for _ in range(3):
                model(x)
            times = []
            for _ in range(self.repeats):
                start = time.perf_counter()
                model(x)
                if self.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times.append((time.perf_counter() - start) * 1000)
            self.cache[key] = round(statistics.median(times), 4)
            write_json(self.cache_path, self.cache)
        return self.cache[key]


@dataclass
class Predictions:
    """A trained meta-space's outputs for one dataset and every zoo row it knows (``table``'s order).

    :param predicted: :param score: of an ensemble, the mean over its members.
    :param member_predicted: ``(members, rows)``: each member's own prediction.
    :param seconds: the pairing's time (after the dataset's features are encoded).
    """

    metadata: dict[str, Any]
    table: Any
    predicted: np.ndarray
    score: np.ndarray
    member_predicted: np.ndarray
    seconds: float


def predict_all(meta_dir: str | Path, dataset: MedicalDataset, *, manager: ComponentSource | None = None,
                device: str = "cpu", progress: bool = False) -> Predictions:
    """The predicted metric and retrieval score of every zoo row of the meta-space in ``meta_dir``
    for ``dataset`` (its training images encoded with the meta-space's dataset encoder, cached); of
    an ensemble (``members`` > 1), the mean over its members."""
    from mednns.manager import get_plugin_manager

    members = load_members(meta_dir, device=device)
    metadata = members[0].metadata
    spec = metadata["dataset_encoder"]
    encoder = (manager or get_plugin_manager()).create("dataset-encoders", spec["name"], **spec["args"]).to(device)
    features = torch.as_tensor(dataset_features(encoder, dataset, images=metadata["images"],
                                                seed=metadata["image_seed"], cache_dir=cache_dir(), progress=progress),
                               device=device)
    start = time.perf_counter()
    outputs = []
    with torch.no_grad():
        for trained in members:
            d = trained.model.embed_datasets([features])
            m = torch.as_tensor(trained.embeddings, device=device).unsqueeze(0)
            outputs.append([x[0].cpu().numpy() for x in trained.model.pair(d, m)])
    predicted = np.stack([o[0] for o in outputs])
    return Predictions(metadata, members[0].table, predicted.mean(axis=0), np.mean([o[1] for o in outputs], axis=0),
                       predicted, time.perf_counter() - start)


def query(meta_dir: str | Path, dataset: MedicalDataset, *, top_k: int = 10, by: RankBy = "predicted",
          constraints: Constraints = Constraints(), exclude_sources: Sequence[str] | None = None,
          manager: ComponentSource | None = None, device: str = "cpu", latency: LatencyMeter | None = None,
          progress: bool = False, rerank: Any = None, load: Any = None, source_gate: bool = False) -> dict[str, Any]:
    """Rank every zoo model of a trained meta-space for ``dataset``.

    :param meta_dir: a ``fit_meta_space`` folder.
    :param exclude_sources: source datasets whose models are not candidates (default: the
        meta-space's held-out datasets: held out of everything, they are no source either).
    :param rerank: a :class:`mednns.transfer.reranking.RerankSettings`: re-rank the meta-space's top
        ``rerank.candidates`` (that pass the constraints) on the target's training images with a
        transfer score, then keep the top ``top_k`` of the new order.
    :param load: ``folder -> (space, metadata)`` for the re-ranking (a cache shared by the caller).
    :param source_gate: leave out the models of source supernets that learned nothing (largest
        subnet not above its validation majority-class rate, :func:`mednns.zoo.source_quality`);
        the result names them under ``gated_sources``.
    :returns: ``{"dataset", "by", "constraints", "candidates", "results": [row, ...], "seconds"}``;
        a row has rank, zoo id, source dataset, space, architecture JSON, params, MACs, predicted,
        score (and latency_ms when measured) and the supernet folder; with ``rerank`` also
        ``meta_rank`` and ``transfer_score``, and the result has ``rerank`` (settings, cost) and
        ``meta_space_order`` (the zoo ids in the meta-space's order).
    """
    if top_k < 1:
        raise UsageError("top_k must be >= 1")
    predictions = predict_all(meta_dir, dataset, manager=manager, device=device, progress=progress)
    metadata, table = predictions.metadata, predictions.table
    predicted, score = predictions.predicted, predictions.score
    start = time.perf_counter() - predictions.seconds
    excluded = set(metadata.get("held_out", []) if exclude_sources is None else exclude_sources)
    keep = np.array([d not in excluded for d in table.dataset], dtype=bool)
    gated = weak_sources(metadata["zoo"]) if source_gate else []
    if gated:
        folders = {q["folder"] for q in gated}
        keep &= np.array([str(folder) not in folders for folder in table.supernet], dtype=bool)
    if constraints.max_params is not None:
        keep &= table.params <= constraints.max_params
    if constraints.max_macs is not None:
        keep &= table.macs <= constraints.max_macs
    key = rank_key(predicted, score, by)
    order = [int(i) for i in np.argsort(-key, kind="stable") if keep[i]]
    seconds = time.perf_counter() - start

    info = dataset.info
    input_shape = (info.n_channels, *info.image_size)
    results: list[dict[str, Any]] = []
    measured = 0
    wanted = max(top_k, rerank.candidates) if rerank is not None else top_k
    if constraints.max_latency_ms is not None and latency is None:
        latency = LatencyMeter(device)
    for i in order:
        row = {"zoo_id": int(table.ids[i]), "dataset": table.dataset[i], "space": table.space[i],
               "arch": table.arch[i], "params": int(table.params[i]), "macs": int(table.macs[i]),
               "predicted": float(predicted[i]), "score": float(score[i]), "supernet": table.supernet[i]}
        if latency is not None and constraints.max_latency_ms is not None:
            if measured >= MAX_LATENCY_MEASUREMENTS_PER_RESULT * wanted:
                break  # the finalists are measured, not the whole zoo: stop with fewer results
            row["latency_ms"] = latency(table.supernet[i], table.arch[i], info.image_size)
            measured += 1
            if row["latency_ms"] > constraints.max_latency_ms:
                continue
        results.append({"rank": len(results) + 1, **row})
        if len(results) == wanted:
            break
    extra: dict[str, Any] = {}
    if rerank is not None and results:
        from mednns.transfer.reranking import rerank as rerank_rows

        extra["meta_space_order"] = [r["zoo_id"] for r in results]
        results, extra["rerank"] = rerank_rows(results, dataset, rerank, manager=manager, device=device, load=load)
    if source_gate:
        extra["gated_sources"] = gated
    return {"dataset": info.name, "input_shape": list(input_shape), "by": by,
            "constraints": constraints.__dict__, "excluded_sources": sorted(excluded),
            "candidates": int(keep.sum()), "zoo_models": len(table),
            "latency_measured": measured, "results": results[:top_k], "seconds": round(seconds, 4), **extra}
