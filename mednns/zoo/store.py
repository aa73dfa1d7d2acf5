"""The model zoo's store: one SQLite file of evaluated subnets (standard library only).

A zoo row is one (model, dataset, performance) triple: a subnet of a trained supernet, evaluated
on the dataset that supernet was trained on. Tables (schema :data:`SCHEMA_VERSION`)::

    meta       key/value: schema version, creating mednns version
    supernets  one per trained supernet, identified by the SHA-256 of its weights file (so the
               same supernet on two machines is the same row), with its metadata JSON
    protocols  evaluation protocols (calibration images, split caps, seed) as canonical JSON
    models     one per (supernet, canonical architecture): architecture JSON and hash, encoding
               (float32 bytes), params, MACs, val_/test_ acc, auc, loss and n, evaluation
               seconds, origin (``extreme``, ``anchor`` or ``sample``)

The file runs in WAL mode; :meth:`ZooStore.add_models` writes a batch of rows in one
transaction, so a killed process loses at most the batch in flight. :meth:`ZooStore.merge`
copies other stores in (idempotent; the same model with other numbers is a reported conflict).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import math
import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from mednns.errors import UsageError

SCHEMA_VERSION = 1
SPLITS = ("val", "test")
METRICS = ("acc", "auc", "loss")
#: The metric columns of ``models``: ``val_acc`` ... ``test_n``.
METRIC_COLUMNS = tuple(f"{split}_{m}" for split in SPLITS for m in (*METRICS, "n"))
ORIGINS = ("extreme", "anchor", "sample")

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS supernets (
    id             INTEGER PRIMARY KEY,
    weights_sha256 TEXT NOT NULL UNIQUE,
    space          TEXT NOT NULL,
    dataset        TEXT NOT NULL,
    path           TEXT NOT NULL,
    metadata       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS protocols (
    id   INTEGER PRIMARY KEY,
    spec TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS models (
    id           INTEGER PRIMARY KEY,
    supernet_id  INTEGER NOT NULL REFERENCES supernets(id),
    protocol_id  INTEGER NOT NULL REFERENCES protocols(id),
    dataset      TEXT NOT NULL,
    space        TEXT NOT NULL,
    arch_hash    TEXT NOT NULL,
    arch         TEXT NOT NULL,
    encoding     BLOB NOT NULL,
    params       INTEGER NOT NULL,
    macs         INTEGER NOT NULL,
    origin       TEXT NOT NULL CHECK (origin IN {ORIGINS!r}),
    {", ".join(f"{c} {'INTEGER' if c.endswith('_n') else 'REAL'}" for c in METRIC_COLUMNS)},
    eval_seconds REAL NOT NULL,
    created_at   TEXT NOT NULL,
    UNIQUE (supernet_id, arch_hash)
);
CREATE INDEX IF NOT EXISTS models_by_dataset ON models (dataset, space);
CREATE INDEX IF NOT EXISTS models_by_arch ON models (space, arch_hash);
CREATE INDEX IF NOT EXISTS models_by_val_acc ON models (dataset, val_acc);
"""

