"""Build real (unpacked) distributions with ``mednns`` entry points for plugin-loading tests.

A folder holding ``<name>-<version>.dist-info`` is found by ``importlib.metadata``
once it is on ``sys.path`` (or ``PYTHONPATH`` for subprocesses), exactly as an
installed package would be.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path


def make_distribution(site: Path, name: str, modules: dict[str, str], entry_points: dict[str, str],
                      version: str = "1.0") -> Path:
    """Write ``modules`` (module name → source) and a dist-info declaring ``entry_points`` under ``site``."""
    site.mkdir(parents=True, exist_ok=True)
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "\n".join(f"{ep} = {target}" for ep, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[mednns]\n{lines}\n")
    return site


def forget_modules(*names: str) -> None:
    for name in names:
        sys.modules.pop(name, None)
