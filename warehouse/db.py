"""DuckDB connections and schema migrations.

Connections are short-lived: DuckDB lets one process write a file at a time, so every
caller opens, works and closes, and a held lock is retried briefly, then explained.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from core.errors import PrewarmError
from core.times import utc_now
from warehouse.errors import WarehouseBusy

log = logging.getLogger(__name__)

_LOCK_WAIT_S = 30.0
# What DuckDB may hold per process (`PREWARM_WAREHOUSE_MEMORY_MB`): its buffer pool keeps
# every block a query read until the connection closes, and usage is stored client by
# client, so a query for the newest bucket reads the whole table (~1.1 GB at 10,000
# clients x 14 days, the peak of a cycle's score step). Past the limit DuckDB evicts read
# blocks and spills sorts and joins to a temporary directory beside the file (measured at
# 10,000 clients: the newest bucket's sum 1,102 -> 300 MB, and faster; 2,000 clients' 14
# days 1,663 -> 1,060 MB, 1.9 -> 2.1 s).
MEMORY_ENV = "PREWARM_WAREHOUSE_MEMORY_MB"
DEFAULT_MEMORY_MB = 512

# The connection `shared_connection` holds open for its block, with the file it opened.
_shared: ContextVar[tuple[Path, duckdb.DuckDBPyConnection] | None] = ContextVar(
    "prewarm_shared_connection", default=None
)


def _is_lock_error(error: duckdb.Error) -> bool:
    text = str(error).lower()
    return "lock" in text and ("conflicting" in text or "could not set" in text)


def memory_limit_mb() -> int:
    """The warehouse's memory limit per process, from PREWARM_WAREHOUSE_MEMORY_MB."""
    raw = os.environ.get(MEMORY_ENV, "").strip()
    if not raw:
        return DEFAULT_MEMORY_MB
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 64 <= value <= 1_048_576:
        raise PrewarmError(
            f"{MEMORY_ENV} must be a whole number of MB from 64 to 1048576, got {raw!r}"
        )
    return value


def _open(path: Path, read_only: bool, wait_s: float) -> duckdb.DuckDBPyConnection:
    config: dict[str, str | bool | int | float | list[str]] = {
        "memory_limit": f"{memory_limit_mb()}MB"
    }
    deadline = time.monotonic() + wait_s
    delay = 0.05
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only, config=config)
        except duckdb.IOException as error:
            if not _is_lock_error(error) or time.monotonic() >= deadline:
                if _is_lock_error(error):
                    raise WarehouseBusy(
                        f"The warehouse {path} is locked by another process (a running flow?) "
                        f"and stayed locked for {wait_s:.0f} s. Try again when it finishes."
                    ) from error
                # Not a DuckDB file, a directory, unreadable: one line, never a traceback.
                reason = str(error).strip().splitlines()[0] if str(error).strip() else "unknown"
                raise PrewarmError(
                    f"The warehouse {path} cannot be opened ({reason}). Restore it from a "
                    "backup, or point PREWARM_DATA_DIR at another directory."
                ) from error
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


