"""Reads and writes of the reconciliation loop: forecast/actual pairs not yet reconciled,
the capacity the plans held, and the reconciliation, stats and drift records."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from warehouse.db import connect, fetch_frame
from warehouse.sources.base import METRICS


def read_unreconciled(path: Path) -> pl.DataFrame:
    """Buckets with an actual and a forecast made before them, newer than each client's last
    reconciled bucket: client_id, metric, ts, window_end, origin, horizon, p10, p50, p90,
    actual. The forecast is the latest one issued before the bucket."""
    unpivot = ", ".join(METRICS)
    with connect(path, read_only=True) as con:
        return fetch_frame(
            con,
            f"""
            WITH marks AS (
                SELECT client_id, max(window_start) AS done FROM reconciliations GROUP BY 1
            ),
            latest AS (
                SELECT client_id, metric, ts, origin, horizon, p10, p50, p90 FROM forecasts
                WHERE origin < ts
                QUALIFY row_number() OVER (
                    PARTITION BY client_id, metric, ts ORDER BY origin DESC, generated_at DESC
                ) = 1
            ),
            actuals AS (
                UNPIVOT (SELECT client_id, ts, {unpivot} FROM usage)
                ON {unpivot} INTO NAME metric VALUE actual
            )
            SELECT f.client_id, f.metric, f.ts,
                   f.ts + to_seconds(c.freq_seconds) AS window_end,
                   f.origin, f.horizon, f.p10, f.p50, f.p90, a.actual
            FROM latest f
            JOIN actuals a USING (client_id, metric, ts)
            JOIN clients c USING (client_id)
            LEFT JOIN marks m USING (client_id)
            WHERE m.done IS NULL OR f.ts > m.done
            ORDER BY f.client_id, f.metric, f.ts
            """,
        )


def read_planned_capacity(path: Path) -> pl.DataFrame:
    """Per client and planned window of applied (not dry-run) plans: active, shadow and cold
    members wanted, from the newest plan covering each window."""
    with connect(path, read_only=True) as con:
        return fetch_frame(
            con,
            """
            WITH planned AS (
                SELECT a.client_id, a.window_start, a.window_end, p.created_at,
                       sum(a.count) FILTER (WHERE a.tier = 'active') AS active,
                       sum(a.count) FILTER (WHERE a.tier = 'shadow') AS shadow,
                       sum(a.count) FILTER (WHERE a.tier = 'cold') AS cold
                FROM allocations a JOIN plans p USING (plan_id)
                WHERE NOT p.dry_run AND a.mode = 'provision'
                GROUP BY ALL
            )
            SELECT client_id, window_start, window_end,
                   coalesce(active, 0) AS active, coalesce(shadow, 0) AS shadow,
                   coalesce(cold, 0) AS cold
            FROM planned
            QUALIFY row_number() OVER (
                PARTITION BY client_id, window_start ORDER BY created_at DESC
            ) = 1
            """,
        )


def read_reconciliation_history(path: Path) -> pl.DataFrame:
    """Every reconciled bucket (for drift detection)."""
    with connect(path, read_only=True) as con:
        return fetch_frame(
            con,
            "SELECT client_id, window_start, metric, actual, covered, pinball FROM reconciliations",
        )


def write_reconciliations(path: Path, rows: pl.DataFrame) -> None:
    """Append reconciled buckets."""
    _append(path, "reconciliations", rows)


def write_member_stats(path: Path, rows: pl.DataFrame) -> None:
    """Append pool members' observed CPU and memory."""
    _append(path, "pool_member_stats", rows)


def write_drift_events(path: Path, rows: pl.DataFrame) -> None:
    """Append detected drifts and whether they were retrained."""
    _append(path, "drift_events", rows)


def _append(path: Path, table: str, rows: pl.DataFrame) -> None:
    if rows.height == 0:
        return
    columns = ", ".join(rows.columns)
    with connect(path) as con:
        con.register("incoming", rows.to_arrow())
        con.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM incoming")
        con.unregister("incoming")


def annotate_reconciliations(
    path: Path, reconciled_at: object, notes: dict[str, tuple[str, str]]
) -> None:
    """Record the action taken for a client (and why) on its newest concurrency row of the
    reconciliation run at `reconciled_at` (or its newest row when it has no concurrency)."""
    if not notes:
        return
    frame = pl.DataFrame(
        [(cid, action, reason) for cid, (action, reason) in notes.items()],
        schema={"client_id": pl.String, "action": pl.String, "reason": pl.String},
        orient="row",
    )
    with connect(path) as con:
        con.register("notes", frame.to_arrow())
        con.execute(
            """
            UPDATE reconciliations r SET action = n.action, reason = n.reason
            FROM notes n, (
                SELECT client_id, max(window_start) AS last_start,
                       bool_or(metric = 'concurrency') AS has_concurrency
                FROM reconciliations WHERE reconciled_at = ? GROUP BY client_id
            ) last
            WHERE r.client_id = n.client_id AND r.client_id = last.client_id
              AND r.reconciled_at = ? AND r.window_start = last.last_start
              AND (r.metric = 'concurrency' OR NOT last.has_concurrency)
            """,
            [reconciled_at, reconciled_at],
        )
        con.unregister("notes")
