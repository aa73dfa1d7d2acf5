"""What the ``evaluate`` stage is asked to do: its settings, the conditions every method runs under
and the variants of the mednns method (no torch here: the stage validates them before any work).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from mednns.errors import UsageError
from mednns.evaluation.methods import METHODS, VARIANT_SEPARATOR, Method, describe, restarts_row, split_variant
from mednns.evaluation.results import report_epochs

DEFAULT_TANS_LOSSES: list[dict[str, Any]] = [{"name": "contrastive", "args": {}}, {"name": "performance", "args": {}}]
BUDGETS = ("equal_epochs", "equal_compute")
#: Methods that start from a query of a meta-space (they have variants).
QUERY_METHODS = ("mednns", "mednns_topk")
#: What a variant may change.
VARIANT_KEYS = ("meta_space", "by", "top_k", "rerank", "source_gate", "finetune", "pool", "restarts")
#: Where a variant's re-ranked candidates come from: the meta-space's top, or zoo models drawn at random
#: (re-ranking without the meta-space).
POOLS = ("meta_space", "random")
DEFAULT_POOL = "meta_space"
#: Fine-tuning settings a variant must not change: the budget every method shares.
FIXED_FINETUNE = ("epochs", "max_train_images", "batch_size", "seed")


@dataclass(frozen=True)
class Condition:
    """One budget at one training-set size: every method runs under it with every listed seed.

    :param budget: ``equal_epochs`` (every method the same epochs) or ``equal_compute`` (every
        method the same target-side image-MACs).
    :param train_images: training images per target (``None``: all).
    :param batch_size: the fine-tuning batch: a smaller training set than the primary condition's
        gets a smaller batch, so that it makes as many optimizer steps per epoch (with a fixed batch,
        100 images would train for one step per epoch and every method would end where it started).
    """

    id: str
    budget: str
    train_images: int | None
    seeds: tuple[int, ...]
    batch_size: int

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seeds": list(self.seeds)}


@dataclass(frozen=True)
class Variant:
    """The settings of one mednns variant (the default one has the name ``""``)."""

    name: str
    meta_space: dict[str, Any]
    by: str
    top_k: int
    rerank: dict[str, Any] | None = None
    source_gate: bool = False
    #: fine-tuning settings of its rows that differ from the protocol's (e.g. the transfer recipe)
    finetune: dict[str, Any] = field(default_factory=dict)
    #: ``meta_space``: the query's top is re-ranked; ``random``: ``rerank.candidates`` zoo models drawn
    #: at random per seed are (re-ranking without the meta-space)
    pool: str = DEFAULT_POOL
    #: ``mednns_topk`` fine-tunes the first candidate this many times (the same training subset, another
    #: fine-tuning seed each) instead of the first ``top_k``: how much of a best-of-k gain choosing
    #: among k fine-tunings of one start gives
    restarts: int = 1

    def settings(self):
        """The :class:`~mednns.transfer.reranking.RerankSettings` of the query (``None``: no re-ranking)."""
        from mednns.transfer.reranking import RerankSettings

        return RerankSettings.from_dict(self.rerank) if self.rerank is not None else None

    def method(self, base: str) -> str:
        return f"{base}{VARIANT_SEPARATOR}{self.name}" if self.name else base


@dataclass
class EvaluationSettings:
    """What the ``evaluate`` stage was asked to do (see :class:`mednns.plugins.evaluate.Evaluate`)."""

    datasets: list[str] | None
    methods: list[str]
    seeds: list[int]
    finetune: dict[str, Any]
    top_k: int
    by: str
    meta_space: dict[str, Any]
    tans_losses: list[dict[str, Any]]
    timm_model: str
    search_budget: int
    rerank: dict[str, Any] | None = None
    source_gate: bool = False
    train_images: list[int | None] = field(default_factory=lambda: [None])
    budgets: list[str] = field(default_factory=lambda: ["equal_epochs"])
    equal_compute_seeds: list[int] | None = None
    max_epochs: int = 200
    variants: dict[str, dict[str, Any]] = field(default_factory=dict)
    ranking: dict[str, Any] | None = None
    #: baseline -> k: a further row fine-tunes the baseline's start k times and keeps the best by validation
    #: ACC (at equal epochs only), the control of a best-of-k mednns method at the same number of fine-tunings
    baseline_restarts: dict[str, int] = field(default_factory=dict)
    zoo: str | None = None
    progress: bool = True
    report: bool = True

    def __post_init__(self) -> None:
        from mednns.transfer.reranking import RerankSettings

        unknown = sorted(set(self.budgets) - set(BUDGETS))
        if unknown or not self.budgets:
            raise UsageError(f"budgets must be a non-empty list of {', '.join(BUDGETS)} (got {self.budgets})")
        if not self.train_images or len(set(self.train_images)) != len(self.train_images):
            raise UsageError("train_images must be a non-empty list of distinct sizes")
        if any(n is not None and n < 2 for n in self.train_images):
            raise UsageError("every train_images size must be >= 2")
        extra = sorted(set(self.equal_compute_seeds or []) - set(self.seeds))
        if extra:
            raise UsageError(f"equal_compute_seeds {extra} are not among the seeds {self.seeds}")
        if self.max_epochs < self.finetune["epochs"]:
            raise UsageError(f"max_epochs ({self.max_epochs}) is below epochs ({self.finetune['epochs']})")
        for name, variant in self.variants.items():
            if not name or not name.replace("_", "").replace("-", "").isalnum():
                raise UsageError(f"variant name {name!r}: use letters, digits, '_' and '-'")
            wrong = sorted(set(variant) - set(VARIANT_KEYS))
            if wrong:
                raise UsageError(f"variant {name}: unknown key(s) {', '.join(wrong)}",
                                 hint=f"a variant may set {', '.join(VARIANT_KEYS)}")
            fixed = sorted({"held_out", "zoo"} & set(variant.get("meta_space") or {}))
            if fixed:
                raise UsageError(f"variant {name}: meta_space must not set {', '.join(fixed)} (set per fold)")
            fixed = sorted(set(FIXED_FINETUNE) & set(variant.get("finetune") or {}))
            if fixed:
                raise UsageError(f"variant {name}: finetune must not set {', '.join(fixed)} (the budget every "
                                 f"method shares)")
            if "top_k" in variant and int(variant["top_k"]) < 1:
                raise UsageError(f"variant {name}: top_k must be >= 1")
            if int(variant.get("restarts", 1)) < 1:
                raise UsageError(f"variant {name}: restarts must be >= 1")
            if int(variant.get("restarts", 1)) > 1 and int(variant.get("top_k", self.top_k)) != 1:
                raise UsageError(f"variant {name}: restarts needs top_k: 1",
                                 hint="mednns_topk fine-tunes either the first top_k candidates or the first "
                                      "one restarts times")
            pool = variant.get("pool", DEFAULT_POOL)
            if pool not in POOLS:
                raise UsageError(f"variant {name}: pool must be one of {', '.join(POOLS)}, got {pool!r}")
            rerank = variant.get("rerank", self.rerank)
            if pool == "random" and (rerank is None or RerankSettings.from_dict(rerank).combine != "score"
                                     or int(variant.get("top_k", self.top_k)) != 1):
                raise UsageError(f"variant {name}: pool random needs rerank with combine: score and top_k: 1",
                                 hint="a random pool has no meta-space order to combine with or to take a top-k of")
        baselines = [m for m in self.methods if m in METHODS and METHODS[m].kind == "baseline"]
        for method, k in self.baseline_restarts.items():
            if method not in baselines:
                raise UsageError(f"baseline_restarts: {method!r} is not a baseline among the methods",
                                 hint=f"baselines among the methods: {', '.join(baselines)}")
            if isinstance(k, bool) or not isinstance(k, int) or k < 2:
                raise UsageError(f"baseline_restarts.{method}: give the number of fine-tunings, an integer >= 2 "
                                 f"(got {k!r})")
        for checked in self.variant_list():
            checked.settings()  # checks the re-ranking settings
        if self.ranking is not None:
            chosen = self.ranking_settings()
            extra = sorted(set(chosen.train_images) - {n for n in self.train_images if n is not None})
            if extra:
                raise UsageError(f"ranking.train_images {extra} are not among the evaluation's train_images "
                                 f"{self.train_images}")

    def ranking_settings(self):
        """The :class:`~mednns.evaluation.ranking.RankingSettings` of the ``ranking`` option."""
        from mednns.evaluation.ranking import RankingSettings

        return RankingSettings.from_dict(self.ranking or {})

    def ranking_conditions(self) -> list[Condition]:
        """The conditions the ranking sample is fine-tuned under: the primary one, then the
        equal-epochs condition of each further ``ranking.train_images`` size."""
        primary, *others = self.conditions()
        sizes = [n for n in self.ranking_settings().train_images if n != primary.train_images]
        return [primary, *(c for c in others if c.budget == "equal_epochs" and c.train_images in sizes)]

    # --- what runs ------------------------------------------------------------------------
    def variant_list(self) -> list[Variant]:
        """The default settings first, then every named variant."""
        default = Variant("", dict(self.meta_space), self.by, self.top_k, self.rerank, self.source_gate)
        return [default, *(Variant(name, {**self.meta_space, **(v.get("meta_space") or {})}, v.get("by", self.by),
                                   int(v.get("top_k", self.top_k)), v.get("rerank", self.rerank),
                                   bool(v.get("source_gate", self.source_gate)), dict(v.get("finetune") or {}),
                                   str(v.get("pool", DEFAULT_POOL)), int(v.get("restarts", 1)))
                           for name, v in self.variants.items())]

    def method_names(self) -> list[str]:
        """Every method row of the results: the chosen methods, each query method once per variant,
        each restarted baseline once more (:meth:`restarts_rows`)."""
        names = []
        for method in self.methods:
            names.append(method)
            if method in QUERY_METHODS:
                names += [v.method(method) for v in self.variant_list()[1:]]
            if method in self.baseline_restarts:
                names.append(restarts_row(method, self.baseline_restarts[method]))
        return names

    def describe(self, name: str) -> Method:
        """:func:`~mednns.evaluation.methods.describe`, told what a variant's settings make of its row: a
        ``mednns_topk`` variant with ``restarts`` fine-tunes one start several times, not the top k."""
        method = describe(name)
        base, variant = split_variant(name)
        restarts = {v.name: v.restarts for v in self.variant_list()}.get(variant or "", 1)
        if base != "mednns_topk" or restarts < 2:
            return method
        return Method(method.label, method.kind,
                      f"the query's top-ranked zoo model fine-tuned {restarts} times (another fine-tuning seed each, "
                      f"the same training subset); the one with the best validation ACC; variant '{variant}'")

    def restarts_rows(self) -> dict[str, tuple[str, int]]:
        """The rows of ``baseline_restarts``: row name -> (the baseline, how many fine-tunings)."""
        return {restarts_row(m, k): (m, k) for m, k in self.baseline_restarts.items()}

    def conditions(self) -> list[Condition]:
        """``equal_epochs`` at every training-set size (the first is the primary condition), then
        ``equal_compute`` at the first size (the only condition when it is the only budget)."""
        def size_id(n: int | None) -> str:
            return "all" if n is None else str(n)

        seeds, batch, primary = tuple(self.seeds), self.finetune["batch_size"], self.train_images[0]

        def batch_for(n: int | None) -> int:
            if n is None or primary is None or n >= primary or primary < batch:
                return batch
            return max(2, min(batch, n // (primary // batch)))  # the primary's steps per epoch

        found = [Condition(f"equal_epochs@{size_id(n)}", "equal_epochs", n, seeds, batch_for(n))
                 for n in self.train_images]
        if "equal_compute" in self.budgets:
            found.append(Condition(f"equal_compute@{size_id(primary)}", "equal_compute", primary,
                                   tuple(self.equal_compute_seeds or self.seeds), batch))
        return found if "equal_epochs" in self.budgets else found[len(self.train_images):]

    def protocol(self) -> dict[str, Any]:
        epochs = self.finetune["epochs"]
        return {"epochs": epochs, "seeds": list(self.seeds), "report_epochs": report_epochs(epochs),
                "top_k": self.top_k, "by": self.by, "search_budget": self.search_budget, "timm_model": self.timm_model,
                "finetune": {k: v for k, v in self.finetune.items() if k != "epochs"}, "methods": self.method_names(),
                "meta_space": self.meta_space, "rerank": self.rerank, "source_gate": self.source_gate,
                "variants": self.variants, "ranking": self.ranking, "baseline_restarts": self.baseline_restarts,
                "tans_losses": self.tans_losses,
                "train_images": self.train_images, "budgets": self.budgets, "max_epochs": self.max_epochs,
                "conditions": [c.to_dict() for c in self.conditions()]}
