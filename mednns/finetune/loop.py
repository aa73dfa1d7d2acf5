"""The fine-tuning loop (:func:`train_model`), its data (:class:`FinetuneData`) and
:func:`finetune`, which fine-tunes an export folder and saves its best epoch (see :mod:`mednns.finetune`)."""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mednns.data import MedicalDataset, dataset_tensors
from mednns.errors import UsageError
from mednns.export import ARCH, METADATA, WEIGHTS, add_colour_kernels, head_module, load_model
from mednns.files import read_json, write_json
from mednns.finetune.config import FinetuneConfig
from mednns.seeding import derive_seed, torch_generator
from mednns.training.augment import random_crop, random_hflip
from mednns.training.checkpoint import save_weights
from mednns.training.evaluation import metrics_from_logits, predict
from mednns.training.losses import supervised_loss
from mednns.training.metrics_log import write_metrics_csv

if TYPE_CHECKING:
    from mednns.registry import ComponentSource

BEST, METRICS, FINAL = "best", "metrics.csv", "final.json"
#: Columns of a fine-tuning ``metrics.csv``.
COLUMNS = ("epoch", "lr", "train_loss", "val_acc", "val_auc", "val_bal_acc", "val_loss", "test_acc", "test_auc",
           "test_bal_acc", "test_loss", "seconds", "target_seconds", "image_macs")


@dataclass
class FinetuneData:
    """The three splits of a target as tensors, normalized with its training statistics.

    :param train_x: :param train_y: training images (capped by ``max_train_images``) and labels.
    """

    task: Any
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    @classmethod
    def from_dataset(cls, dataset: MedicalDataset, config: FinetuneConfig) -> "FinetuneData":
        """Read ``dataset`` once; a ``max_train_images`` subset is drawn from ``config.seed``."""
        channels = dataset.info.n_channels
        train_x, train_y = dataset_tensors(dataset, "train", channels=channels)
        if config.max_train_images is not None and config.max_train_images < len(train_x):
            keep = torch.randperm(len(train_x), generator=torch_generator(derive_seed(config.seed, "subset")))
            keep = keep[: config.max_train_images].sort().values
            train_x, train_y = train_x[keep], train_y[keep]
        val_x, val_y = dataset_tensors(dataset, "val", channels=channels)
        test_x, test_y = dataset_tensors(dataset, "test", channels=channels)
        if len(train_x) < 2:
            raise UsageError(f"{dataset.info.name}: {len(train_x)} training image(s) is too few to fine-tune")
        return cls(dataset.info.task, train_x, train_y, val_x, val_y, test_x, test_y)


