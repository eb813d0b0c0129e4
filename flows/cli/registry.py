"""`prewarm registry ...`: the MLflow registry of forecasters (retention)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from flows.cli.common import console, load_settings

registry_app = typer.Typer(
    help="The MLflow registry of per-client forecasters.", no_args_is_help=True
)

_SHOWN_MODELS = 20  # rows of the table; a registry of thousands is summed up below it


@registry_app.command("prune")
def registry_prune(
    keep: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Newest versions each forecaster keeps besides its champion and challenger"
            " (default: PREWARM_REGISTRY_KEEP, 3).",
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be deleted; delete nothing.")
    ] = False,
) -> None:
    """Delete old forecaster versions with their runs and files.

    Every `forecaster-*` model keeps each version an alias points at (champion, challenger)
    and its newest KEEP versions; prediction only loads aliases, so it is never affected.
    Shared exceedance models no remaining version uses go too (a day after their training).
    Every training run prunes the models it trained the same way.
    """
    settings = load_settings()
    from models.registry import prune_registry

    kept_newest = settings.registry_keep if keep is None else keep
    report = prune_registry(settings.mlflow_tracking_uri, kept_newest, dry_run=dry_run)
    by_model: dict[str, list[str]] = {}
    sizes: dict[str, int] = {}
    for pruned in report.pruned:
        by_model.setdefault(pruned.name, []).append(pruned.version)
        sizes[pruned.name] = sizes.get(pruned.name, 0) + (pruned.size or 0)
    if by_model:
        table = Table("model", "versions " + ("to prune" if dry_run else "pruned"), "MB")
        for name in sorted(by_model)[:_SHOWN_MODELS]:
            table.add_row(name, ", ".join(by_model[name]), f"{sizes[name] / 1e6:.2f}")
        console.print(table)
        if len(by_model) > _SHOWN_MODELS:
            console.print(f"... and {len(by_model) - _SHOWN_MODELS} more models")
    verb = "Would prune" if dry_run else "Pruned"
    console.print(
        f"{verb} {len(report.pruned)} versions of {len(by_model)} forecasters "
        f"({report.freed_bytes / 1e6:.1f} MB of files); {report.kept} versions of "
        f"{report.models} forecasters stay (aliased, or among the newest {kept_newest})."
    )
    if report.shared_runs:
        what = "would go" if dry_run else "removed"
        console.print(
            f"Shared exceedance models no version uses: {len(report.shared_runs)} {what}."
        )
    for where, why in sorted(report.failures.items()):
        console.print(f"  [red]not pruned[/] {where}: {why}")
    if dry_run:
        console.print("Nothing was deleted (--dry-run).")
    if report.failures:
        raise typer.Exit(1)
