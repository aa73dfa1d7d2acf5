"""Lazy public names of a package (PEP 562): ``import mednns.zoo`` stays free of torch until a name is used.

Each package that publishes names living in its submodules writes::

    __all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), {"ZooStore": "mednns.zoo.store", ...})
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def lazy_exports(package: str, namespace: dict[str, Any], exports: Mapping[str, str]
                 ) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``(__all__, __getattr__, __dir__)`` of ``package``.

    :param namespace: the package's ``globals()`` (a loaded name is cached there).
    :param exports: public name -> the module it lives in, as ``"module"`` (same name there) or
        ``"module:attribute"``.
    """
    def __getattr__(name: str) -> Any:
        try:
            target = exports[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        module, _, attribute = target.partition(":")
        value = getattr(importlib.import_module(module), attribute or name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports})

    return sorted(exports), __getattr__, __dir__