def finetune(model_dir: str | Path, dataset: MedicalDataset, out_dir: str | Path,
             config: FinetuneConfig | None = None,
             *, device: str = "cpu", manager: ComponentSource | None = None, console: Console | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Fine-tune the export in ``model_dir`` on ``dataset``; files go to ``out_dir``.

    :param config: the hyper-parameters (default: :class:`FinetuneConfig`'s).
    :returns: ``final.json``'s content: best epoch, its val and test metrics, per-epoch history.
    """
    config = config if config is not None else FinetuneConfig()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    model = load_model(model_dir, manager=manager, device=device)  # checks the folder
    export = read_json(model_dir / METADATA)
    info = dataset.info
    if (export["num_classes"] != info.n_classes or export["in_channels"] != info.n_channels):
        raise UsageError(f"{model_dir} was exported for {export['num_classes']} classes and {export['in_channels']} "
                         f"channel(s); {info.name} has {info.n_classes} and {info.n_channels}",
                         hint="export it for this dataset: mednns query RUN_DIR --dataset ... --export DIR")
    out_dir.mkdir(parents=True, exist_ok=True)
    from mednns.deploy import preprocessing_of

    export = {**export, "preprocessing": preprocessing_of(dataset)}  # what a deployment repeats (mednns.deploy)
    result = train_model(model, FinetuneData.from_dataset(dataset, config), config, device=device, console=console,
                         progress=progress, metrics_csv=out_dir / METRICS,
                         on_best=lambda m, row: _save_best(m, model_dir, out_dir / BEST, export, row),
                         pretrained=True)
    final = {"dataset": info.name, "model": str(model_dir), **result}
    write_json(out_dir / FINAL, final)
    return final


def train_model(model: torch.nn.Module, data: FinetuneData, config: FinetuneConfig, *, device: str = "cpu",
                console: Console | None = None, progress: bool = True, metrics_csv: Path | None = None,
                on_best: Callable[[torch.nn.Module, dict[str, Any]], None] | None = None,
                label: str = "fine-tune", macs: int | None = None,
                eval_epochs: Collection[int] | None = None, pretrained: bool = False) -> dict[str, Any]:
    """Train ``model`` (any classifier of the target's classes) on ``data`` for ``config.epochs``.

    The same loop serves a retrieved model and every baseline, so they differ only in their
    starting point: SGD (Nesterov) with weight decay on weights only, cosine schedule with warm-up
    per step, random crops (and flips), one seeded data order per epoch.

    :param metrics_csv: write the per-epoch history here after every epoch.
    :param on_best: called with the model and the epoch's row whenever the validation ACC improves.
    :param label: progress-bar label.
    :param macs: forward MACs of one image through ``model``; when given, every row counts the
        image-MACs spent on the target so far (``image_macs``: 3x per trained image for forward +
        backward, 1x per validation image). The test split is a measurement, not a cost: its time
        and MACs are left out of ``target_seconds`` and ``image_macs``.
    :param eval_epochs: evaluate (and record a row) only after these epochs (default: every
        epoch; the last epoch always).
    :param pretrained: the model starts from pretrained weights: the config's transfer recipe
        applies (see :class:`FinetuneConfig`; its costs are counted in ``image_macs`` and
        ``target_seconds``).
    :returns: ``{"config", "best_epoch", "best", "last", "history", "seconds"}``, and ``fit_head``
        (the solved head's penalty and objective, :func:`mednns.finetune.probe.fit_head`) when the
        recipe solved it.
    """
    from timm.scheduler import CosineLRScheduler

    from mednns.supernets import recalibrate_bn

    recipe = config.recipe(pretrained)
    if recipe["colour_stem"]:
        add_colour_kernels(model, torch_generator(derive_seed(config.seed, "colour_stem")))
    model = model.to(device)
    train_x, train_y = data.train_x, data.train_y
    layout = torch.channels_last if config.channels_last and train_x.ndim == 4 else torch.contiguous_format
    model = model.to(memory_format=layout)  # channels-last: 1.5x faster convolutions on the CPU
    batch = min(config.batch_size, len(train_x))
    steps = len(train_x) // batch
    torch.manual_seed(config.seed)
    loss_fn = supervised_loss(data.task, config.label_smoothing)
    head_epochs = recipe["head_epochs"]
    head = set(head_module(model)[1].parameters()) if pretrained else set()
    optimizer = _sgd(model, config, head, recipe["body_lr_scale"])
    total = (config.epochs - head_epochs) * steps
    scheduler = CosineLRScheduler(optimizer, t_initial=total, warmup_t=int(config.warmup_epochs * steps),
                                  warmup_lr_init=config.lr * 0.01, lr_min=0.0, t_in_epochs=False)
    probe = _sgd(model, config, head, 1.0, only_head=True) if head_epochs else None  # the linear probe
    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    start = time.perf_counter()
    target_seconds, image_macs = 0.0, 0
    solved: dict[str, Any] | None = None  # what fit_head found
    columns = (TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
               TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not progress) as bar:
        task = bar.add_task("finetune", total=config.epochs * steps, status="")
        if recipe["recalibrate_bn"]:
            calibration_start = time.perf_counter()
            seen = recalibrate_bn(model, (train_x[i * batch:(i + 1) * batch].to(device).contiguous(memory_format=layout)
                                          for i in range(steps)))
            image_macs += (macs or 0) * seen
            target_seconds += time.perf_counter() - calibration_start
        if recipe["fit_head"]:
            from mednns.finetune.probe import fit_head

            probe_start = time.perf_counter()
            solved = fit_head(model, train_x[: steps * batch], train_y[: steps * batch], data.task,
                              weight_decay=config.weight_decay, label_smoothing=config.label_smoothing,
                              batch_size=config.eval_batch_size, device=device, memory_format=layout,
                              cross_validate=recipe["fit_head_cv"], seed=derive_seed(config.seed, "fit_head"))
            image_macs += (macs or 0) * steps * batch
            target_seconds += time.perf_counter() - probe_start
        for epoch in range(1, config.epochs + 1):
            head_only = epoch <= head_epochs
            model.train(not head_only)  # a linear probe sees the body as it is: eval-mode BN, frozen
            for p in model.parameters():
                p.requires_grad_(not head_only or p in head)
            current = probe if head_only else optimizer
            assert current is not None  # head_only: epoch <= head_epochs, so there is a probe
            epoch_start = time.perf_counter()
            generator = torch_generator(derive_seed(config.seed, "finetune", epoch))
            order = torch.randperm(len(train_x), generator=generator)[: steps * batch].view(steps, batch)
            running = 0.0
            for step, indices in enumerate(order):
                x, y = train_x[indices], train_y[indices]
                if config.crop_padding:
                    x = random_crop(x, config.crop_padding, generator)
                if config.hflip:
                    x = random_hflip(x, generator)
                x, y = x.to(device).contiguous(memory_format=layout), y.to(device)
                loss = loss_fn(model(x), y)
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise UsageError(f"fine-tuning diverged at epoch {epoch} (loss {value})", hint="lower lr")
                current.zero_grad(set_to_none=True)
                loss.backward()
                current.step()
                if not head_only:
                    scheduler.step_update((epoch - 1 - head_epochs) * steps + step + 1)
                running += value
                bar.update(task, advance=1)
            image_macs += (1 if head_only else 3) * (macs or 0) * steps * batch
            if eval_epochs is not None and epoch not in eval_epochs and epoch < config.epochs:
                target_seconds += time.perf_counter() - epoch_start
                continue
            val = metrics_from_logits(data.task, predict(model, data.val_x, config.eval_batch_size, device=device,
                                                              memory_format=layout),
                                      data.val_y)
            image_macs += (macs or 0) * len(data.val_x)
            target_seconds += time.perf_counter() - epoch_start
            test = metrics_from_logits(data.task, predict(model, data.test_x, config.eval_batch_size, device=device,
                                                               memory_format=layout),
                                       data.test_y)
            row = {"epoch": epoch, "train_loss": running / steps, "val_acc": val["acc"], "val_auc": val["auc"],
                   "val_bal_acc": val["bal_acc"], "val_loss": val["loss"], "test_acc": test["acc"],
                   "test_auc": test["auc"], "test_bal_acc": test["bal_acc"], "test_loss": test["loss"],
                   "lr": max(g["lr"] for g in current.param_groups), "seconds": round(time.perf_counter() - start, 3),
                   "target_seconds": round(target_seconds, 3), "image_macs": image_macs if macs else None}
            history.append(row)
            if metrics_csv is not None:
                write_metrics_csv(metrics_csv, history, COLUMNS)
            bar.update(task, status=f"val acc {val['acc']:.4f} | test acc {test['acc']:.4f}")
            if best is None or val["acc"] > best["val_acc"]:
                best = row
                if on_best is not None:
                    on_best(model, row)
    for p in model.parameters():
        p.requires_grad_(True)
    assert best is not None  # the last epoch is always evaluated
    return {"config": config.to_dict(), "best_epoch": best["epoch"], "best": best, "last": history[-1],
            "history": history, "seconds": round(time.perf_counter() - start, 2),
            **({"fit_head": solved} if solved is not None else {})}


def _sgd(model: torch.nn.Module, config: FinetuneConfig, head: set[torch.nn.Parameter], body_lr_scale: float, *,
         only_head: bool = False) -> torch.optim.SGD:
    """SGD (Nesterov) with weight decay on weights only; the ``head`` parameters at ``lr``, the rest at
    ``lr * body_lr_scale`` (or left out with ``only_head``)."""
    groups = []
    for part, scale in ((head, 1.0), (None, body_lr_scale)):
        if part is None and only_head:
            continue
        params = [p for p in model.parameters() if (p in head) == (part is not None)]
        for decay in (True, False):
            chosen = [p for p in params if (p.ndim > 1) == decay]
            if chosen:
                groups.append({"params": chosen, "lr": config.lr * scale,
                               "weight_decay": config.weight_decay if decay else 0.0})
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)


def _save_best(model: torch.nn.Module, source: Path, target: Path, export: dict[str, Any], row: dict[str, Any]) -> None:
    """The fine-tuned weights as an export folder: the source's metadata plus where they came from."""
    target.mkdir(parents=True, exist_ok=True)
    save_weights(target / WEIGHTS, model)
    write_json(target / METADATA, {**export, "finetuned": {"from": str(source), **row}})
    if (source / ARCH).is_file():
        shutil.copyfile(source / ARCH, target / ARCH)
