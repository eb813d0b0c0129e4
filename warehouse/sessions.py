"""Connection helpers for the API's warehouse modules: an optional lock wait, transactions.

A web request cannot wait `warehouse.db`'s default 30 s for a flow to release the write
lock, so these modules let their caller choose the wait; None keeps the default.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from warehouse.db import connect


@contextmanager
def open_warehouse(
    path: Path, read_only: bool = False, wait_s: float | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """`warehouse.db.connect`, with the lock wait overridden only when `wait_s` is given."""
    if wait_s is None:
        with connect(path, read_only=read_only) as con:
            yield con
    else:
        with connect(path, read_only=read_only, wait_s=wait_s) as con:
            yield con


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Commit the block's statements together, or none of them."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def naive_utc_now() -> datetime:
    """Naive UTC now, the warehouse's timestamp convention."""
    return datetime.now(UTC).replace(tzinfo=None)


def naive_utc(moment: datetime) -> datetime:
    """A datetime as naive UTC (naive input is taken to be UTC already)."""
    if moment.tzinfo is None:
        return moment
    return moment.astimezone(UTC).replace(tzinfo=None)
