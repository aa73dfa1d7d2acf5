"""mednns: plugin-based task-adaptive neural network search for medical images.

The public API, timm-style::

    import mednns
    mednns.list_components("datasets", "*mnist")
    ds = mednns.create("datasets", "pneumoniamnist", root="data/medmnist")

Plugins import :data:`hookimpl` and the contracts they implement (``mednns.Supernet``,
``mednns.MedicalDataset``, ``mednns.Stage``, ...) from here; the tools built on them come from the
public packages (``mednns.data``, ``mednns.supernets``, ``mednns.training``, ``mednns.finetune``,
``mednns.zoo``, ``mednns.metaspace``, ``mednns.transfer``, ``mednns.evaluation``) and top-level modules, never from a
package's submodules (``tests/test_public_api.py`` keeps the built-in plugins to that).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mednns._exports import lazy_exports
from mednns.errors import (
    ConfigError,
    DatasetError,
    DuplicateComponentError,
    MednnsError,
    PluginLoadError,
    UnknownComponentError,
    UsageError,
)
from mednns.hookspecs import hookimpl
from mednns.registry import KIND_HOOKS, lazy
from mednns.typecheck import ComponentSpec, takes_settings

__version__ = "0.1.0"

#: Every component kind a plugin can register (one ``register_*`` hook each).
KINDS = tuple(KIND_HOOKS)


def list_components(kind: str, pattern: str | None = None) -> list[str]:
    """Names registered for ``kind`` (see :data:`KINDS`), optionally filtered by a glob ``pattern``."""
    from mednns.manager import get_plugin_manager

    return get_plugin_manager().registry(kind).names(pattern)


def create(kind: str, name: str, /, **args: Any) -> Any:
    """Build the component ``name`` of ``kind`` with ``args``, validated against its factory's signature."""
    from mednns.manager import get_plugin_manager

    return get_plugin_manager().create(kind, name, **args)


def load_model(path: Any, **kwargs: Any) -> Any:
    """A plain ``nn.Module`` from a folder written by ``mednns query --export`` (see :mod:`mednns.export`)."""
    from mednns.export import load_model as _load_model

    return _load_model(path, **kwargs)


if TYPE_CHECKING:  # what the lazy names below are, for type checkers and editors
    from mednns.data import DatasetInfo as DatasetInfo
    from mednns.data import MedicalDataset as MedicalDataset
    from mednns.data import SplitArrays as SplitArrays
    from mednns.data import Task as Task
    from mednns.manager import PluginManager as PluginManager
    from mednns.manager import get_plugin_manager as get_plugin_manager
    from mednns.metaspace.contracts import DatasetEncoder as DatasetEncoder
    from mednns.metaspace.contracts import LossTerm as LossTerm
    from mednns.metaspace.contracts import MetaBatch as MetaBatch
    from mednns.metaspace.contracts import ModelEncoder as ModelEncoder
    from mednns.metaspace.contracts import ModelTable as ModelTable
    from mednns.registry import ComponentSource as ComponentSource
    from mednns.runs import Run as Run
    from mednns.stages import Stage as Stage
    from mednns.supernets import Arch as Arch
    from mednns.supernets import InvalidArchitecture as InvalidArchitecture
    from mednns.supernets import Supernet as Supernet
    from mednns.transfer.scores import TransferScore as TransferScore

#: The contracts a plugin author implements or receives, imported on first use (``import mednns``
#: stays free of torch): search spaces, datasets, meta-space encoders and loss terms, transfer
#: scores, stages, runs and the plugin manager.
_CONTRACTS, __getattr__, __dir__ = lazy_exports(__name__, globals(), {
    "Arch": "mednns.supernets",
    "ComponentSource": "mednns.registry",
    "DatasetEncoder": "mednns.metaspace",
    "DatasetInfo": "mednns.data",
    "InvalidArchitecture": "mednns.supernets",
    "LossTerm": "mednns.metaspace",
    "MedicalDataset": "mednns.data",
    "MetaBatch": "mednns.metaspace",
    "ModelEncoder": "mednns.metaspace",
    "ModelTable": "mednns.metaspace",
    "PluginManager": "mednns.manager",
    "Run": "mednns.runs",
    "SplitArrays": "mednns.data",
    "Stage": "mednns.stages",
    "Supernet": "mednns.supernets",
    "Task": "mednns.data",
    "TransferScore": "mednns.transfer",
    "get_plugin_manager": "mednns.manager",
})

__all__ = [
    "KINDS",
    "ComponentSpec",
    "ConfigError",
    "DatasetError",
    "DuplicateComponentError",
    "MednnsError",
    "PluginLoadError",
    "UnknownComponentError",
    "UsageError",
    "__version__",
    "create",
    "hookimpl",
    "lazy",
    "list_components",
    "load_model",
    "takes_settings",
]
__all__ += _CONTRACTS
