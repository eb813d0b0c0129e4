"""The history: usage series, the calendar and a summary of the warehouse (ad-hoc SQL:
adhoc.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import polars as pl

from warehouse.db import connect, fetch_frame, fetch_one, fetch_value


@dataclass(frozen=True)
class WarehouseSummary:
    """What landed: table sizes and the usage time span."""

    clients: int
    usage_rows: int
    first_ts: object
    last_ts: object
    calendar_events: int
    batches_loaded: int
    batches_rejected: int
    quarantined_rows: int
    clients_by_tier: dict[str, int]


def summarize_warehouse(path: Path) -> WarehouseSummary:
    """Counts a person checks after an ingest."""
    with connect(path, read_only=True) as con:
        usage_rows, first_ts, last_ts = fetch_one(
            con, "SELECT count(*), min(ts), max(ts) FROM usage"
        ) or (0, None, None)

        def one(sql: str) -> int:
            return int(fetch_value(con, sql) or 0)

        tiers = con.execute(
            "SELECT coalesce(tier, 'unset'), count(*) FROM clients GROUP BY 1 ORDER BY 1"
        ).fetchall()
        return WarehouseSummary(
            clients=one("SELECT count(*) FROM clients"),
            usage_rows=usage_rows,
            first_ts=first_ts,
            last_ts=last_ts,
            calendar_events=one("SELECT count(*) FROM calendar"),
            batches_loaded=one("SELECT count(*) FROM ingest_batches WHERE status = 'loaded'"),
            batches_rejected=one("SELECT count(*) FROM ingest_batches WHERE status <> 'loaded'"),
            quarantined_rows=one("SELECT count(*) FROM quarantine"),
            clients_by_tier=dict(tiers),
        )


def read_usage(path: Path, client_ids: list[str] | None = None) -> pl.DataFrame:
    """Usage rows (all metrics) for some or all clients, sorted by client and time."""
    with connect(path, read_only=True) as con:
        if client_ids is None:
            return fetch_frame(con, "SELECT * EXCLUDE (batch_id) FROM usage ORDER BY client_id, ts")
        con.register("wanted", pl.DataFrame({"client_id": client_ids}).to_arrow())
        return fetch_frame(
            con,
            "SELECT u.* EXCLUDE (batch_id) FROM usage u SEMI JOIN wanted USING (client_id)"
            " ORDER BY client_id, ts",
        )


def read_calendar(path: Path) -> pl.DataFrame:
    """Every known event (holidays, launches...), past and future."""
    with connect(path, read_only=True) as con:
        return fetch_frame(con, "SELECT * FROM calendar ORDER BY start_ts, region")


def read_recent_usage(path: Path, days: float, client_ids: list[str] | None = None) -> pl.DataFrame:
    """Each client's last `days` of usage, measured back from that client's latest bucket."""
    with connect(path, read_only=True) as con:
        if client_ids is not None:
            con.register("wanted", pl.DataFrame({"client_id": client_ids}).to_arrow())
        only = "SEMI JOIN wanted USING (client_id)" if client_ids is not None else ""
        return fetch_frame(
            con,
            f"""
            WITH latest AS (SELECT client_id, max(ts) AS last_ts FROM usage GROUP BY client_id)
            SELECT u.* EXCLUDE (batch_id) FROM usage u JOIN latest l USING (client_id) {only}
            WHERE u.ts > l.last_ts - to_microseconds(CAST(? * 86400e6 AS BIGINT))
            ORDER BY client_id, ts
            """,
            [days],
        )


def read_recent_concurrency(path: Path, days: float, since: datetime) -> pl.DataFrame:
    """`read_recent_usage`'s window of every client from `since` on, only `client_id`, `ts`
    and `concurrency`, in no order: the newest buckets the planner's floor and hold read
    every cycle (the whole rows, sorted, took three times as long and memory)."""
    with connect(path, read_only=True) as con:
        return fetch_frame(
            con,
            """
            WITH latest AS (SELECT client_id, max(ts) AS last_ts FROM usage GROUP BY client_id)
            SELECT u.client_id, u.ts, u.concurrency FROM usage u JOIN latest l USING (client_id)
            WHERE u.ts > l.last_ts - to_microseconds(CAST(? * 86400e6 AS BIGINT)) AND u.ts >= ?
            """,
            [days, since],
        )


def read_need_levels(path: Path, days: float, max_level: int) -> pl.DataFrame:
    """`provisioning.planner.need_levels` of `read_recent_usage`'s window of every client,
    counted in the warehouse: client_id, n, buckets (n: the concurrency rounded up, missing
    as 0, clipped to 0..max_level). The planner's base rates come from it; reading the rows
    instead held 20 M of them (~1 GB) at 10,000 clients x 7 days."""
    with connect(path, read_only=True) as con:
        return fetch_frame(
            con,
            """
            WITH latest AS (SELECT client_id, max(ts) AS last_ts FROM usage GROUP BY client_id)
            SELECT u.client_id,
                   CAST(least(greatest(ceil(coalesce(u.concurrency, 0.0)), 0.0), ?) AS BIGINT) AS n,
                   count(*) AS buckets
            FROM usage u JOIN latest l USING (client_id)
            WHERE u.ts > l.last_ts - to_microseconds(CAST(? * 86400e6 AS BIGINT))
            GROUP BY ALL
            """,
            [max_level, days],
        )
