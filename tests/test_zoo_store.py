"""The zoo's SQLite store (schema, rows, transactions, merging) and its report (statistics, export)."""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mednns.errors import UsageError
from mednns.zoo.report import export_columns, export_zoo, zoo_stats
from mednns.zoo.store import METRIC_COLUMNS, SCHEMA_VERSION, MergeReport, ModelRow, ZooStore, merge_stores

DIM = 6
PROTOCOL = {"calibration_images": 64, "seed": 0, "caps": {"val": 100, "test": 200}}


def make_rows(supernet_id: int, protocol_id: int, n: int, *, seed: int = 0, dataset: str = "ds",
              space: str = "sp", prefix: str = "h", origin: str = "sample", dim: int = DIM) -> list[ModelRow]:
    """``n`` rows with distinct hashes ``{prefix}{i}``, seeded random encodings and metrics."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        metrics = {split: {"acc": float(rng.random()), "auc": float(rng.random()), "loss": float(rng.random() * 3),
                           "n": int(rng.integers(10, 500))} for split in ("val", "test")}
        rows.append(ModelRow(
            supernet_id=supernet_id, protocol_id=protocol_id, dataset=dataset, space=space,
            arch_hash=f"{prefix}{i}", arch=json.dumps({"depth": [i % 3], "width": [0.5 + i]}),
            encoding=rng.random(dim, dtype=np.float32), params=int(rng.integers(1_000, 100_000)),
            macs=int(rng.integers(10_000, 10_000_000)), origin=origin, metrics=metrics,
            eval_seconds=float(rng.random()),
        ))
    return rows


def add_supernet(store: ZooStore, sha: str, dataset: str = "ds", space: str = "sp") -> int:
    return store.add_supernet(weights_sha256=sha, space=space, dataset=dataset, path=f"/x/{sha}.pt",
                              metadata={"epochs": 1, "sha": sha})


def build_store(path: Path, rows_by_sha: dict[str, list[dict[str, Any]]]) -> ZooStore:
    """A store with the given supernets (sha → list of make_rows kwargs), in insertion order."""
    store = ZooStore(path)
    protocol = store.add_protocol(PROTOCOL)
    for sha, batches in rows_by_sha.items():
        sid = add_supernet(store, sha)
        for kwargs in batches:
            store.add_models(make_rows(sid, protocol, **kwargs))
    return store


def keys(store: ZooStore) -> set[tuple[str, str]]:
    return {(r["dataset"], r["arch_hash"]) for r in store.models(["dataset", "arch_hash"])}


# -- opening -------------------------------------------------------------------------------------

def test_fresh_store_has_schema_version_and_wal(tmp_path):
    path = tmp_path / "sub" / "zoo.db"  # parent created
    with ZooStore(path) as store:
        assert store.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == \
            str(SCHEMA_VERSION)
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
        assert store.count() == 0
        assert store.groups() == []
    raw = sqlite3.connect(path)
    try:
        tables = {r[0] for r in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"meta", "supernets", "protocols", "models"} <= tables
        assert raw.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"  # persistent
    finally:
        raw.close()


def test_reopen_keeps_rows_and_readonly_reads(tmp_path):
    path = tmp_path / "zoo.db"
    with ZooStore(path) as store:
        sid = add_supernet(store, "aa")
        pid = store.add_protocol(PROTOCOL)
        assert store.add_models(make_rows(sid, pid, 5)) == 5
    with ZooStore(path) as store:
        assert store.count() == 5
        assert add_supernet(store, "aa") == sid
        assert store.protocol(pid) == PROTOCOL
    with ZooStore(path, readonly=True) as store:
        assert store.count() == 5
        assert store.arch_hashes(sid) == {f"h{i}" for i in range(5)}
        with pytest.raises(sqlite3.OperationalError):  # read-only really is read-only
            store.add_protocol({"other": 1})


def test_readonly_missing_file_raises_usage_error(tmp_path):
    path = tmp_path / "missing.db"
    with pytest.raises(UsageError, match="no zoo store"):
        ZooStore(path, readonly=True)
    assert not path.exists()


def test_other_schema_version_raises_usage_error(tmp_path):
    path = tmp_path / "zoo.db"
    ZooStore(path).close()
    raw = sqlite3.connect(path)
    raw.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 41),))
    raw.commit()
    raw.close()
    for readonly in (False, True):
        with pytest.raises(UsageError, match=f"schema version {SCHEMA_VERSION + 41}"):
            ZooStore(path, readonly=readonly)


def test_sqlite_file_without_meta_raises_usage_error(tmp_path):
    path = tmp_path / "other.db"
    raw = sqlite3.connect(path)
    raw.execute("CREATE TABLE t (x)")
    raw.commit()
    raw.close()
    with pytest.raises(UsageError, match="no schema version"):
        ZooStore(path, readonly=True)


def test_garbled_schema_version_raises_usage_error(tmp_path):
    path = tmp_path / "zoo.db"
    ZooStore(path).close()
    raw = sqlite3.connect(path)
    raw.execute("UPDATE meta SET value = 'one' WHERE key = 'schema_version'")
    raw.commit()
    raw.close()
    with pytest.raises(UsageError, match="schema version"):
        ZooStore(path, readonly=True)


@pytest.mark.parametrize("folder", ["run#1", "why?", "50%41"])
def test_paths_with_uri_characters(tmp_path, folder):
    path = tmp_path / folder / "zoo.db"
    build_store(path, {"s1": [dict(n=2)]}).close()
    with ZooStore(path, readonly=True) as store:
        assert store.count() == 2
    with ZooStore(tmp_path / "target.db") as target:
        assert target.merge(path).added == 2
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["target.db"]


@pytest.mark.parametrize("readonly", [False, True])
def test_non_sqlite_file_raises_usage_error(tmp_path, readonly):
    path = tmp_path / "notes.db"
    content = b"this is not a database, just some text\n" * 200
    path.write_bytes(content)
    with pytest.raises(UsageError, match="not a readable zoo store"):
        ZooStore(path, readonly=readonly)
    assert path.read_bytes() == content  # left alone


# -- supernets and protocols ---------------------------------------------------------------------

def test_add_supernet_is_keyed_by_weights_hash(tmp_path):
    with ZooStore(tmp_path / "zoo.db") as store:
        a = add_supernet(store, "aa")
        b = add_supernet(store, "bb", dataset="other")
        assert a != b
        # same hash, other metadata/path: same id, first row kept
        assert store.add_supernet(weights_sha256="aa", space="sp2", dataset="zz", path="/else", metadata={}) == a
        supernets = store.supernets()
        assert [s["id"] for s in supernets] == [a, b]
        assert supernets[0]["weights_sha256"] == "aa" and supernets[0]["path"] == "/x/aa.pt"
        assert supernets[0]["metadata"] == {"epochs": 1, "sha": "aa"}
        assert supernets[1]["dataset"] == "other"


def test_add_protocol_ignores_key_order(tmp_path):
    with ZooStore(tmp_path / "zoo.db") as store:
        a = store.add_protocol({"seed": 0, "calibration": 64, "caps": {"val": 1, "test": 2}})
        b = store.add_protocol({"caps": {"test": 2, "val": 1}, "calibration": 64, "seed": 0})
        c = store.add_protocol({"seed": 1, "calibration": 64, "caps": {"val": 1, "test": 2}})
        assert a == b != c
        assert store.protocol(c)["seed"] == 1
        assert store.db.execute("SELECT COUNT(*) FROM protocols").fetchone()[0] == 2
        with pytest.raises(KeyError):
            store.protocol(12345)


# -- models --------------------------------------------------------------------------------------

def test_add_models_round_trip(tmp_path):
    with ZooStore(tmp_path / "zoo.db") as store:
        sid, pid = add_supernet(store, "aa"), store.add_protocol(PROTOCOL)
        rows = make_rows(sid, pid, 4, seed=3)
        rows[1].metrics["val"]["auc"] = float("nan")
        rows[2].metrics["test"] = {"acc": 0.5}  # missing auc/loss/n → NULL
        rows[3].encoding = rows[3].encoding.astype(np.float64)  # stored as float32
        assert store.add_models(rows) == 4
        back = store.models()
        assert [r["arch_hash"] for r in back] == ["h0", "h1", "h2", "h3"]
        for row, rec in zip(rows, back):
            assert isinstance(rec["encoding"], np.ndarray) and rec["encoding"].dtype == np.float32
            assert rec["encoding"].tobytes() == np.asarray(row.encoding, dtype=np.float32).tobytes()
            assert (rec["supernet_id"], rec["protocol_id"], rec["dataset"], rec["space"], rec["arch"], rec["origin"]) \
                == (sid, pid, "ds", "sp", row.arch, "sample")
            assert rec["params"] == row.params and rec["macs"] == row.macs
            assert rec["eval_seconds"] == pytest.approx(row.eval_seconds)
            assert rec["created_at"]
        assert back[0]["val_acc"] == pytest.approx(rows[0].metrics["val"]["acc"])
        assert back[0]["test_loss"] == pytest.approx(rows[0].metrics["test"]["loss"])
        assert back[0]["val_n"] == rows[0].metrics["val"]["n"] and isinstance(back[0]["val_n"], int)
        assert back[1]["val_auc"] is None
        assert back[1]["val_acc"] == pytest.approx(rows[1].metrics["val"]["acc"])
        assert back[2]["test_acc"] == pytest.approx(0.5)
        assert back[2]["test_auc"] is None and back[2]["test_loss"] is None and back[2]["test_n"] is None
        # typed columns: n as integers, metrics as reals
        types = store.db.execute("SELECT typeof(val_n), typeof(test_n), typeof(val_acc) FROM models "
                                 "WHERE arch_hash = 'h0'").fetchone()
        assert tuple(types) == ("integer", "integer", "real")
        # column selection and filters
        sel = store.models(["arch_hash", "val_acc"], order_by="arch_hash DESC", arch_hash="h2")
        assert sel == [{"arch_hash": "h2", "val_acc": pytest.approx(rows[2].metrics["val"]["acc"])}]


def test_models_ordering_and_numpy_ints(tmp_path):
    with ZooStore(tmp_path / "zoo.db") as store:
        sid, pid = add_supernet(store, "aa"), store.add_protocol(PROTOCOL)
        rows = make_rows(sid, pid, 3)
        rows[0].params, rows[0].macs = np.int64(7), np.int32(9)
        rows[0].metrics["val"]["n"] = np.int64(33)
        rows[0].metrics["val"]["acc"] = np.float32(0.25)
        store.add_models(rows)
        rec = store.models(arch_hash="h0")[0]
        assert (rec["params"], rec["macs"], rec["val_n"], rec["val_acc"]) == (7, 9, 33, 0.25)
        assert [r["params"] for r in store.models(order_by="params")] == sorted(r.params for r in rows)


def test_bad_origin_raises_and_adds_nothing(tmp_path):
    with ZooStore(tmp_path / "zoo.db") as store:
        sid, pid = add_supernet(store, "aa"), store.add_protocol(PROTOCOL)
        rows = make_rows(sid, pid, 3)
        rows[2].origin = "random"
        with pytest.raises(ValueError, match="origin"):
            store.add_models(rows)
        assert store.count() == 0
        for origin in ("extreme", "anchor", "sample"):
            assert store.add_models(make_rows(sid, pid, 1, prefix=origin, origin=origin)) == 1
        assert sorted(r["origin"] for r in store.models(["origin"])) == ["anchor", "extreme", "sample"]
        # the CHECK constraint guards the table itself as well
        with pytest.raises(sqlite3.IntegrityError):
            store.db.execute("UPDATE models SET origin = 'bogus' WHERE origin = 'anchor'")


def test_duplicates_are_ignored_and_not_counted(tmp_path):
    with ZooStore(tmp_path / "zoo.db") as store:
        sid, pid = add_supernet(store, "aa"), store.add_protocol(PROTOCOL)
        other = add_supernet(store, "bb")
        assert store.add_models([]) == 0
        assert store.add_models(make_rows(sid, pid, 5)) == 5
        first = store.models(["arch_hash", "val_acc"])
        # h0..h7 with other numbers: h0..h4 already there (ignored, first row kept), h5..h7 new
        assert store.add_models(make_rows(sid, pid, 8, seed=99)) == 3
        assert store.count() == 8
        assert store.models(["arch_hash", "val_acc"])[:5] == first
        # duplicates within one batch count once
        batch = make_rows(sid, pid, 2, prefix="d") * 2
        assert store.add_models(batch) == 2
        # the same hashes under another supernet are other rows
        assert store.add_models(make_rows(other, pid, 5)) == 5
        assert store.count() == 15
        assert store.count(supernet_id=other) == 5
        assert store.arch_hashes(other) == {f"h{i}" for i in range(5)}
        assert store.arch_hashes(sid) == {f"h{i}" for i in range(8)} | {"d0", "d1"}
        assert store.arch_hashes(12345) == set()
        assert store.protocols_of(sid) == [pid]


def test_count_filters_groups_and_columns(tmp_path):
    with ZooStore(tmp_path / "zoo.db") as store:
        pid = store.add_protocol(PROTOCOL)
        a, b = add_supernet(store, "aa", dataset="blood"), add_supernet(store, "bb", dataset="derma")
        c = add_supernet(store, "cc", dataset="blood", space="mbv3")
        store.add_models(make_rows(a, pid, 4, dataset="blood", origin="anchor"))
        store.add_models(make_rows(b, pid, 3, dataset="derma"))
        store.add_models(make_rows(c, pid, 2, dataset="blood", space="mbv3", dim=DIM + 3))
        assert store.count() == 9
        assert store.count(dataset="blood") == 6
        assert store.count(dataset="blood", space="sp") == 4
        assert store.count(dataset="derma", origin="anchor") == 0
        assert store.count(dataset=None) == 9  # None means "no filter"
        assert store.count(dataset="nope") == 0
        with pytest.raises(ValueError, match="cannot filter"):
            store.count(val_acc=0.5)
        assert store.groups() == [{"dataset": "blood", "space": "mbv3", "n": 2},
                                  {"dataset": "blood", "space": "sp", "n": 4},
                                  {"dataset": "derma", "space": "sp", "n": 3}]
        assert len(store.column("val_acc")) == 9
        assert np.isnan(store.column("val_acc")).sum() == 0
        store.db.execute("UPDATE models SET val_auc = NULL WHERE supernet_id = ? AND arch_hash = 'h1'", (b,))
        col = store.column("val_auc", dataset="derma")
        assert col.dtype == np.float64 and col.shape == (3,)
        assert np.isnan(col[1]) and not np.isnan(col[[0, 2]]).any()
        assert store.column("params", dataset="derma").tolist() == [r["params"] for r in store.models(dataset="derma")]
        with pytest.raises(ValueError, match="not a numeric column"):
            store.column("arch")
        # encodings of two spaces cannot be one matrix
        with pytest.raises(UsageError, match="filter by space"):
            store.encodings(dataset="blood")
        ids, matrix = store.encodings(space="mbv3")
        assert matrix.shape == (2, DIM + 3)


def test_encodings_matrix_shape_and_order(tmp_path):
    with ZooStore(tmp_path / "zoo.db") as store:
        ids, matrix = store.encodings()
        assert ids == [] and matrix.shape == (0, 0) and matrix.dtype == np.float32
        pid = store.add_protocol(PROTOCOL)
        a, b = add_supernet(store, "aa"), add_supernet(store, "bb", dataset="ds2")
        rows_a = make_rows(a, pid, 5, seed=1)
        rows_b = make_rows(b, pid, 3, seed=2, dataset="ds2")
        store.add_models(rows_a[:2])
        store.add_models(rows_b)
        store.add_models(rows_a[2:])
        ids, matrix = store.encodings()
        assert matrix.shape == (8, DIM) and matrix.dtype == np.float32
        assert ids == sorted(ids) and len(set(ids)) == 8
        expected = np.stack([r.encoding for r in (*rows_a[:2], *rows_b, *rows_a[2:])])
        np.testing.assert_array_equal(matrix, expected)
        ids_a, matrix_a = store.encodings(dataset="ds")
        np.testing.assert_array_equal(matrix_a, np.stack([r.encoding for r in rows_a]))
        assert ids_a == [r["id"] for r in store.models(["id"], dataset="ds")]


def test_iter_models_joins_supernet_and_protocol(tmp_path):
    with ZooStore(tmp_path / "zoo.db") as store:
        pid = store.add_protocol(PROTOCOL)
        sid = add_supernet(store, "aa")
        rows = make_rows(sid, pid, 7)
        store.add_models(rows)
        records = list(store.iter_models(batch=3))
        assert [r["arch_hash"] for r in records] == [f"h{i}" for i in range(7)]
        assert all(r["supernet_sha256"] == "aa" for r in records)
        assert json.loads(records[0]["protocol"]) == PROTOCOL
        assert records[4]["encoding"] == pytest.approx(rows[4].encoding.tolist())
        assert len(list(store.iter_models(dataset="ds", origin="sample"))) == 7
        assert list(store.iter_models(dataset="else")) == []


# -- transactions --------------------------------------------------------------------------------

def test_failing_transaction_rolls_back(tmp_path):
    with ZooStore(tmp_path / "zoo.db") as store:
        pid = store.add_protocol(PROTOCOL)
        sid = add_supernet(store, "aa")
        with pytest.raises(RuntimeError, match="boom"):
            with store.transaction() as db:
                db.execute("INSERT INTO protocols (spec) VALUES ('{}')")
                db.execute("INSERT INTO supernets (weights_sha256, space, dataset, path, metadata) "
                           "VALUES ('zz', 's', 'd', 'p', '{}')")
                raise RuntimeError("boom")
        assert store.db.execute("SELECT COUNT(*) FROM protocols").fetchone()[0] == 1
        assert [s["weights_sha256"] for s in store.supernets()] == ["aa"]
        assert not store.db.in_transaction
        # a batch failing after some rows went in (foreign key of the 3rd row) leaves no partial rows
        rows = make_rows(sid, pid, 5)
        rows[2].supernet_id = 999
        with pytest.raises(sqlite3.IntegrityError):
            store.add_models(rows)
        assert store.count() == 0
        assert not store.db.in_transaction
        # and the store is usable afterwards
        assert store.add_models(make_rows(sid, pid, 5)) == 5


def test_rollback_is_visible_to_another_connection(tmp_path):
    path = tmp_path / "zoo.db"
    with ZooStore(path) as store:
        pid = store.add_protocol(PROTOCOL)
        sid = add_supernet(store, "aa")
        store.add_models(make_rows(sid, pid, 2))
        with pytest.raises(KeyError):
            with store.transaction():
                store.db.executemany(
                    "UPDATE models SET val_acc = -1 WHERE arch_hash = ?", [("h0",), ("h1",)])
                raise KeyError("stop")
    with ZooStore(path, readonly=True) as reader:
        assert reader.count() == 2
        assert (reader.column("val_acc") >= 0).all()


# -- merge ---------------------------------------------------------------------------------------

def test_merge_disjoint_stores_is_union(tmp_path):
    a = build_store(tmp_path / "a.db", {"s1": [dict(n=4, prefix="a")], "s2": [dict(n=3, prefix="b", seed=1)]})
    b = build_store(tmp_path / "b.db", {"s3": [dict(n=5, prefix="c", seed=2)]})
    keys_a, keys_b = keys(a), keys(b)
    enc_a = {r["arch_hash"]: r["encoding"] for r in a.models()}
    a.close()
    b.close()
    assert not keys_a & keys_b
    reports = merge_stores(tmp_path / "out" / "all.db", [tmp_path / "a.db", tmp_path / "b.db"])
    assert list(reports) == [str(tmp_path / "a.db"), str(tmp_path / "b.db")]
    ra, rb = reports[str(tmp_path / "a.db")], reports[str(tmp_path / "b.db")]
    assert isinstance(ra, MergeReport)
    assert (ra.added, ra.duplicates, ra.conflicts, ra.supernets_added) == (7, 0, [], 2)
    assert (rb.added, rb.duplicates, rb.conflicts, rb.supernets_added) == (5, 0, [], 1)
    assert ra.to_dict() == {"added": 7, "duplicates": 0, "conflicts": [], "supernets_added": 2}
    with ZooStore(tmp_path / "out" / "all.db", readonly=True) as merged:
        assert merged.count() == 12
        assert keys(merged) == keys_a | keys_b
        assert sorted(s["weights_sha256"] for s in merged.supernets()) == ["s1", "s2", "s3"]
        assert merged.db.execute("SELECT COUNT(*) FROM protocols").fetchone()[0] == 1
        for rec in merged.models(dataset="ds"):
            if rec["arch_hash"] in enc_a:
                np.testing.assert_array_equal(rec["encoding"], enc_a[rec["arch_hash"]])
        assert all(json.loads(r["protocol"]) == PROTOCOL for r in merged.iter_models())


def test_merge_twice_adds_nothing(tmp_path):
    build_store(tmp_path / "a.db", {"s1": [dict(n=6)]}).close()
    with ZooStore(tmp_path / "t.db") as target:
        first = target.merge(tmp_path / "a.db")
        assert (first.added, first.duplicates, first.supernets_added) == (6, 0, 1)
        second = target.merge(tmp_path / "a.db")
        assert (second.added, second.duplicates, second.conflicts, second.supernets_added) == (0, 6, [], 0)
        assert target.count() == 6
        assert len(target.supernets()) == 1


def test_merge_maps_supernet_ids_by_weights_hash(tmp_path):
    # a: s1 (id 1) then s2 (id 2); b: s2 first (id 1), then s1 (id 2)
    a = build_store(tmp_path / "a.db", {"s1": [dict(n=3, prefix="a")], "s2": [dict(n=2, prefix="b", seed=1)]})
    b = build_store(tmp_path / "b.db", {"s2": [dict(n=4, prefix="b", seed=1)], "s1": [dict(n=3, prefix="c", seed=5)]})
    # b also uses another protocol (so protocol ids differ too)
    extra = b.add_protocol({"other": True})
    b.add_models(make_rows(add_supernet(b, "s1"), extra, 1, prefix="p"))
    sha_of_b = {s["id"]: s["weights_sha256"] for s in b.supernets()}
    assert sha_of_b == {1: "s2", 2: "s1"}
    b.close()
    report = a.merge(tmp_path / "b.db")
    # b0, b1 are identical duplicates (same seed); b2, b3, c0..c2, p0 are new
    assert (report.added, report.duplicates, report.conflicts, report.supernets_added) == (6, 2, [], 0)
    ids = {s["weights_sha256"]: s["id"] for s in a.supernets()}
    assert ids == {"s1": 1, "s2": 2}
    assert a.arch_hashes(ids["s1"]) == {"a0", "a1", "a2", "c0", "c1", "c2", "p0"}
    assert a.arch_hashes(ids["s2"]) == {"b0", "b1", "b2", "b3"}
    p = a.models(["protocol_id"], arch_hash="p0")[0]["protocol_id"]
    assert a.protocol(p) == {"other": True}
    assert a.count(protocol_id=p) == 1
    a.close()


def test_merge_conflict_is_reported_and_target_kept(tmp_path):
    a = build_store(tmp_path / "a.db", {"s1": [dict(n=4)]})
    b = build_store(tmp_path / "b.db", {"s1": [dict(n=4)]})  # same rows...
    b.db.execute("UPDATE models SET val_acc = val_acc + 0.125 WHERE arch_hash = 'h1'")  # ...but one
    b.db.execute("UPDATE models SET test_n = test_n + 1 WHERE arch_hash = 'h3'")  # and another
    other_val = b.models(["val_acc"], arch_hash="h1")[0]["val_acc"]
    b.close()
    here = {r["arch_hash"]: r for r in a.models()}
    report = a.merge(tmp_path / "b.db")
    assert report.added == 0 and report.duplicates == 2
    assert sorted(c["arch_hash"] for c in report.conflicts) == ["h1", "h3"]
    h1 = next(c for c in report.conflicts if c["arch_hash"] == "h1")
    assert h1["dataset"] == "ds" and h1["space"] == "sp"
    assert h1["here_val_acc"] == pytest.approx(here["h1"]["val_acc"])
    assert h1["other_val_acc"] == pytest.approx(other_val)
    assert h1["here_test_acc"] == h1["other_test_acc"]
    # the target's rows are untouched
    assert a.models(["val_acc"], arch_hash="h1")[0]["val_acc"] == here["h1"]["val_acc"]
    assert a.models(["test_n"], arch_hash="h3")[0]["test_n"] == here["h3"]["test_n"]
    assert a.count() == 4
    a.close()


def test_merge_tolerance(tmp_path):
    a = build_store(tmp_path / "a.db", {"s1": [dict(n=2)]})
    b = build_store(tmp_path / "b.db", {"s1": [dict(n=2)]})
    b.db.execute("UPDATE models SET val_loss = val_loss + 1e-6 WHERE arch_hash = 'h0'")
    b.close()
    assert [c["arch_hash"] for c in a.merge(tmp_path / "b.db").conflicts] == ["h0"]
    report = a.merge(tmp_path / "b.db", tolerance=1e-3)
    assert report.conflicts == [] and report.duplicates == 2
    a.close()


def test_merge_same_key_other_protocol_is_conflict(tmp_path):
    a = build_store(tmp_path / "a.db", {"s1": [dict(n=2)]})
    b = ZooStore(tmp_path / "b.db")
    b.add_protocol(PROTOCOL)
    b.add_models(make_rows(add_supernet(b, "s1"), b.add_protocol({"seed": 7}), 2))
    b.close()
    report = a.merge(tmp_path / "b.db")
    assert sorted(c["arch_hash"] for c in report.conflicts) == ["h0", "h1"]
    assert report.added == 0 and report.duplicates == 0
    a.close()


def test_merge_null_against_number_is_conflict(tmp_path):
    a = build_store(tmp_path / "a.db", {"s1": [dict(n=2)]})
    a.db.execute("UPDATE models SET val_auc = NULL WHERE arch_hash = 'h0'")  # here: not measured
    build_store(tmp_path / "b.db", {"s1": [dict(n=2)]}).close()  # other: a number
    report = a.merge(tmp_path / "b.db")
    assert [c["arch_hash"] for c in report.conflicts] == ["h0"]
    assert report.duplicates == 1
    a.close()


def test_merge_null_against_null_is_duplicate(tmp_path):
    a = build_store(tmp_path / "a.db", {"s1": [dict(n=2)]})
    b = build_store(tmp_path / "b.db", {"s1": [dict(n=2)]})
    for store in (a, b):
        store.db.execute("UPDATE models SET test_auc = NULL, test_n = NULL WHERE arch_hash = 'h1'")
    b.close()
    report = a.merge(tmp_path / "b.db")
    assert (report.added, report.duplicates, report.conflicts) == (0, 2, [])
    a.close()


def test_merge_into_itself_raises(tmp_path):
    with build_store(tmp_path / "a.db", {"s1": [dict(n=2)]}) as a:
        with pytest.raises(UsageError, match="itself"):
            a.merge(tmp_path / "a.db")
        with pytest.raises(UsageError, match="itself"):
            a.merge(tmp_path / "." / "a.db")
        assert a.count() == 2


def test_merge_bad_sources_raise_usage_error(tmp_path):
    (tmp_path / "junk.db").write_bytes(b"not sqlite at all " * 100)
    with ZooStore(tmp_path / "t.db") as target:
        with pytest.raises(UsageError, match="no zoo store"):
            target.merge(tmp_path / "missing.db")
        with pytest.raises(UsageError):
            target.merge(tmp_path / "junk.db")
        assert target.count() == 0
        # still usable: the failed merges left nothing attached or open
        build_store(tmp_path / "a.db", {"s1": [dict(n=2)]}).close()
        assert target.merge(tmp_path / "a.db").added == 2
        assert not target.db.in_transaction
    assert not (tmp_path / "missing.db").exists()


def test_merge_stores_creates_target(tmp_path):
    build_store(tmp_path / "a.db", {"s1": [dict(n=3)]}).close()
    target = tmp_path / "new" / "deeper" / "zoo.db"
    assert not target.exists()
    reports = merge_stores(target, [tmp_path / "a.db"])
    assert reports[str(tmp_path / "a.db")].added == 3
    assert target.is_file()
    with ZooStore(target, readonly=True) as merged:
        assert merged.count() == 3
    assert merge_stores(tmp_path / "empty.db", []) == {}
    with ZooStore(tmp_path / "empty.db", readonly=True) as empty:
        assert empty.count() == 0


# -- report --------------------------------------------------------------------------------------

@pytest.fixture
def report_store(tmp_path):
    store = ZooStore(tmp_path / "zoo.db")
    pid = store.add_protocol(PROTOCOL)
    blood = add_supernet(store, "aa", dataset="blood")
    derma = add_supernet(store, "bb", dataset="derma")
    store.add_models(make_rows(blood, pid, 2, dataset="blood", origin="extreme", prefix="e"))
    store.add_models(make_rows(blood, pid, 3, dataset="blood", origin="anchor", prefix="a", seed=1))
    store.add_models(make_rows(blood, pid, 6, dataset="blood", origin="sample", prefix="s", seed=2))
    store.add_models(make_rows(derma, pid, 4, dataset="derma", seed=3))
    store.db.execute("UPDATE models SET val_auc = NULL WHERE dataset = 'blood' AND arch_hash IN ('s0', 's1')")
    store.db.execute("UPDATE models SET test_auc = NULL WHERE dataset = 'derma'")
    yield store
    store.close()


def test_zoo_stats(report_store):
    stats = zoo_stats(report_store)
    assert [(s["dataset"], s["space"], s["n"]) for s in stats] == [("blood", "sp", 11), ("derma", "sp", 4)]
    blood, derma = stats
    assert blood["origins"] == {"extreme": 2, "anchor": 3, "sample": 6}
    assert derma["origins"] == {"sample": 4}
    assert set(blood["metrics"]) == {c for c in METRIC_COLUMNS if not c.endswith("_n")}
    for column in ("val_acc", "val_auc", "test_loss"):
        values = np.array([np.nan if r[column] is None else r[column] for r in report_store.models(dataset="blood")])
        values = values[~np.isnan(values)]
        q = blood["metrics"][column]
        assert q["median"] == pytest.approx(float(np.median(values)))
        assert q["min"] == pytest.approx(values.min()) and q["max"] == pytest.approx(values.max())
        assert q["q25"] == pytest.approx(float(np.quantile(values, 0.25)))
        assert q["mean"] == pytest.approx(values.mean()) and q["std"] == pytest.approx(values.std())
        assert q["min"] <= q["q25"] <= q["median"] <= q["q75"] <= q["max"]
    assert not np.isnan(blood["metrics"]["val_auc"]["median"])  # NULLs left out, not propagated
    assert derma["metrics"]["test_auc"] == {k: None for k in ("min", "q25", "median", "q75", "max", "mean", "std")}
    params = [r["params"] for r in report_store.models(["params"], dataset="derma")]
    assert derma["params"] == {"min": min(params), "max": max(params)}
    assert isinstance(derma["params"]["min"], int)
    macs = [r["macs"] for r in report_store.models(["macs"], dataset="blood")]
    assert blood["macs"] == {"min": min(macs), "max": max(macs)}
    seconds = report_store.column("eval_seconds", dataset="derma")
    assert derma["eval_seconds"]["total"] == pytest.approx(seconds.sum())
    assert derma["eval_seconds"]["mean"] == pytest.approx(seconds.mean())
    json.dumps(stats)  # plain Python values


def test_zoo_stats_empty(tmp_path):
    with ZooStore(tmp_path / "zoo.db") as store:
        assert zoo_stats(store) == []


def test_export_csv(report_store, tmp_path):
    path = tmp_path / "out" / "zoo.csv"
    assert export_zoo(report_store, "csv", path) == 15
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        assert reader.fieldnames == export_columns()
        records = list(reader)
    assert len(records) == 15
    models = {(r["dataset"], r["arch_hash"]): r for r in report_store.models()}
    for record in records:
        model = models[(record["dataset"], record["arch_hash"])]
        assert json.loads(record["arch"]) == json.loads(model["arch"])
        np.testing.assert_array_equal(np.array(json.loads(record["encoding"]), dtype=np.float32), model["encoding"])
        assert json.loads(record["protocol"]) == PROTOCOL
        assert int(record["params"]) == model["params"]
        assert record["supernet_sha256"] == {"blood": "aa", "derma": "bb"}[record["dataset"]]
        if model["val_auc"] is None:
            assert record["val_auc"] == ""
        else:
            assert float(record["val_auc"]) == pytest.approx(model["val_auc"])
    assert [int(r["id"]) for r in records] == sorted(int(r["id"]) for r in records)


def test_an_export_that_fails_midway_leaves_no_partial_file(report_store, tmp_path, monkeypatch):
    from mednns.zoo import report as report_module

    path = tmp_path / "zoo.csv"
    path.write_text("the previous export\n")
    records = list(report_module._records(report_store))

    def failing(store, **where):
        yield from records[:3]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report_module, "_records", failing)
    with pytest.raises(OSError):
        export_zoo(report_store, "csv", path)
    assert path.read_text() == "the previous export\n"  # untouched, and no partial file beside it
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_export_jsonl(report_store, tmp_path):
    path = tmp_path / "zoo.jsonl"
    assert export_zoo(report_store, "jsonl", str(path)) == 15
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 15
    records = [json.loads(line) for line in lines]
    models = {(r["dataset"], r["arch_hash"]): r for r in report_store.models()}
    for record in records:
        assert list(record) == export_columns()
        model = models[(record["dataset"], record["arch_hash"])]
        assert isinstance(record["arch"], dict) and record["arch"] == json.loads(model["arch"])
        assert record["protocol"] == PROTOCOL
        assert isinstance(record["encoding"], list) and len(record["encoding"]) == DIM
        np.testing.assert_array_equal(np.array(record["encoding"], dtype=np.float32), model["encoding"])
        assert record["val_auc"] == model["val_auc"]  # None ↔ null
        assert record["val_n"] == model["val_n"]


def test_export_filters_and_streams(report_store):
    buffer = io.StringIO()
    assert export_zoo(report_store, "jsonl", buffer, dataset="derma") == 4
    records = [json.loads(line) for line in buffer.getvalue().splitlines()]
    assert {r["dataset"] for r in records} == {"derma"} and len(records) == 4
    buffer = io.StringIO()
    assert export_zoo(report_store, "csv", buffer, dataset="blood", origin="anchor") == 3
    rows = list(csv.DictReader(io.StringIO(buffer.getvalue())))
    assert [r["arch_hash"] for r in rows] == ["a0", "a1", "a2"]
    assert not buffer.closed  # a handle passed in is left open
    buffer = io.StringIO()
    assert export_zoo(report_store, "csv", buffer, dataset="nope") == 0
    assert buffer.getvalue().strip() == ",".join(export_columns())
    with pytest.raises(ValueError, match="format"):
        export_zoo(report_store, "xml", io.StringIO())


def test_export_to_stdout(report_store, capsys):
    assert export_zoo(report_store, "jsonl", "-", dataset="derma") == 4
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 4
    assert export_zoo(report_store, "jsonl", None, dataset="derma") == 4
    assert capsys.readouterr().out == out


def test_supernet_metadata_can_be_completed_after_insertion(tmp_path):
    from mednns.zoo import ZooStore

    with ZooStore(tmp_path / "z.sqlite") as store:
        supernet = store.add_supernet(weights_sha256="ab" * 32, space="s", dataset="d", path=tmp_path / "w",
                                      metadata={"a": 1})
        store.update_supernet_metadata(supernet, val_majority_rate=0.7, a=2)
        assert store.supernets()[0]["metadata"] == {"a": 2, "val_majority_rate": 0.7}
        with pytest.raises(KeyError):
            store.update_supernet_metadata(supernet + 1, x=1)


def test_the_build_stage_calls_a_store_of_random_bytes_or_without_rows_damaged(tmp_path):
    from mednns.manager import get_plugin_manager

    stage = get_plugin_manager().create("stages", "build_zoo", store=str(tmp_path / "zoo.sqlite"))
    with ZooStore(tmp_path / "zoo.sqlite"):
        pass  # an empty store, as a failed build leaves it
    assert stage.damaged_outputs(None) == [f"{tmp_path / 'zoo.sqlite'}: holds no rows"]
    (tmp_path / "zoo.sqlite").write_bytes(b"\x13" * 4096)
    [problem] = stage.damaged_outputs(None)
    assert str(tmp_path / "zoo.sqlite") in problem
