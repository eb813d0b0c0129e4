"""`prewarm ingest`, `prewarm sql`, `prewarm feed ...` and `prewarm calendar ...`: getting
usage and known events into the warehouse and looking at them."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from core.vocabulary import Source
from flows.cli.common import OutputFormat, console, load_settings


def ingest(
    source: Annotated[Source, typer.Option(help="Where usage comes from.")] = Source.SYNTHETIC,
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
    attributes: Annotated[
        Path | None,
        typer.Option(
            help="Events: a CSV of client_id with region, tier and/or service for its clients."
        ),
    ] = None,
) -> None:
    """Extract usage from a source, validate it (Great Expectations) and load it into DuckDB.

    Ingesting the same input twice is a no-op. Rows failing validation go to the
    `quarantine` table; when too many fail the whole batch is rejected and nothing loads.
    """
    settings = load_settings(runs_flows=True)
    from flows.ingest import ingest_usage
    from flows.progress import progress_bars

    with progress_bars():
        outcome = ingest_usage(
            source=source.value,
            path=path,
            clients=clients,
            days=days,
            seed=seed,
            end=end,
            attributes=attributes,
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


def sql(
    query: Annotated[str, typer.Argument(help='SQL to run, e.g. "select count(*) from usage".')],
    format: Annotated[OutputFormat, typer.Option("--format", "-f", help="Output format.")] = (
        OutputFormat.table
    ),
    limit: Annotated[int, typer.Option(help="Rows shown in table format.")] = 50,
) -> None:
    """Run an ad-hoc query on a read-only connection to the warehouse."""
    settings = load_settings()
    from warehouse.adhoc import run_query

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


feed_app = typer.Typer(
    help="The one feed this warehouse follows: where each cycle's new usage comes from.",
    no_args_is_help=True,
)


@feed_app.command("show")
def feed_show() -> None:
    """The feed followed, its parameters, its clock and watermark, and the files taken."""
    settings = load_settings()
    from core.times import utc_now
    from warehouse.feeds import feed_clock, read_feed, read_taken_files, watermark

    path = settings.warehouse_path
    feed = read_feed(path)
    if feed is None:
        console.print(
            f"The warehouse {path} follows no feed yet: a cycle ingests nothing. Choose one "
            "with: prewarm feed follow none | spool:DIR | trace:DIR [--speed N] | synthetic"
        )
        return
    table = Table("", "", show_header=False)
    table.add_row("feed", feed.describe())
    params = ", ".join(f"{key}={value}" for key, value in feed.params.items()) or "-"
    table.add_row("params", params)
    table.add_row("clock", str(feed_clock(path, feed, utc_now())))
    table.add_row("watermark", str(watermark(path) or "- (no usage yet)"))
    if feed.kind == "spool":
        taken = read_taken_files(path)
        counts = taken.group_by("status").len().sort("status").iter_rows()
        summary = ", ".join(f"{n} {status}" for status, n in counts) or "none"
        table.add_row("files taken", f"{taken.height} ({summary})")
        for row in taken.head(5).iter_rows(named=True):
            table.add_row("", f"{row['taken_at']}  {row['status']:<9} {row['path']}")
    console.print(table)


@feed_app.command("follow")
def feed_follow(
    spec: Annotated[
        str,
        typer.Argument(
            help="none | spool:DIR (event files renamed in when complete) | trace:DIR "
            "(Azure Functions 2019) | synthetic (PREWARM_SYNTHETIC_* population)."
        ),
    ],
    speed: Annotated[
        float, typer.Option(help="trace: replay speed, trace minutes per wall minute.")
    ] = 1.0,
) -> None:
    """Make the warehouse follow a feed: each cycle then ingests only what it brings.

    Refused (nothing written) when a trace's or the generator's clients are not exactly the
    warehouse's clients with usage. Spool writers write each file elsewhere (or as .NAME,
    NAME.tmp or NAME.partial) and rename it in when complete; each file is taken once.
    """
    settings = load_settings()
    from core.times import utc_now
    from flows.feed import complete_feed
    from warehouse.feeds import follow_feed, parse_feed

    feed = complete_feed(parse_feed(spec, speed=speed), settings)
    stored = follow_feed(settings.warehouse_path, feed, now=utc_now())
    params = ", ".join(f"{key}={value}" for key, value in stored.params.items())
    console.print(
        f"The warehouse {settings.warehouse_path} now follows {stored.describe()}"
        + (f" ({params})." if params else ".")
    )


calendar_app = typer.Typer(
    help="Known events (holidays, launches, sales, maintenance) the forecasters learn from.",
    invoke_without_command=True,
)


@calendar_app.callback()
def calendar_show(ctx: typer.Context) -> None:
    """List the calendar: events per kind and region, and the next ones to come."""
    if ctx.invoked_subcommand is not None:
        return
    settings = load_settings()
    import polars as pl

    from warehouse.usage import read_calendar

    calendar = read_calendar(settings.warehouse_path)
    if calendar.height == 0:
        console.print(
            "The calendar is empty. Load one with `prewarm calendar load FILE.csv` "
            "(columns region, start, end, name, kind)."
        )
        return
    table = Table("kind", "region", "events", "first", "last")
    summary = (
        calendar.group_by("kind", "region")
        .agg(pl.len().alias("n"), pl.col("start_ts").min(), pl.col("end_ts").max())
        .sort("kind", "region")
    )
    for row in summary.iter_rows(named=True):
        table.add_row(
            row["kind"], row["region"], str(row["n"]), str(row["start_ts"]), str(row["end_ts"])
        )
    console.print(table)


@calendar_app.command("load")
def calendar_load(
    path: Annotated[
        Path,
        typer.Argument(help="CSV with columns region, start, end, name, kind.", metavar="FILE"),
    ],
) -> None:
    """Validate a calendar file (Great Expectations) and load its events.

    `region` is a client region or `global` (every client); `start` and `end` are ISO-8601
    (an offset or Z is converted to UTC) or epoch seconds; `kind` is a lowercase word
    (holiday, launch, sale, maintenance ...): each kind becomes a feature the forecasters
    learn at their next training. Loading the same file twice is a no-op; failing rows go
    to `quarantine`, and when too many fail (or a column is missing) nothing loads.
    """
    settings = load_settings(runs_flows=True)
    from flows.calendar import load_calendar

    outcome = load_calendar(path=path)
    if outcome.status == "skipped":
        console.print(
            f"[yellow]Already loaded[/] {outcome.location} (batch {outcome.batch_id}): "
            "nothing added."
        )
        return
    console.print(
        f"[green]Loaded[/] {outcome.location}: {outcome.rows_loaded:,} events "
        f"({outcome.rows_in:,} rows read, {outcome.rows_quarantined:,} quarantined) as batch "
        f"{outcome.batch_id}. New kinds are learnt at each client's next training."
    )
    console.print(f"Warehouse: {settings.warehouse_path}")
