"""Datasets named on the command line: ``NAME``, ``NAME:key=value,...``, an ``.npz`` file or an image folder."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Container

from mednns.config import parse_key_values
from mednns.data.base import MedicalDataset
from mednns.errors import UsageError

if TYPE_CHECKING:
    from mednns.registry import ComponentSource


def parse_dataset_spec(spec: str, registered: Container[str] = ()) -> tuple[str, dict[str, Any]]:
    """A command-line DATASET argument as ``(registered name, args)``.

    ``name`` or ``name:key=value,key=value`` names a registered dataset; a path to an ``.npz`` file
    means the ``npz`` dataset and a path to a folder the ``image_folder`` dataset (either may be
    followed by ``:key=value,...``). Values are parsed as YAML (``size=28`` is an integer); values
    holding commas are not supported here (use a config file).

    :param spec: the argument.
    :param registered: registered dataset names: a bare registered name is a dataset name even when
        a folder of that name exists in the current directory (write ``./name`` for the folder).
    :returns: the dataset's registered name and its args.
    :raises UsageError: for a path that does not exist or malformed ``key=value`` pairs.
    """
    if not spec.strip():
        raise UsageError("empty DATASET argument", hint="give a dataset name, an .npz file or an image folder")
    head, sep, tail = spec.partition(":")
    candidates = [] if head in registered else [(spec, ""), (head, tail if sep else "")]
    for path_text, extra in candidates:
        path = Path(path_text).expanduser()
        if path_text and path.exists():
            args = parse_key_values(tuple(p for p in extra.split(",") if p), f"dataset {spec}") if extra else {}
            if path.is_dir():
                return "image_folder", {"path": str(path), **args}
            if path.suffix == ".npz":
                return "npz", {"path": str(path), **args}
            raise UsageError(f"{path}: not an .npz file or an image folder",
                             hint="give an .npz file in MedMNIST layout, a folder of class folders, or a dataset name")
    looks_like_path = "/" in head or head.endswith(".npz") or head.startswith((".", "~"))
    if looks_like_path:
        raise UsageError(f"dataset file or folder not found: {head}", hint="check the path")
    args = parse_key_values(tuple(p for p in tail.split(",") if p), f"dataset {spec}") if sep else {}
    return head, args


def resolve_dataset(manager: ComponentSource, text: str) -> MedicalDataset:
    """The dataset a command-line ``text`` names (see :func:`parse_dataset_spec`)."""
    registry = manager.registry("datasets")
    name, args = parse_dataset_spec(text, registry)
    return manager.create("datasets", name, **args)
