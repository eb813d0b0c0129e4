"""Provisioning state in the warehouse: inventory, client modes and schema extensions,
plans and allocations, and the pool members the runtimes hold."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from core.errors import PrewarmError
from core.times import utc_now
from core.vocabulary import MODES
from warehouse.db import connect, fetch_frame, fetch_value, transaction


def store_inventory(path: Path, inventory: pl.DataFrame, source: str) -> None:
    """Replace the inventory with `inventory` (a file is the whole truth about hosts)."""
    frame = inventory.with_columns(
        pl.lit(source).alias("source"),
        pl.lit(utc_now()).cast(pl.Datetime("us")).alias("updated_at"),
    )
    columns = ", ".join(frame.columns)
    with connect(path) as con, transaction(con):
        con.execute("DELETE FROM inventory")
        con.register("new_inventory", frame.to_arrow())
        con.execute(f"INSERT INTO inventory ({columns}) SELECT {columns} FROM new_inventory")


def read_inventory(path: Path) -> pl.DataFrame:
    """The stored hosts (empty when none were loaded yet)."""
    with connect(path, read_only=True) as con:
        return fetch_inventory(con)


def fetch_inventory(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """`read_inventory` on an open connection."""
    return fetch_frame(con, "SELECT * EXCLUDE (source, updated_at) FROM inventory ORDER BY host")


def set_client_mode(path: Path, client_id: str, mode: str) -> str:
    """Set a client's mode; return the previous one. Unknown clients are an error."""
    if mode not in MODES:
        raise PrewarmError(f"Mode must be one of {', '.join(MODES)}, not {mode!r}.")
    with connect(path) as con:
        previous = fetch_value(con, "SELECT mode FROM clients WHERE client_id = ?", [client_id])
        if previous is None and not fetch_value(
            con, "SELECT count(*) FROM clients WHERE client_id = ?", [client_id]
        ):
            raise PrewarmError(f"No client {client_id!r} in the warehouse.")
        con.execute("UPDATE clients SET mode = ? WHERE client_id = ?", [mode, client_id])
    return str(previous or "provision")


def store_schema_extension(path: Path, client_id: str, document: dict[str, Any]) -> None:
    """Insert or replace one (already validated) schema extension of a client."""
    with connect(path) as con:
        if not fetch_value(con, "SELECT count(*) FROM clients WHERE client_id = ?", [client_id]):
            raise PrewarmError(f"No client {client_id!r} in the warehouse.")
        con.execute(
            "INSERT OR REPLACE INTO client_schema_extensions"
            " (client_id, name, precedence, document, updated_at) VALUES (?, ?, ?, ?::JSON, ?)",
            [
                client_id,
                document["name"],
                int(document.get("precedence", 0)),
                json.dumps(document),
                utc_now(),
            ],
        )


def read_schema_extensions(path: Path) -> tuple[dict[str, list[dict[str, Any]]], dict[str, str]]:
    """Every client's extension documents, and the clients with a document that cannot even
    be parsed (stored before documents were checked: nested too deep for `json.loads`, an
    integer too long to convert), with why."""
    with connect(path, read_only=True) as con:
        rows = con.execute(
            "SELECT client_id, document::VARCHAR FROM client_schema_extensions ORDER BY 1, 2"
        ).fetchall()
    extensions: dict[str, list[dict[str, Any]]] = {}
    unreadable: dict[str, str] = {}
    for client_id, document in rows:
        try:
            extensions.setdefault(client_id, []).append(json.loads(document))
        except RecursionError:
            unreadable[client_id] = "a stored extension is nested too deeply to read"
        except ValueError as error:
            unreadable[client_id] = f"a stored extension is not readable ({error})"
    return extensions, unreadable


# Each client's newest prediction run. Profiles and exceedance rows are taken from that run
# only: a run that found no demand window writes no profile, and an older run's window
# must not stand in for it (a stale window, with its confidence, would keep warming a
# client the newest forecast calls idle).
_LATEST_RUN = """
    WITH latest AS (
        SELECT client_id, max(generated_at) AS generated_at FROM (
            SELECT client_id, generated_at FROM forecasts
            UNION ALL SELECT client_id, generated_at FROM forecast_exceedance
            UNION ALL SELECT client_id, generated_at FROM profiles
        ) GROUP BY client_id
    )
"""


def read_latest_forecasts(path: Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Each client's latest prediction run: concurrency quantiles, exceedance, profiles."""
    with connect(path, read_only=True) as con:
        quantiles = fetch_frame(
            con,
            _LATEST_RUN
            + """
            SELECT f.client_id, f.metric, f.origin, f.ts, f.p10, f.p50, f.p90
            FROM forecasts f JOIN latest USING (client_id, generated_at)
            QUALIFY f.origin = max(f.origin) OVER (PARTITION BY f.client_id)
            """,
        )
        exceedance = fetch_frame(
            con,
            _LATEST_RUN
            + """
            SELECT e.client_id, e.origin, e.ts, e.level, e.p_exceed
            FROM forecast_exceedance e JOIN latest USING (client_id, generated_at)
            """,
        )
        profiles = fetch_frame(
            con,
            _LATEST_RUN
            + """
            SELECT p.* FROM profiles p JOIN latest USING (client_id, generated_at)
            ORDER BY p.client_id, p.window_start
            """,
        )
    return quantiles, exceedance, profiles


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


def insert_frame(
    con: Any, table: str, frame: pl.DataFrame, casts: dict[str, str] | None = None
) -> None:
    """Insert a frame's rows into the same-named columns of `table` (a cast per column)."""
    if frame.height == 0:
        return
    casts = casts or {}
    name = f"new_{table}"
    con.register(name, frame.to_arrow())
    columns = ", ".join(frame.columns)
    selected = ", ".join(casts.get(c, c) for c in frame.columns)
    con.execute(f"INSERT INTO {table} ({columns}) SELECT {selected} FROM {name}")
    con.unregister(name)


def _empty_members() -> Any:
    return pl.DataFrame(
        schema={
            "member_id": pl.String, "client_id": pl.String, "plan_id": pl.String,
            "runtime": pl.String, "tier": pl.String, "host": pl.String, "endpoint": pl.String,
            "created_at": pl.Datetime("us"),
        }
    ).to_arrow()  # fmt: skip


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
