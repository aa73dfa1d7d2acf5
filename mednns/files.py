"""Atomic file writes: a crash leaves the old file or the new one, never half of one."""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from mednns.errors import UsageError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Atomically write ``data`` as indented JSON (NaN written as null)."""
    return atomic_write_text(path, json.dumps(_finite(data), indent=2, sort_keys=False) + "\n")


def write_json_gz(path: str | os.PathLike, data: Any) -> Path:
    """Atomically write ``data`` as compact, gzip-compressed JSON (``read_json`` reads it back): the
    same bytes for the same data (no time stamp in the gzip header), so that a rewrite is no change."""
    text = json.dumps(_finite(data), separators=(",", ":")) + "\n"
    return atomic_write_bytes(path, gzip.compress(text.encode("utf-8"), mtime=0))


def read_json(path: str | os.PathLike) -> Any:
    """The JSON value in ``path`` (gzip-compressed when its name ends in ``.gz``); a damaged file
    (truncated by a crash, edited by hand, not UTF-8) is a usage error that names it and says what
    to do, not a bare ``JSONDecodeError``."""
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        return json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, EOFError, gzip.BadGzipFile) as exc:  # JSONDecodeError is a ValueError
        raise UsageError(f"{path} is damaged: not valid JSON ({exc})",
                         hint="restore it from a copy, or delete it (or the stage folder holding it) so that mednns "
                              "makes it again; a run's stage folders are rebuilt by running with --restart") from None


def read_manifest(path: str | os.PathLike, name: str, fmt: str, *, what: str,
                  hint: str | None = None) -> tuple[Path, dict[str, Any]]:
    """The folder and the JSON manifest of an artifact (an export, a meta-space, a supernet), given its
    folder, its manifest or any file beside it; the manifest's ``format`` must be ``fmt``.

    :param name: the manifest's file name in the folder (``model.json``, ...).
    :param what: what the folder holds, for messages (``exported model``, ...).
    :raises UsageError: when the manifest is missing, damaged or of another format.
    """
    path = Path(path)
    manifest = (path if path.suffix == ".json" and path.is_file()
                else path / name if path.is_dir() else path.parent / name)
    if not manifest.is_file():
        raise UsageError(f"no {what} in {manifest.parent} ({manifest.name} missing)", hint=hint)
    metadata = read_json(manifest)
    found = metadata.get("format") if isinstance(metadata, dict) else None
    if found != fmt:
        raise UsageError(f"{manifest} is not a {fmt} file (format {found!r})", hint=hint)
    return manifest.parent, metadata


def _finite(value: Any) -> Any:
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value
