"""The member's embedded database: a SQLite file with the schema's index hints applied.

Built at start, before the member first answers its health check, so a warm member's indexes
exist before its first query: each hinted table is created with its hinted columns (TEXT),
each hint becomes an index `ix<n>_<table>_<columns>` (UNIQUE when the hint says so), and a
lookup on each index's leading column is run once, so its statement is prepared and its
pages read. Identifiers come from the composite, whose schema allows plain names only; they
are checked again here and always quoted. SQLite folds the case of identifiers, so tables and
columns are matched without case. A request never carries SQL: `explain` takes a table and a
column this store created and builds its one statement itself.
"""

from __future__ import annotations

import re
import sqlite3

TYPE_CHECKING = False  # typing costs a member's start: see cache.py
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping
    from typing import Any

# The schema's own pattern for table and column names (`IndexHint` in schema_model.py).
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
STORE_FILE = "store.sqlite3"


class StoreRefused(ValueError):
    """A hint the store will not apply, or a lookup of something it did not create."""


class Store:
    """A SQLite file with the hinted tables and indexes, created on construction."""

    def __init__(self, path: str, hints: Iterable[Mapping[str, Any]]) -> None:
        self.path = path
        # Table -> its columns, keyed by lower-case names (SQLite's own matching).
        self._tables: dict[str, dict[str, str]] = {}
        self._names: dict[str, str] = {}  # lower-case table -> the spelling first given
        planned = [_index(number, hint) for number, hint in enumerate(hints)]
        for _, table, columns, _ in planned:
            self._names.setdefault(table.lower(), table)
            known = self._tables.setdefault(table.lower(), {})
            for column in columns:
                known.setdefault(column.lower(), column)
        # Autocommit: every statement here is DDL or a read.
        self._db = sqlite3.connect(path, isolation_level=None)
        for key, known in self._tables.items():
            listed = ", ".join(f"{_quoted(column)} TEXT" for column in known.values())
            self._db.execute(f"CREATE TABLE IF NOT EXISTS {_quoted(self._names[key])} ({listed})")
        for name, table, columns, unique in planned:
            self._db.execute(
                f"CREATE {'UNIQUE ' if unique else ''}INDEX IF NOT EXISTS {_quoted(name)}"
                f" ON {_quoted(table)} ({', '.join(_quoted(column) for column in columns)})"
            )
        for _, table, columns, _ in planned:
            self._db.execute(_lookup(table, columns[0]), (None,)).fetchall()

    def describe(self) -> dict[str, Any]:
        """The file, its tables with their columns and its indexes, read back from SQLite."""
        indexes = []
        tables = {}
        for key, table in self._names.items():
            tables[table] = list(self._tables[key].values())
            for _, name, unique, origin, _ in self._db.execute(
                f"PRAGMA index_list({_quoted(table)})"
            ):
                if origin != "c":
                    continue  # made by a constraint, not by a CREATE INDEX of ours
                columns = [
                    row[2] for row in self._db.execute(f"PRAGMA index_info({_quoted(name)})")
                ]
                indexes.append(
                    {"name": name, "table": table, "columns": columns, "unique": bool(unique)}
                )
        indexes.sort(key=lambda index: str(index["name"]))
        return {"file": self.path, "tables": tables, "indexes": indexes}

    def explain(self, table: str, column: str) -> dict[str, Any]:
        """SQLite's plan for `SELECT * FROM table WHERE column = ?` on a created table."""
        columns = self._tables.get(table.lower())
        if columns is None:
            raise StoreRefused(
                f"no table {table!r} here (tables: {', '.join(self._names.values())})"
            )
        if column.lower() not in columns:
            raise StoreRefused(
                f"table {table!r} has no column {column!r} (columns: {', '.join(columns.values())})"
            )
        query = _lookup(self._names[table.lower()], columns[column.lower()])
        plan = [row[3] for row in self._db.execute(f"EXPLAIN QUERY PLAN {query}", (None,))]
        return {"query": query, "plan": plan}


def _index(number: int, hint: Mapping[str, Any]) -> tuple[str, str, list[str], bool]:
    """(name, table, columns, unique) of hint `number`, its identifiers checked."""
    table, columns = hint["table"], list(hint["columns"])
    for identifier in (table, *columns):
        if not isinstance(identifier, str) or not IDENTIFIER.fullmatch(identifier):
            raise StoreRefused(f"index hint {number}: {identifier!r} is not a plain identifier")
    if table.lower().startswith("sqlite_"):
        raise StoreRefused(f"index hint {number}: table names starting sqlite_ are SQLite's")
    if not columns:
        raise StoreRefused(f"index hint {number}: no columns")
    # The number keeps names apart where joined names would not (a_b + c against a + b_c).
    return f"ix{number}_{table}_{'_'.join(columns)}", table, columns, bool(hint.get("unique"))


def _lookup(table: str, column: str) -> str:
    return f"SELECT * FROM {_quoted(table)} WHERE {_quoted(column)} = ?"


def _quoted(identifier: str) -> str:
    # Only ever given names that matched IDENTIFIER: no quote can be inside.
    return f'"{identifier}"'