#: Columns of ``models`` a :class:`ModelRow` fills (everything but ``id`` and ``created_at``).
_ROW_COLUMNS = ("supernet_id", "protocol_id", "dataset", "space", "arch_hash", "arch", "encoding", "params",
                "macs", "origin", *METRIC_COLUMNS, "eval_seconds")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def canonical_json(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def _real(value: Any) -> float | None:
    """A float for SQLite; NaN and None become NULL."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


@dataclass
class ModelRow:
    """One evaluated subnet, as :meth:`ZooStore.add_models` takes it.

    :param metrics: ``{"val": {"acc", "auc", "loss", "n"}, "test": {...}}``; NaN is stored as NULL.
    """

    supernet_id: int
    protocol_id: int
    dataset: str
    space: str
    arch_hash: str
    arch: str
    encoding: np.ndarray
    params: int
    macs: int
    origin: str
    metrics: dict[str, dict[str, float]]
    eval_seconds: float

    def values(self) -> tuple[Any, ...]:
        if self.origin not in ORIGINS:
            raise ValueError(f"origin must be one of {ORIGINS}, got {self.origin!r}")
        metric_values = []
        for split in SPLITS:
            split_metrics = self.metrics.get(split, {})
            metric_values += [_real(split_metrics.get(m)) for m in METRICS]
            metric_values.append(int(split_metrics["n"]) if "n" in split_metrics else None)
        encoding = np.ascontiguousarray(self.encoding, dtype=np.float32).tobytes()
        return (self.supernet_id, self.protocol_id, self.dataset, self.space, self.arch_hash, self.arch, encoding,
                int(self.params), int(self.macs), self.origin, *metric_values, float(self.eval_seconds))


@dataclass
class MergeReport:
    """What :meth:`ZooStore.merge` did, per source store."""

    added: int = 0
    duplicates: int = 0
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    supernets_added: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"added": self.added, "duplicates": self.duplicates, "conflicts": self.conflicts,
                "supernets_added": self.supernets_added}


class ZooStore:
    """A zoo in one SQLite file (created with the current schema when absent).

    Use as a context manager or call :meth:`close`. Reading methods return plain Python values;
    :meth:`encodings` returns a numpy matrix.

    :param path: the database file.
    :param readonly: open an existing store without creating or migrating anything.
    """

    def __init__(self, path: str | os.PathLike, *, readonly: bool = False):
        self.path = Path(path)
        if readonly and not self.path.is_file():
            raise UsageError(f"no zoo store at {self.path}", hint="build one with 'mednns zoo build'")
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        uri = _readonly_uri(self.path) if readonly else str(self.path)
        try:
            self.db = sqlite3.connect(uri, uri=readonly, timeout=60.0, isolation_level=None)
        except sqlite3.Error as error:
            raise UsageError(f"cannot open zoo store {self.path}: {error}") from error
        try:
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA foreign_keys = ON")
            if not readonly:
                self.db.execute("PRAGMA journal_mode = WAL")
                self.db.execute("PRAGMA synchronous = NORMAL")
                self._create()
            self._check_version()
        except sqlite3.DatabaseError as error:
            self.db.close()
            raise UsageError(f"{self.path} is not a readable zoo store: {error}") from error
        except UsageError:
            self.db.close()
            raise

    # -- lifecycle -------------------------------------------------------------------
    def _create(self) -> None:
        from mednns import __version__

        self.db.executescript(_SCHEMA)  # idempotent: CREATE ... IF NOT EXISTS
        with self.transaction():
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            self.db.execute("INSERT OR IGNORE INTO meta VALUES ('created_by', ?)", (f"mednns {__version__}",))

    def _check_version(self) -> None:
        try:
            row = self.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.OperationalError:
            row = None
        if row is None:
            raise UsageError(f"{self.path} is not a mednns zoo store (no schema version)")
        if str(row[0]) != str(SCHEMA_VERSION):
            raise UsageError(f"{self.path} has zoo schema version {row[0]}; this mednns reads version "
                             f"{SCHEMA_VERSION}", hint="rebuild the zoo or use the mednns version that wrote it")

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "ZooStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` ... ``COMMIT`` (rolled back on error)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # -- supernets and protocols -----------------------------------------------------
    def add_supernet(self, *, weights_sha256: str, space: str, dataset: str, path: str | os.PathLike,
                     metadata: dict[str, Any]) -> int:
        """The id of the supernet with these weights (inserted when new)."""
        with self.transaction():
            self.db.execute("INSERT OR IGNORE INTO supernets (weights_sha256, space, dataset, path, metadata) "
                            "VALUES (?, ?, ?, ?, ?)",
                            (weights_sha256, space, dataset, str(path), canonical_json(metadata)))
            row = self.db.execute("SELECT id FROM supernets WHERE weights_sha256 = ?", (weights_sha256,)).fetchone()
        return int(row[0])

    def update_supernet_metadata(self, supernet_id: int, **facts: Any) -> None:
        """Add or replace top-level keys of a supernet's metadata (facts learned after it was added)."""
        with self.transaction():
            row = self.db.execute("SELECT metadata FROM supernets WHERE id = ?", (supernet_id,)).fetchone()
            if row is None:
                raise KeyError(supernet_id)
            merged = {**json.loads(row[0]), **facts}
            self.db.execute("UPDATE supernets SET metadata = ? WHERE id = ?", (canonical_json(merged), supernet_id))

    def add_protocol(self, spec: dict[str, Any]) -> int:
        """The id of an evaluation protocol (inserted when new)."""
        text = canonical_json(spec)
        with self.transaction():
            self.db.execute("INSERT OR IGNORE INTO protocols (spec) VALUES (?)", (text,))
            row = self.db.execute("SELECT id FROM protocols WHERE spec = ?", (text,)).fetchone()
        return int(row[0])

    def protocol(self, protocol_id: int) -> dict[str, Any]:
        row = self.db.execute("SELECT spec FROM protocols WHERE id = ?", (protocol_id,)).fetchone()
        if row is None:
            raise KeyError(protocol_id)
        return json.loads(row[0])

    def supernets(self) -> list[dict[str, Any]]:
        """Every supernet: id, weights_sha256, space, dataset, path, metadata (parsed).

        A relative ``path`` (a bundle's store: :mod:`mednns.bundle`) is returned resolved against the
        store's folder, so that a store travels with its supernets.
        """
        rows = self.db.execute("SELECT * FROM supernets ORDER BY id").fetchall()
        return [{**dict(r), "path": str(self.path.parent / r["path"]) if not os.path.isabs(r["path"]) else r["path"],
                 "metadata": json.loads(r["metadata"])} for r in rows]

    def protocols_of(self, supernet_id: int) -> list[int]:
        """Protocol ids of the rows of one supernet."""
        rows = self.db.execute("SELECT DISTINCT protocol_id FROM models WHERE supernet_id = ?", (supernet_id,))
        return [int(r[0]) for r in rows]

    # -- models --------------------------------------------------------------------
    def add_models(self, rows: Sequence[ModelRow]) -> int:
        """Insert a batch of rows in one transaction; rows already present are ignored. Returns rows added."""
        if not rows:
            return 0
        placeholders = ", ".join("?" * (len(_ROW_COLUMNS) + 1))
        sql = (f"INSERT OR IGNORE INTO models ({', '.join(_ROW_COLUMNS)}, created_at) VALUES ({placeholders})")
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        with self.transaction():
            before = self.db.total_changes
            self.db.executemany(sql, [(*row.values(), now) for row in rows])
            return self.db.total_changes - before

    def arch_hashes(self, supernet_id: int) -> set[str]:
        """Hashes of the architectures of one supernet already in the store."""
        rows = self.db.execute("SELECT arch_hash FROM models WHERE supernet_id = ?", (supernet_id,))
        return {r[0] for r in rows}

    def count(self, **where: Any) -> int:
        clause, values = _where(where)
        return int(self.db.execute(f"SELECT COUNT(*) FROM models{clause}", values).fetchone()[0])

    def models(self, columns: Sequence[str] | None = None, order_by: str = "id", **where: Any) -> list[dict[str, Any]]:
        """Rows of ``models`` as dicts (``encoding`` as a float32 array), filtered by ``column=value``."""
        names = list(columns) if columns else ["*"]
        clause, values = _where(where)
        rows = self.db.execute(f"SELECT {', '.join(names)} FROM models{clause} ORDER BY {order_by}", values)
        out = []
        for row in rows:
            record = dict(row)
            if "encoding" in record:
                record["encoding"] = np.frombuffer(record["encoding"], dtype=np.float32)
            out.append(record)
        return out

    def iter_models(self, batch: int = 10_000, **where: Any) -> Iterator[dict[str, Any]]:
        """Every row (all columns, ``encoding`` as a list, supernet SHA and protocol spec joined), streamed."""
        clause, values = _where(where, prefix="m.")
        cursor = self.db.execute(
            "SELECT m.*, s.weights_sha256 AS supernet_sha256, p.spec AS protocol FROM models m "
            f"JOIN supernets s ON s.id = m.supernet_id JOIN protocols p ON p.id = m.protocol_id{clause} "
            "ORDER BY m.id", values)
        while chunk := cursor.fetchmany(batch):
            for row in chunk:
                record = dict(row)
                record["encoding"] = np.frombuffer(record["encoding"], dtype=np.float32).tolist()
                yield record

    def encodings(self, **where: Any) -> tuple[list[int], np.ndarray]:
        """Model ids and their encodings as one ``(n, dim)`` float32 matrix (all from one space)."""
        clause, values = _where(where)
        rows = self.db.execute(f"SELECT id, encoding FROM models{clause} ORDER BY id", values).fetchall()
        if not rows:
            return [], np.zeros((0, 0), dtype=np.float32)
        sizes = {len(r[1]) for r in rows}
        if len(sizes) != 1:
            raise UsageError("encodings of different lengths (several search spaces); filter by space")
        matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1)
        return [int(r[0]) for r in rows], matrix

    def groups(self) -> list[dict[str, Any]]:
        """Per (dataset, space): row count."""
        rows = self.db.execute("SELECT dataset, space, COUNT(*) AS n FROM models GROUP BY dataset, space "
                               "ORDER BY dataset, space")
        return [dict(r) for r in rows]

    def column(self, name: str, **where: Any) -> np.ndarray:
        """One numeric column as a float array (NULL → NaN)."""
        if name not in (*METRIC_COLUMNS, "params", "macs", "eval_seconds"):
            raise ValueError(f"not a numeric column: {name}")
        clause, values = _where(where)
        rows = self.db.execute(f"SELECT {name} FROM models{clause} ORDER BY id", values).fetchall()
        return np.array([np.nan if r[0] is None else r[0] for r in rows], dtype=np.float64)

    # -- merge -------------------------------------------------------------------------
    def merge(self, other: str | os.PathLike, *, tolerance: float = 1e-9) -> MergeReport:
        """Copy the rows of another store in, in one transaction.

        Supernets are matched by weights hash, protocols by spec, models by (supernet, architecture
        hash). A model already here with the same protocol and metrics (within ``tolerance``) is a
        duplicate; one with other numbers is a conflict: reported, the row here kept. Merging the
        same store twice adds nothing.
        """
        other = Path(other)
        if other.resolve() == self.path.resolve():
            raise UsageError(f"cannot merge {other} into itself")
        ZooStore(other, readonly=True).close()  # version check, readable
        report = MergeReport()
        self.db.execute("ATTACH DATABASE ? AS src", (_readonly_uri(other),))
        try:
            with self.transaction():
                before = self.db.total_changes
                self.db.execute("INSERT OR IGNORE INTO supernets (weights_sha256, space, dataset, path, metadata) "
                                "SELECT weights_sha256, space, dataset, path, metadata FROM src.supernets")
                report.supernets_added = self.db.total_changes - before
                self.db.execute("INSERT OR IGNORE INTO protocols (spec) SELECT spec FROM src.protocols")
                mapped = (
                    "SELECT ds.id AS supernet_id, dp.id AS protocol_id, m.* FROM src.models m "
                    "JOIN src.supernets ss ON ss.id = m.supernet_id "
                    "JOIN supernets ds ON ds.weights_sha256 = ss.weights_sha256 "
                    "JOIN src.protocols sp ON sp.id = m.protocol_id JOIN protocols dp ON dp.spec = sp.spec")
                differs = " OR ".join(
                    [f"NOT ((e.{c} IS NULL AND n.{c} IS NULL) OR (e.{c} IS NOT NULL AND n.{c} IS NOT NULL "
                     f"AND abs(e.{c} - n.{c}) <= {float(tolerance)!r}))"
                     for c in METRIC_COLUMNS] + ["e.protocol_id != n.protocol_id"])
                conflicts = self.db.execute(
                    f"SELECT e.dataset, e.space, e.arch_hash, e.val_acc AS here_val_acc, n.val_acc AS other_val_acc, "
                    f"e.test_acc AS here_test_acc, n.test_acc AS other_test_acc FROM ({mapped}) n "
                    f"JOIN models e ON e.supernet_id = n.supernet_id AND e.arch_hash = n.arch_hash WHERE {differs}"
                ).fetchall()
                report.conflicts = [dict(r) for r in conflicts]
                existing = self.db.execute(
                    f"SELECT COUNT(*) FROM ({mapped}) n JOIN models e "
                    "ON e.supernet_id = n.supernet_id AND e.arch_hash = n.arch_hash").fetchone()[0]
                report.duplicates = int(existing) - len(report.conflicts)
                columns = [c for c in _ROW_COLUMNS if c not in ("supernet_id", "protocol_id")] + ["created_at"]
                before = self.db.total_changes
                self.db.execute(
                    f"INSERT OR IGNORE INTO models (supernet_id, protocol_id, {', '.join(columns)}) "
                    f"SELECT n.supernet_id, n.protocol_id, {', '.join('n.' + c for c in columns)} FROM ({mapped}) n "
                    "ORDER BY n.id")
                report.added = self.db.total_changes - before
        finally:
            self.db.execute("DETACH DATABASE src")
        return report


    def merge_parts(self, parts: Sequence[str | os.PathLike], plans: dict[str, list[str]]) -> MergeReport:
        """Copy in the rows of the part stores of one split build (ranks or worker processes), each
        supernet's rows in the order of its plan, so that the result equals a single-process build
        row for row (ids included, when this store starts empty).

        :param plans: per supernet weights hash, the architecture hashes of its plan in order (rows
            not in it follow, in part order).
        Rows already here are kept (``duplicates``); parts of one build never conflict, so, unlike
        :meth:`merge`, metrics are not compared.
        """
        report = MergeReport()
        columns = [c for c in _ROW_COLUMNS if c not in ("supernet_id", "protocol_id")] + ["created_at"]
        db = self.db
        db.execute("CREATE TEMP TABLE IF NOT EXISTS plan_position (sha TEXT, arch_hash TEXT, position INTEGER)")
        db.execute("CREATE TEMP TABLE IF NOT EXISTS incoming AS SELECT '' AS sha, '' AS spec, 0 AS part, "
                   "* FROM main.models WHERE 0")
        db.execute("DELETE FROM temp.plan_position")
        db.execute("DELETE FROM temp.incoming")
        db.executemany("INSERT INTO temp.plan_position VALUES (?, ?, ?)",
                       [(sha, h, i) for sha, hashes in plans.items() for i, h in enumerate(hashes)])
        supernets = len(self.supernets())
        for index, part in enumerate(parts):
            ZooStore(part, readonly=True).close()  # version check, readable
            db.execute("ATTACH DATABASE ? AS part", (_readonly_uri(Path(part)),))
            try:
                with self.transaction():
                    db.execute("INSERT OR IGNORE INTO supernets (weights_sha256, space, dataset, path, metadata) "
                               "SELECT weights_sha256, space, dataset, path, metadata FROM part.supernets ORDER BY id")
                    db.execute("INSERT OR IGNORE INTO protocols (spec) SELECT spec FROM part.protocols ORDER BY id")
                    db.execute(f"INSERT INTO temp.incoming SELECT s.weights_sha256, p.spec, {index}, m.* "
                               "FROM part.models m JOIN part.supernets s ON s.id = m.supernet_id "
                               "JOIN part.protocols p ON p.id = m.protocol_id")
            finally:
                db.execute("DETACH DATABASE part")
        report.supernets_added = len(self.supernets()) - supernets
        incoming = int(db.execute("SELECT COUNT(*) FROM temp.incoming").fetchone()[0])
        with self.transaction():
            before = db.total_changes
            db.execute(
                f"INSERT OR IGNORE INTO models (supernet_id, protocol_id, {', '.join(columns)}) "
                f"SELECT s.id, p.id, {', '.join('n.' + c for c in columns)} FROM temp.incoming n "
                "JOIN supernets s ON s.weights_sha256 = n.sha JOIN protocols p ON p.spec = n.spec "
                "LEFT JOIN temp.plan_position o ON o.sha = n.sha AND o.arch_hash = n.arch_hash "
                "ORDER BY s.id, o.position IS NULL, o.position, n.part, n.id")
            report.added = db.total_changes - before
        report.duplicates = incoming - report.added
        db.execute("DELETE FROM temp.incoming")
        return report


def _readonly_uri(path: Path) -> str:
    """A read-only SQLite URI (percent-encoded: ``#``, ``?`` and ``%`` in paths are safe)."""
    return Path(path).resolve().as_uri() + "?mode=ro"


def _where(where: dict[str, Any], prefix: str = "") -> tuple[str, list[Any]]:
    allowed = {"dataset", "space", "supernet_id", "origin", "protocol_id", "arch_hash"}
    unknown = set(where) - allowed
    if unknown:
        raise ValueError(f"cannot filter on {sorted(unknown)}; allowed: {sorted(allowed)}")
    items = [(k, v) for k, v in where.items() if v is not None]
    if not items:
        return "", []
    return " WHERE " + " AND ".join(f"{prefix}{k} = ?" for k, _ in items), [v for _, v in items]


def merge_stores(target: str | os.PathLike, sources: Iterable[str | os.PathLike]) -> dict[str, MergeReport]:
    """Merge every source store into ``target`` (created when absent)."""
    with ZooStore(target) as store:
        return {str(source): store.merge(source) for source in sources}
