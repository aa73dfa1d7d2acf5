"""One process at a time on a run directory or a zoo store: a lock file that names its holder.

Two ``mednns run`` on one run directory race (one removes a checkpoint the other reads); two
``zoo build`` on one store duplicate the work. :func:`held` creates the lock file atomically
(``O_CREAT | O_EXCL``) with the holder's process id, host, start time and command; a second
process gets a :class:`~mednns.errors.UsageError` (exit code 2) that says who holds it. A lock
left by a process that no longer runs on this host (killed with ``kill -9``, a crash, a reboot) is
taken over with a warning. A lock held on another host cannot be checked: the message says so.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from mednns.errors import UsageError

log = logging.getLogger("mednns")

#: A lock file younger than this whose content cannot be read yet is being written: in use.
WRITE_GRACE_SECONDS = 5.0


def _holder(path: Path) -> dict[str, Any] | None:
    """The lock's content, or ``None`` when it is unreadable (being written, or damaged)."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) and isinstance(value.get("pid"), int) else None


def _running(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    except OSError:
        return False
    return True


def _in_use(path: Path, holder: dict[str, Any] | None) -> bool:
    if holder is None:
        try:
            return time.time() - path.stat().st_mtime < WRITE_GRACE_SECONDS
        except FileNotFoundError:
            return False
    if holder.get("host") != socket.gethostname():
        return True  # cannot be checked from here
    return _running(holder["pid"])


@contextlib.contextmanager
def held(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold the lock file ``path`` for the block; ``what`` names the locked thing in messages.

    :raises UsageError: when another live process holds it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mine = {"pid": os.getpid(), "host": socket.gethostname(),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": " ".join(sys.argv)[:500]}
    while True:
        try:
            descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if _in_use(path, holder):
                if holder is None:
                    raise UsageError(
                        f"{what} is in use (its lock {path} is being written by another process)") from None
                where = "" if holder.get("host") == mine["host"] else f" on host {holder.get('host')}"
                hint = ("wait for it to finish or stop it; a lock left by a process that no longer runs on this "
                        "host is taken over by the next command")
                if where:
                    hint = f"if that process no longer runs, delete {path}"
                raise UsageError(f"{what} is in use by process {holder['pid']}{where} since {holder.get('since')} "
                                 f"({holder.get('command') or 'unknown command'})", hint=hint) from None
            log.warning("taking over the lock %s: %s", path,
                        f"process {holder['pid']} no longer runs" if holder else "its content is unreadable")
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(mine, handle)
        break
    try:
        yield
    finally:
        if (_holder(path) or {}).get("pid") == mine["pid"]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
