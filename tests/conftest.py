"""Shared fixtures: the real data folder and capturing a plugin's registrations."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any, Callable

import pytest

#: ``../shared/data`` relative to the repository root (real datasets, read-only, never copied).
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The real data folder; skips the test when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def registered() -> Callable[[types.ModuleType], dict[str, tuple[Callable[..., Any], str]]]:
    """``registered(plugin_module)`` -> ``{name: (factory, description)}`` from its ``register_datasets``."""

    def capture(module: types.ModuleType) -> dict[str, tuple[Callable[..., Any], str]]:
        found: dict[str, tuple[Callable[..., Any], str]] = {}

        def register(name: str, factory: Callable[..., Any], *, description: str) -> None:
            assert name not in found, f"{name} registered twice"
            found[name] = (factory, description)

        module.register_datasets(register=register)
        return found

    return capture


@pytest.fixture
def one_thread():
    """One intra-op torch thread: small CPU kernels are as fast, deterministic and immune to
    oversubscription when the machine's two cores are shared."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def mednns_logs(caplog):
    """``caplog`` that also sees the ``mednns`` loggers' records (the CLI stops the ``mednns`` logger
    from propagating to the root, where ``caplog`` listens, once any test has run a command)."""
    import logging

    logger = logging.getLogger("mednns")
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)
