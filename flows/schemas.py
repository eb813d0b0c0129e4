"""Composite schemas for people: show a client's, add an extension from a file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from api.composite import client_base, client_composite, read_stored_extensions
from core.errors import PrewarmError
from flows.settings import Settings
from provisioning.inventory import load_inventory
from provisioning.schema import compose_workload
from provisioning.schema_checks import SchemaLimits, SchemaRejected, limits_from_inventory
from provisioning.schema_extensions import load_extension, validate_extension
from warehouse.clients import read_client, store_schema_extension
from warehouse.db import connect
from warehouse.inventory import read_inventory

__all__ = ["add_extension", "schema_limits", "show_client_composite"]


def schema_limits(settings: Settings) -> SchemaLimits:
    """What a client schema may ask for here: the allowed images, and at most the largest
    host of the inventory (the configured file, else the stored one, else this machine)."""
    if settings.inventory_path:
        inventory = load_inventory(settings.inventory_path)
    else:
        inventory = read_inventory(settings.warehouse_path)
    return limits_from_inventory(inventory, settings.allowed_image_list)


def show_client_composite(settings: Settings, client_id: str) -> dict[str, Any]:
    """What `prewarm schema show` prints: exactly what the API serves."""
    return client_composite(
        settings.warehouse_path, client_id, allowed_images=settings.allowed_image_list
    )


def add_extension(settings: Settings, client_id: str, path: Path) -> str:
    """Check an extension file (alone and composed with the client's others), store it.

    Nothing is stored unless the composite it makes passes every check, safety included.
    """
    if not path.is_file():
        raise PrewarmError(f"No such file: {path}")
    document = load_extension(path)  # size and nesting checked before parsing
    with connect(settings.warehouse_path, read_only=True) as con:
        client = read_client(con, client_id)
        if client is None:
            raise PrewarmError(f"No client {client_id!r} in the warehouse.")
        others = [
            e
            for e in read_stored_extensions(con, client_id)
            if e.get("name") != document.get("name")
        ]
    base, limits = client_base(client), schema_limits(settings)
    validate_extension(document, base, limits)  # its own problems first, naming it
    try:  # then conflicts with the client's other extensions, and the composite's checks
        compose_workload(client_id, [*others, document], None, base, limits=limits)
    except SchemaRejected as error:
        # The new document passed alone, so a refused extension here is a stored one.
        if error.source.startswith("extension "):
            raise PrewarmError(
                f"{error}\n(a stored {error.source}: replace it by adding a corrected document"
                " of the same name)"
            ) from None
        raise
    store_schema_extension(settings.warehouse_path, client_id, json.loads(json.dumps(document)))
    return str(document["name"])
