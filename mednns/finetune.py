"""Fine-tuning an exported model (or any export folder) on a target dataset.

K epochs of SGD with momentum, weight decay and a cosine schedule with warm-up (timm's scheduler,
as supernet training), random-crop (and optional flip) augmentation, the target's training
statistics for normalization. After every epoch: validation and test metrics into ``metrics.csv``;
the best epoch by validation ACC is saved as an export folder (``best/``) that
:func:`mednns.load_model` reads, with ``final.json`` summarizing the run. The test split never
chooses anything: it is only reported.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Collection

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from mednns.data import MedicalDataset, dataset_tensors
from mednns.errors import UsageError
from mednns.export import ARCH, METADATA, WEIGHTS, load_model
from mednns.files import read_json, write_json
from mednns.seeding import derive_seed, torch_generator
from mednns.training.augment import random_crop, random_hflip
from mednns.training.checkpoint import save_weights
from mednns.training.evaluation import metrics_from_logits, predict
from mednns.training.losses import supervised_loss
from mednns.training.metrics_log import write_metrics_csv

BEST, METRICS, FINAL = "best", "metrics.csv", "final.json"
#: Columns of a fine-tuning ``metrics.csv``.
COLUMNS = ("epoch", "lr", "train_loss", "val_acc", "val_auc", "val_bal_acc", "val_loss", "test_acc", "test_auc",
           "test_bal_acc", "test_loss", "seconds", "target_seconds", "image_macs")


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning hyper-parameters (the same for a retrieved model and for every baseline)."""

    epochs: int = 10
    lr: float = 0.05
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    crop_padding: int = 2
    hflip: bool = False
    max_train_images: int | None = None
    eval_batch_size: int = 256
    channels_last: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2 or self.lr <= 0:
            raise UsageError("epochs must be >= 1, batch_size >= 2 and lr > 0")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def finetune(model_dir: str | Path, dataset: MedicalDataset, out_dir: str | Path, config: FinetuneConfig = FinetuneConfig(),
             *, device: str = "cpu", manager: Any = None, console: Console | None = None,
             progress: bool = True) -> dict[str, Any]:
    """Fine-tune the export in ``model_dir`` on ``dataset``; files go to ``out_dir``.

    :returns: ``final.json``'s content: best epoch, its val and test metrics, per-epoch history.
    """
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    model = load_model(model_dir, manager=manager, device=device)  # checks the folder
    export = read_json(model_dir / METADATA)
    info = dataset.info
    if (export["num_classes"] != info.n_classes or export["in_channels"] != info.n_channels):
        raise UsageError(f"{model_dir} was exported for {export['num_classes']} classes and {export['in_channels']} "
                         f"channel(s); {info.name} has {info.n_classes} and {info.n_channels}",
                         hint="export it for this dataset: mednns query RUN_DIR --dataset ... --export DIR")
    out_dir.mkdir(parents=True, exist_ok=True)
    result = train_model(model, FinetuneData.from_dataset(dataset, config), config, device=device, console=console,
                         progress=progress, metrics_csv=out_dir / METRICS,
                         on_best=lambda m, row: _save_best(m, model_dir, out_dir / BEST, export, row))
    final = {"dataset": info.name, "model": str(model_dir), **result}
    write_json(out_dir / FINAL, final)
    return final


def train_model(model: torch.nn.Module, data: FinetuneData, config: FinetuneConfig, *, device: str = "cpu",
                console: Console | None = None, progress: bool = True, metrics_csv: Path | None = None,
                on_best: Callable[[torch.nn.Module, dict[str, Any]], None] | None = None,
                label: str = "fine-tune", macs: int | None = None,
                eval_epochs: Collection[int] | None = None) -> dict[str, Any]:
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
    :returns: ``{"config", "best_epoch", "best", "last", "history", "seconds"}``.
    """
    from timm.scheduler import CosineLRScheduler

    model = model.to(device)
    train_x, train_y = data.train_x, data.train_y
    layout = torch.channels_last if config.channels_last and train_x.ndim == 4 else torch.contiguous_format
    model = model.to(memory_format=layout)  # channels-last: 1.5x faster convolutions on the CPU
    batch = min(config.batch_size, len(train_x))
    steps = len(train_x) // batch
    torch.manual_seed(config.seed)
    loss_fn = supervised_loss(data.task, config.label_smoothing)
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": config.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, momentum=config.momentum,
                                nesterov=True)
    total = config.epochs * steps
    scheduler = CosineLRScheduler(optimizer, t_initial=total, warmup_t=int(config.warmup_epochs * steps),
                                  warmup_lr_init=config.lr * 0.01, lr_min=0.0, t_in_epochs=False)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    start = time.perf_counter()
    target_seconds, image_macs = 0.0, 0
    columns = (TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
               TimeElapsedColumn())
    with Progress(*columns, console=console, disable=not progress) as bar:
        task = bar.add_task("finetune", total=total, status="")
        for epoch in range(1, config.epochs + 1):
            model.train()
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
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step_update((epoch - 1) * steps + step + 1)
                running += value
                bar.update(task, advance=1)
            image_macs += 3 * (macs or 0) * steps * batch
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
                   "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.perf_counter() - start, 3),
                   "target_seconds": round(target_seconds, 3), "image_macs": image_macs if macs else None}
            history.append(row)
            if metrics_csv is not None:
                write_metrics_csv(metrics_csv, history, COLUMNS)
            bar.update(task, status=f"val acc {val['acc']:.4f} | test acc {test['acc']:.4f}")
            if best is None or val["acc"] > best["val_acc"]:
                best = row
                if on_best is not None:
                    on_best(model, row)
    return {"config": config.to_dict(), "best_epoch": best["epoch"], "best": best, "last": history[-1],
            "history": history, "seconds": round(time.perf_counter() - start, 2)}


def _save_best(model: torch.nn.Module, source: Path, target: Path, export: dict[str, Any], row: dict[str, Any]) -> None:
    """The fine-tuned weights as an export folder: the source's metadata plus where they came from."""
    target.mkdir(parents=True, exist_ok=True)
    save_weights(target / WEIGHTS, model)
    write_json(target / METADATA, {**export, "finetuned": {"from": str(source), **row}})
    if (source / ARCH).is_file():
        shutil.copyfile(source / ARCH, target / ARCH)
