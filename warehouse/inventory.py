"""The `inventory` table: the hosts a pool may use, as the operator last loaded them."""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl

from core.times import utc_now
from warehouse.db import connect, fetch_frame, insert_frame, transaction


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
