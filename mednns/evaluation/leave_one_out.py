"""Leave-one-dataset-out evaluation: for each target dataset, hold it out of everything, query the
zoo with it, fine-tune the retrieved model and every baseline with the same budget and seeds.

Per target ``T`` (folder ``<stage>/<T>/``):

1. fit the meta-space with ``T`` held out (its zoo rows are neither training rows nor candidates,
   its FIDs are no training targets, its features do not enter the normalization): ``meta_space/``;
   for the TANS-style baseline a second one with contrastive + performance losses: ``tans/``;
2. query (``query.json``) and build the starting point of every method (:mod:`.candidates`);
3. fine-tune each starting point for every seed with one shared loop and configuration; every run
   is saved as it finishes (``runs/<key>-s<seed>.json``), so an interrupted evaluation resumes;
4. summarize (:mod:`.results`).

The stage then writes ``results.json`` (format ``mednns-evaluation/1``), the FID matrix of all
datasets, the meta-space embeddings of each fold (``embeddings/<T>.npz``) and the report.
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from mednns.errors import UsageError
from mednns.evaluation import results as summary
from mednns.evaluation.candidates import Candidate, SupernetCache, count_macs, inherited, random_init, timm_network
from mednns.evaluation.methods import METHODS
from mednns.files import read_json, write_json
from mednns.seeding import derive_seed

FORMAT = "mednns-evaluation/1"
RESULTS_FILE = "results.json"
DEFAULT_TANS_LOSSES: list[dict[str, Any]] = [{"name": "contrastive", "args": {}}, {"name": "performance", "args": {}}]
#: Zoo models whose embeddings a fold keeps for the t-SNE figure.
EMBEDDING_SAMPLE = 1500


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
    zoo: str | None = None
    progress: bool = True
    report: bool = True

    def protocol(self) -> dict[str, Any]:
        epochs = self.finetune["epochs"]
        return {"epochs": epochs, "seeds": list(self.seeds), "report_epochs": summary.report_epochs(epochs),
                "top_k": self.top_k, "by": self.by, "search_budget": self.search_budget, "timm_model": self.timm_model,
                "finetune": {k: v for k, v in self.finetune.items() if k != "epochs"}, "methods": list(self.methods),
                "meta_space": self.meta_space, "tans_losses": self.tans_losses}


def _slug(key: str) -> str:
    return hashlib.sha1(key.encode()).hexdigest()[:12]


@dataclass
class Fold:
    """One target held out: its meta-spaces, query, candidates and runs."""

    run: Any
    settings: EvaluationSettings
    target: str
    directory: Path
    zoo_path: Path
    supernets: SupernetCache
    imagenet_errors: dict[str, str]
    data: dict[int, Any] = field(default_factory=dict)

    @property
    def dataset(self):
        return self.run.dataset(self.target)

    # --- meta-spaces and the query ------------------------------------------------------------
    def meta_space(self, folder: str, losses: list[dict[str, Any]] | None = None) -> Path:
        """Fit (once) a meta-space with the target held out; returns its folder."""
        from mednns.metaspace.train import train_meta_space

        directory = self.directory / folder
        if not (directory / "metaspace.json").is_file():
            args = {**self.settings.meta_space, "zoo": str(self.zoo_path), "held_out": [self.target],
                    "progress": self.settings.progress}
            if losses is not None:
                args["losses"] = losses
            self.run.console.print(f"[bold]{self.target}[/]: fitting the meta-space ({folder}) without it")
            train_meta_space(self.run, self.run.manager.create("stages", "fit_meta_space", **args), directory)
        return directory

    def query(self, meta_dir: Path, by: str, top_k: int) -> dict[str, Any]:
        from mednns.metaspace.query import query

        return query(meta_dir, self.dataset, top_k=top_k, by=by, manager=self.run.manager,  # type: ignore[arg-type]
                     device=self.run.device)

    def from_row(self, row: dict[str, Any], label: str) -> Candidate:
        return inherited(self.supernets, row["supernet"], row["arch"], self.dataset.info, source=row["dataset"],
                         label=label)

    # --- the methods: seed -> starting points (several: the best by validation ACC wins) -------
    def plans(self) -> tuple[dict[str, Callable[[int], list[Candidate]]], dict[str, str], dict[str, Any]]:
        """Each method's planner, the reasons of skipped methods, and facts for the results."""
        from mednns.metaspace.features import dataset_features
        from mednns.metaspace.fid import fid_between
        from mednns.paths import cache_dir
        from mednns.zoo.store import ZooStore

        settings, info = self.settings, self.dataset.info
        wanted = set(settings.methods)
        plans: dict[str, Callable[[int], list[Candidate]]] = {}
        skipped: dict[str, str] = {}
        facts: dict[str, Any] = {}
        meta_dir = self.meta_space("meta_space")
        result = self.query(meta_dir, settings.by, max(settings.top_k, 1))
        write_json(self.directory / "query.json", result)
        if not result["results"]:
            raise UsageError(f"{self.target}: the query returned no zoo model (no other dataset has zoo rows?)")
        top = [self.from_row(r, f"{r['space']} subnet of {r['dataset']} (rank {r['rank']})") for r in result["results"]]
        plans["mednns"] = lambda seed, c=top[0]: [c]
        if "mednns_topk" in wanted:
            if settings.top_k < 2:
                skipped["mednns_topk"] = "top_k is 1 (the same as mednns top-1)"
            else:
                plans["mednns_topk"] = lambda seed, cs=tuple(top[: settings.top_k]): list(cs)
        first = result["results"][0]
        if "random_init" in wanted:
            space_spec = self.supernets(first["supernet"])[1]["space"]
            candidate = random_init(self.run.manager, space_spec, first["arch"], top[0].model["arch_hash"], info,
                                    label=f"{first['space']} subnet (mednns's top-1), random init")
            plans["random_init"] = lambda seed, c=candidate: [c]
        if "timm_scratch" in wanted:
            scratch = timm_network(settings.timm_model, info, pretrained=False)
            plans["timm_scratch"] = lambda seed, c=scratch: [c]
        if "imagenet" in wanted:
            name = settings.timm_model
            if name not in self.imagenet_errors:
                try:
                    pretrained = timm_network(name, info, pretrained=True)
                    plans["imagenet"] = lambda seed, c=pretrained: [c]
                except UsageError as exc:
                    self.imagenet_errors[name] = exc.message
            if name in self.imagenet_errors:
                skipped["imagenet"] = self.imagenet_errors[name]
        trained = read_json(meta_dir / "metaspace.json")
        sources = trained["train_datasets"]
        if "nearest_fid" in wanted:
            spec = trained["dataset_encoder"]
            encoder = self.run.manager.create("dataset-encoders", spec["name"], **spec["args"]).to(self.run.device)
            features = {n: dataset_features(encoder, self.run.dataset(n), images=trained["images"],
                                            seed=trained["image_seed"], cache_dir=cache_dir(), progress=False)
                        for n in [self.target, *sources]}
            facts["fid"] = {n: fid_between(features[self.target], features[n]) for n in sources}
            nearest = min(facts["fid"], key=facts["fid"].get)
            with ZooStore(self.zoo_path, readonly=True) as store:
                folder = next(str(Path(s["path"]).parent) for s in store.supernets() if s["dataset"] == nearest)
            space = self.supernets(folder)[0]
            largest = inherited(self.supernets, folder, space.arch_to_json(space.largest()), info, source=nearest,
                                label=f"largest subnet of {nearest} (FID {facts['fid'][nearest]:.3g})")
            plans["nearest_fid"] = lambda seed, c=largest: [c]
        if "tans" in wanted:
            tans = self.query(self.meta_space("tans", settings.tans_losses), "score", 1)
            write_json(self.directory / "tans_query.json", tans)
            row = tans["results"][0]
            tans_top = self.from_row(row, f"{row['space']} subnet of {row['dataset']} (TANS-style top-1)")
            plans["tans"] = lambda seed, c=tans_top: [c]
        if "random_pick" in wanted:
            with ZooStore(self.zoo_path, readonly=True) as store:
                folders = {s["id"]: str(Path(s["path"]).parent) for s in store.supernets()}
                rows = [r for r in store.models(["id", "dataset", "space", "arch", "supernet_id"])
                        if r["dataset"] != self.target]

            def pick(seed: int) -> list[Candidate]:
                row = random.Random(derive_seed(seed, "random_pick", self.target)).choice(rows)
                return [self.from_row({**row, "supernet": folders[row["supernet_id"]]},
                                      f"{row['space']} subnet of {row['dataset']} (zoo id {row['id']})")]

            plans["random_pick"] = pick
        if "own_supernet_search" in wanted:
            search = self.own_supernet_search()
            if isinstance(search, str):
                skipped["own_supernet_search"] = search
            else:
                found, facts["own_supernet_search"] = search
                plans["own_supernet_search"] = lambda seed, c=found: [c]
        return {m: plans[m] for m in settings.methods if m in plans}, skipped, facts

    def own_supernet_search(self) -> tuple[Candidate, dict[str, Any]] | str:
        """Random search on the target's own supernet: the best validation ACC among the first
        ``search_budget`` weight-shared, BN-recalibrated subnets the zoo evaluated on it."""
        from mednns.zoo.store import ZooStore

        with ZooStore(self.zoo_path, readonly=True) as store:
            own = [s for s in store.supernets() if s["dataset"] == self.target]
            if not own:
                return (f"the zoo has no supernet trained on {self.target} (list it under train_supernet and "
                        f"build_zoo to run this baseline)")
            rows = [r for r in store.models(["id", "dataset", "space", "arch", "val_acc", "eval_seconds"],
                                            dataset=self.target, supernet_id=own[0]["id"])
                    if r["val_acc"] is not None][: self.settings.search_budget]
        if not rows:
            return f"the zoo holds no evaluated subnet of {self.target}'s supernet"
        best = max(rows, key=lambda r: r["val_acc"])
        folder = str(Path(own[0]["path"]).parent)
        final = Path(folder) / "final.json"
        train_seconds = read_json(final).get("train_seconds") if final.is_file() else None
        candidate = self.from_row({**best, "supernet": folder},
                                  f"best of {len(rows)} subnets of {self.target}'s own supernet")
        return candidate, {"evaluated": len(rows), "best_val_acc": best["val_acc"],
                           "search_seconds": round(sum(r["eval_seconds"] for r in rows), 2),
                           "supernet_train_seconds": train_seconds}

    # --- fine-tuning ----------------------------------------------------------------------------
    def config(self, seed: int):
        from mednns.finetune import FinetuneConfig

        return FinetuneConfig(**self.settings.finetune, seed=derive_seed(seed, "evaluate", self.target))

    def train(self, candidate: Candidate, seed: int, label: str) -> dict[str, Any]:
        """Fine-tune ``candidate`` for ``seed`` (or read the saved run)."""
        from mednns.finetune import FinetuneData, train_model

        path = self.directory / "runs" / f"{_slug(candidate.key)}-s{seed}.json"
        if path.is_file():
            return read_json(path)
        config = self.config(seed)
        if seed not in self.data:
            self.data[seed] = FinetuneData.from_dataset(self.dataset, config)
        start = time.perf_counter()
        model = candidate.build(config.seed)
        info = self.dataset.info
        model_info = {**candidate.model, "params": sum(p.numel() for p in model.parameters()),
                      "macs": count_macs(model, (info.n_channels, *info.image_size))}
        prepare = time.perf_counter() - start
        trained = train_model(model, self.data[seed], config, device=self.run.device, console=self.run.console,
                              progress=self.settings.progress, label=label)
        keep = ("epoch", "train_loss", "val_acc", "val_auc", "test_acc", "test_auc", "seconds")
        record = {"key": candidate.key, "seed": seed, "model": model_info,
                  "history": [{k: row[k] for k in keep} for row in trained["history"]],
                  "prepare_seconds": round(prepare, 3), "finetune_seconds": trained["seconds"]}
        write_json(path, record)
        return record

    def evaluate(self) -> dict[str, Any]:
        """Every method for every seed; the target's entry of ``results.json``."""
        start = time.perf_counter()
        info = self.dataset.info
        plans, skipped, facts = self.plans()
        report_epochs = summary.report_epochs(self.settings.finetune["epochs"])
        methods: dict[str, Any] = {}
        for name in self.settings.methods:
            if name in skipped:
                methods[name] = {"status": "skipped", "reason": skipped[name], "runs": []}
                self.run.console.print(f"[bold]{self.target}[/] {name}: skipped ({skipped[name]})")
                continue
            runs = []
            for seed in self.settings.seeds:
                options = [self.train(c, seed, f"{self.target} {name} s{seed}") for c in plans[name](seed)]
                chosen = max(options, key=lambda r: max(row["val_acc"] for row in r["history"]))
                if len(options) > 1:
                    chosen = {**chosen, "chosen_from": [{"key": r["key"], "best_val_acc":
                                                         max(row["val_acc"] for row in r["history"])} for r in options]}
                runs.append(chosen)
                last = chosen["history"][-1]
                self.run.console.print(f"[bold]{self.target}[/] {name} seed {seed}: test acc {last['test_acc']:.4f} "
                                       f"auc {last['test_auc']:.4f} ({chosen['model']['name']})")
            methods[name] = {"status": "ok", "runs": runs, "summary": summary.summarize_runs(runs, report_epochs)}
        return {"info": {"task": str(info.task), "n_classes": info.n_classes, "n_channels": info.n_channels,
                         "image_size": list(info.image_size), "modality": info.modality,
                         "train": _split_size(self.dataset, "train"), "val": _split_size(self.dataset, "val"),
                         "test": _split_size(self.dataset, "test")},
                "methods": methods, "comparison": summary.dataset_comparison(methods), **facts,
                "seconds": round(time.perf_counter() - start, 2)}

    def save_embeddings(self, path: Path, dataset_names: list[str]) -> None:
        """The fold's meta-space embeddings of zoo models (a sample) and of datasets, for t-SNE."""
        from mednns.metaspace.features import dataset_features
        from mednns.metaspace.train import load_meta_space
        from mednns.paths import cache_dir

        trained = load_meta_space(self.directory / "meta_space", manager=self.run.manager, device=self.run.device,
                                  with_model_encoder=False)
        spec = trained.metadata["dataset_encoder"]
        encoder = self.run.manager.create("dataset-encoders", spec["name"], **spec["args"]).to(self.run.device)
        features = [torch.as_tensor(dataset_features(encoder, self.run.dataset(n), images=trained.metadata["images"],
                                                     seed=trained.metadata["image_seed"], cache_dir=cache_dir(),
                                                     progress=False), device=self.run.device)
                    for n in dataset_names]
        with torch.no_grad():  # unit length: the predictor and the retrieval score see them so
            datasets = torch.nn.functional.normalize(trained.model.embed_datasets(features), dim=-1).cpu().numpy()
        models = trained.embeddings / np.maximum(np.linalg.norm(trained.embeddings, axis=1, keepdims=True), 1e-12)
        rows = len(trained.table)
        keep = np.sort(np.random.default_rng(0).permutation(rows)[:EMBEDDING_SAMPLE])
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, model_embeddings=models[keep].astype(np.float32),
                            model_acc=trained.table.target[keep].astype(np.float32),
                            model_dataset=np.asarray(trained.table.dataset)[keep].astype(str),
                            dataset_embeddings=datasets.astype(np.float32),
                            dataset_names=np.asarray(dataset_names, dtype=str), held_out=np.asarray(self.target))


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


