"""Leave-one-dataset-out evaluation: for each target dataset, hold it out of everything, query the
zoo with it, fine-tune the retrieved model and every baseline with the same budget and seeds.

Per target ``T`` (folder ``<stage>/<T>/``):

1. fit the meta-spaces with ``T`` held out (its zoo rows are neither training rows nor candidates,
   its FIDs are no training targets, its features do not enter the normalization): one per distinct
   meta-space configuration (the default, each variant's, the TANS-style one), in
   ``meta_spaces/<key>/``, keyed by their arguments and the zoo's content;
2. query (``queries/<variant>.json``) and build the starting point of every method
   (:mod:`.candidates`), measuring what each method spent on the target before fine-tuning
   (supernet training and search, the query's encoding of the target's images);
3. for every condition (a budget, ``equal_epochs`` or ``equal_compute``, and a training-set size),
   fine-tune each starting point for every seed with one shared loop and configuration; every run
   is saved as it finishes (``runs/<key>-s<seed>.json``, keyed by the starting point, the whole
   fine-tuning configuration and the seed), so an interrupted evaluation resumes and a new seed,
   variant, size or baseline trains only what is new;
4. summarize (:mod:`.results`) and compare (:mod:`.statistics`).

The stage then writes ``results.json`` (format ``mednns-evaluation/2``), the FID matrix of all
datasets, the meta-space embeddings of each fold (``embeddings/<T>.npz``) and the report.

**Compute** is counted on the target only: what a user with this dataset would spend. Source
supernets, their zoo and the meta-space are trained once for every future target (amortized) and
are not counted; the target's own supernet and its search are (baseline g). Each phase has wall
seconds and image-MACs (multiply-accumulates summed over every image passed: 3x the forward
MACs for a trained image, 1x for an evaluated one), which do not depend on the machine. The
``equal_compute`` budget uses image-MACs, so that it is reproducible: every method fine-tunes until
its total target-side image-MACs reach those of the most expensive method at ``equal_epochs``
(epochs rounded down, at least the equal-epochs count, at most ``max_epochs``), with the same
schedule shape (warm-up, cosine) stretched over its epochs.

Most of this module is :class:`Fold`, one target's state (its data subsets, supernet cache, setup
costs, saved runs) shared by the planning of every method, the fine-tuning and the compute
accounting; its ranking sample (:mod:`.ranking_sample`) and embeddings (:mod:`.embeddings`) live
beside it.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mednns.data.metrics import majority_rate
from mednns.data.tensors import tensor_digest
from mednns.distributed import barrier
from mednns.errors import UsageError
from mednns.evaluation import ranking, statistics
from mednns.evaluation import results as summary
from mednns.evaluation.candidates import Candidate, SupernetCache, count_macs, inherited, random_init, timm_network
from mednns.evaluation.results import FORMAT, RESULTS_FILE
from mednns.evaluation.settings import QUERY_METHODS, Condition, EvaluationSettings
from mednns.files import read_json, write_json
from mednns.layout import META_SPACE_MANIFEST, zoo_store
from mednns.seeding import derive_seed

#: A method's starting points for one seed and condition (several: the best by validation ACC wins).
Plan = Callable[[int, Condition], list[Candidate]]


def _fixed(candidate: Candidate) -> Plan:
    """A plan that starts every seed and condition from ``candidate``."""
    return lambda seed, condition: [candidate]


def _first(order: Plan, k: int) -> Plan:
    """A plan that starts from the first ``k`` candidates of ``order``."""
    return lambda seed, condition: order(seed, condition)[:k]


def _restarts(order: Plan, k: int) -> Plan:
    """A plan that fine-tunes the first candidate of ``order`` ``k`` times."""
    return lambda seed, condition: [order(seed, condition)[0].restarted(r) for r in range(k)]


#: Why a baseline's restarts row does not run at equal compute.
RESTARTS_AT_EQUAL_EPOCHS = ("a baseline's restarts run at equal epochs only, the control of a best-of-k method that "
                            "spends as many fine-tunings; at equal compute they would set the budget of every method")


def slug(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def zoo_fingerprint(zoo_path: Path) -> str:
    """Identity of a zoo's content: its supernets' weights and row count (a meta-space fitted on
    another zoo is not reused)."""
    from mednns.zoo.store import ZooStore

    with ZooStore(zoo_path, readonly=True) as store:
        return slug([sorted(s["weights_sha256"] for s in store.supernets()), store.count()])


def reranking_applies(saved: dict[str, Any], made_with: dict[str, Any]) -> bool:
    """Whether a saved re-ranking was made as ``made_with`` asks (its ``settings``, the sorted zoo ids
    of its ``candidates``, the ``images`` it scored and the fine-tuning ``batch_size`` its BN
    calibration batches follow). A file saved before it recorded this is judged by its facts (every
    setting but the batch size). A variant keeps its name when its settings change: without this
    check its stale order would be reused."""
    if "made_with" in saved:
        return saved["made_with"] == made_with
    facts, settings = saved.get("rerank") or {}, made_with["settings"]
    return (all(facts.get(key) == settings[key] for key in ("score", "combine", "calibration_images", "seed"))
            and facts.get("images") == made_with["images"]
            and sorted(saved.get("order", [])) == made_with["candidates"])


def _phase(seconds: float | None, image_macs: int | float | None) -> dict[str, Any]:
    return {"seconds": None if seconds is None else round(float(seconds), 3),
            "image_macs": None if image_macs is None else int(image_macs)}


def _mean_phases(setups: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per phase, the mean seconds and image-MACs over runs (a phase some runs lack counts 0 there);
    the setup itself when every run shares it."""
    if all(setup == setups[0] for setup in setups):
        return setups[0]
    names = list(dict.fromkeys(name for setup in setups for name in setup))
    out = {}
    for name in names:
        values = [s.get(name) or {} for s in setups]
        out[name] = {k: (None if any(v.get(k) is None for v in values if v) else
                         float(np.mean([v.get(k) or 0 for v in values])))
                     for k in ("seconds", "image_macs")}
    return out


