"""Training the meta-space on a zoo: sampled (dataset set, model subset) batches, weighted loss terms,
validation on held-out models and datasets, early stopping.

Inputs are prepared by the caller (the ``fit_meta_space`` stage): the :class:`ModelTable` of every
zoo row, per-image features of every dataset, normalized FIDs between the training datasets, a
model encoder already set up on the table, and the weighted loss terms. Each step draws, for every
training dataset, ``images_per_set`` of its image features (a fresh set: augmentation for the set
encoder) and ``models_per_dataset`` of its training rows.

Validation, every ``eval_every`` steps, on (a) the rows of the training datasets kept out of
training (``val_fraction``) and (b) every row of the held-out datasets: per dataset, Spearman and
Kendall correlations between the measured metric and both the predicted metric and the retrieval
score, and the top-1 regret (best measured metric minus that of the top-ranked model). The best
step by mean Spearman of ``select_by`` is kept.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from typing import Any, Sequence, cast

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from scipy import stats

from mednns.errors import UsageError
from mednns.metaspace.contracts import LossTerm, MetaBatch, ModelTable
from mednns.metaspace.model import MetaSpace
from mednns.metaspace.settings import FitConfig

log = logging.getLogger("mednns.metaspace")


def split_rows(table: ModelTable, train_datasets: Sequence[str], val_fraction: float, seed: int
               ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per training dataset: (train rows, validation rows), a seeded random split."""
    rng = np.random.default_rng(seed)
    train, val = {}, {}
    for name in train_datasets:
        rows = rng.permutation(table.rows_of(name))
        n_val = int(round(len(rows) * val_fraction))
        if len(rows) - n_val < 2:
            raise UsageError(f"meta-space: {name} has {len(rows)} zoo rows; at least 2 are needed to train on it")
        val[name], train[name] = np.sort(rows[:n_val]), np.sort(rows[n_val:])
    return train, val


