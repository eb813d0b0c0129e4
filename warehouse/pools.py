"""The pool tables: `pool_members` and `pool_events` (what the runtimes hold and did) and
`pool_runtimes` (the runtime each pool is bound to)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from core.times import utc_now
from warehouse.db import connect, fetch_frame, fetch_value, insert_frame, transaction


def write_pool_state(
    path: Path,
    runtime: str,
    events: pl.DataFrame,
    members: pl.DataFrame,
    observed_at: datetime,
) -> None:
    """Record applied actions and the members that now exist on `runtime`.

    Members present are upserted with their current tier; members recorded as live on this
    runtime but no longer present are marked released. Activation events add to each
    member's activation count and last activation time.
    """
    with connect(path) as con, transaction(con):
        if events.height:
            insert_frame(con, "pool_events", events)
        con.register("present", members.to_arrow() if members.height else _empty_members())
        con.execute(
            """
                INSERT INTO pool_members (member_id, client_id, plan_id, runtime, tier, host,
                                          endpoint, created_at, observed_at)
                SELECT member_id, client_id, plan_id, runtime, tier, host, endpoint,
                       created_at, ? FROM present
                ON CONFLICT (member_id) DO UPDATE SET
                    tier = excluded.tier, endpoint = excluded.endpoint,
                    host = coalesce(excluded.host, pool_members.host),
                    released_at = NULL, observed_at = excluded.observed_at
                """,
            [observed_at],
        )
        con.execute(
            """
                UPDATE pool_members SET tier = 'released', released_at = ?, observed_at = ?
                WHERE runtime = ? AND released_at IS NULL
                  AND member_id NOT IN (SELECT member_id FROM present)
                """,
            [observed_at, observed_at, runtime],
        )
        con.execute(
            """
                UPDATE pool_members SET
                    activations = pool_members.activations + a.n,
                    last_activation_ms = a.last_ms
                FROM (
                    SELECT member_id, count(*) AS n, arg_max(ms, happened_at) AS last_ms
                    FROM pool_events
                    WHERE action = 'activate' AND ok AND happened_at = ?
                    GROUP BY member_id
                ) a
                WHERE pool_members.member_id = a.member_id
                """,
            [observed_at],
        )


def read_pool(path: Path) -> pl.DataFrame:
    """Members that exist now (not released), by client and tier."""
    with connect(path, read_only=True) as con:
        return fetch_frame(
            con,
            "SELECT * FROM pool_members WHERE released_at IS NULL"
            " ORDER BY client_id, tier, member_id",
        )


def _empty_members() -> Any:
    return pl.DataFrame(
        schema={
            "member_id": pl.String,
            "client_id": pl.String,
            "plan_id": pl.String,
            "runtime": pl.String,
            "tier": pl.String,
            "host": pl.String,
            "endpoint": pl.String,
            "created_at": pl.Datetime("us"),
        }
    ).to_arrow()


def read_pool_runtime(path: Path, pool: str) -> str | None:
    """The runtime the pool lives on (None before anything was provisioned)."""
    if not Path(path).exists():
        return None
    with connect(path, read_only=True) as con:
        value = fetch_value(con, "SELECT runtime FROM pool_runtimes WHERE pool = ?", [pool])
    return str(value) if value is not None else None


def bind_pool_runtime(path: Path, pool: str, runtime: str, reason: str) -> str:
    """Record the pool's runtime unless one is recorded already; return the recorded one
    (the first binding wins: a pool never silently moves)."""
    with connect(path) as con, transaction(con):
        con.execute(
            "INSERT INTO pool_runtimes (pool, runtime, chosen_at, reason) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (pool) DO NOTHING",
            [pool, runtime, utc_now(), reason],
        )
        return str(fetch_value(con, "SELECT runtime FROM pool_runtimes WHERE pool = ?", [pool]))


def rebind_pool_runtime(path: Path, pool: str, runtime: str, reason: str) -> None:
    """Move the pool to another runtime (the operator's `prewarm pools --migrate-to`)."""
    with connect(path) as con:
        con.execute(
            "INSERT OR REPLACE INTO pool_runtimes (pool, runtime, chosen_at, reason)"
            " VALUES (?, ?, ?, ?)",
            [pool, runtime, utc_now(), reason],
        )
