"""Upgrading a warehouse made by an older prewarm: 0007 renames `reconciliations` (scoring
against what happened) to `forecast_scores`, and its `reconciled_at` to `scored_at`; 0011
records each client's newest prediction run in `latest_runs`; 0012 copies each
allocation's member size out of its config."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import duckdb
import pytest

import warehouse.db as db
from warehouse.db import connect, fetch_one, fetch_value

RENAME = "0007_forecast_scores"
COLUMNS = (
    "client_id, window_start, window_end, metric, predicted_p10, predicted_p50, predicted_p90,"
    " actual, error, covered, pinball, cold_starts, idle_cost, reactive_cost,"
    " reactive_cold_starts, cost, action, reason"
)
ROW = (
    "a",
    datetime(2026, 1, 5, 0, 0),
    datetime(2026, 1, 5, 0, 5),
    "concurrency",
    1.0,
    2.0,
    3.0,
    2.5,
    0.5,
    True,
    0.25,
    1.0,
    0.125,
    0.5,
    2.0,
    1.125,
    "drift",
    "coverage 0.40 < 0.50",
)
SCORED_AT = datetime(2026, 1, 5, 1, 0)


def _versions(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [v for (v,) in con.execute("SELECT version FROM schema_migrations").fetchall()]


def _old_warehouse(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A warehouse as the prewarm before 0007 left it: the migrations up to 0006 and the
    views of then (the same views over `reconciliations`), with one scored row."""
    every = db._migration_files()
    before_rename = every[: [version for version, _ in every].index(RENAME)]
    # The views of then: today's, over the old names, without those of later tables.
    statements = db._views_sql().split(";")
    old_views = ";".join(v for v in statements if "host_status" not in v and "latest_runs" not in v)
    old_views = old_views.replace("forecast_scores", "reconciliations").replace(
        "scored_at", "reconciled_at"
    )
    with monkeypatch.context() as old:
        old.setattr(db, "_migration_files", lambda: before_rename)
        old.setattr(db, "_views_sql", lambda: old_views)
        with connect(path) as con:
            con.execute(
                f"INSERT INTO reconciliations ({COLUMNS}, reconciled_at)"
                f" VALUES ({', '.join('?' * (len(ROW) + 1))})",
                [*ROW, SCORED_AT],
            )
            versions = _versions(con)
            # The old views read the old table.
            assert fetch_value(con, "SELECT buckets FROM v_client_accuracy") == 1
    assert RENAME not in versions and "0006_cycles" in versions


def test_0007_moves_every_scored_row_to_forecast_scores(tmp_path, monkeypatch):
    path = tmp_path / "warehouse.duckdb"
    _old_warehouse(path, monkeypatch)

    # The next connection of this prewarm applies 0007 and the views of now.
    with connect(path, read_only=True) as con:
        tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        assert "forecast_scores" in tables and "reconciliations" not in tables
        columns = [r[0] for r in con.execute("DESCRIBE forecast_scores").fetchall()]
        assert "scored_at" in columns and "reconciled_at" not in columns
        assert fetch_value(con, "SELECT count(*) FROM forecast_scores") == 1
        assert fetch_one(con, f"SELECT {COLUMNS}, scored_at FROM forecast_scores") == (
            *ROW,
            SCORED_AT,
        )
        # Still NOT NULL, as it was.
        nullable = fetch_value(
            con,
            "SELECT is_nullable FROM information_schema.columns"
            " WHERE table_name = 'forecast_scores' AND column_name = 'scored_at'",
        )
        assert nullable == "NO"
        assert RENAME in _versions(con)
        # The views, re-created over the renamed table, read the row.
        assert fetch_one(con, "SELECT client_id, buckets, coverage_80 FROM v_client_accuracy") == (
            "a",
            1,
            1.0,
        )
        assert fetch_one(con, "SELECT buckets, cost, saved FROM v_cost_vs_reactive") == (
            1,
            1.125,
            0.5 - 1.125,
        )

    # Applied once: reopening changes nothing.
    with connect(path) as con:
        assert fetch_value(con, "SELECT count(*) FROM forecast_scores") == 1
        assert db.migrate(con) == []


LATEST_RUNS = "0011_latest_runs"