def ranking_metrics(target: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Spearman, Kendall and top-1 regret of ``predicted`` against ``target`` (NaN when undefined)."""
    if len(target) < 2 or np.ptp(target) == 0 or np.ptp(predicted) == 0:
        spearman = kendall = float("nan")
    else:
        spearman = float(stats.spearmanr(target, predicted).statistic)
        kendall = float(stats.kendalltau(target, predicted).statistic)
    regret = float(target.max() - target[int(np.argmax(predicted))]) if len(target) else float("nan")
    return {"spearman": spearman, "kendall": kendall, "top1_regret": regret}


class MetaSpaceFitter:
    """Trains a :class:`MetaSpace` (see the module documentation).

    :param model: the network (its model encoder set up on ``table``).
    :param table: every zoo row. :param features: per dataset name, ``(N, F)`` image features
        (training and held-out datasets). :param train_datasets: datasets trained on.
    :param held_out: datasets evaluated only (their rows are never trained on).
    :param fid: normalized FIDs between ``train_datasets`` (in that order), or ``None``.
    :param losses: ``(weight, term)`` pairs.
    :param pairs: cross-dataset supervision (:mod:`mednns.metaspace.transfers`): per training
        dataset, ``(rows, targets)`` of zoo rows of *other* datasets measured on it. They join that
        dataset's training rows (with their own targets) in every batch's draw.
    """

    def __init__(self, model: MetaSpace, table: ModelTable, features: dict[str, np.ndarray],
                 train_datasets: Sequence[str], held_out: Sequence[str], fid: np.ndarray | None,
                 losses: Sequence[tuple[float, LossTerm]], config: FitConfig, *, device: str = "cpu",
                 console: Console | None = None, progress: bool = True,
                 pairs: dict[str, tuple[np.ndarray, np.ndarray]] | None = None):
        if not train_datasets:
            raise UsageError("meta-space: no training datasets (every zoo dataset is held out)")
        if not losses:
            raise UsageError("meta-space: no loss terms", hint="list at least one under 'losses'")
        self.model, self.table, self.config = model.to(device), table, config
        self.device, self.console, self.progress = device, console, progress
        self.train_datasets, self.held_out = list(train_datasets), list(held_out)
        self.features = {k: torch.as_tensor(v, dtype=torch.float32, device=device) for k, v in features.items()}
        self.fid = torch.as_tensor(fid, dtype=torch.float32, device=device) if fid is not None else None
        self.losses = list(losses)
        self.train_rows, self.val_rows = split_rows(table, self.train_datasets, config.val_fraction, config.seed)
        self.pools: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # per dataset: rows and their targets
        for name in self.train_datasets:
            rows, targets = self.train_rows[name], table.target[self.train_rows[name]]
            if pairs and name in pairs:
                rows, targets = np.concatenate([rows, pairs[name][0]]), np.concatenate([targets, pairs[name][1]])
            self.pools[name] = (torch.as_tensor(rows, dtype=torch.long),
                                torch.as_tensor(targets, dtype=torch.float32))
        self.generator = torch.Generator(device="cpu").manual_seed(config.seed)
        self.history: list[dict[str, Any]] = []

    # -- batches ---------------------------------------------------------------------------
    def sample_batch(self) -> MetaBatch:
        c, g = self.config, self.generator
        sets, index, mask, target = [], [], [], []
        for name in self.train_datasets:
            feats = self.features[name]
            take = torch.randperm(len(feats), generator=g)[: c.images_per_set]
            sets.append(feats[take.to(feats.device)])
            rows, targets = self.pools[name]
            order = torch.randperm(len(rows), generator=g)[: c.models_per_dataset]
            chosen, values = rows[order], targets[order]
            pad = c.models_per_dataset - len(chosen)
            mask.append(torch.cat([torch.ones(len(chosen), dtype=torch.bool), torch.zeros(pad, dtype=torch.bool)]))
            index.append(torch.cat([chosen, chosen[:1].expand(pad)]))
            target.append(torch.cat([values, values[:1].expand(pad)]))
        index_t = torch.stack(index).to(self.device)
        mask_t = torch.stack(mask).to(self.device)
        datasets, models, predicted, score = self.model(sets, index_t)
        return MetaBatch(datasets, models, predicted, score, torch.stack(target).to(self.device), mask_t, self.fid)

    # -- validation ------------------------------------------------------------------------
    @torch.no_grad()
    def scores(self, name: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predicted metric and retrieval score of ``rows`` for dataset ``name`` (all its features)."""
        self.model.eval()
        dataset = self.model.embed_datasets([self.features[name]])
        models = self.model.embed_models(torch.as_tensor(rows, device=self.device)).unsqueeze(0)
        predicted, score = self.model.pair(dataset, models)
        self.model.train()
        return predicted[0].cpu().numpy(), score[0].cpu().numpy()

    def validate(self) -> dict[str, Any]:
        report: dict[str, Any] = {}
        groups = [(n, self.val_rows[n], "val_models") for n in self.train_datasets if len(self.val_rows[n]) >= 2]
        groups += [(n, self.table.rows_of(n), "held_out") for n in self.held_out if len(self.table.rows_of(n)) >= 2]
        for name, rows, kind in groups:
            predicted, score = self.scores(name, rows)
            target = self.table.target[rows]
            report[name] = {"kind": kind, "models": int(len(rows)), "predicted": ranking_metrics(target, predicted),
                            "score": ranking_metrics(target, score),
                            "mae": float(np.abs(predicted - target).mean())}
        return report

    def objective(self, report: dict[str, Any]) -> float:
        values = [r[self.config.select_by]["spearman"] for r in report.values()]
        values = [v for v in values if not math.isnan(v)]
        return float(np.mean(values)) if values else -math.inf

    # -- the loop ----------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        c = self.config
        torch.manual_seed(c.seed)
        optimizer = torch.optim.AdamW(self.model.parameters(), lr=c.lr, weight_decay=c.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / c.steps)))
        best, best_state, best_step, stale = -math.inf, copy.deepcopy(self.model.state_dict()), 0, 0
        start = time.perf_counter()
        self.model.train()
        columns = (TextColumn("[bold]meta-space"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[status]}"), TimeElapsedColumn())
        with Progress(*columns, console=self.console, disable=not self.progress) as bar:
            task = bar.add_task("fit", total=c.steps, status="")
            for step in range(1, c.steps + 1):
                batch = self.sample_batch()
                parts = [(w, term(batch)) for w, term in self.losses]
                loss = cast(torch.Tensor, sum(w * value for w, value in parts))  # losses is never empty
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                bar.update(task, advance=1)
                if step % c.eval_every == 0 or step == c.steps:
                    report = self.validate()
                    objective = self.objective(report)
                    self.history.append({"step": step, "loss": float(loss.detach()), "objective": objective,
                                         "terms": [float(v.detach()) for _, v in parts],
                                         "seconds": time.perf_counter() - start})
                    bar.update(task, status=f"loss {float(loss.detach()):.4f} | val spearman {objective:.3f}")
                    if objective > best or best == -math.inf:
                        best, best_state, best_step, stale = objective, copy.deepcopy(self.model.state_dict()), step, 0
                    else:
                        stale += 1
                        if stale >= c.patience:
                            log.info("meta-space: stopping at step %d (no improvement for %d validations)", step, stale)
                            break
        self.model.load_state_dict(best_state)
        final = self.validate()
        return {"best_step": best_step, "steps_run": self.history[-1]["step"] if self.history else 0,
                "objective": self.objective(final), "seconds": round(time.perf_counter() - start, 2),
                "datasets": final, "summary": summarize(final)}


def summarize(report: dict[str, Any]) -> dict[str, Any]:
    """Means over datasets, per kind (``val_models``, ``held_out``) and output (``predicted``, ``score``)."""
    out: dict[str, Any] = {}
    for kind in ("val_models", "held_out"):
        entries = [r for r in report.values() if r["kind"] == kind]
        if not entries:
            continue
        out[kind] = {}
        for output in ("predicted", "score"):
            out[kind][output] = {m: float(np.nanmean([e[output][m] for e in entries]))
                                 if any(not math.isnan(e[output][m]) for e in entries) else float("nan")
                                 for m in ("spearman", "kendall", "top1_regret")}
    return out
