"""The `clients` table and what belongs to a client: its mode and its schema extensions.

Reads that take a connection (`read_client`, `read_client_extensions`) serve the API, which
answers for one client per request on a connection it already holds.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from core.errors import PrewarmError
from core.times import utc_now
from core.vocabulary import MODES
from warehouse.db import connect, fetch_frame, fetch_value

ATTRIBUTES: tuple[str, ...] = ("region", "tier", "service")
# The one rule for an attribute value: the API, the CLI and event-log sidecars apply it.
_ATTRIBUTE_VALUE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")


def attribute_problem(name: str, value: str | None) -> str | None:
    """Why `name = value` is not a client attribute, or None when it is."""
    if name not in ATTRIBUTES:
        return f"{name!r} is not a client attribute (one of {', '.join(ATTRIBUTES)})"
    if value is not None and not _ATTRIBUTE_VALUE.fullmatch(value):
        return (
            f"{name} {value!r} is not 1-64 letters, digits or ._- starting with a letter or digit"
        )
    return None


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


def write_schema_extension(
    con: duckdb.DuckDBPyConnection, client_id: str, document: dict[str, Any], actor: str
) -> None:
    """Insert or replace one (already validated) schema extension of a client, and record
    the change (`client_changes`). The caller holds the transaction."""
    text = json.dumps(document)
    con.execute(
        "INSERT OR REPLACE INTO client_schema_extensions"
        " (client_id, name, precedence, document, updated_at) VALUES (?, ?, ?, ?::JSON, ?)",
        [client_id, document["name"], int(document.get("precedence", 0)), text, utc_now()],
    )
    _record_change(con, client_id, "extension-add", str(document["name"]), text, actor)


def delete_schema_extension(
    con: duckdb.DuckDBPyConnection, client_id: str, name: str, actor: str
) -> bool:
    """Remove a client's extension by name (recorded); False when it has none of that name."""
    removed = fetch_value(
        con,
        "DELETE FROM client_schema_extensions WHERE client_id = ? AND name = ? RETURNING 1",
        [client_id, name],
    )
    if removed:
        _record_change(con, client_id, "extension-remove", name, None, actor)
    return bool(removed)


def write_client_attributes(
    con: duckdb.DuckDBPyConnection, client_id: str, values: dict[str, str | None], actor: str
) -> None:
    """Set some of a client's region, tier and service (None clears one), recorded."""
    assignments = ", ".join(f"{column} = ?" for column in values)  # names checked by callers
    con.execute(
        f"UPDATE clients SET {assignments}, updated_at = ? WHERE client_id = ?",
        [*values.values(), utc_now(), client_id],
    )
    _record_change(con, client_id, "attributes", None, json.dumps(values), actor)


def _record_change(
    con: duckdb.DuckDBPyConnection,
    client_id: str,
    action: str,
    name: str | None,
    document: str | None,
    actor: str,
) -> None:
    con.execute(
        "INSERT INTO client_changes (client_id, action, name, document, actor, changed_at)"
        " VALUES (?, ?, ?, ?::JSON, ?, ?)",
        [client_id, action, name, document, actor, utc_now()],
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


def read_client(con: duckdb.DuckDBPyConnection, client_id: str) -> dict[str, Any] | None:
    """The client's `clients` row (attributes as JSON text), or None when unknown."""
    frame = fetch_frame(
        con,
        "SELECT client_id, tier, region, service, container_cpu, container_memory_mb,"
        " freq_seconds, source, attributes::VARCHAR AS attributes, first_ts,"
        " coalesce(mode, 'provision') AS mode FROM clients WHERE client_id = ?",
        [client_id],
    )
    return frame.row(0, named=True) if frame.height else None


def read_client_extensions(con: duckdb.DuckDBPyConnection, client_id: str) -> list[dict[str, Any]]:
    """The client's stored schema extension documents, by name."""
    rows = con.execute(
        "SELECT document::VARCHAR FROM client_schema_extensions WHERE client_id = ? ORDER BY name",
        [client_id],
    ).fetchall()
    return [json.loads(document) for (document,) in rows]


def list_clients(path: Path) -> list[str]:
    """Every client id with usage, sorted."""
    with connect(path, read_only=True) as con:
        return [
            r[0] for r in con.execute("SELECT DISTINCT client_id FROM usage ORDER BY 1").fetchall()
        ]


def read_clients(path: Path) -> pl.DataFrame:
    """The clients table (attributes as JSON text)."""
    with connect(path, read_only=True) as con:
        return fetch_frame(
            con,
            "SELECT client_id, tier, region, service, container_cpu, container_memory_mb,"
            " freq_seconds, source, attributes::VARCHAR AS attributes, first_ts,"
            " coalesce(mode, 'provision') AS mode FROM clients"
            " ORDER BY client_id",
        )
