"""mednns: plugin-based task-adaptive neural network search for medical images.

The public API, timm-style::

    import mednns
    mednns.list_components("datasets", "*mnist")
    ds = mednns.create("datasets", "pneumoniamnist", root="data/medmnist")

Plugins import :data:`hookimpl` from here.
"""

from __future__ import annotations

from typing import Any

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
from mednns.typecheck import ComponentSpec

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
]
