"""`prewarm clients ...` (API keys, provisioning mode) and `prewarm schema ...` (composite
workload schemas)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from core.errors import PrewarmError
from core.vocabulary import Mode
from flows.cli.common import console, load_settings

clients_app = typer.Typer(
    help="Clients: API keys, provisioning mode and attributes.", no_args_is_help=True
)


@clients_app.command("mode")
def clients_mode(
    client_id: Annotated[str, typer.Argument(help="The client id.")],
    mode: Annotated[
        Mode, typer.Argument(help="provision, or forecast-only (plan, touch nothing).")
    ],
) -> None:
    """Set whether prewarm provisions for a client or only forecasts and records plans."""
    settings = load_settings()
    from warehouse.clients import set_client_mode

    previous = set_client_mode(settings.warehouse_path, client_id, mode.value)
    console.print(f"{client_id}: {previous} -> {mode.value}")


@clients_app.command("set")
def clients_set(
    client_id: Annotated[str, typer.Argument(help="The client id.")],
    region: Annotated[str | None, typer.Option(help="Its region (calendar events follow).")] = None,
    tier: Annotated[str | None, typer.Option(help="Its tier (a forecasting feature).")] = None,
    service: Annotated[
        str | None, typer.Option(help="Its service (a forecasting feature).")
    ] = None,
) -> None:
    """Set a client's region, tier or service, as a client may through the API (recorded in
    client_changes; learnt at the client's next training)."""
    settings = load_settings()
    from flows.schemas import set_attributes

    values = {
        name: value
        for name, value in (("region", region), ("tier", tier), ("service", service))
        if value is not None
    }
    stored = set_attributes(settings, client_id, values)
    shown = ", ".join(f"{name}={value or '-'}" for name, value in stored.items())
    console.print(f"{client_id}: {shown}")


@clients_app.command("add")
def clients_add(client_id: Annotated[str, typer.Argument(help="The client id.")]) -> None:
    """Register a client (if new) and issue its API key, printed once on the last line."""
    settings = load_settings()
    from warehouse.api_keys import issue_key

    key = issue_key(
        settings.warehouse_path, client_id, create_client=True, freq_seconds=settings.freq_seconds
    )
    console.print(f"API key for {client_id} (shown once, stored only as a hash):")
    sys.stdout.write(key + "\n")


@clients_app.command("rotate-key")
def clients_rotate_key(client_id: Annotated[str, typer.Argument(help="The client id.")]) -> None:
    """Issue a new API key for a client; the old key stops working at once."""
    settings = load_settings()
    from warehouse.api_keys import rotate_key

    key = rotate_key(settings.warehouse_path, client_id)
    console.print(f"New API key for {client_id} (the previous one no longer works):")
    sys.stdout.write(key + "\n")


schema_app = typer.Typer(
    help="Composite workload schemas: base <- extensions <- anticipated.", no_args_is_help=True
)


@schema_app.command("show")
def schema_show(client_id: Annotated[str, typer.Argument(help="The client id.")]) -> None:
    """Print a client's composite schema (with its anticipated section when forecast)."""
    settings = load_settings()
    from flows.schemas import show_client_composite
    from provisioning.schema_render import show_composite

    sys.stdout.write(show_composite(show_client_composite(settings, client_id)) + "\n")


@schema_app.command("add")
def schema_add(
    client_id: Annotated[str, typer.Argument(help="The client id.")],
    path: Annotated[Path, typer.Argument(help="A JSON extension document.")],
) -> None:
    """Validate a schema extension file and store it for a client (replaces a namesake)."""
    settings = load_settings()
    from flows.schemas import add_extension

    name = add_extension(settings, client_id, path)
    console.print(
        f"Stored extension {name!r} for {client_id}. See: prewarm schema show {client_id}"
    )


@schema_app.command("remove")
def schema_remove(
    client_id: Annotated[str, typer.Argument(help="The client id.")],
    name: Annotated[str, typer.Argument(help="The extension's name.")],
) -> None:
    """Remove one of a client's schema extensions (recorded in client_changes)."""
    settings = load_settings()
    from flows.schemas import remove_extension

    if not remove_extension(settings, client_id, name):
        raise PrewarmError(f"Client {client_id!r} has no schema extension called {name!r}.")
    console.print(f"Removed extension {name!r} of {client_id}.")
