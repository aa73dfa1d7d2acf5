"""Where mednns keeps files that outlive a run."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$MEDNNS_CACHE_DIR``, else ``$XDG_CACHE_HOME/mednns``, else ``~/.cache/mednns`` (created)."""
    root = os.environ.get("MEDNNS_CACHE_DIR")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "mednns")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