@contextmanager
def connect(
    path: Path, read_only: bool = False, wait_s: float | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the warehouse (creating and migrating it on first write), yield, always close.

    `wait_s` bounds the wait for a lock another process holds (None: 30 s; a web request
    chooses less)."""
    path = Path(path)
    shared = _shared.get()
    if shared is not None and shared[0] == path.resolve():
        cursor = shared[1].cursor()  # its own transactions, no new database instance
        try:
            yield cursor
        finally:
            cursor.close()
        return
    wait_s = _LOCK_WAIT_S if wait_s is None else wait_s
    if read_only and not path.exists():
        raise PrewarmError(
            f"No warehouse at {path}. Create one with `prewarm ingest` (or `make demo`)."
        )
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    con = _open(path, read_only, wait_s)
    if read_only and _pending_migrations(con):
        # A newer prewarm reading an older warehouse: bring the schema up to date first.
        con.close()
        writer = _open(path, False, wait_s)
        try:
            migrate(writer)
        finally:
            writer.close()
        con = _open(path, True, wait_s)
    try:
        if not read_only and _pending_migrations(con):
            migrate(con)
        yield con
    finally:
        con.close()


@contextmanager
def shared_connection(path: Path) -> Iterator[None]:
    """Within the block, every `connect(path)` of this thread reuses one open connection.

    DuckDB builds a database instance (about 20 ms of CPU) for each connect, and one cycle
    makes twenty reads and writes. The block holds the file's write lock throughout, so
    keep it to a few queries: never around runtime calls or waits. Nested blocks share
    the outer one."""
    path = Path(path)
    shared = _shared.get()
    if shared is not None and shared[0] == path.resolve():
        yield
        return
    with connect(path) as con:
        token = _shared.set((path.resolve(), con))
        try:
            yield
        finally:
            _shared.reset(token)


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


def _pending_migrations(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether a migration or the views are missing or changed: one small query (a cycle
    opens dozens of short connections, each asks)."""
    try:
        applied = dict(con.execute("SELECT version, checksum FROM schema_migrations").fetchall())
    except duckdb.CatalogException:
        return True
    expected = {version: _checksum(sql) for version, sql in _migration_files()}
    missing = any(version not in applied for version in expected)
    return missing or applied.get("views") != _checksum(_views_sql())


@cache
def _migration_files() -> tuple[tuple[str, str], ...]:
    folder = resources.files("warehouse.migrations")
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return tuple((f.name.removesuffix(".sql"), f.read_text()) for f in files)


@cache
def _views_sql() -> str:
    return resources.files("warehouse").joinpath("views.sql").read_text()


@cache
def _checksum(sql: str) -> str:
    return hashlib.sha256(sql.encode()).hexdigest()[:16]


def migrate(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Apply the migrations not yet recorded in `schema_migrations`, in order; return them."""
    con.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version VARCHAR PRIMARY KEY, checksum VARCHAR NOT NULL,"
        " applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp)"
    )
    done = dict(con.execute("SELECT version, checksum FROM schema_migrations").fetchall())
    applied = []
    for version, sql in _migration_files():
        checksum = _checksum(sql)
        if version in done:
            if done[version] != checksum:
                log.warning("migration %s changed after it was applied; not re-applied", version)
            continue
        with transaction(con):
            con.execute(sql)
            con.execute(
                "INSERT INTO schema_migrations (version, checksum) VALUES (?, ?)",
                [version, checksum],
            )
        applied.append(version)
        log.info("applied migration %s", version)
    _apply_views(con)
    return applied


def _apply_views(con: duckdb.DuckDBPyConnection) -> None:
    """(Re)create the documented views when views.sql changed since they were last made."""
    sql = _views_sql()
    checksum = _checksum(sql)
    current = fetch_value(con, "SELECT checksum FROM schema_migrations WHERE version = 'views'")
    if current == checksum:
        return
    with transaction(con):
        con.execute(sql)
        con.execute(
            "INSERT OR REPLACE INTO schema_migrations (version, checksum, applied_at)"
            " VALUES ('views', ?, ?)",
            [checksum, utc_now()],
        )


def fetch_one(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> tuple | None:
    """First row of a query, with the result fully consumed (DuckDB 2 refuses new work on a
    connection while an earlier result is still open)."""
    rows = con.execute(sql, params or []).fetchall()
    return rows[0] if rows else None


def fetch_value(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> Any:
    """First column of the first row, or None (typed Any: its type is the query's)."""
    row = fetch_one(con, sql, params)
    return row[0] if row else None


def fetch_frame(
    con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None
) -> pl.DataFrame:
    """A query's whole result as a polars frame (empty for a statement returning nothing)."""
    relation = con.sql(sql, params=params or None)
    return relation.pl() if relation is not None else pl.DataFrame()


def insert_frame(
    con: duckdb.DuckDBPyConnection,
    table: str,
    frame: pl.DataFrame,
    casts: dict[str, str] | None = None,
    columns: Sequence[str] | None = None,
) -> None:
    """Insert a frame's rows into the same-named columns of `table` (a cast per column, e.g.
    {"config": "config::JSON"}); the one way a polars frame is written to a table."""
    if frame.height == 0:
        return
    if columns is not None:
        frame = frame.select(columns)
    casts = casts or {}
    name = f"new_{table}"
    con.register(name, frame.to_arrow())
    names = ", ".join(frame.columns)
    selected = ", ".join(casts.get(c, c) for c in frame.columns)
    con.execute(f"INSERT INTO {table} ({names}) SELECT {selected} FROM {name}")
    con.unregister(name)
