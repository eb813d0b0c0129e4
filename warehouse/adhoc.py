"""Ad-hoc SQL for operators (`prewarm sql`): a connection that can read the warehouse and
nothing else, and results every output format can render."""

from __future__ import annotations

from pathlib import Path

import duckdb
import polars as pl

from core.errors import PrewarmError
from warehouse.db import connect

# A read-only file still lets a statement write elsewhere: COPY ... TO and EXPORT DATABASE
# write any path (the warehouse file itself included), ATTACH opens other databases
# read-write, read_csv / INSTALL / LOAD reach files, URLs and extensions. Order matters:
# the temp directory can no longer change once external access is off, and nothing at all
# can change once the configuration is locked.
_LOCK_DOWN = (
    # DuckDB's own limit (80 % of the memory), not the flows' buffer bound: with no spilling
    # below, a person's query should fail only when the machine cannot hold it.
    "RESET memory_limit",
    "SET temp_directory = ''",  # no spilling: a huge query fails rather than fill the disk
    "SET enable_external_access = false",
    "SET autoinstall_known_extensions = false",
    "SET autoload_known_extensions = false",
    "SET lock_configuration = true",
)
_LOCKED = "the configuration has been locked"  # DuckDB's words for a refused SET
# DuckDB types polars and every output format (table, CSV, JSON) take as they are. Any other
# (INTERVAL, LIST, STRUCT, MAP, BLOB, DECIMAL, HUGEINT, DATE, TIMESTAMP...) is shown as
# DuckDB's own text for it: polars cannot import some (INTERVAL, UNION), CSV cannot write
# nested values, and infinite dates crash polars' CSV writer.
_AS_IS = frozenset(
    {
        "null",
        "boolean",
        "varchar",
        "tinyint",
        "smallint",
        "integer",
        "bigint",
        "utinyint",
        "usmallint",
        "uinteger",
        "ubigint",
        "float",
        "double",
    }
)


def run_query(path: Path, sql: str) -> pl.DataFrame:
    """Run ad-hoc SQL on a read-only, locked-down connection; any failure, a refused write
    included, comes back as one clear message."""
    with connect(path, read_only=True) as con:
        _lock_down(con)
        try:
            relation = con.sql(sql)
            if relation is None:  # a statement that returns nothing (SET, CHECKPOINT...)
                return pl.DataFrame()
            return _renderable(relation).pl()
        except duckdb.Error as error:
            if isinstance(error, duckdb.PermissionException) or _LOCKED in str(error):
                raise PrewarmError(
                    "prewarm sql only reads the warehouse: statements that write or read "
                    "files, attach databases, load extensions or change settings are refused "
                    f"({_first_line(error)})."
                ) from error
            raise PrewarmError(f"The query failed: {_first_line(error)}") from error


def _lock_down(con: duckdb.DuckDBPyConnection) -> None:
    # These settings belong to the database instance, so they would also bind any other
    # connection sharing it: refuse anything but the caller's own read-only connection.
    mode = con.execute("SELECT current_setting('access_mode')").fetchall()[0][0]
    if mode != "read_only":
        raise RuntimeError(f"ad-hoc SQL needs a read-only connection, got {mode!r}")
    for statement in _LOCK_DOWN:
        con.execute(statement)


def _renderable(relation: duckdb.DuckDBPyRelation) -> duckdb.DuckDBPyRelation:
    """The relation with every column polars cannot take as it is cast to text (columns by
    position: names may repeat; DuckDB makes them unique, as it does for `.pl()`)."""
    if all(kind.id in _AS_IS for kind in relation.types):
        return relation
    columns = [
        f"#{i}" if kind.id in _AS_IS else f"CAST(#{i} AS VARCHAR) AS {_quoted(name)}"
        for i, (name, kind) in enumerate(zip(relation.columns, relation.types, strict=True), 1)
    ]
    return relation.project(", ".join(columns))


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
