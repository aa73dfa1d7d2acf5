"""Built-in plugin: the dataset encoders ``timm`` and ``image_stats``, and the command ``mednns fid``.

The encoders (:mod:`mednns.metaspace.dataset_encoders`) are registered lazily, so loading this
plugin imports neither torch nor timm. ``mednns fid`` computes the Fréchet distances between
datasets from their encoded images (:mod:`mednns.metaspace.fid`)::

    mednns fid pneumoniamnist:size=28 breastmnist data/scans.npz data/kidney_ct/ --heatmap fid.png
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

import mednns
from mednns.config import parse_key_values
from mednns.errors import UsageError

#: The encoder of ``mednns fid`` when ``--encoder`` is not given (works offline).
DEFAULT_ENCODER = "image_stats"


@mednns.hookimpl
def register_dataset_encoders(register):
    register("timm", mednns.lazy("mednns.metaspace.dataset_encoders:TimmEncoder"),
             description="Pooled penultimate features of a frozen timm network (ImageNet weights by default; "
                         "or a local weights file)")
    register("image_stats", mednns.lazy("mednns.metaspace.dataset_encoders:ImageStatsEncoder"),
             description="80 handcrafted statistics per image (intensity, gradient, spectrum, LBP); offline, fast")


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    result = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        result.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return result


def _device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def fid_table(names: list[str], matrix: Any, title: str) -> Any:
    """The matrix as a :class:`rich.table.Table`.

    :param names: row and column labels.
    :param matrix: ``(n, n)`` distances.
    :param title: the table's title.
    :returns: the table.
    """
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=title)
    table.add_column("")
    for name in names:
        table.add_column(escape(name), justify="right")
    for i, name in enumerate(names):
        table.add_row(escape(name), *(f"{matrix[i, j]:.4g}" for j in range(len(names))))
    return table


@mednns.hookimpl
def register_commands(cli):
    @cli.command("fid")
    @click.argument("datasets", nargs=-1, required=True, metavar="DATASET...")
    @click.option("--encoder", default=DEFAULT_ENCODER, show_default=True, metavar="NAME",
                  help="Registered dataset encoder ('mednns list dataset-encoders').")
    @click.option("--encoder-arg", "encoder_args", multiple=True, metavar="KEY=VALUE",
                  help="Argument of the encoder (e.g. model=resnet18, pretrained=weights.safetensors); repeatable.")
    @click.option("--images", type=click.IntRange(min=2), default=1000, show_default=True,
                  help="Training images sampled per dataset.")
    @click.option("--seed", type=int, default=0, show_default=True, help="Seed of the image samples.")
    @click.option("--heatmap", type=click.Path(dir_okay=False), metavar="FILE.png",
                  help="Also save an annotated heatmap of the matrix.")
    @click.option("--json", "as_json", is_flag=True,
                  help="Print {\"datasets\": [...], \"fid\": [[...]]} instead of a table.")
    @click.option("--cache-dir", type=click.Path(file_okay=False), metavar="DIR",
                  help="Cache of features and distances (default: $MEDNNS_CACHE_DIR or ~/.cache/mednns).")
    @click.option("--device", default="auto", show_default=True, help="Where the encoder runs: auto, cpu, cuda[:N].")
    def fid_command(datasets: tuple[str, ...], encoder: str, encoder_args: tuple[str, ...], images: int, seed: int,
                    heatmap: str | None, as_json: bool, cache_dir: str | None, device: str) -> None:
        """Fréchet distances between datasets, from encoded training images.

        DATASET is a registered dataset with optional args (pneumoniamnist:size=28,root=data), an .npz
        file (npz dataset) or a folder of class folders (image_folder dataset).
        """
        import json

        from rich.console import Console

        from mednns.data import resolve_dataset
        from mednns.manager import get_plugin_manager
        from mednns.metaspace import dataset_features, features_key, fid_matrix, save_heatmap
        from mednns.paths import cache_dir as default_cache_dir

        manager = get_plugin_manager()
        built = [resolve_dataset(manager, spec) for spec in datasets]
        if len(built) < 2:
            raise UsageError("mednns fid needs at least two datasets",
                             hint="e.g. mednns fid breastmnist pneumoniamnist")
        dataset_encoder = manager.create("dataset-encoders", encoder,
                                         **parse_key_values(encoder_args, "--encoder-arg")).to(_device(device))
        cache = Path(cache_dir) if cache_dir else default_cache_dir()
        names = _unique([d.name for d in built])
        features, keys = {}, {}
        for name, dataset in zip(names, built):
            features[name] = dataset_features(dataset_encoder, dataset, images=images, seed=seed, cache_dir=cache,
                                              progress=not as_json)
            keys[name] = features_key(dataset_encoder, dataset, images=images, seed=seed)
        names, matrix = fid_matrix(features, cache=cache / "fid_pairs.json", keys=keys)
        title = f"FID ({encoder}, up to {images} training images per dataset, seed {seed})"
        if heatmap:
            save_heatmap(names, matrix, Path(heatmap), title=title)
        if as_json:
            click.echo(json.dumps({"datasets": names, "fid": matrix.tolist()}))
            return
        console = Console(soft_wrap=False)
        console.print(fid_table(names, matrix, title))
        if heatmap:
            console.print(f"heatmap: {heatmap}", markup=False, highlight=False)
