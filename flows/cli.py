"""The `prewarm` command line: every user-facing action, each a thin call into a flow."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from flows.settings import Settings, configure_environment
from warehouse.errors import PrewarmError

app = typer.Typer(
    help="prewarm: forecast each client's demand and warm capacity before it arrives.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(soft_wrap=True)
errors = Console(stderr=True, soft_wrap=True)


class Source(StrEnum):
    synthetic = "synthetic"
    azure_functions = "azure-functions"
    events = "events"


class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


def _settings() -> Settings:
    settings = Settings()
    configure_environment(settings)
    from flows.logs import hide_expected_tracebacks

    hide_expected_tracebacks()
    return settings


@app.command()
def ingest(
    source: Annotated[Source, typer.Option(help="Where usage comes from.")] = Source.synthetic,
    path: Annotated[
        Path | None,
        typer.Option(help="Trace directory (azure-functions) or CSV/Parquet/JSONL file (events)."),
    ] = None,
    clients: Annotated[
        int | None, typer.Option(min=1, help="Synthetic: number of clients.")
    ] = None,
    days: Annotated[int | None, typer.Option(min=1, help="Synthetic: days of history.")] = None,
    seed: Annotated[int | None, typer.Option(help="Synthetic: random seed.")] = None,
    end: Annotated[
        datetime | None,
        typer.Option(help="Synthetic: end of history, UTC (default: now, on the bucket grid)."),
    ] = None,
) -> None:
    """Extract usage from a source, validate it (Great Expectations) and load it into DuckDB.

    Ingesting the same input twice is a no-op. Rows failing validation go to the
    `quarantine` table; when too many fail the whole batch is rejected and nothing loads.
    """
    settings = _settings()
    from flows.ingest import ingest_usage
    from flows.progress import progress_bars

    with progress_bars():
        outcome = ingest_usage(
            source=source.value, path=path, clients=clients, days=days, seed=seed, end=end
        )
    if outcome.status == "skipped":
        console.print(
            f"[yellow]Already ingested[/] {outcome.location} (batch {outcome.batch_id}): "
            "nothing added."
        )
        return
    console.print(
        f"[green]Loaded[/] {outcome.location}: {outcome.rows_loaded:,} usage rows for "
        f"{outcome.clients:,} clients ({outcome.rows_in:,} rows read, "
        f"{outcome.rows_quarantined:,} quarantined, {outcome.rows_replaced:,} replaced) "
        f"as batch {outcome.batch_id}."
    )
    for note in outcome.notes:
        console.print(f"  note: {note}")
    console.print(f"Warehouse: {settings.warehouse_path}")


@app.command()
def sql(
    query: Annotated[str, typer.Argument(help='SQL to run, e.g. "select count(*) from usage".')],
    format: Annotated[OutputFormat, typer.Option("--format", "-f", help="Output format.")] = (
        OutputFormat.table
    ),
    limit: Annotated[int, typer.Option(help="Rows shown in table format.")] = 50,
) -> None:
    """Run an ad-hoc query on a read-only connection to the warehouse."""
    settings = _settings()
    from warehouse.reads import run_query

    frame = run_query(settings.warehouse_path, query)
    if format is OutputFormat.csv:
        sys.stdout.write(frame.write_csv())
    elif format is OutputFormat.json:
        sys.stdout.write(json.dumps(frame.to_dicts(), default=str, indent=2) + "\n")
    else:
        table = Table(*frame.columns, show_lines=False)
        for row in frame.head(limit).iter_rows():
            table.add_row(*("" if v is None else str(v) for v in row))
        console.print(table)
        if frame.height > limit:
            console.print(f"({frame.height:,} rows, first {limit} shown; --limit to see more)")


@app.command()
def demo() -> None:
    """Run the main job on the embedded defaults: synthetic clients through the pipeline."""
    settings = _settings()
    from flows.ingest import ingest_usage
    from flows.progress import progress_bars
    from warehouse.reads import summarize_warehouse

    with progress_bars():
        outcome = ingest_usage(source="synthetic")
    summary = summarize_warehouse(settings.warehouse_path)
    table = Table("what", "value", title="prewarm demo: what landed")
    table.add_row("this run", f"{outcome.status} batch {outcome.batch_id}")
    table.add_row("clients", f"{summary.clients:,}")
    table.add_row(
        "clients by tier", ", ".join(f"{k}: {v}" for k, v in summary.clients_by_tier.items())
    )
    table.add_row("usage rows", f"{summary.usage_rows:,}")
    table.add_row("usage span (UTC)", f"{summary.first_ts} .. {summary.last_ts}")
    table.add_row("calendar events", f"{summary.calendar_events:,}")
    table.add_row(
        "batches loaded / rejected", f"{summary.batches_loaded} / {summary.batches_rejected}"
    )
    table.add_row("quarantined rows", f"{summary.quarantined_rows:,}")
    console.print(table)
    console.print(f"Warehouse: {settings.warehouse_path}. Try:")
    console.print('  prewarm sql "select tier, count(*) from clients group by tier"')
    console.print(
        "  prewarm sql \"select client_id, date_trunc('day', ts) d, sum(requests) "
        'from usage group by all order by 1, 2 limit 20"'
    )


def main() -> None:
    """Entry point: run the CLI, turning expected failures into one clear message."""
    try:
        app(standalone_mode=False)
    except PrewarmError as error:
        errors.print(f"[bold red]error:[/] {error}", highlight=False, soft_wrap=True)
        raise SystemExit(1) from None
    except ValidationError as error:
        errors.print(
            f"[bold red]error:[/] invalid setting: {error}", highlight=False, soft_wrap=True
        )
        raise SystemExit(2) from None
    except (typer.Exit, typer.Abort) as stop:
        raise SystemExit(getattr(stop, "exit_code", 1)) from None
    except Exception as error:  # click's usage errors arrive here in non-standalone mode
        import click

        if isinstance(error, click.ClickException):
            error.show()
            raise SystemExit(error.exit_code) from None
        raise