def test_0011_records_each_clients_newest_run_from_the_runs_kept(tmp_path, monkeypatch):
    """a's newest run wrote only exceedance (no forecast row survived); b has forecasts of
    two runs and a profile of the older; c was never predicted."""
    path = tmp_path / "warehouse.duckdb"
    every = db._migration_files()
    before = every[: [version for version, _ in every].index(LATEST_RUNS)]
    statements = db._views_sql().split(";")
    with monkeypatch.context() as old:
        old.setattr(db, "_migration_files", lambda: before)
        old.setattr(
            db, "_views_sql", lambda: ";".join(v for v in statements if "latest_runs" not in v)
        )
        with connect(path) as con:
            for client, at in (("a", 1), ("b", 1), ("b", 3)):
                con.execute(
                    "INSERT INTO forecasts VALUES"
                    " (?, 'concurrency', ?, ?, 1, 0, 1, 2, 'm', '1', ?)",
                    [client, SCORED_AT, SCORED_AT, datetime(2026, 1, 5, at)],
                )
            con.execute(
                "INSERT INTO forecast_exceedance (client_id, origin, ts, horizon, level, p_exceed,"
                " model_version, generated_at) VALUES ('a', ?, ?, 1, 1, 0.5, '1', ?)",
                [SCORED_AT, SCORED_AT, datetime(2026, 1, 5, 4)],
            )
            con.execute(
                "INSERT INTO profiles (client_id, generated_at, origin, window_start, window_end,"
                " duration_minutes, confidence, model_name, model_version)"
                " VALUES ('b', ?, ?, ?, ?, 5, 0.5, 'm', '1')",
                [datetime(2026, 1, 5, 1), SCORED_AT, SCORED_AT, SCORED_AT],
            )
            assert LATEST_RUNS not in _versions(con)

    with connect(path, read_only=True) as con:
        assert con.execute("SELECT * FROM latest_runs ORDER BY 1").fetchall() == [
            ("a", datetime(2026, 1, 5, 4)),
            ("b", datetime(2026, 1, 5, 3)),
        ]
        # b's newest run found no window: its older profile is not upcoming.
        assert fetch_value(con, "SELECT count(*) FROM v_upcoming_windows") == 0


SIZES = "0012_allocation_sizes"


def test_0012_copies_each_allocations_member_size_out_of_its_config(tmp_path, monkeypatch):
    """Sizing reads `member_cpu` and `member_memory_mb`: an older warehouse's allocations get
    them from their configs (rows without a config keep none), and the plan's readers give
    the same sizes as before."""
    from warehouse.plans import read_applied_sizes, read_recent_sizes

    path = tmp_path / "warehouse.duckdb"
    every = db._migration_files()
    before = every[: [version for version, _ in every].index(SIZES)]
    at = datetime(2026, 1, 5)
    with monkeypatch.context() as old:
        old.setattr(db, "_migration_files", lambda: before)
        with connect(path) as con:
            con.execute(
                "INSERT INTO plans (plan_id, created_at, first_window, tick_seconds, windows,"
                " buffer_seconds, dry_run, totals, seq, recorded_at)"
                " VALUES ('p', ?, ?, 300, 1, 0, false, '{}', 1, ?)",
                [at, at, at],
            )
            for client, config in (
                ("a", '{"cpu": 1.5, "memory_mb": 768, "env": {}}'),
                ("b", '{"cpu": 2, "memory_mb": 1024}'),
                ("c", None),
            ):
                con.execute(
                    "INSERT INTO allocations VALUES"
                    " ('p', ?, ?, ?, 'shadow', 1, 'h', 'provision', 0, 0, 1, ?::JSON)",
                    [client, at, at, config],
                )
            assert SIZES not in _versions(con)

    with connect(path, read_only=True) as con:
        rows = con.execute(
            "SELECT client_id, member_cpu, member_memory_mb FROM allocations ORDER BY 1"
        ).fetchall()
    assert rows == [("a", 1.5, 768.0), ("b", 2.0, 1024.0), ("c", None, None)]
    assert read_applied_sizes(path) == {"a": (1.5, 768.0), "b": (2.0, 1024.0)}
    assert read_recent_sizes(path, at) == [{"a": (1.5, 768.0), "b": (2.0, 1024.0)}]
