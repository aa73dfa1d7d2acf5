"""Supernet training: a full-network phase, then progressive shrinking with the sandwich rule.

:class:`SupernetTrainer` trains one supernet on one dataset into one folder::

    <folder>/metrics.csv            one row per epoch (phase, epoch, step, lr, losses, val metrics, seconds)
    <folder>/checkpoints/           the latest checkpoint (see mednns.training.checkpoint)
    <folder>/supernet.safetensors   final weights        } written when training ends
    <folder>/supernet.json          final metadata       }
    <folder>/final.json             TEST metrics of the largest, a median-sized and the smallest subnet

Phases: ``full`` trains the largest network alone on the labels; then one phase per elastic
dimension in ``space.dimensions`` order releases that dimension (cumulatively), calling
``space.sort_channels()`` first when it releases ``expand`` or ``width``. Each phase has its own
optimizer (SGD, momentum, weight decay except on BN and biases) and cosine schedule with warm-up.

Validation uses the ``val`` split only; the ``test`` split is read once, by :meth:`SupernetTrainer.finalize`.

Reproducibility and resuming: batch order, augmentation and sampled architectures derive from
the seed and the (phase, epoch, step) position, not from global RNG state; checkpoints hold the
weights, optimizer and scheduler states, global RNG states and counters. Calling :meth:`fit`
again with the same configuration continues from the latest checkpoint; on the CPU the result
is bit-identical to an uninterrupted run.

Multi-process training: ``rank``/``world_size`` shard each epoch's batches, every rank samples
the same architectures, augmentation is drawn for the global batch, batch norm normalizes with the
global batch's statistics and gradients are averaged over ranks when a ``torch.distributed``
process group is initialized: N ranks with ``batch_size`` B train what one process with batch N x B
would (up to float round-off). Only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler

import mednns
from mednns.data import MedicalDataset
from mednns.errors import UsageError
from mednns.files import read_json, write_json
from mednns.seeding import derive_seed, torch_generator
from mednns.supernets import Arch, Supernet
from mednns.training.augment import Augmentation
from mednns.training.checkpoint import (
    FORMAT,
    SUPERNET_METADATA,
    SUPERNET_WEIGHTS,
    Checkpoint,
    capture_rng_state,
    load_checkpoint,
    load_weights,
    restore_rng_state,
    save_checkpoint,
    save_supernet,
)
from mednns.training.config import CHANNEL_DIMENSIONS, Phase, TrainConfig, plan_phases, warmup_steps
from mednns.training.data import TrainingData
from mednns.training.evaluation import evaluate, median_arch
from mednns.training.losses import DistillationLoss, supervised_loss
from mednns.training.metrics_log import write_metrics_csv
from mednns.training.sandwich import (
    all_reduce_gradients,
    all_reduce_mean,
    phase_smallest,
    sample_subnets,
    sandwich_step,
    synchronized_batch_norm,
)

log = logging.getLogger("mednns.training")

from mednns.training.config import FINAL  # noqa: E402 (re-exported)

METRICS = "metrics.csv"


@dataclass
class TrainProgress:
    """Where training stands: the next (phase, epoch, step) to run and what was measured so far."""

    phase_index: int = 0
    epoch: int = 0
    step: int = 0
    global_step: int = 0
    loss_sum: float = 0.0
    kd_sum: float = 0.0
    epoch_seconds: float = 0.0
    #: Image-MACs spent so far (machine-independent compute): forward + backward of every trained
    #: subnet (3x its forward MACs per image) and the forward passes of validation and calibration.
    image_macs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def fresh_phase(self) -> bool:
        return self.epoch == 0 and self.step == 0


@dataclass(frozen=True)
class CheckpointEvent:
    """Passed to ``on_checkpoint`` after a checkpoint is written."""

    tag: str
    phase: str
    epoch: int
    step: int
    global_step: int
    end_of_epoch: bool


class SupernetTrainer:
    """Train ``space`` on ``dataset`` into ``directory``.

    :param space: the supernet (a :class:`~mednns.supernets.Supernet`), freshly built and seeded.
    :param dataset: the dataset; ``train`` and ``val`` are read at construction, ``test`` only by :meth:`finalize`.
    :param directory: output folder (created).
    :param config: hyper-parameters.
    :param space_name: the space's registered name (stored so :func:`~mednns.training.load_supernet` can rebuild it).
    :param seed: training seed (batch order, augmentation, architecture sampling, calibration set).
    :param device: ``cpu``, ``cuda``, ``cuda:N``.
    :param rank: this process's rank; :param world_size: number of processes.
    :param console: where the progress bar draws.
    :param on_checkpoint: called with a :class:`CheckpointEvent` after every checkpoint (tests, monitoring).
    """

    def __init__(self, space: Supernet, dataset: MedicalDataset, directory: str | Path,
                 config: TrainConfig | None = None, *, space_name: str, seed: int = 0,
                 device: str | torch.device = "cpu", rank: int = 0, world_size: int = 1, console: Console | None = None,
                 on_checkpoint: Callable[[CheckpointEvent], None] | None = None):
        self.config = config or TrainConfig()
        self.space = space
        self.space_name = space_name
        self.dataset = dataset
        self.info = dataset.info
        self.directory = Path(directory)
        self.seed = seed
        self.device = torch.device(device)
        self.rank, self.world_size = rank, world_size
        self.console = console
        self.on_checkpoint = on_checkpoint
        self.phases: list[Phase] = plan_phases(space.dimensions, self.config,
                                               getattr(space, "channel_dimensions", CHANNEL_DIMENSIONS))
        self._data: TrainingData | None = None
        self.memory_format = torch.channels_last if self.config.channels_last else torch.contiguous_format
        self.space.to(self.device)
        if self.config.channels_last:
            self.space.to(memory_format=torch.channels_last)
        self.supervised = supervised_loss(self.info.task, self.config.label_smoothing)
        self.distill = DistillationLoss(self.info.task, self.config.kd_temperature)
        self.augment = Augmentation(self.config.crop_padding, self.config.hflip)
        self.progress = TrainProgress()
        self._resume_state: dict[str, Any] | None = None
        self._train_x: torch.Tensor | None = None
        self._train_y: torch.Tensor | None = None

    @property
    def data(self) -> TrainingData:
        """The dataset's tensors (train and val), loaded on first use."""
        if self._data is None:
            channels = getattr(self.space, "in_channels", None) or self.space.config().get("in_channels")
            config = self.config
            self._data = TrainingData(self.dataset, channels=channels, seed=self.seed, batch_size=config.batch_size,
                                      max_train_images=config.max_train_images,
                                      min_steps_per_epoch=config.min_steps_per_epoch,
                                      calibration_images=config.calibration_images,
                                      calibration_batch_size=config.calibration_batch_size,
                                      rank=self.rank, world_size=self.world_size)
            # small training sets live on the GPU: no host-to-device copy per step
            on_device = self.device.type == "cuda" and self._data.train_x.nbytes < 2 * 2**30
            self._train_x = self._data.train_x.to(self.device) if on_device else self._data.train_x
            self._train_y = self._data.train_y.to(self.device) if on_device else self._data.train_y
        return self._data

    # -- public ---------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and logs."""
        return self.rank == 0

    @property
    def final_path(self) -> Path:
        return self.directory / FINAL

    def is_complete(self) -> bool:
        """Whether the final files exist (``final.json`` last written)."""
        return all((self.directory / name).exists() for name in (FINAL, SUPERNET_WEIGHTS, SUPERNET_METADATA))

    def fit(self) -> dict[str, Any]:
        """Train (resuming from the latest checkpoint), then :meth:`finalize`; returns ``final.json``'s content.

        A folder that already holds the final files of the same configuration is not trained again.
        """
        if self.is_complete():
            final = read_json(self.final_path)
            self._check_compatible(read_json(self.directory / SUPERNET_METADATA), "final supernet")
            log.info("%s: supernet already trained in %s", self.info.name, self.directory)
            return final
        self.train()
        return self.finalize()

    def train(self) -> None:
        """Run every phase (from the latest checkpoint on); validation uses the ``val`` split only."""
        if self.is_main:
            self.directory.mkdir(parents=True, exist_ok=True)
        checkpoint = load_checkpoint(self.directory, map_location=self.device)
        if checkpoint is not None:
            self._resume(checkpoint)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), TextColumn("{task.fields[status]}"))
        with Progress(*columns, console=self.console, disable=not (self.config.progress and self.is_main),
                      transient=False) as bar:
            for index, phase in enumerate(self.phases):
                if index < self.progress.phase_index:
                    continue
                if phase.epochs == 0:
                    log.info("%s: phase %s skipped (0 epochs)", self.info.name, phase.name)
                    continue
                self._run_phase(index, phase, bar)
        self.progress.phase_index = len(self.phases)

    def finalize(self) -> dict[str, Any]:
        """Evaluate on the TEST split (largest, median-sized, smallest; after BN recalibration) and write the final
        files."""
        start = time.perf_counter()
        test_x, test_y = self.data.test()
        input_size = self.info.image_size
        largest, smallest = self.space.largest(), self.space.smallest()
        median, _ = median_arch(self.space, derive_seed(self.seed, "median"), self.config.final_samples, input_size)
        results: dict[str, Any] = {}
        for label, arch in (("largest", largest), ("median", median), ("smallest", smallest)):
            metrics = evaluate(self.space, arch, self.data.calibration, test_x, test_y, self.info.task,
                               self.config.eval_batch_size, device=self.device, channels_last=self.config.channels_last)
            cost = self.space.cost(arch, input_size)
            results[label] = {**metrics, "params": int(cost["params"]), "macs": int(cost["macs"]),
                              "arch": self.space.arch_to_json(arch)}
        final = {
            "dataset": self.info.name,
            "space": {"name": self.space_name, "args": self.space.config()},
            "split": "test",
            "test": results,
            "epochs": {p.name: p.epochs for p in self.phases},
            "steps": self.progress.global_step,
            "train_seconds": round(sum(r.get("seconds", 0.0) for r in self.progress.history), 3),
            "train_image_macs": self.progress.image_macs,
            "final_seconds": round(time.perf_counter() - start, 3),
        }
        if self.is_main:
            metadata = self._metadata(None)
            metadata["final"] = {k: {m: v[m] for m in ("acc", "auc", "loss", "params", "arch")}
                                 for k, v in results.items()}
            save_supernet(self.directory, self.space, metadata)
            write_json(self.final_path, final)
        log.info("%s: test acc largest %.4f, median %.4f, smallest %.4f", self.info.name,
                 results["largest"]["acc"], results["median"]["acc"], results["smallest"]["acc"])
        return read_json(self.final_path) if self.is_main else final

    # -- phases and steps -----------------------------------------------------------
    def _autocast(self) -> ContextManager:
        if self.config.amp and self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _optimizer(self, phase: Phase) -> tuple[torch.optim.Optimizer, CosineLRScheduler, int]:
        config = self.config
        steps = self.data.steps_per_epoch
        total = phase.epochs * steps
        warmup = warmup_steps(config, steps, total)
        kwargs: dict[str, Any] = {"momentum": config.momentum} if config.optimizer != "adamw" else {}
        optimizer = create_optimizer_v2(self.space, opt=config.optimizer, lr=phase.lr,
                                        weight_decay=config.weight_decay, filter_bias_and_bn=True, **kwargs)
        scheduler = CosineLRScheduler(optimizer, t_initial=max(1, total - warmup), lr_min=config.min_lr,
                                      warmup_t=warmup, warmup_lr_init=phase.lr * config.warmup_lr_ratio,
                                      warmup_prefix=True, t_in_epochs=False)
        return optimizer, scheduler, total

    def _run_phase(self, index: int, phase: Phase, bar: Progress) -> None:
        progress = self.progress
        if progress.fresh_phase:
            if phase.sort_channels:
                log.info("%s: phase %s: sorting channels by importance", self.info.name, phase.name)
                self.space.sort_channels()
            log.info("%s: phase %s: %d epoch(s), lr %g, released: %s", self.info.name, phase.name, phase.epochs,
                     phase.lr, ", ".join(phase.released) or "none (largest network only)")
        optimizer, scheduler, total = self._optimizer(phase)
        if not progress.fresh_phase and self._resume_state is not None:
            optimizer.load_state_dict(self._resume_state["optimizer"])
            scheduler.load_state_dict(self._resume_state["scheduler"])
        self._resume_state = None
        steps = self.data.steps_per_epoch
        task = bar.add_task(f"{self.info.name} · {phase.name}", total=total,
                            completed=progress.epoch * steps + progress.step, status="")
        smallest = phase_smallest(self.space, phase.released) if phase.sandwich else None
        largest = self.space.largest()
        for epoch in range(progress.epoch, phase.epochs):
            self._run_epoch(index, phase, epoch, optimizer, scheduler, largest, smallest, bar, task)
        bar.update(task, completed=total)

    def _run_epoch(self, index: int, phase: Phase, epoch: int, optimizer: torch.optim.Optimizer,
                   scheduler: CosineLRScheduler, largest: dict, smallest: dict | None, bar: Progress,
                   task: Any) -> None:
        progress, config = self.progress, self.config
        steps = self.data.steps_per_epoch
        order = self.data.epoch_order(phase.name, epoch)
        assert self._train_x is not None and self._train_y is not None
        started = time.perf_counter()
        self.space.train()
        for step in range(progress.step, steps):
            scheduler.step_update(num_updates=epoch * steps + step)
            indices = order[step].to(self._train_x.device)
            x = self._train_x[indices].to(self.device, non_blocking=True)
            y = self._train_y[indices].to(self.device, non_blocking=True)
            if self.augment.enabled:  # drawn for the global batch: each rank takes its images' draws
                generator = torch_generator(derive_seed(self.seed, "augment", 0, phase.name, epoch, step))
                x = self.augment(x, generator, part=(self.rank, self.world_size))
            x = x.contiguous(memory_format=self.memory_format) if x.ndim == 4 else x
            others: list[Arch] = []
            if phase.sandwich:
                assert smallest is not None  # planned with the phase
                rng = random.Random(derive_seed(self.seed, "arch", phase.name, epoch, step))
                others = [smallest, *sample_subnets(self.space, rng, phase.released, config.num_random)]
            progress.image_macs += 3 * len(x) * self.world_size * sum(self.macs(a) for a in [largest, *others])
            optimizer.zero_grad(set_to_none=True)
            with synchronized_batch_norm(self.world_size):
                losses = sandwich_step(self.space, x, y, largest=largest, others=others, supervised=self.supervised,
                                       distill=self.distill, kd_weight=config.kd_weight,
                                       label_weight=config.label_weight, autocast=self._autocast)
            all_reduce_gradients(self.space, self.world_size)
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.space.parameters(), config.grad_clip)
            optimizer.step()
            if not math.isfinite(losses.loss):
                raise FloatingPointError(f"{self.info.name}: loss is {losses.loss} at phase {phase.name}, "
                                         f"epoch {epoch + 1}, step {step + 1}; lower the learning rate")
            progress.step = step + 1
            progress.global_step += 1
            progress.loss_sum += losses.loss
            progress.kd_sum += 0.0 if math.isnan(losses.kd) else losses.kd
            bar.update(task, advance=1, status=f"loss {losses.loss:.3f}" + (
                f" kd {losses.kd:.3f}" if others else ""))
            every = config.checkpoint_every_steps
            if every and progress.global_step % every == 0 and step + 1 < steps:
                progress.epoch_seconds += time.perf_counter() - started
                started = time.perf_counter()
                self._checkpoint(phase, index, epoch, optimizer, scheduler, end_of_epoch=False)
        done = max(progress.step, 1)
        loss_sum, kd_sum = all_reduce_mean([progress.loss_sum, progress.kd_sum], self.world_size)
        row = {"phase": phase.name, "epoch": epoch + 1, "step": progress.global_step,
               "lr": optimizer.param_groups[0]["lr"],
               "train_loss": loss_sum / done,
               "train_kd": kd_sum / done if phase.sandwich else float("nan")}
        row.update(self.validate(phase, smallest))
        row["seconds"] = round(progress.epoch_seconds + time.perf_counter() - started, 3)
        progress.history.append(row)
        log.info("%s: %s epoch %d/%d: loss %.4f%s | val acc largest %.4f, smallest %.4f | %.1f s", self.info.name,
                 phase.name, epoch + 1, phase.epochs, row["train_loss"],
                 f" kd {row['train_kd']:.4f}" if phase.sandwich else "", row["val_acc_largest"],
                 row["val_acc_smallest"], row["seconds"])
        if epoch + 1 < phase.epochs:
            progress.epoch, progress.step = epoch + 1, 0
        else:
            progress.phase_index, progress.epoch, progress.step = index + 1, 0, 0
        progress.loss_sum = progress.kd_sum = progress.epoch_seconds = 0.0
        if self.is_main:
            write_metrics_csv(self.directory / METRICS, progress.history)
        self._checkpoint(phase, index, epoch, optimizer, scheduler, end_of_epoch=True)
        self.space.train()

    def validate(self, phase: Phase, smallest: dict | None = None) -> dict[str, float]:
        """Validation metrics of the largest and the phase's smallest subnet, each after BN recalibration.

        In the ``full`` phase only the largest network is trained: its metrics fill both columns.
        """
        def run(arch: dict) -> dict[str, Any]:
            calibration = sum(len(batch) for batch in self.data.calibration)
            self.progress.image_macs += (calibration + len(self.data.val_x)) * self.macs(arch)
            return evaluate(self.space, arch, self.data.calibration, self.data.val_x, self.data.val_y, self.info.task,
                            self.config.eval_batch_size, device=self.device, channels_last=self.config.channels_last)

        large = run(self.space.largest())
        small = run(smallest) if phase.sandwich and smallest is not None else large
        return {f"val_{m}_{label}": float(result[m]) for label, result in (("largest", large), ("smallest", small))
                for m in ("loss", "acc", "auc")}

    def macs(self, arch: dict) -> int:
        """Forward MACs of one image through ``arch`` (the space's cost model: no forward pass)."""
        return int(self.space.cost(arch, self.info.image_size)["macs"])

    # -- checkpoints ----------------------------------------------------------------
    def _metadata(self, phase: Phase | None) -> dict[str, Any]:
        progress = self.progress
        return {
            "format": FORMAT,
            "mednns_version": mednns.__version__,
            "space": {"name": self.space_name, "args": self.space.config()},
            "space_class": f"{type(self.space).__module__}.{type(self.space).__qualname__}",
            "dimensions": list(self.space.dimensions),
            "dataset": self.info.to_dict(),
            "normalization": {"mean": list(self.data.mean), "std": list(self.data.std),
                              "channels": self.data.channels},
            "phase": phase.name if phase else None,
            "released": list(phase.released) if phase else list(self.space.dimensions),
            "next": {"phase_index": progress.phase_index, "epoch": progress.epoch, "step": progress.step},
            "global_step": progress.global_step,
            "phases": [asdict(p) for p in self.phases],
            "training": self.config.to_dict(),
            "seed": self.seed,
            "world_size": self.world_size,
            "metrics": progress.history,
        }

    def _checkpoint(self, phase: Phase, index: int, epoch: int, optimizer: torch.optim.Optimizer,
                    scheduler: CosineLRScheduler, *, end_of_epoch: bool) -> None:
        progress = self.progress
        tag = f"p{index}-{phase.name}-e{epoch + 1:03d}-s{progress.global_step:07d}"
        if self.is_main:
            metadata = self._metadata(phase)
            metadata.update({"epoch": epoch + 1, "step": progress.global_step, "end_of_epoch": end_of_epoch})
            state = {"progress": asdict(progress), "rng": capture_rng_state(),
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
            save_checkpoint(self.directory, tag, self.space, metadata, state)
        if self.on_checkpoint is not None:
            self.on_checkpoint(CheckpointEvent(tag, phase.name, epoch + 1, progress.global_step,
                                               progress.global_step, end_of_epoch))

    def _check_compatible(self, metadata: dict[str, Any], what: str) -> None:
        training = {k: v for k, v in metadata.get("training", {}).items()
                    if k in self.config.result_dict()}
        expected = {
            "space": {"name": self.space_name, "args": self.space.config()},
            "training": self.config.result_dict(),
            "seed": self.seed,
            "world_size": self.world_size,
            "dataset": self.info.name,
        }
        found = {
            "space": metadata.get("space"),
            "training": training,
            "seed": metadata.get("seed"),
            "world_size": metadata.get("world_size"),
            "dataset": metadata.get("dataset", {}).get("name"),
        }
        expected, found = _jsonable(expected), _jsonable(found)
        changed = [key for key in expected if expected[key] != found[key]]
        if "training" in changed:
            changed.remove("training")
            changed += [f"training.{k}" for k in expected["training"]
                        if expected["training"][k] != found["training"].get(k)]
        if changed:
            raise UsageError(f"{self.directory} holds a {what} of a different configuration "
                             f"(changed: {', '.join(changed)}); refusing to continue from it",
                             hint="use another output folder, or delete it to start over")

    def _resume(self, checkpoint: Checkpoint) -> None:
        self._check_compatible(checkpoint.metadata, "checkpoint")
        load_weights(self.space, checkpoint.weights)
        state = checkpoint.state
        self.progress = TrainProgress(**state["progress"])
        restore_rng_state(state["rng"])
        self._resume_state = state
        nxt = self.progress
        where = (f"phase {self.phases[nxt.phase_index].name}, epoch {nxt.epoch + 1}, step {nxt.step + 1}"
                 if nxt.phase_index < len(self.phases) else "the end of training")
        log.info("%s: resuming from checkpoint %s at %s", self.info.name, checkpoint.tag, where)


def _jsonable(value: Any) -> Any:
    """Round-trip through JSON so tuples/lists and int/float spellings compare equal."""
    import json

    return json.loads(json.dumps(value, default=str))


def train_supernet(space: Supernet, dataset: MedicalDataset, directory: str | Path, config: TrainConfig | None = None,
                   **kwargs: Any) -> dict[str, Any]:
    """Train (or resume, or reuse) a supernet; returns the content of ``final.json``. See :class:`SupernetTrainer`."""
    return SupernetTrainer(space, dataset, directory, config, **kwargs).fit()
