"""The `clients` table and what belongs to a client: its mode and its schema extensions.

Reads that take a connection (`read_client`, `read_client_extensions`) serve the API, which
answers for one client per request on a connection it already holds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from core.errors import PrewarmError
from core.times import utc_now
from core.vocabulary import MODES
from warehouse.db import connect, fetch_frame, fetch_value


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
