"""Composite schemas for people: show a client's, add an extension from a file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from api.composite import client_base, client_composite
from flows.settings import Settings
from provisioning.schema import compose_workload, load_extension, validate_extension
from warehouse.errors import PrewarmError
from warehouse.pools import read_schema_extensions, store_schema_extension
from warehouse.reads import read_clients

__all__ = ["add_extension", "show_client_composite"]


def show_client_composite(settings: Settings, client_id: str) -> dict[str, Any]:
    """What `prewarm schema show` prints: exactly what the API serves."""
    return client_composite(settings.warehouse_path, client_id)


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
    base = client_base(clients.row(0, named=True)) if clients.height else None
    compose_workload(client_id, [*existing, document], None, base)  # conflicts surface here
    store_schema_extension(settings.warehouse_path, client_id, json.loads(json.dumps(document)))
    return str(document["name"])
