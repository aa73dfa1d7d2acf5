"""Where mednns keeps files that outlive a run, and the rules for names that become paths."""

from __future__ import annotations

import os
from pathlib import Path

from mednns.errors import UsageError

#: The longest name (run, dataset, stage, component) that becomes one path component.
MAX_NAME_LENGTH = 128


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be one folder or file name inside a run directory, or ``None`` when it can:
    a non-empty string of at most :data:`MAX_NAME_LENGTH` characters, without path separators or
    control characters, other than ``.`` and ``..``."""
    if not isinstance(name, str) or not name.strip():
        return "must be a non-empty name"
    if len(name) > MAX_NAME_LENGTH:
        return f"must be at most {MAX_NAME_LENGTH} characters long"
    if name in (".", "..") or any(c in name for c in "/\\") or any(ord(c) < 32 for c in name):
        return f"{name!r} would leave its folder: use a name without '/', '\\', control characters, '.' or '..'"
    return None


def check_name(name: object, what: str) -> str:
    """``name`` when it is a safe single path component (:func:`name_problem`); a usage error otherwise."""
    problem = name_problem(name)
    if problem is not None:
        raise UsageError(f"{what} {problem}")
    return name  # type: ignore[return-value]


def inside(path: str | os.PathLike, root: str | os.PathLike) -> Path:
    """``path`` (resolved) when it lies inside ``root``; a usage error otherwise (nothing is written or
    deleted outside a run directory)."""
    resolved, base = Path(path).resolve(), Path(root).resolve()
    if resolved != base and base not in resolved.parents:
        raise UsageError(f"{resolved} is outside {base}: mednns writes and deletes only inside it")
    return resolved


def cache_dir() -> Path:
    """``$MEDNNS_CACHE_DIR``, else ``$XDG_CACHE_HOME/mednns``, else ``~/.cache/mednns`` (created)."""
    root = os.environ.get("MEDNNS_CACHE_DIR")
    if not root:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(base, "mednns")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