def _total(phases: dict[str, dict[str, Any]], key: str) -> float | None:
    values = [p[key] for p in phases.values()]
    return None if any(v is None for v in values) else float(sum(values))


@dataclass
class Fold:
    """One target held out: its meta-spaces, queries, candidates and runs."""

    run: Any
    settings: EvaluationSettings
    target: str
    directory: Path
    zoo_path: Path
    supernets: SupernetCache
    imagenet_errors: dict[str, str]
    zoo_key: str = ""
    data: dict[tuple[int, int | None], Any] = field(default_factory=dict)
    encodings: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: candidate key -> what its network is (:meth:`candidate_facts`)
    facts: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: (method, seed, condition id) -> setup phases of that run alone (re-ranking, own search)
    run_setup: dict[tuple[str, int, str], dict[str, Any]] = field(default_factory=dict)

    @property
    def dataset(self):
        return self.run.dataset(self.target)

    # --- meta-spaces and the query ------------------------------------------------------------
    def meta_space(self, args: dict[str, Any]) -> Path:
        """Fit (once) a meta-space with ``args`` and the target held out; returns its folder."""
        from mednns.metaspace.settings import MetaSpaceSettings
        from mednns.metaspace.train import train_meta_space

        args = {**args, "zoo": str(self.zoo_path), "held_out": [self.target]}
        directory = self.directory / "meta_spaces" / slug({"args": args, "zoo": self.zoo_key})
        if not (directory / META_SPACE_MANIFEST).is_file():
            self.run.console.print(f"[bold]{self.target}[/]: fitting a meta-space without it ({directory.name})")
            train_meta_space(self.run, MetaSpaceSettings.from_args(**{**args, "progress": self.settings.progress}),
                             directory)
            write_json(directory / "arguments.json", args)
        return directory

    def query(self, meta_dir: Path, by: str, top_k: int, source_gate: bool = False
              ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The query's result and what it spent on the target: encoding its images (measured once per
        dataset encoder, without the feature cache) and ranking the zoo."""
        from mednns.metaspace.retrieval import query

        start = time.perf_counter()
        result = query(meta_dir, self.dataset, top_k=top_k, by=by, manager=self.run.manager,  # type: ignore[arg-type]
                       device=self.run.device, source_gate=source_gate)
        ranking = time.perf_counter() - start
        encoding = self.encoding(read_json(meta_dir / META_SPACE_MANIFEST))
        return result, _phase(encoding["seconds"] + ranking, encoding["image_macs"])

    def reranked(self, variant: Any, rows: list[dict[str, Any]], candidates: tuple[Candidate, ...], seed: int,
                 condition: Condition) -> list[Candidate]:
        """``candidates`` (the meta-space's top rows ``rows``) re-ranked on the fine-tuning subset of
        ``(seed, condition)``: the labelled images that run may use, nothing else. Saved (with its
        first-measured cost) in ``queries/<variant>@<subset digest>.json`` (conditions that share a
        subset share it; a random pool, drawn per seed, adds its candidates' digest: seeds that
        train on the same images, all of a small dataset, draw different pools); the cost is
        recorded for the variant's methods as the run's ``rerank`` setup phase. A saved re-ranking
        made otherwise (:func:`reranking_applies`) is made again."""
        from mednns.transfer.reranking import TargetSample, rerank

        settings = variant.settings()
        pool = f"+{slug(sorted(r['zoo_id'] for r in rows))}" if variant.pool == "random" else ""
        path = (self.directory / "queries"
                / f"{variant.name or 'default'}@{self.subset_digest(seed, condition)}{pool}.json")
        data = self.finetune_data(seed, condition)
        made_with = {"settings": settings.to_dict(),
                     "candidates": sorted(r["zoo_id"] for r in rows[:settings.candidates]),
                     "images": min(settings.images, len(data.train_x)), "batch_size": condition.batch_size}
        saved = read_json(path) if path.is_file() else None
        if saved is None or not reranking_applies(saved, made_with):
            sample = TargetSample.from_tensors(data.train_x, data.train_y, str(self.dataset.info.task), settings,
                                               batch_size=condition.batch_size)
            results, facts = rerank(rows, self.dataset, settings, manager=self.run.manager, device=self.run.device,
                                    load=self.supernets, sample=sample)
            saved = {"order": [r["zoo_id"] for r in results], "results": results, "rerank": facts,
                     "made_with": made_with}
            write_json(path, saved)
        spent = _phase(saved["rerank"]["seconds"], saved["rerank"]["image_macs"])
        for base in QUERY_METHODS:
            self.run_setup[(variant.method(base), seed, condition.id)] = {"rerank": spent}
        by_id = {r["zoo_id"]: c for r, c in zip(rows, candidates)}
        return [by_id[i] for i in saved["order"]]

    def plan_setup(self, name: str, setup: dict[str, Any], seed: int, condition: Condition) -> dict[str, Any]:
        """A method's setup phases for one run: its own, plus what it spent on that (seed, condition)
        alone (a re-ranking on the run's subset, the own-supernet search)."""
        return {**setup, **self.run_setup.get((name, seed, condition.id), {})}

    def encoding(self, trained: dict[str, Any]) -> dict[str, Any]:
        """Seconds and forward MACs of encoding the target's images with a meta-space's dataset
        encoder, measured once without the cache (the query itself may read cached features)."""
        from torch.utils.flop_counter import FlopCounterMode

        from mednns.metaspace.features import dataset_features

        spec = trained["dataset_encoder"]
        key = slug([spec, trained["images"], trained["image_seed"]])
        if key not in self.encodings:
            encoder = self.run.manager.create("dataset-encoders", spec["name"], **spec["args"]).to(self.run.device)
            counter = FlopCounterMode(display=False)
            start = time.perf_counter()
            with counter:
                dataset_features(encoder, self.dataset, images=trained["images"], seed=trained["image_seed"],
                                 cache_dir=None, progress=False)
            self.encodings[key] = _phase(time.perf_counter() - start, counter.get_total_flops() // 2)
        return self.encodings[key]

    def transfer_rows(self, *columns: str) -> list[dict[str, Any]]:
        """Every zoo row of another dataset (the transfer candidates), with its supernet folder and
        ``columns`` beside the identity and architecture."""
        from mednns.zoo.store import ZooStore

        with ZooStore(self.zoo_path, readonly=True) as store:
            folders = {s["id"]: str(Path(s["path"]).parent) for s in store.supernets()}
            rows = store.models(["id", "dataset", "space", "arch", "supernet_id", *columns])
        return [{**r, "supernet": folders[r["supernet_id"]]} for r in rows if r["dataset"] != self.target]

    def random_pool(self, variant: Any) -> Plan:
        """Re-ranking without the meta-space (a variant with ``pool: random``): per seed,
        ``rerank.candidates`` transfer candidates drawn at random (those of weak sources left out
        when the variant gates), re-ranked on the run's fine-tuning subset like the meta-space's top."""
        from mednns.metaspace.retrieval import weak_sources

        rows = self.transfer_rows("macs")
        if variant.source_gate:
            weak = {str(q["folder"]) for q in weak_sources(self.zoo_path)}
            rows = [r for r in rows if r["supernet"] not in weak]
        count = min(variant.settings().candidates, len(rows))

        def order(seed: int, condition: Condition) -> list[Candidate]:
            drawn = random.Random(derive_seed(seed, "rerank_pool", self.target)).sample(rows, count)
            pool = [{**r, "zoo_id": r["id"], "rank": k} for k, r in enumerate(drawn, start=1)]
            found = tuple(replace(self.from_row(r, f"{r['space']} subnet of {r['dataset']} (zoo id {r['id']}, "
                                                   f"random pool)"), finetune=variant.finetune) for r in pool)
            return self.reranked(variant, pool, found, seed, condition)

        return order

    def queried(self, variant: Any) -> tuple[Plan, dict[str, Any], tuple[Candidate, ...], dict[str, Any], Path]:
        """A variant's query of its meta-space: the plan of its order (re-ranked per run when the
        variant re-ranks), its setup compute, the candidates and the first row, and the meta-space."""
        meta = self.meta_space(variant.meta_space)
        rerank = variant.settings()
        result, spent = self.query(meta, variant.by, max(variant.top_k, rerank.candidates if rerank else 1),
                                   variant.source_gate)
        write_json(self.directory / "queries" / f"{variant.name or 'default'}.json", result)
        if not result["results"]:
            raise UsageError(f"{self.target}: the query returned no zoo model (no other dataset has zoo rows?)")
        rows = result["results"]
        found = tuple(replace(self.from_row(r, f"{r['space']} subnet of {r['dataset']} (rank {r['rank']})"),
                              finetune=variant.finetune) for r in rows)

        def order(seed: int, condition: Condition) -> list[Candidate]:
            return list(found) if variant.rerank is None else self.reranked(variant, rows, found, seed, condition)

        return order, {"query": spent}, found, rows[0], meta

    def from_row(self, row: dict[str, Any], label: str) -> Candidate:
        return inherited(self.supernets, row["supernet"], row["arch"], self.dataset.info, source=row["dataset"],
                         label=label)

    # --- the methods: seed -> starting points (several: the best by validation ACC wins) -------
    def plans(self) -> tuple[dict[str, Plan], dict[str, str], dict[str, Any],
                             dict[str, dict[str, Any]]]:
        """Each method's planner, the reasons of skipped methods, facts for the results, and each
        method's target-side compute before fine-tuning (phase -> seconds and image-MACs)."""
        from mednns.metaspace.fid import fid_between
        from mednns.zoo.store import ZooStore

        settings, info = self.settings, self.dataset.info
        wanted = set(settings.methods)
        plans: dict[str, Plan] = {}
        skipped: dict[str, str] = {}
        facts: dict[str, Any] = {}
        setup: dict[str, dict[str, Any]] = {}
        top: list[Candidate] = []
        first: dict[str, Any] = {}
        meta_dir = self.directory
        for variant in settings.variant_list():
            spent: dict[str, Any] = {}
            if variant.pool == "random":  # no query: nothing of the meta-space is used
                order = self.random_pool(variant)
            else:
                order, spent, found, row, meta = self.queried(variant)
                if not variant.name:
                    top, first, meta_dir = list(found), row, meta
            name = variant.method("mednns")
            plans[name], setup[name] = _first(order, 1), dict(spent)
            if "mednns_topk" in wanted:
                name = variant.method("mednns_topk")
                if variant.top_k < 2 and variant.restarts < 2:
                    skipped[name] = "top_k is 1 (the same as mednns top-1)"
                else:
                    plans[name] = (_restarts(order, variant.restarts) if variant.restarts > 1
                                   else _first(order, variant.top_k))
                    setup[name] = dict(spent)
        if "random_init" in wanted:
            space_spec = self.supernets(first["supernet"])[1]["space"]
            candidate = random_init(self.run.manager, space_spec, first["arch"], top[0].model["arch_hash"], info,
                                    label=f"{first['space']} subnet (mednns's top-1), random init")
            plans["random_init"] = _fixed(candidate)
        if "timm_scratch" in wanted:
            scratch = timm_network(settings.timm_model, info, pretrained=False)
            plans["timm_scratch"] = _fixed(scratch)
        if "imagenet" in wanted:
            name = settings.timm_model
            if name not in self.imagenet_errors:
                try:
                    pretrained = timm_network(name, info, pretrained=True)
                    plans["imagenet"] = _fixed(pretrained)
                except UsageError as exc:
                    self.imagenet_errors[name] = exc.message
            if name in self.imagenet_errors:
                skipped["imagenet"] = self.imagenet_errors[name]
        trained = read_json(meta_dir / META_SPACE_MANIFEST)
        sources = trained["train_datasets"]
        if "nearest_fid" in wanted:
            from mednns.metaspace.features import dataset_features
            from mednns.paths import cache_dir

            spec = trained["dataset_encoder"]
            encoder = self.run.manager.create("dataset-encoders", spec["name"], **spec["args"]).to(self.run.device)
            features = {n: dataset_features(encoder, self.run.dataset(n), images=trained["images"],
                                            seed=trained["image_seed"], cache_dir=cache_dir(), progress=False)
                        for n in [self.target, *sources]}
            start = time.perf_counter()
            facts["fid"] = {n: fid_between(features[self.target], features[n]) for n in sources}
            fid_seconds = time.perf_counter() - start
            nearest = min(facts["fid"], key=facts["fid"].get)
            with ZooStore(self.zoo_path, readonly=True) as store:
                folder = next(str(Path(s["path"]).parent) for s in store.supernets() if s["dataset"] == nearest)
            space = self.supernets(folder)[0]
            largest = inherited(self.supernets, folder, space.arch_to_json(space.largest()), info, source=nearest,
                                label=f"largest subnet of {nearest} (FID {facts['fid'][nearest]:.3g})")
            plans["nearest_fid"] = _fixed(largest)
            encoding = self.encoding(trained)
            setup["nearest_fid"] = {"query": _phase(encoding["seconds"] + fid_seconds, encoding["image_macs"])}
        if "tans" in wanted:
            tans, spent = self.query(self.meta_space({**settings.meta_space, "losses": settings.tans_losses}),
                                     "score", 1)
            write_json(self.directory / "queries" / "tans.json", tans)
            row = tans["results"][0]
            tans_top = self.from_row(row, f"{row['space']} subnet of {row['dataset']} (TANS-style top-1)")
            plans["tans"], setup["tans"] = _fixed(tans_top), {"query": spent}
        if "random_pick" in wanted:
            rows = self.transfer_rows()

            def pick(seed: int, condition: Condition) -> list[Candidate]:
                row = random.Random(derive_seed(seed, "random_pick", self.target)).choice(rows)
                return [self.from_row(row, f"{row['space']} subnet of {row['dataset']} (zoo id {row['id']})")]

            plans["random_pick"] = pick
        for name, init in (("own_supernet_search", None), ("mednns_search", first.get("supernet"))):
            if name in wanted:
                search = self.own_supernet_search(name, init)
                if isinstance(search, str):
                    skipped[name] = search
                else:
                    plans[name], facts[name] = search
                    if init is not None:  # it starts from the default query's top-1 source
                        setup[name] = dict(setup["mednns"])
        for name, (base, k) in settings.restarts_rows().items():
            if base in skipped:
                skipped[name] = skipped[base]
            elif base in plans:
                plans[name], setup[name] = self.restarted(name, base, plans[base], k), dict(setup.get(base, {}))
        names = settings.method_names()
        return ({m: plans[m] for m in names if m in plans}, skipped, facts,
                self.first_measurement({m: setup.get(m, {}) for m in names if m in plans}))

    def restarted(self, name: str, base: str, plan: Plan, k: int) -> Plan:
        """The plan of row ``name``: ``base``'s start fine-tuned ``k`` times, with what ``base`` spent on
        each run alone (its own search) as that run's setup."""
        def starts(seed: int, condition: Condition) -> list[Candidate]:
            found = _restarts(plan, k)(seed, condition)
            if (base, seed, condition.id) in self.run_setup:
                self.run_setup[(name, seed, condition.id)] = self.run_setup[(base, seed, condition.id)]
            return found

        return starts

    def first_measurement(self, setup: dict[str, Any]) -> dict[str, Any]:
        """The setup compute measured the first time each method was planned (``setup_compute.json``):
        a resumed or extended evaluation reports the same seconds for what it did not run again (a
        record with other phases, from another version of the method, is replaced)."""
        path = self.directory / "setup_compute.json"
        known = read_json(path) if path.is_file() else {}
        merged = {m: known[m] if set(known.get(m) or {}) == set(spent) and m in known else spent
                  for m, spent in setup.items()}
        write_json(path, {**known, **merged})
        return merged

    def own_supernet_search(self, method: str, init: str | None = None) -> tuple[Plan, dict[str, Any]] | str:
        """Random search on the target's own supernet, trained per (seed, condition) on that run's
        training subset only (:mod:`mednns.evaluation.own_search`): the planner and the facts, or why
        the method cannot run. The subnets compared are the first ``search_budget`` the zoo evaluated
        on the run's supernet of the target, whose space and training settings it reuses.

        :param method: the method it plans for (its per-run setup is recorded under that name).
        :param init: a source supernet folder the target's supernet starts from (``mednns_search``);
            ``None``: a random initialization (``own_supernet_search``).
        """
        from mednns.evaluation.own_search import search_own_supernet
        from mednns.zoo.store import ZooStore

        with ZooStore(self.zoo_path, readonly=True) as store:
            own = [s for s in store.supernets() if s["dataset"] == self.target]
            if not own:
                return (f"the zoo has no supernet trained on {self.target} (list it under train_supernet and "
                        f"build_zoo to run this baseline)")
            archs = [r["arch"] for r in store.models(["id", "arch"], dataset=self.target, supernet_id=own[0]["id"])]
        archs = archs[: self.settings.search_budget]
        if not archs:
            return f"the zoo holds no evaluated subnet of {self.target}'s supernet"
        template = str(Path(own[0]["path"]).parent)

        where = "own_search" if init is None else "warm_search"

        def plan(seed: int, condition: Condition) -> list[Candidate]:
            digest = self.subset_digest(seed, condition)
            folder = self.directory / where / (digest if init is None else f"{digest}-{slug(init)}")
            found = search_own_supernet(
                template, self.dataset, folder, seed=self.config(seed, condition).seed,
                train_images=condition.train_images, subset_digest=digest, archs=archs, load=self.supernets,
                manager=self.run.manager, device=self.run.device, progress=self.settings.progress, init=init)
            self.run_setup[(method, seed, condition.id)] = {
                name: _phase(**spent) for name, spent in found["spent"].items()}
            start = "" if init is None else f", started from {found['source']}'s supernet"
            return [self.from_row({"supernet": found["supernet"], "arch": found["best"]["arch"],
                                   "dataset": self.target},
                                  f"best of {found['evaluated']} subnets of {self.target}'s own supernet "
                                  f"(trained on {found['train_images']} images{start})")]

        return plan, {"evaluated": len(archs), "trained_like": template, **({"init": init} if init else {})}

    # --- fine-tuning ----------------------------------------------------------------------------
    def config(self, seed: int, condition: Condition, epochs: int | None = None, candidate: Candidate | None = None):
        from mednns.finetune import FinetuneConfig

        options = {**self.settings.finetune, **(candidate.finetune if candidate else {}),
                   "max_train_images": condition.train_images, "batch_size": condition.batch_size}
        if epochs is not None:
            options["epochs"] = epochs
        restart = ("restart", candidate.restart) if candidate and candidate.restart else ()
        return FinetuneConfig(**options, seed=derive_seed(seed, "evaluate", self.target, *restart))

    def finetune_data(self, seed: int, condition: Condition):
        from mednns.finetune import FinetuneData

        key = (seed, condition.train_images)
        if key not in self.data:
            self.data[key] = FinetuneData.from_dataset(self.dataset, self.config(seed, condition))
        return self.data[key]

    def subset_digest(self, seed: int, condition: Condition) -> str:
        """A digest of the training images and labels of ``(seed, condition)``: equal digests prove
        that methods fine-tuned on the same subset."""
        data = self.finetune_data(seed, condition)
        return tensor_digest(data.train_x, data.train_y)

    def candidate_macs(self, candidate: Candidate) -> int:
        """Forward MACs of one image through the candidate's network (built once to count)."""
        return self.candidate_facts(candidate)["macs"]

    def candidate_facts(self, candidate: Candidate) -> dict[str, Any]:
        """What the candidate's network is, built once: its forward MACs per image and whether its stem
        is colour-blind (the ``colour_stem`` recipe changes only such a start)."""
        if candidate.key not in self.facts:
            from mednns.export import has_colour_blind_stem

            info = self.dataset.info
            network = candidate.build(0)
            self.facts[candidate.key] = {"macs": count_macs(network, (info.n_channels, *info.image_size)),
                                         "colour_blind": has_colour_blind_stem(network)}
        return self.facts[candidate.key]

    def finetune_macs(self, candidate: Candidate, seed: int, condition: Condition, epochs: int,
                      evaluations: int) -> int:
        """Image-MACs of fine-tuning ``candidate`` for ``epochs`` with ``evaluations`` validation passes
        (what :func:`mednns.finetune.train_model` counts, the transfer recipe's passes included)."""
        data, batch = self.finetune_data(seed, condition), condition.batch_size
        trained = len(data.train_x) // min(batch, len(data.train_x)) * min(batch, len(data.train_x))
        macs = self.candidate_macs(candidate)
        passes = self.config(seed, condition, candidate=candidate).image_passes(candidate.pretrained, epochs)
        return macs * trained * passes + macs * len(data.val_x) * evaluations

    def budget_macs(self, plans: dict[str, Plan], setup: dict[str, Any], seed: int,
                    condition: Condition) -> dict[str, Any]:
        """The equal-compute budget: the largest total target-side image-MACs of any method at the
        equal-epochs budget (setup + fine-tuning every candidate it fine-tunes), and that method."""
        epochs = self.settings.finetune["epochs"]
        totals = {}
        for m, plan in plans.items():
            candidates = plan(seed, condition)  # first: a re-ranking records its cost
            totals[m] = (_total(self.plan_setup(m, setup[m], seed, condition), "image_macs") or 0) + sum(
                self.finetune_macs(c, seed, condition, epochs, epochs) for c in candidates)
        method = max(totals, key=totals.__getitem__)
        return {"image_macs": int(totals[method]), "method": method}

    def compute_epochs(self, candidate: Candidate, share: float, seed: int, condition: Condition) -> tuple[int, bool]:
        """Epochs that bring ``candidate``'s fine-tuning to ``share`` image-MACs (with as many
        validation passes as the equal-epochs budget has); ``(epochs, capped at max_epochs)``."""
        base = self.settings.finetune["epochs"]
        at_base = self.finetune_macs(candidate, seed, condition, base, base)
        per_epoch = at_base - self.finetune_macs(candidate, seed, condition, base - 1, base)  # a full epoch
        fixed = at_base - base * per_epoch  # validation passes and what the recipe saves or adds
        epochs = max(base, int(math.floor((share - fixed) / per_epoch))) if per_epoch else base
        return min(epochs, self.settings.max_epochs), epochs > self.settings.max_epochs

    def run_path(self, candidate: Candidate, seed: int, condition: Condition, epochs: int | None = None
                 ) -> tuple[Path, Any, list[int] | None]:
        """Where :meth:`train` saves the run of ``(candidate, seed, condition, epochs)``, with its
        fine-tuning config and evaluation epochs (``None``: every epoch)."""
        config = self.config(seed, condition, epochs, candidate)
        base = self.settings.finetune["epochs"]
        eval_epochs = (None if config.epochs == base else
                       sorted({max(1, round(config.epochs * i / base)) for i in range(1, base + 1)}))
        identity = {"start": candidate.key, "finetune": config.identity(
                        candidate.pretrained, self.candidate_facts(candidate)["colour_blind"]),
                    "eval_epochs": eval_epochs}
        return self.directory / "runs" / f"{slug(identity)}-s{seed}.json", config, eval_epochs

    def train(self, candidate: Candidate, seed: int, condition: Condition, label: str,
              epochs: int | None = None) -> dict[str, Any]:
        """Fine-tune ``candidate`` for ``seed`` under ``condition`` (or read the saved run). With
        ``epochs`` above the equal-epochs count, validation and test run at as many evenly spaced
        epochs as the equal-epochs budget has (the same validation compute)."""
        import torch

        from mednns.finetune import train_model

        path, config, eval_epochs = self.run_path(candidate, seed, condition, epochs)
        if path.is_file():
            return read_json(path)
        data = self.finetune_data(seed, condition)
        start = time.perf_counter()
        model = candidate.build(config.seed)
        macs = self.candidate_macs(candidate)
        model_info = {**candidate.model, "params": sum(p.numel() for p in model.parameters()), "macs": macs}
        prepare = time.perf_counter() - start
        trained = train_model(model, data, config, device=self.run.device, console=self.run.console,
                              progress=self.settings.progress, label=label, macs=macs, eval_epochs=eval_epochs,
                              pretrained=candidate.pretrained)
        keep = ("epoch", "train_loss", "val_acc", "val_auc", "val_bal_acc", "test_acc", "test_auc", "test_bal_acc",
                "seconds", "target_seconds", "image_macs")
        record = {"key": candidate.key, "seed": seed, "model": model_info, "epochs": config.epochs,
                  "train_images": len(data.train_x), "train_subset": self.subset_digest(seed, condition),
                  "history": [{k: row[k] for k in keep} for row in trained["history"]],
                  "prepare_seconds": round(prepare, 3), "finetune_seconds": trained["seconds"],
                  # on a CPU the result depends on it (the order parallel sums run in), as much as a seed can
                  "torch_threads": torch.get_num_threads(),
                  **({"fit_head": trained["fit_head"]} if "fit_head" in trained else {})}
        write_json(path, record)
        return record

    def run_method(self, name: str, plan: Plan, setup: dict[str, Any],
                   condition: Condition, budget: dict[int, dict[str, Any]]) -> dict[str, Any]:
        """Every seed of one method under one condition: its runs, summary and compute."""
        runs = []
        method_setup = setup
        for seed in condition.seeds:
            candidates = plan(seed, condition)
            setup = self.plan_setup(name, method_setup, seed, condition)
            setup_seconds, setup_macs = _total(setup, "seconds") or 0.0, _total(setup, "image_macs")
            epochs: list[int | None] = [None] * len(candidates)
            capped = False
            if condition.budget == "equal_compute":
                share = (budget[seed]["image_macs"] - (setup_macs or 0)) / len(candidates)
                chosen_epochs = [self.compute_epochs(c, share, seed, condition) for c in candidates]
                epochs = [e for e, _ in chosen_epochs]
                capped = any(c for _, c in chosen_epochs)
            label = f"{self.target} {name} s{seed} ({condition.id})"
            options = [self.train(c, seed, condition, label, e) for c, e in zip(candidates, epochs)]
            best = max(range(len(options)), key=lambda i: max(row["val_acc"] for row in options[i]["history"]))
            chosen = dict(options[best])
            if len(options) > 1:
                chosen["chosen_from"] = [{"key": r["key"], "best_val_acc": max(row["val_acc"] for row in r["history"])}
                                         for r in options]
            finetune = _phase(sum(r["history"][-1]["target_seconds"] for r in options),
                              sum(r["history"][-1]["image_macs"] for r in options))
            others = finetune["seconds"] - options[best]["history"][-1]["target_seconds"]
            other_macs = finetune["image_macs"] - options[best]["history"][-1]["image_macs"]
            chosen["compute"] = {"setup": setup, "finetune": finetune,
                                 "offset_seconds": round(setup_seconds + others, 3),
                                 "offset_image_macs": int((setup_macs or 0) + other_macs),
                                 "total_seconds": round(setup_seconds + finetune["seconds"], 3),
                                 "total_image_macs": (None if setup_macs is None
                                                      else int(setup_macs + finetune["image_macs"])),
                                 "capped": capped}
            runs.append(chosen)
            last = chosen["history"][-1]
            self.run.console.print(f"[bold]{self.target}[/] {name} seed {seed} [{condition.id}]: test acc "
                                   f"{last['test_acc']:.4f} auc {last['test_auc']:.4f} after {chosen['epochs']} epochs "
                                   f"({chosen['model']['name']})")
        compute = {"setup": _mean_phases([r["compute"]["setup"] for r in runs]),
                   "finetune": {k: float(np.mean([r["compute"]["finetune"][k] for r in runs]))
                                for k in ("seconds", "image_macs")},
                   "total_seconds": float(np.mean([r["compute"]["total_seconds"] for r in runs])),
                   "total_image_macs": (None if any(r["compute"]["total_image_macs"] is None for r in runs)
                                        else float(np.mean([r["compute"]["total_image_macs"] for r in runs]))),
                   "epochs": sorted({r["epochs"] for r in runs}), "capped": any(r["compute"]["capped"] for r in runs)}
        return {"status": "ok", "runs": runs, "compute": compute,
                "summary": summary.summarize_runs(runs, summary.report_epochs(self.settings.finetune["epochs"]))}

    def evaluate(self) -> dict[str, Any]:
        """Every method for every condition and seed; the target's entry of ``results.json``."""
        start = time.perf_counter()
        info = self.dataset.info
        plans, skipped, facts, setup = self.plans()
        restarts_rows = self.settings.restarts_rows()
        conditions: dict[str, Any] = {}
        for condition in self.settings.conditions():
            at_equal_compute = condition.budget == "equal_compute"
            compared = {m: plan for m, plan in plans.items() if not (at_equal_compute and m in restarts_rows)}
            budget = ({seed: self.budget_macs(compared, setup, seed, condition) for seed in condition.seeds}
                      if at_equal_compute else {})
            methods: dict[str, Any] = {}
            for name in self.settings.method_names():
                reason = skipped.get(name) or (RESTARTS_AT_EQUAL_EPOCHS if at_equal_compute and name in restarts_rows
                                               else None)
                if reason:
                    methods[name] = {"status": "skipped", "reason": reason, "runs": []}
                    self.run.console.print(f"[bold]{self.target}[/] {name}: skipped ({reason})")
                elif name in plans:
                    methods[name] = self.run_method(name, plans[name], setup[name], condition, budget)
            conditions[condition.id] = {"methods": methods, "comparison": summary.dataset_comparison(methods),
                                        **({"budget": {str(seed): b for seed, b in budget.items()}} if budget else {})}
        test_labels = self.dataset.split("test").labels
        return {"info": {"task": str(info.task), "n_classes": info.n_classes, "n_channels": info.n_channels,
                         "image_size": list(info.image_size), "modality": info.modality,
                         "train": _split_size(self.dataset, "train"), "val": _split_size(self.dataset, "val"),
                         "test": len(test_labels), "majority_rate": majority_rate(info.task, test_labels)},
                "setup_compute": setup, "conditions": conditions, **facts,
                "seconds": round(time.perf_counter() - start, 2)}


def _split_size(dataset, split: str) -> int:
    return int(len(dataset.split(split).labels))


def zoo_datasets(zoo_path: Path) -> list[str]:
    """Datasets with rows in the zoo, in the order their supernets were added."""
    from mednns.zoo.store import ZooStore

    with ZooStore(zoo_path, readonly=True) as store:
        names = [s["dataset"] for s in store.supernets()]
        return [n for n in dict.fromkeys(names) if store.count(dataset=n)]


def fid_overview(run, names: list[str], encoder_spec: dict[str, Any], images: int) -> dict[str, Any]:
    """FIDs between all ``names`` (features of the meta-space's dataset encoder; cached)."""
    from mednns.metaspace.features import dataset_features, features_key
    from mednns.metaspace.fid import fid_matrix
    from mednns.paths import cache_dir

    encoder = run.manager.create("dataset-encoders", encoder_spec["name"], **encoder_spec["args"]).to(run.device)
    cache = cache_dir()
    features = {n: dataset_features(encoder, run.dataset(n), images=images, seed=run.seed, cache_dir=cache,
                                    progress=False) for n in names}
    keys = {n: features_key(encoder, run.dataset(n), images=images, seed=run.seed) for n in names}
    order, matrix = fid_matrix(features, cache=cache / "fid" / "pairs.json", keys=keys)
    return {"datasets": list(order), "matrix": np.asarray(matrix).tolist()}


#: Under torchrun, the rank that evaluated a target writes its entry here (``<stage>/<target>/``).
FOLD_FILE = "fold.json"


def evaluate(run, settings: EvaluationSettings, directory: Path) -> dict[str, Any]:
    """Run the leave-one-dataset-out evaluation; writes ``results.json`` after every target.

    Under torchrun the targets are shared out across the ranks (each fold is independent: its own
    meta-spaces, queries and fine-tuning runs), and rank 0 writes ``results.json`` once every rank
    is done; the other ranks return before the summary.
    """
    from mednns.evaluation.embeddings import save_embeddings
    from mednns.evaluation.ranking_sample import ranking_quality

    zoo_path = Path(settings.zoo) if settings.zoo else zoo_store(run.directory)
    if not zoo_path.is_file():
        raise UsageError(f"evaluate: no zoo at {zoo_path}", hint="run train_supernet and build_zoo first, or set 'zoo'")
    in_zoo = zoo_datasets(zoo_path)
    targets = list(settings.datasets) if settings.datasets is not None else in_zoo
    missing = [n for n in dict.fromkeys([*targets, *in_zoo]) if n not in run.datasets]
    if missing:
        raise UsageError(f"evaluate: the run has no dataset {', '.join(missing)}",
                         hint="every zoo dataset and every target must be listed under 'datasets'")
    if len(in_zoo) < 2 and any(t in in_zoo for t in targets):
        raise UsageError("evaluate: holding a dataset out needs a zoo of at least two datasets")
    names = settings.method_names()
    results: dict[str, Any] = {
        "format": FORMAT, "run": run.config.name, "protocol": {**settings.protocol(), "datasets": targets},
        "methods": {m: asdict(settings.describe(m)) for m in names},
        "zoo": {"path": str(zoo_path), "datasets": in_zoo}, "datasets": {}}
    supernets = SupernetCache(run.manager)
    imagenet_errors: dict[str, str] = {}
    zoo_key = zoo_fingerprint(zoo_path)
    ours = [m for m in names if settings.describe(m).kind == "ours"]
    job = run.distributed

    def fold_entry(target: str) -> dict[str, Any]:
        fold = Fold(run, settings, target, directory / target, zoo_path, supernets, imagenet_errors, zoo_key)
        entry = fold.evaluate()
        if settings.ranking is not None:
            primary, *others = settings.ranking_conditions()
            entry["ranking"] = ranking_quality(fold, primary)
            if others:
                entry["ranking_at"] = {c.id: ranking_quality(fold, c) for c in others}
        embeddings = Path("embeddings") / f"{target}.npz"
        save_embeddings(fold, directory / embeddings, [*[n for n in in_zoo if n != target], target])
        return {**entry, "embeddings": str(embeddings)}

    def add(target: str, entry: dict[str, Any]) -> None:
        results["datasets"][target] = entry
        results["overall"], results["statistics"] = {}, {}
        if settings.ranking is not None:
            results["ranking"] = ranking.overall({d: e["ranking"] for d, e in results["datasets"].items()})
            for condition in settings.ranking_conditions()[1:]:
                results.setdefault("ranking_at", {})[condition.id] = ranking.overall(
                    {d: e["ranking_at"][condition.id] for d, e in results["datasets"].items()})
        for condition in settings.conditions():
            view = summary.condition_view(results, condition.id)
            results["overall"][condition.id] = summary.overall(view["datasets"], names)
            results["statistics"][condition.id] = statistics.compare_methods(
                {d: e["methods"] for d, e in view["datasets"].items()}, ours, names, metrics(condition))
        write_json(directory / RESULTS_FILE, results)

    def metrics(condition: Condition) -> tuple[str, ...]:
        """The final test metrics and, at equal epochs, test ACC after each earlier report epoch
        (every method has then trained as long: does one train faster?)."""
        k = settings.finetune["epochs"]
        early = [statistics.early_metric("test_acc", e) for e in summary.report_epochs(k) if e < k]
        return statistics.PAIRED_METRICS + (tuple(early) if condition.budget == "equal_epochs" else ())

    if not job.active:
        for target in targets:
            add(target, fold_entry(target))
    else:  # under torchrun: each rank evaluates its share of the folds, rank 0 gathers them
        for target in job.share(targets):
            write_json(directory / target / FOLD_FILE, fold_entry(target))
        barrier(job)
        if not job.is_main:
            return results
        for target in targets:
            add(target, read_json(directory / target / FOLD_FILE))
    encoder_spec = settings.meta_space.get("dataset_encoder") or {"name": "image_stats", "args": {}}
    names = list(dict.fromkeys([*in_zoo, *targets]))
    results["fid_matrix"] = fid_overview(run, names, {"name": encoder_spec["name"],
                                                      "args": encoder_spec.get("args") or {}},
                                         settings.meta_space.get("images", 1000))
    write_json(directory / RESULTS_FILE, results)
    if settings.report:
        from mednns.evaluation.report import render_report

        html = render_report(directory / RESULTS_FILE)
        run.console.print(f"report: {html}")
    return results
