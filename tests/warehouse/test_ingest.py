"""Loading batches: migrations, upserts, atomicity and the audit trail."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import polars as pl
import pytest

import warehouse.ingest as ingest
from warehouse.db import connect, fetch_one, fetch_value
from warehouse.ingest import BatchRecord, find_loaded_batch, load_batch, record_attempt
from warehouse.sources.base import ExtractedBatch

T0 = datetime(2026, 1, 5)


def _batch(values: list[float], start_minute: int = 0, content_hash: str = "h1") -> ExtractedBatch:
    n = len(values)
    rows = pl.DataFrame(
        {
            "client_id": ["a"] * n,
            "ts": [T0 + timedelta(minutes=start_minute + 5 * i) for i in range(n)],
            "requests": values,
        }
    )
    clients = pl.DataFrame(
        {
            "client_id": ["a"],
            "tier": ["premium"],
            "region": ["eu-west"],
            "service": ["api"],
            "container_cpu": [0.5],
            "container_memory_mb": [256.0],
            "attributes": ['{"archetype": "regular"}'],
        }
    )
    return ExtractedBatch("test", "test", content_hash, 300, rows, clients=clients)


def _record(batch_id: str, rows: int, status: str = "loaded") -> BatchRecord:
    return BatchRecord(batch_id, status, rows, rows if status == "loaded" else 0, 0, "")


def _count(path: Path, sql: str) -> int:
    with connect(path, read_only=True) as con:
        return fetch_value(con, sql)


def test_migrations_are_recorded_once(warehouse_path):
    with connect(warehouse_path) as con:
        first = con.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    with connect(warehouse_path) as con:
        again = con.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
        tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    versions = [v for (v,) in first]
    assert first == again  # a second connection applies nothing
    assert versions[:3] == ["0001_core", "0002_forecasts_profiles", "0003_provisioning"]
    assert versions == sorted(versions) and versions[-1] == "views"
    assert {"clients", "usage", "calendar", "ingest_batches", "quarantine"} <= tables
    assert {"forecasts", "profiles", "feedback", "forecast_scores", "model_runs"} <= tables


def test_load_writes_usage_clients_and_record(warehouse_path):
    batch = _batch([1.0, 2.0, 3.0])
    load_batch(warehouse_path, batch, batch.rows, pl.DataFrame(), _record("b1", 3), T0)
    with connect(warehouse_path, read_only=True) as con:
        usage = con.execute(
            "SELECT ts, requests, cpu_cores, batch_id FROM usage ORDER BY ts"
        ).fetchall()
        client = fetch_one(con, "SELECT tier, freq_seconds, source, first_ts FROM clients")
    assert [r[1] for r in usage] == [1.0, 2.0, 3.0]
    assert all(r[2] is None for r in usage)  # a metric the source lacks is unknown, not zero
    assert {r[3] for r in usage} == {"b1"}
    assert client == ("premium", 300, "test", datetime(2026, 1, 5))
    assert find_loaded_batch(warehouse_path, "h1") == "b1"
    assert find_loaded_batch(warehouse_path, "other") is None


def test_overlapping_batch_replaces_rows_without_duplicates(warehouse_path):
    first = _batch([1.0, 2.0, 3.0, 4.0])
    load_batch(warehouse_path, first, first.rows, pl.DataFrame(), _record("b1", 4), T0)
    # Starts at the third bucket of the first batch: two rows overlap, two are new.
    second = _batch([30.0, 40.0, 50.0, 60.0], start_minute=10, content_hash="h2")
    second.clients = None  # a batch without attributes must not erase known ones
    replaced = load_batch(warehouse_path, second, second.rows, pl.DataFrame(), _record("b2", 4), T0)
    assert replaced == 2
    with connect(warehouse_path, read_only=True) as con:
        values = con.execute("SELECT requests FROM usage ORDER BY ts").fetchall()
        tier = fetch_value(con, "SELECT tier FROM clients WHERE client_id = 'a'")
    assert [v[0] for v in values] == [1.0, 2.0, 30.0, 40.0, 50.0, 60.0]
    assert (
        _count(warehouse_path, "SELECT count(*) - count(DISTINCT (client_id, ts)) FROM usage") == 0
    )
    assert tier == "premium"


def test_failure_mid_load_leaves_nothing_from_the_batch(warehouse_path, monkeypatch):
    kept = _batch([9.0], start_minute=500, content_hash="h0")
    load_batch(warehouse_path, kept, kept.rows, pl.DataFrame(), _record("b0", 1), T0)
    # Small chunks so several usage inserts commit to the transaction before the failure.
    monkeypatch.setattr(ingest, "CHUNK_ROWS", 2)
    chunks_written = []

    def fail_after_usage(con, batch_id, quarantine):
        chunks_written.append(_count_in(con, batch_id))
        raise OSError("disk full (injected)")

    monkeypatch.setattr(ingest, "_insert_quarantine", fail_after_usage)
    batch = _batch([1.0, 2.0, 3.0, 4.0, 5.0])
    with pytest.raises(OSError, match="injected"):
        load_batch(warehouse_path, batch, batch.rows, pl.DataFrame(), _record("b1", 5), T0)
    assert chunks_written == [5]  # the rows were in the transaction when it failed...
    assert (
        _count(warehouse_path, "SELECT count(*) FROM usage WHERE batch_id = 'b1'") == 0
    )  # ...and are gone
    assert _count(warehouse_path, "SELECT count(*) FROM ingest_batches WHERE batch_id = 'b1'") == 0
    assert _count(warehouse_path, "SELECT count(*) FROM usage") == 1  # earlier data untouched


def _count_in(con: duckdb.DuckDBPyConnection, batch_id: str) -> int:
    return fetch_value(con, "SELECT count(*) FROM usage WHERE batch_id = ?", [batch_id])


def test_rejected_attempt_keeps_record_and_quarantine_only(warehouse_path):
    batch = _batch([1.0])
    quarantine = pl.DataFrame(
        {"row_number": [1], "row": ['{"client_id": "a", "requests": "-1"}'], "expectation": ["x"]}
    )
    record_attempt(warehouse_path, batch, _record("b9", 1, status="rejected"), quarantine, T0)
    assert _count(warehouse_path, "SELECT count(*) FROM usage") == 0
    assert _count(warehouse_path, "SELECT count(*) FROM quarantine WHERE batch_id = 'b9'") == 1
    assert (
        _count(warehouse_path, "SELECT count(*) FROM ingest_batches WHERE status = 'rejected'") == 1
    )
    assert find_loaded_batch(warehouse_path, "h1") is None


def test_calendar_upsert_is_idempotent(warehouse_path):
    batch = _batch([1.0])
    batch.calendar = pl.DataFrame(
        {
            "region": ["eu-west"],
            "start_ts": [datetime(2026, 1, 6)],
            "end_ts": [datetime(2026, 1, 7)],
            "name": ["Epiphany"],
            "kind": ["holiday"],
        }
    )
    load_batch(warehouse_path, batch, batch.rows, pl.DataFrame(), _record("b1", 1), T0)
    load_batch(warehouse_path, batch, batch.rows, pl.DataFrame(), _record("b2", 1), T0)
    assert _count(warehouse_path, "SELECT count(*) FROM calendar") == 1
    assert _count(warehouse_path, "SELECT count(*) FROM usage") == 1