def evaluate(run, settings: EvaluationSettings, directory: Path) -> dict[str, Any]:
    """Run the leave-one-dataset-out evaluation; writes ``results.json`` after every target."""
    zoo_path = Path(settings.zoo) if settings.zoo else run.directory / "stages" / "build_zoo" / "zoo.sqlite"
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
    results: dict[str, Any] = {
        "format": FORMAT, "run": run.config.name, "protocol": {**settings.protocol(), "datasets": targets},
        "methods": {m: {"label": METHODS[m].label, "kind": METHODS[m].kind, "description": METHODS[m].description}
                    for m in settings.methods},
        "zoo": {"path": str(zoo_path), "datasets": in_zoo}, "datasets": {}}
    supernets = SupernetCache(run.manager)
    imagenet_errors: dict[str, str] = {}
    for target in targets:
        fold = Fold(run, settings, target, directory / target, zoo_path, supernets, imagenet_errors)
        entry = fold.evaluate()
        embeddings = Path("embeddings") / f"{target}.npz"
        fold.save_embeddings(directory / embeddings, [*[n for n in in_zoo if n != target], target])
        results["datasets"][target] = {**entry, "embeddings": str(embeddings)}
        results["overall"] = summary.overall(results["datasets"], settings.methods)
        write_json(directory / RESULTS_FILE, results)
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
