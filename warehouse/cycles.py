"""Cycle records: one `cycles` row per prewarm-cycle run, written at its start and end.

The row is the cycle's own account: its clock, the watermark it worked on, how long it took,
how far behind its data the pool was applied, and what it did. Later cycles read it back
to predict their own duration (the plan looks past it) and to skip predicting when neither
the data nor the models changed.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from core.times import utc_now
from warehouse.db import connect, fetch_frame, fetch_one, fetch_value, transaction

# Columns `finish_cycle` may set (the rest are written at the start).
_RESULT_COLUMNS = (
    "watermark",
    "ingested_rows",
    "predicted",
    "models",
    "plan_id",
    "first_window",
    "lead_seconds",
    "runtime",
    "creates",
    "releases",
    "pauses",
    "unpauses",
    "failed_actions",
    "seconds",
    "lag_seconds",
    "late_seconds",
    "drifted",
    "pinned",
)


def start_cycle(
    path: Path, cycle_id: str, feed: str, clock_at: datetime, late_seconds: float | None
) -> int:
    """Record a running cycle (rows left running by a crashed one are marked failed first);
    return its sequence number."""
    now = utc_now()
    with connect(path) as con, transaction(con):
        con.execute(
            "UPDATE cycles SET status = 'failed', error = 'interrupted: the process ended"
            " before the cycle finished', finished_at = ? WHERE status = 'running'",
            [now],
        )
        seq = int(fetch_value(con, "SELECT coalesce(max(seq), 0) + 1 FROM cycles") or 1)
        con.execute(
            "INSERT INTO cycles (cycle_id, seq, feed, status, started_at, clock_at, late_seconds)"
            " VALUES (?, ?, ?, 'running', ?, ?, ?)",
            [cycle_id, seq, feed, now, clock_at, late_seconds],
        )
    return seq


def finish_cycle(
    path: Path, cycle_id: str, status: str, error: str | None = None, **results: Any
) -> None:
    """Record how a cycle ended (`done` or `failed`) and what it did."""
    unknown = sorted(set(results) - set(_RESULT_COLUMNS))
    if unknown:
        raise ValueError(f"unknown cycle result column(s): {unknown}")
    assignments = ", ".join(f"{name} = ?" for name in results)
    extra = f", {assignments}" if assignments else ""
    with connect(path) as con:
        con.execute(
            f"UPDATE cycles SET status = ?, error = ?, finished_at = ?{extra} WHERE cycle_id = ?",
            [status, error, utc_now(), *results.values(), cycle_id],
        )


def recent_durations(path: Path, cycles: int) -> list[float]:
    """Wall seconds of the newest finished cycles (newest first), leaving out cycles whose
    lead was pinned by the caller (a soak's first, which also warms every cache)."""
    if not Path(path).exists():
        return []
    with connect(path, read_only=True) as con:
        rows = con.execute(
            "SELECT seconds FROM cycles WHERE status = 'done' AND seconds IS NOT NULL"
            " AND NOT coalesce(pinned, false) ORDER BY seq DESC LIMIT ?",
            [cycles],
        ).fetchall()
    return [float(r[0]) for r in rows]


def last_prediction(path: Path) -> tuple[datetime | None, str | None]:
    """(watermark, model fingerprint) the newest cycle that predicted worked from."""
    with connect(path, read_only=True) as con:
        row = fetch_one(
            con,
            "SELECT watermark, models FROM cycles WHERE status = 'done' AND predicted"
            " ORDER BY seq DESC LIMIT 1",
        )
    return (row[0], row[1]) if row else (None, None)


def read_cycles(path: Path, limit: int = 20) -> pl.DataFrame:
    """The newest cycles, newest first."""
    with connect(path, read_only=True) as con:
        return fetch_frame(con, "SELECT * FROM cycles ORDER BY seq DESC LIMIT ?", [limit])


def churn_last_hour(path: Path, now: datetime) -> int:
    """Members the controller created or released in the hour before `now` (wall clock)."""
    with connect(path, read_only=True) as con:
        value = fetch_value(
            con,
            "SELECT count(*) FROM pool_events WHERE ok AND action IN ('create', 'release')"
            " AND happened_at > ? - INTERVAL 1 HOUR AND happened_at <= ?",
            [now, now],
        )
    return int(value or 0)
