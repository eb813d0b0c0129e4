"""The `inventory` table: the hosts a pool may use, as the operator last loaded them."""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl

from core.times import utc_now
from warehouse.db import connect, fetch_frame, insert_frame, transaction
from warehouse.plans import LATEST_APPLIED_PLAN


def store_inventory(path: Path, inventory: pl.DataFrame, source: str) -> None:
    """Replace the inventory with `inventory` (a file is the whole truth about hosts)."""
    frame = inventory.with_columns(
        pl.lit(source).alias("source"),
        pl.lit(utc_now()).cast(pl.Datetime("us")).alias("updated_at"),
    )
    with connect(path) as con, transaction(con):
        con.execute("DELETE FROM inventory")
        insert_frame(con, "inventory", frame)


def read_inventory(path: Path) -> pl.DataFrame:
    """The stored hosts (empty when none were loaded yet)."""
    with connect(path, read_only=True) as con:
        return fetch_inventory(con)


def fetch_inventory(con: duckdb.DuckDBPyConnection) -> pl.DataFrame:
    """`read_inventory` on an open connection."""
    return fetch_frame(con, "SELECT * EXCLUDE (source, updated_at) FROM inventory ORDER BY host")


def write_host_status(path: Path, status: pl.DataFrame) -> None:
    """Replace each probed host's row of `host_status` with its newest probe."""
    if status.height == 0:
        return
    with connect(path) as con, transaction(con):
        con.execute(
            "DELETE FROM host_status WHERE host IN (SELECT unnest(?::VARCHAR[]))",
            [status.get_column("host").to_list()],
        )
        insert_frame(con, "host_status", status)


def read_host_status(path: Path) -> pl.DataFrame:
    """The newest probe of every host (empty before the first)."""
    with connect(path, read_only=True) as con:
        return fetch_frame(con, "SELECT * FROM host_status ORDER BY host")


def read_host_usage(path: Path) -> pl.DataFrame:
    """Per host: live members by tier and the capacity they hold, as the planner counts it
    (active: cpu and memory; shadow: memory; cold: nothing), sized by the newest applied
    plan's container configs."""
    with connect(path, read_only=True) as con:
        return fetch_frame(
            con,
            f"""
            WITH sizes AS (
                SELECT client_id,
                       max(member_cpu) AS cpu,
                       max(member_memory_mb) AS memory_mb
                FROM allocations
                WHERE plan_id = ({LATEST_APPLIED_PLAN}) AND config IS NOT NULL
                GROUP BY client_id
            )
            SELECT m.host,
                   count(*) FILTER (WHERE m.tier = 'active') AS active,
                   count(*) FILTER (WHERE m.tier = 'shadow') AS shadow,
                   count(*) FILTER (WHERE m.tier = 'cold') AS cold,
                   coalesce(sum(s.cpu) FILTER (WHERE m.tier = 'active'), 0) AS cpu_used,
                   coalesce(sum(s.memory_mb) FILTER (WHERE m.tier IN ('active', 'shadow')), 0)
                       AS memory_used_mb
            FROM pool_members m LEFT JOIN sizes s USING (client_id)
            WHERE m.released_at IS NULL
            GROUP BY m.host
            ORDER BY m.host
            """,
        )


def read_host_placement(path: Path) -> pl.DataFrame:
    """Per inventory host: `v_hosts` (engine, health, capacity in the file, on the engine and
    planned) with the live members by tier and the capacity they hold (`prewarm inventory`
    and the cycle artifact's placement table)."""
    with connect(path, read_only=True) as con:
        hosts = fetch_frame(con, "SELECT * EXCLUDE (checked_at) FROM v_hosts")
    usage = read_host_usage(path)
    placed = hosts.join(usage, on="host", how="left", coalesce=True)
    counts = ["active", "shadow", "cold", "cpu_used", "memory_used_mb"]
    return placed.with_columns(pl.col(c).fill_null(0) for c in counts)
