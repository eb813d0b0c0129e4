"""Composite schemas for people: show a client's, add an extension from a file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from flows.settings import Settings
from provisioning.schema import (
    anticipated_from_profile,
    compose_workload,
    load_extension,
    validate_extension,
)
from warehouse.errors import PrewarmError
from warehouse.pools import read_latest_forecasts, read_schema_extensions, store_schema_extension
from warehouse.reads import read_clients


def _base(client: dict[str, Any]) -> dict[str, Any] | None:
    base: dict[str, Any] = {}
    if client.get("container_cpu"):
        base["cpu"] = float(client["container_cpu"])
    if client.get("container_memory_mb"):
        base["memory_mb"] = float(client["container_memory_mb"])
    return base or None


def client_composite(settings: Settings, client_id: str) -> dict[str, Any]:
    """base (from the clients table) <- stored extensions <- anticipated (next profile window)."""
    path = settings.warehouse_path
    clients = read_clients(path).filter(pl.col("client_id") == client_id)
    if clients.height == 0:
        raise PrewarmError(f"No client {client_id!r} in the warehouse.")
    extensions = read_schema_extensions(path).get(client_id, [])
    _, _, profiles = read_latest_forecasts(path)
    mine = profiles.filter(pl.col("client_id") == client_id).sort("window_start")
    anticipated = None
    if mine.height:
        row = mine.row(0, named=True)
        pool_size = int(round(row.get("concurrency_p90") or row.get("concurrency_p50") or 0))
        anticipated = anticipated_from_profile(row, pool_size)
    return compose_workload(client_id, extensions, anticipated, _base(clients.row(0, named=True)))


def add_extension(settings: Settings, client_id: str, path: Path) -> str:
    """Validate an extension file (alone and composed with the client's others), store it."""
    if not path.exists():
        raise PrewarmError(f"No such file: {path}")
    document = load_extension(path)
    validate_extension(document)
    existing = [
        e
        for e in read_schema_extensions(settings.warehouse_path).get(client_id, [])
        if e.get("name") != document["name"]
    ]
    clients = read_clients(settings.warehouse_path).filter(pl.col("client_id") == client_id)
    base = _base(clients.row(0, named=True)) if clients.height else None
    compose_workload(client_id, [*existing, document], None, base)  # conflicts surface here
    store_schema_extension(settings.warehouse_path, client_id, json.loads(json.dumps(document)))
    return str(document["name"])
