"""Composite schemas for people: show a client's, add or remove an extension, set its
attributes. The checks and the audit are the API's own (`api/client_changes.py`): an
operator's change is judged exactly as a client's."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from api import client_changes
from api.composite import client_composite
from core.errors import PrewarmError
from flows.settings import Settings
from provisioning.schema_extensions import load_extension

__all__ = ["add_extension", "remove_extension", "set_attributes", "show_client_composite"]

CLI_ACTOR = "cli"


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
    return client_changes.add_extension(
        settings.warehouse_path, client_id, document, settings.allowed_image_list, CLI_ACTOR
    )


def remove_extension(settings: Settings, client_id: str, name: str) -> bool:
    """Remove a client's extension; False when it has none by that name."""
    return client_changes.remove_extension(settings.warehouse_path, client_id, name, CLI_ACTOR)


def set_attributes(
    settings: Settings, client_id: str, values: Mapping[str, str | None]
) -> dict[str, str | None]:
    """Set some of a client's region, tier and service; return all three as stored."""
    return client_changes.set_attributes(settings.warehouse_path, client_id, values, CLI_ACTOR)
