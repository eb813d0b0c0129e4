"""One client's rows, read on a connection the caller holds (several reads, one connection).

The API answers for a single client per request; these queries select that client with a
parameter instead of reading every client's rows and filtering in Python.
"""

from __future__ import annotations

import json
from typing import Any

import duckdb

from warehouse.db import fetch_frame


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


def read_latest_profile(con: duckdb.DuckDBPyConnection, client_id: str) -> list[dict[str, Any]]:
    """The client's `profiles` rows of its latest prediction run, by window start (none when
    that run found no demand window: an older run's window is not current)."""
    frame = fetch_frame(
        con,
        "SELECT * FROM profiles WHERE client_id = ? AND generated_at = (SELECT max(g) FROM ("
        " SELECT max(generated_at) AS g FROM forecasts WHERE client_id = ?"
        " UNION ALL SELECT max(generated_at) FROM profiles WHERE client_id = ?))"
        " ORDER BY window_start",
        [client_id, client_id, client_id],
    )
    return list(frame.iter_rows(named=True))
