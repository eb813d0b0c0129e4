"""A client's composite workload schema: base (clients row) <- extensions <- anticipated.

Moved here from `flows/schemas.py` so the API serves exactly what `prewarm schema show`
prints, without importing `flows`. The reads select the one client, on one connection.

Every composite is checked against the deployment's limits (`provisioning/schema_checks.py`):
the largest host of the stored inventory (this machine when none is stored) and the image
allow-list, so an extension stored before those checks existed is refused here too
(SchemaRejected, naming the field) rather than reaching a runtime.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import duckdb

from provisioning.schema import anticipated_from_profile, compose_workload
from provisioning.schema_checks import SchemaLimits, SchemaRejected, limits_from_inventory
from warehouse.client_reads import read_client, read_client_extensions, read_latest_profile
from warehouse.db import connect
from warehouse.errors import PrewarmError
from warehouse.pools import fetch_inventory


def client_base(client: Mapping[str, Any]) -> dict[str, Any] | None:
    """The base workload a `clients` row implies (its container size), or None."""
    base: dict[str, Any] = {}
    if client.get("container_cpu"):
        base["cpu"] = float(client["container_cpu"])
    if client.get("container_memory_mb"):
        base["memory_mb"] = float(client["container_memory_mb"])
    return base or None


def compose_client(
    client: Mapping[str, Any],
    extensions: Sequence[Mapping[str, Any]],
    profile: Sequence[Mapping[str, Any]],
    limits: SchemaLimits | None = None,
) -> dict[str, Any]:
    """The composite from already-read rows; `profile` is the latest run's windows.

    The anticipated section comes from the earliest window of the latest profile run, with
    its p90 concurrency (else p50) as the recommended pool size.
    """
    anticipated = None
    if profile:
        row = min(profile, key=lambda r: r["window_start"])
        pool_size = int(round(row.get("concurrency_p90") or row.get("concurrency_p50") or 0))
        anticipated = anticipated_from_profile(row, pool_size)
    return compose_workload(
        client["client_id"], extensions, anticipated, client_base(client), limits=limits
    )


def read_stored_extensions(con: duckdb.DuckDBPyConnection, client_id: str) -> list[dict[str, Any]]:
    """The client's stored extensions; SchemaRejected when one cannot even be parsed.

    Documents stored before the checks existed may be nested too deep for `json.loads`
    (RecursionError) or hold an integer too long to convert (ValueError).
    """
    source = f"the stored extensions of {client_id!r}"
    try:
        return read_client_extensions(con, client_id)
    except RecursionError:
        raise SchemaRejected(source, "$", "a document is nested too deeply to read") from None
    except ValueError as error:
        raise SchemaRejected(source, "$", f"a document is not readable ({error})") from None


def client_composite(
    warehouse_path: Path,
    client_id: str,
    *,
    wait_s: float | None = None,
    allowed_images: Iterable[str] | None = None,
) -> dict[str, Any]:
    """base (from the clients table) <- stored extensions <- anticipated (next profile window).

    Raises PrewarmError for an unknown client; SchemaError when stored extensions conflict;
    SchemaRejected when one is unsafe (see `provisioning.schema_checks`).
    """
    with connect(warehouse_path, read_only=True, wait_s=wait_s) as con:
        client = read_client(con, client_id)
        if client is None:
            raise PrewarmError(f"No client {client_id!r} in the warehouse.")
        extensions = read_stored_extensions(con, client_id)
        profile = read_latest_profile(con, client_id)
        # The stored inventory's largest host (this machine when none is stored).
        limits = limits_from_inventory(fetch_inventory(con), allowed_images)
    return compose_client(client, extensions, profile, limits)
