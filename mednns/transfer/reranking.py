"""The query's second stage: re-rank the meta-space's top candidates on the target's own images.

Each candidate (a zoo row: a subnet of a source supernet) is extracted with its inherited weights,
its first convolution adapted to the target's channels (the source head is kept: LEEP and NCE read
it), its BN statistics re-estimated on target training images, and its penultimate features and
source-head probabilities computed on a seeded, bounded sample of the target's **training** split
(validation and test are never read). A ``transfer-scores`` component turns them into a number;
the final order is the score's (``combine: score``), the mean of the meta-space rank and the
score rank (``rank_sum``, ties to the better score), or the score's only where the target's images
say so beyond their noise (``guarded``): the score's first replaces the meta-space's first only
when it beats it in a one-sided paired test over the sample's images (the score's per-image
terms) at level ``level / (candidates - 1)`` (Bonferroni: the first is the best of the others, so
every other candidate is a comparison); otherwise the meta-space's order stands.

The defaults (``ridge``, ``combine: score``) are the configuration the published evaluation measured:
the ridge probe ranked candidates best of the built-in scores, and the meta-space's own order
ranked them no better than chance (Kendall tau about 0), so averaging ranks with it added noise.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal

import numpy as np

from mednns.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from mednns.data import MedicalDataset
    from mednns.registry import ComponentSource

Combine = Literal["score", "rank_sum", "guarded"]
COMBINES = ("score", "rank_sum", "guarded")


@dataclass(frozen=True)
class RerankSettings:
    """How the query re-ranks.

    :param score: the ``transfer-scores`` component, ``{"name": ..., "args": {...}}``.
    :param candidates: the meta-space's top candidates re-ranked.
    :param images: labelled target training images the score sees.
    :param calibration_images: target training images for BN recalibration.
    :param combine: ``score`` (the score's order), ``rank_sum`` (meta-space rank + score rank) or
        ``guarded`` (the score's order where its first beats the meta-space's first significantly).
    :param seed: seed of the image sample.
    :param level: ``guarded``: the family-wise level of the paired test, over all candidates.
    """

    score: dict[str, Any] = field(default_factory=lambda: {"name": "ridge", "args": {}})
    candidates: int = 20
    images: int = 500
    calibration_images: int = 512
    combine: Combine = "score"
    seed: int = 0
    level: float = 0.05

    def __post_init__(self) -> None:
        if self.candidates < 1 or self.images < 2 or self.calibration_images < 1:
            raise UsageError("rerank needs candidates >= 1, images >= 2 and calibration_images >= 1")
        if not 0 < self.level < 1:
            raise UsageError(f"rerank level must be between 0 and 1, got {self.level}")
        if self.combine not in COMBINES:
            raise UsageError(f"rerank combine must be one of {', '.join(COMBINES)}, got {self.combine!r}")

    def to_dict(self) -> dict[str, Any]:
        # level only where it acts: saved re-rankings are matched on these settings, and the older
        # orders (score, rank_sum) stay matched
        return {"score": self.score, "candidates": self.candidates, "images": self.images,
                "calibration_images": self.calibration_images, "combine": self.combine, "seed": self.seed,
                **({"level": self.level} if self.combine == "guarded" else {})}

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> "RerankSettings":
        """From a config mapping (``score`` may be a name or ``{name, args}``); unknown keys are an error."""
        check_keys(cls, spec, "rerank")
        return cls(**{**spec, "score": component_spec(spec.get("score", "ridge"))})


def check_keys(settings: type, spec: dict[str, Any], what: str) -> None:
    """A usage error naming the keys of ``spec`` that the dataclass ``settings`` does not have."""
    known = set(settings.__dataclass_fields__)  # type: ignore[attr-defined]
    wrong = sorted(set(spec) - known)
    if wrong:
        raise UsageError(f"{what}: unknown key(s) {', '.join(wrong)}", hint=f"known: {', '.join(sorted(known))}")


def component_spec(value: str | dict[str, Any]) -> dict[str, Any]:
    """A component given as a name or as ``{name, args}``, as ``{name, args}``."""
    if isinstance(value, str):
        return {"name": value, "args": {}}
    return {"name": value["name"], "args": dict(value.get("args") or {})}


@dataclass
class TargetSample:
    """The target images a re-ranking reads: calibration batches and a labelled sample (training split)."""

    calibration: list["torch.Tensor"]
    x: "torch.Tensor"
    y: np.ndarray
    task: str

    @classmethod
    def draw(cls, dataset: "MedicalDataset", settings: RerankSettings, batch_size: int = 128) -> "TargetSample":
        """A seeded sample of ``dataset``'s training split, normalized as fine-tuning normalizes it."""
        from mednns.data import dataset_tensors

        x, y = dataset_tensors(dataset, "train", channels=dataset.info.n_channels)
        return cls.from_tensors(x, y, str(dataset.info.task), settings, batch_size=batch_size)

    @classmethod
    def from_tensors(cls, x: "torch.Tensor", y: "torch.Tensor", task: str, settings: RerankSettings,
                     batch_size: int = 128) -> "TargetSample":
        """A seeded sample of given training images (normalized as fine-tuning normalizes them):
        at most ``settings.images`` labelled ones and ``settings.calibration_images`` for BN, in
        whole batches of at most ``batch_size``."""
        import torch

        from mednns.seeding import torch_generator

        order = torch.randperm(len(x), generator=torch_generator(settings.seed))
        sample = order[: settings.images].sort().values
        calibration = x[order[: settings.calibration_images]]
        size = min(batch_size, len(calibration))
        batches = [calibration[i: i + size] for i in range(0, len(calibration) - size + 1, size)]
        return cls(batches, x[sample], y[sample].numpy(), task)


def candidate_outputs(network: "torch.nn.Module", sample: TargetSample, *, device: str = "cpu",
                      batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """``(features, source probabilities)`` of an adapted network on the sample, after BN recalibration.

    :param network: an extracted subnet with its source head (input channels already adapted).
    :returns: float64 ``(N, F)`` penultimate features and ``(N, C_source)`` softmax outputs.
    """
    import torch

    from mednns.metaspace.functional import capture_head_input
    from mednns.supernets import recalibrate_bn

    network = network.to(device)
    recalibrate_bn(network, [b.to(device) for b in sample.calibration])
    network.eval()
    logits = []
    with torch.no_grad(), capture_head_input(network) as captured:
        for start in range(0, len(sample.x), batch_size):
            logits.append(network(sample.x[start: start + batch_size].to(device)).float())
    features = torch.cat(captured).double().cpu().numpy()
    probabilities = torch.softmax(torch.cat(logits), dim=1).double().cpu().numpy()
    return features, probabilities


def rerank(rows: list[dict[str, Any]], dataset: "MedicalDataset", settings: RerankSettings, *,
           manager: ComponentSource | None = None, device: str = "cpu",
           load: Callable[[str], tuple[Any, dict[str, Any]]] | None = None,
           sample: TargetSample | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Re-rank the first ``settings.candidates`` of ``rows`` (query results in meta-space order).

    :param rows: query rows (``supernet`` folder, ``arch`` JSON, ``rank``).
    :param manager: the plugin manager that builds the score (default: the process-wide one).
    :param load: ``folder -> (space, metadata)`` (default: :func:`mednns.training.load_supernet`,
        cached per call).
    :param sample: the target sample (default: drawn from ``settings``).
    :returns: the re-ranked rows (each with ``meta_rank``, ``transfer_score`` and its new ``rank``)
        and facts: the settings, candidates, images, seconds, candidates per second and image-MACs
        (forward passes of the calibration and scored images through every candidate).
    """
    from mednns.export import adapt_network
    from mednns.manager import get_plugin_manager

    start = time.perf_counter()
    spec = settings.score
    scorer = (manager or get_plugin_manager()).create("transfer-scores", spec["name"], **(spec.get("args") or {}))
    split = getattr(scorer, "per_image", None) if settings.combine == "guarded" else None
    no_split = UsageError(f"combine: guarded needs a transfer score with per-image values; {spec['name']} has none",
                          hint="ridge, knn and leep have them")
    if settings.combine == "guarded" and split is None:
        raise no_split
    sample = sample or TargetSample.draw(dataset, settings)
    loaded: dict[str, tuple[Any, dict[str, Any]]] = {}

    def supernet(folder: str) -> tuple[Any, dict[str, Any]]:
        if load is not None:
            return load(folder)
        if folder not in loaded:
            from mednns.training import load_supernet

            loaded[folder] = load_supernet(folder, manager=manager)
        return loaded[folder]

    chosen = rows[: settings.candidates]
    scored, terms = [], []
    images = len(sample.x) + sum(len(b) for b in sample.calibration)
    for row in chosen:
        space, _ = supernet(row["supernet"])
        network = space.extract(space.arch_from_json(row["arch"])).cpu()
        adapt_network(network, in_channels=dataset.info.n_channels)
        features, probabilities = candidate_outputs(network, sample, device=device)
        if split is not None:
            per_image = split(features, sample.y, sample.task, source_probabilities=probabilities)
            if per_image is None:
                raise no_split
            terms.append(np.asarray(per_image, dtype=np.float64))
            value = float(np.nanmean(terms[-1]))
        else:
            value = float(scorer.score(features, sample.y, sample.task, source_probabilities=probabilities))
        if not np.isfinite(value):
            raise UsageError(f"transfer score {spec['name']} gave {value} for zoo model {row.get('zoo_id')}")
        scored.append({**row, "meta_rank": row["rank"], "transfer_score": value})
    meta_ranks, scores = [r["meta_rank"] for r in scored], [r["transfer_score"] for r in scored]
    guard: dict[str, Any] = {}
    if settings.combine == "guarded":
        order, guard = guarded_order(meta_ranks, scores, terms, settings.level)
        guard = {"guard": {**guard, **{k: scored[guard[k]].get("zoo_id") for k in ("incumbent", "challenger")}}}
    else:
        order = combined_order(meta_ranks, scores, settings.combine)
    reranked = [{**scored[i], "rank": rank} for rank, i in enumerate(order, start=1)]
    seconds = time.perf_counter() - start
    facts = {**settings.to_dict(), **guard, "candidates": len(scored), "images": int(len(sample.x)),
             "seconds": round(seconds, 3), "candidates_per_second": round(len(scored) / max(seconds, 1e-9), 3),
             "image_macs": int(sum(r["macs"] for r in chosen) * images)}
    return reranked, facts


def combined_order(meta_ranks: list[int], scores: list[float], combine: Combine) -> list[int]:
    """Indices in the final order: by score (ties: meta-space rank), or by the mean of the meta-space
    rank and the score rank (ties: the better score)."""
    from scipy.stats import rankdata

    score_rank = rankdata([-s for s in scores], method="average")
    meta = rankdata(meta_ranks, method="average")
    if combine == "score":
        return sorted(range(len(scores)), key=lambda i: (score_rank[i], meta[i]))
    return sorted(range(len(scores)), key=lambda i: (meta[i] + score_rank[i], score_rank[i]))


def guarded_order(meta_ranks: list[int], scores: list[float], terms: list[np.ndarray],
                  level: float) -> tuple[list[int], dict[str, Any]]:
    """The score's order if its first beats the meta-space's first in a one-sided paired t-test over
    the images (``terms``: each candidate's per-image values, paired) at ``level / (candidates - 1)``;
    else the meta-space's order.

    :returns: indices in the final order and the test: ``incumbent`` and ``challenger`` (indices),
        their mean per-image ``gain``, ``images`` compared, ``p``, ``threshold`` and ``passed``.
    """
    from scipy.stats import ttest_1samp

    by_score = combined_order(meta_ranks, scores, "score")
    by_meta = sorted(range(len(scores)), key=lambda i: meta_ranks[i])
    incumbent, challenger = by_meta[0], by_score[0]
    threshold = level / max(len(scores) - 1, 1)
    both = np.isfinite(terms[challenger]) & np.isfinite(terms[incumbent])
    difference = terms[challenger][both] - terms[incumbent][both]
    if len(difference) < 2 or np.allclose(difference, difference[0], rtol=0, atol=1e-12):
        # no spread (the same candidate first in both orders, too): the sign of a constant difference decides
        p = 0.0 if len(difference) >= 2 and difference[0] > 0 else 1.0
    else:
        p = float(ttest_1samp(difference, 0.0, alternative="greater").pvalue)
    passed = p < threshold
    return (by_score if passed else by_meta), {
        "incumbent": incumbent, "challenger": challenger, "gain": float(difference.mean()) if len(difference) else 0.0,
        "images": int(len(difference)), "p": p, "threshold": threshold, "passed": bool(passed)}


def guard_text(guard: dict[str, Any]) -> str:
    """One sentence on a guarded re-ranking's test (the ``guard`` facts of :func:`rerank`)."""
    if guard["challenger"] == guard["incumbent"]:
        return "the score's first is the meta-space's first"
    verdict = "replaced" if guard["passed"] else "kept"
    return (f"the guard {verdict} the meta-space's first: the score's first gains {guard['gain']:+.4f} per image "
            f"over {guard['images']} images, p {guard['p']:.2g} against {guard['threshold']:.2g}")
