"""Clients shape their own schema: attributes and schema extensions, changed by the client
through the API or by an operator through the CLI, checked the same way for both.

An extension is checked alone (shape, types, safety: `provisioning/schema_extensions.py`),
then composed with the client's other extensions against the deployment's limits (the
stored inventory's largest host, the image allow-list), exactly as the composite is checked
when it is served or planned. Nothing is stored unless all of it passes. A client keeps at
most `MAX_EXTENSIONS`. Every change is recorded in `client_changes` with who and when, in the
same transaction as the change. Changes take effect at the next cycle's plan (and at once
in `GET /schema`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from api.composite import client_base
from core.errors import PrewarmError
from provisioning.schema import compose_workload
from provisioning.schema_checks import SchemaRejected, limits_from_inventory
from provisioning.schema_extensions import validate_extension
from warehouse.clients import (
    ATTRIBUTES,
    attribute_problem,
    delete_schema_extension,
    read_client,
    read_client_extensions,
    write_client_attributes,
    write_schema_extension,
)
from warehouse.db import connect, transaction
from warehouse.inventory import fetch_inventory

MAX_EXTENSIONS = 32


class UnknownClient(PrewarmError):
    """The client is not in the warehouse."""


class ChangeRefused(PrewarmError):
    """A change the rules do not allow (too many extensions, a bad attribute value)."""


def add_extension(
    path: Path,
    client_id: str,
    document: Mapping[str, Any],
    allowed_images: Iterable[str] | None,
    actor: str,
    *,
    wait_s: float | None = None,
) -> str:
    """Check an extension document and store it for the client (replacing a namesake);
    return its name. Raises SchemaError / SchemaRejected naming the problem, or
    ChangeRefused; nothing is stored then."""
    with connect(path, wait_s=wait_s) as con, transaction(con):
        client = _client(con, client_id)
        others = [
            e
            for e in read_client_extensions(con, client_id)
            if e.get("name") != document.get("name")
        ]
        if len(others) >= MAX_EXTENSIONS:
            raise ChangeRefused(
                f"Client {client_id!r} already has {len(others)} schema extensions, the most it "
                "may have: remove one first."
            )
        base = client_base(client)
        limits = limits_from_inventory(fetch_inventory(con), allowed_images)
        validate_extension(document, base, limits)  # its own problems first, naming it
        try:  # then conflicts with the client's other extensions, and the composite's checks
            compose_workload(client_id, [*others, dict(document)], None, base, limits=limits)
        except SchemaRejected as error:
            # The new document passed alone, so a refused extension here is a stored one.
            if error.source.startswith("extension "):
                raise ChangeRefused(
                    f"{error} (a stored {error.source}: replace it with a corrected document of "
                    "the same name, or remove it)"
                ) from None
            raise
        write_schema_extension(con, client_id, dict(document), actor)
    return str(document["name"])


def remove_extension(
    path: Path, client_id: str, name: str, actor: str, *, wait_s: float | None = None
) -> bool:
    """Remove the client's extension called `name`; False when it has none by that name."""
    with connect(path, wait_s=wait_s) as con, transaction(con):
        _client(con, client_id)
        return delete_schema_extension(con, client_id, name, actor)


def set_attributes(
    path: Path,
    client_id: str,
    values: Mapping[str, str | None],
    actor: str,
    *,
    wait_s: float | None = None,
) -> dict[str, str | None]:
    """Set some of the client's region, tier and service (None clears one); return all
    three as stored. Raises ChangeRefused for an unknown name or a malformed value."""
    problems = [attribute_problem(name, value) for name, value in values.items()]
    if not values or any(problems):
        raise ChangeRefused(
            "; ".join(p for p in problems if p)
            or f"Give at least one of {', '.join(ATTRIBUTES)} to change."
        )
    with connect(path, wait_s=wait_s) as con, transaction(con):
        _client(con, client_id)
        write_client_attributes(con, client_id, dict(values), actor)
        client = read_client(con, client_id)
    assert client is not None
    return {name: client[name] for name in ATTRIBUTES}


def _client(con: Any, client_id: str) -> dict[str, Any]:
    client = read_client(con, client_id)
    if client is None:
        raise UnknownClient(f"No client {client_id!r} in the warehouse.")
    return client
