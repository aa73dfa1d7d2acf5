"""Built-in stage ``dataset_summary``: what each dataset of a run holds, as JSON, markdown, a table and a montage."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.table import Table

import mednns
from mednns.data import SPLITS, MedicalDataset, Task, channel_stats
from mednns.files import atomic_write_text, write_json
from mednns.stages import Stage


def summarize(dataset: MedicalDataset) -> dict[str, Any]:
    """Splits, classes, channels, task, class balance and pixel statistics (in [0, 1]) of one dataset."""
    info = dataset.info
    summary = info.to_dict()
    summary["splits"] = {}
    for split in SPLITS:
        arrays = dataset.split(split)
        if info.task is Task.MULTI_LABEL:
            counts = arrays.labels.sum(axis=0)
        else:
            counts = np.bincount(arrays.labels[:, 0], minlength=info.n_classes)
        mean, std = channel_stats(arrays.images)
        summary["splits"][split] = {
            "n": len(arrays),
            "class_counts": {name: int(c) for name, c in zip(info.label_names, counts)},
            "pixel_mean": [round(float(m), 4) for m in mean],
            "pixel_std": [round(float(s), 4) for s in std],
            "pixel_min": int(arrays.images.min()) if len(arrays) else None,
            "pixel_max": int(arrays.images.max()) if len(arrays) else None,
        }
    train_counts = list(summary["splits"]["train"]["class_counts"].values())
    summary["imbalance_ratio"] = round(max(train_counts) / max(min(train_counts), 1), 2) if train_counts else None
    return summary


def montage(dataset: MedicalDataset, per_class: int = 8, seed: int = 0) -> Image.Image:
    """A grid of training images, one row per class (multi-label: images positive for that label)."""
    info = dataset.info
    arrays = dataset.split("train")
    rng = np.random.default_rng(seed)
    images = arrays.images
    if info.ndim == 3:  # central axial slice of each volume
        images = images[:, images.shape[1] // 2]
    height, width = images.shape[1:3]
    grid = np.zeros((info.n_classes * height, per_class * width, 3), dtype=np.uint8)
    for row in range(info.n_classes):
        members = np.flatnonzero(arrays.labels[:, row] == 1 if info.is_multilabel else arrays.labels[:, 0] == row)
        chosen: np.ndarray | list[int] = (rng.choice(members, size=min(per_class, len(members)), replace=False)
                                          if len(members) else [])
        for col, index in enumerate(chosen):
            tile = images[index]
            tile = np.repeat(tile, 3, axis=-1) if tile.shape[-1] == 1 else tile[..., :3]
            grid[row * height:(row + 1) * height, col * width:(col + 1) * width] = tile
    scale = max(1, 64 // max(height, width))  # small images are enlarged (nearest) to be seen
    return Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.Resampling.NEAREST)


def _balance(counts: dict[str, int]) -> str:
    total = sum(counts.values()) or 1
    return " ".join(f"{name}:{100 * c / total:.0f}%" for name, c in counts.items())


class DatasetSummary(Stage):
    """Summarize every dataset of the run (or the listed ones)."""

    reads = ()  # the datasets only

    def __init__(self, datasets: list[str] | None = None, montage_per_class: int = 8):
        self.only = datasets
        self.montage_per_class = montage_per_class

    def _selected(self, run) -> dict[str, MedicalDataset]:
        if self.only is None:
            return dict(run.datasets)
        return {name: run.dataset(name) for name in self.only}

    def outputs(self, run) -> list[Path]:
        directory = run.stage_dir(self.name)
        return [directory / "summary.json", directory / "summary.md"]

    def run(self, run) -> dict[str, Any]:
        directory = run.stage_dir(self.name)
        summaries = {}
        for name, dataset in self._selected(run).items():
            run.logger.info("summarizing %s", name)
            summaries[name] = summarize(dataset)
            if self.montage_per_class > 0:
                montage(dataset, self.montage_per_class, run.seed).save(directory / f"montage_{name}.png")
        write_json(directory / "summary.json", summaries)
        atomic_write_text(directory / "summary.md", to_markdown(summaries))
        run.console.print(to_table(summaries))
        return {name: {"task": s["task"], "n_classes": s["n_classes"], "n_channels": s["n_channels"],
                       "split_sizes": {k: v["n"] for k, v in s["splits"].items()}} for name, s in summaries.items()}


COLUMNS = ("dataset", "task", "modality", "size×ch", "classes", "train/val/test", "train balance",
           "pixel mean±std")


def _row(name: str, s: dict[str, Any]) -> list[str]:
    train = s["splits"]["train"]
    stats = ", ".join(f"{m:.3f}±{d:.3f}" for m, d in zip(train["pixel_mean"], train["pixel_std"]))
    return [name, s["task"], s["modality"], "x".join(map(str, s["image_size"])) + f"×{s['n_channels']}",
            str(s["n_classes"]), "/".join(str(s["splits"][k]["n"]) for k in SPLITS), _balance(train["class_counts"]),
            stats]


def to_table(summaries: dict[str, dict[str, Any]]) -> Table:
    table = Table(title="Datasets")
    for column in COLUMNS:
        table.add_column(column, overflow="fold")
    for name, summary in summaries.items():
        table.add_row(*_row(name, summary))
    return table


def to_markdown(summaries: dict[str, dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_row(name, s)) + " |" for name, s in summaries.items()]
    return "\n".join(lines) + "\n"


@mednns.hookimpl
def register_stages(register):
    register("dataset_summary", DatasetSummary,
             description="Per dataset: splits, classes, channels, task, class balance, pixel statistics, montage")
