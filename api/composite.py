"""A client's composite workload schema: base (clients row) <- extensions <- anticipated.

Moved here from `flows/schemas.py` so the API serves exactly what `prewarm schema show`
prints, without importing `flows`. The reads select the one client, on one connection.
The anticipated section is the one the newest applied plan rendered into the client's
members (`flows/provision.py`), so what is served is what the containers got.

Every composite is checked against the deployment's limits (`provisioning/schema_checks.py`):
the largest host of the stored inventory (this machine when none is stored) and the image
allow-list, so an extension stored before those checks existed is refused here too
(SchemaRejected, naming the field) rather than reaching a runtime.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import duckdb

from core.errors import PrewarmError
from provisioning.schema import anticipated_from_profile, compose_workload
from provisioning.schema_checks import SchemaLimits, SchemaRejected, limits_from_inventory
from provisioning.schema_model import ENV_PREFIX, Anticipated
from warehouse.clients import read_client, read_client_extensions
from warehouse.db import connect
from warehouse.inventory import fetch_inventory
from warehouse.plans import read_applied_config
from warehouse.predictions import read_latest_profile


def client_base(client: Mapping[str, Any]) -> dict[str, Any] | None:
    """The base workload a `clients` row implies (its container size), or None."""
    base: dict[str, Any] = {}
    if client.get("container_cpu"):
        base["cpu"] = float(client["container_cpu"])
    if client.get("container_memory_mb"):
        base["memory_mb"] = float(client["container_memory_mb"])
    return base or None


def client_anticipated(con: duckdb.DuckDBPyConnection, client_id: str) -> dict[str, Any] | None:
    """The anticipated section the client's members got from the newest applied plan.

    A client no applied plan covers yet gets one from the earliest window of its latest
    profile run, with its p90 concurrency (else p50) as the pool size (source "profile").
    """
    config = read_applied_config(con, client_id)
    if config is not None:
        # Read back from the env the plan rendered: exactly what the members were given.
        text = config.get("env", {}).get(f"{ENV_PREFIX}ANTICIPATED")
        return Anticipated.model_validate_json(text).model_dump(mode="json") if text else None
    profile = read_latest_profile(con, client_id)
    if not profile:
        return None
    row = min(profile, key=lambda r: r["window_start"])
    pool_size = int(round(row.get("concurrency_p90") or row.get("concurrency_p50") or 0))
    return {**anticipated_from_profile(row, pool_size), "source": "profile"}


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
    """base (from the clients table) <- stored extensions <- anticipated (`client_anticipated`).

    Raises PrewarmError for an unknown client; SchemaError when stored extensions conflict;
    SchemaRejected when one is unsafe (see `provisioning.schema_checks`).
    """
    with connect(warehouse_path, read_only=True, wait_s=wait_s) as con:
        return compose_client(con, client_id, deployment_limits(con, allowed_images))


def deployment_limits(
    con: duckdb.DuckDBPyConnection, allowed_images: Iterable[str] | None
) -> SchemaLimits:
    """What every composite is checked against: the stored inventory's largest host (this
    machine when none is stored) and the image allow-list."""
    return limits_from_inventory(fetch_inventory(con), allowed_images)


def compose_client(
    con: duckdb.DuckDBPyConnection, client_id: str, limits: SchemaLimits
) -> dict[str, Any]:
    """`client_composite` on an open connection, checked against `limits`."""
    client = read_client(con, client_id)
    if client is None:
        raise PrewarmError(f"No client {client_id!r} in the warehouse.")
    extensions = read_stored_extensions(con, client_id)
    anticipated = client_anticipated(con, client_id)
    size = client_size(con, client_id)
    composite = compose_workload(
        client_id, extensions, anticipated, client_base(client), limits=limits
    )
    # The size the applied plan gave its members: a cold start gets the same, so the next
    # cycle does not replace it for a config it never asked to change.
    return {**composite, "size": size} if size is not None else composite


def client_size(con: duckdb.DuckDBPyConnection, client_id: str) -> dict[str, Any] | None:
    """The member size the newest applied plan set for the client (None: declared)."""
    config = read_applied_config(con, client_id)
    text = (config or {}).get("env", {}).get(f"{ENV_PREFIX}CONFIG")
    return json.loads(text).get("size") if text else None
