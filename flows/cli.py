"""The `prewarm` command line: every user-facing action, each a thin call into a flow."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import time
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from core.errors import PrewarmError
from core.vocabulary import Mode, Source
from flows.settings import Settings, configure_environment

app = typer.Typer(
    help="prewarm: forecast each client's demand and warm capacity before it arrives.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped output (logs, CI) gets wide tables instead of an 80-column squeeze.
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
errors = Console(stderr=True, soft_wrap=True)


class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


def _settings(runs_flows: bool = False) -> Settings:
    """Settings, with the environment set for libraries; a command that runs flows also gets
    its Prefect API: `prewarm up`'s server when it answers (runs show in its UI), else one
    temporary server shared with the worker processes the run starts."""
    settings = Settings()
    configure_environment(settings)
    if runs_flows:
        from flows.prefect_api import prefect_api_url

        configure_environment(settings, prefect_api_url=prefect_api_url(settings))
    from flows.logs import hide_expected_tracebacks

    hide_expected_tracebacks()
    return settings


@app.command()
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
) -> None:
    """Extract usage from a source, validate it (Great Expectations) and load it into DuckDB.

    Ingesting the same input twice is a no-op. Rows failing validation go to the
    `quarantine` table; when too many fail the whole batch is rejected and nothing loads.
    """
    settings = _settings(runs_flows=True)
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


@app.command()
def train(
    clients: Annotated[
        list[str] | None,
        typer.Option("--clients", "-c", help="Only these client ids (repeatable)."),
    ] = None,
) -> None:
    """Fit, score and register one forecaster per client in MLflow (forecaster-<client_id>).

    A new version becomes `challenger`; it is promoted to `champion` only when its holdout
    wMAPE beats both the current champion on the same window and seasonal naive.
    """
    settings = _settings(runs_flows=True)
    from flows.train import train_flow

    summary = train_flow(settings)(client_ids=clients or None, trigger="manual")
    table = Table("client", "version", "alias", "window wMAPE", "baseline", "why")
    for registration in sorted(summary.registrations, key=lambda r: r.client_id):
        score = summary.scores.get(registration.client_id)
        table.add_row(
            registration.client_id,
            registration.version,
            "champion" if registration.promoted else "challenger",
            f"{score.wmape:.3f}" if score else "-",
            f"{score.baseline_wmape:.3f}" if score and score.baseline_wmape is not None else "-",
            registration.reason,
        )
    console.print(table)
    console.print(
        f"Registered {len(summary.registrations)} forecasters ({summary.promoted} promoted, "
        f"{len(summary.fallbacks)} on the global model, {len(summary.failures)} failed) in "
        f"{summary.wall_seconds:.1f} s; MLflow {summary.mlflow_seconds:.1f} s. "
        f"Review them in the MLflow UI (`prewarm up`, http://127.0.0.1:5000)."
    )
    for client_id, why in sorted(summary.failures.items()):
        console.print(f"  [red]failed[/] {client_id}: {why}")


@app.command()
def predict(
    clients: Annotated[
        list[str] | None,
        typer.Option("--clients", "-c", help="Only these client ids (repeatable)."),
    ] = None,
) -> None:
    """Refresh forecasts and predicted profiles from the latest usage (no retraining)."""
    _settings(runs_flows=True)
    from flows.predict import predict_profiles

    summary = predict_profiles(client_ids=clients or None)
    console.print(
        f"Predicted {summary.clients} clients: {summary.forecasts:,} forecast rows and "
        f"{summary.profiles:,} profile windows in {summary.seconds:.1f} s."
    )
    if summary.without_model:
        console.print(
            f"[yellow]{len(summary.without_model)} clients have no model yet[/]; "
            "run `prewarm train`."
        )
    console.print(
        'See them: prewarm sql "select client_id, window_start, window_end, concurrency_p90, '
        'confidence from profiles order by window_start limit 20"'
    )


@app.command()
def backtest(
    csv: Annotated[
        Path | None, typer.Option(help="A bare multi-metric CSV (one client, no timestamps).")
    ] = None,
    from_warehouse: Annotated[
        bool, typer.Option("--from-warehouse", help="Backtest every warehouse client.")
    ] = False,
    freq: Annotated[str, typer.Option(help="Step between CSV rows, e.g. 5min.")] = "5min",
    horizon: Annotated[int, typer.Option(min=1, help="Steps forecast from each origin.")] = 12,
    test_days: Annotated[float, typer.Option(min=0.1, help="Days of origins at the end.")] = 7.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results here.")] = None,
) -> None:
    """Rolling-origin backtest of LightGBM against naive and seasonal-naive baselines.

    Origins every HORIZON steps across the last TEST_DAYS days; each forecasts the next
    HORIZON steps from data before the origin. Reports p50 wMAPE, pinball loss and the
    coverage of the 80% interval.
    """
    settings = _settings()
    from flows.settings import parse_freq
    from models.backtest import backtest_clients, backtest_series, read_bare_csv

    if (csv is None) == (not from_warehouse):
        raise PrewarmError("Give exactly one of --csv FILE or --from-warehouse.")
    try:
        freq_seconds = parse_freq(freq)
    except ValueError as error:
        raise PrewarmError(str(error)) from None
    if csv is not None:
        if not csv.exists():
            raise PrewarmError(f"No such file: {csv}")
        try:
            series = read_bare_csv(csv, freq_seconds)
            result = backtest_series(
                series, freq_seconds, horizon_steps=horizon, test_days=test_days
            )
        except ValueError as error:
            raise PrewarmError(f"Backtest of {csv} failed: {error}") from None
        table = Table("column", "lightgbm wMAPE", "coverage 80", "pinball", "naive", "seasonal day",
                      "seasonal week", title=f"backtest {csv.name}")  # fmt: skip
        for column, scores in result["metrics"].items():
            table.add_row(
                column,
                _fmt(scores["lightgbm"]["wmape"]),
                _fmt(scores["lightgbm"]["coverage_80"]),
                _fmt(scores["lightgbm"]["pinball"]),
                _fmt(scores["naive"]["wmape"]),
                _fmt(scores.get("seasonal_naive_day", {}).get("wmape")),
                _fmt(scores.get("seasonal_naive_week", {}).get("wmape")),
            )
        console.print(table)
        for note in result.get("notes", []):
            console.print(f"note: {note}")
        console.print(f"runtime {result['runtime_s']:.1f} s")
        if json_out:
            json_out.write_text(json.dumps(result, indent=2) + "\n")
            console.print(f"wrote {json_out}")
        return
    from warehouse.reads import read_calendar, read_clients, read_recent_usage

    usage = read_recent_usage(settings.warehouse_path, settings.train_history_days)
    frame = backtest_clients(
        usage,
        read_clients(settings.warehouse_path),
        read_calendar(settings.warehouse_path),
        None,
        horizon,
        test_days,
    )
    table = Table(*frame.columns, title="backtest of warehouse clients")
    for row in frame.iter_rows():
        table.add_row(*(_fmt(v) if isinstance(v, float) else str(v) for v in row))
    console.print(table)
    if json_out:
        json_out.write_text(json.dumps(frame.to_dicts(), indent=2, default=str) + "\n")
        console.print(f"wrote {json_out}")


def _fmt(value: object) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


@app.command()
def provision(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only plan and record the plan; touch no container.")
    ] = False,
) -> None:
    """Plan warm pools from the latest forecasts and make the runtime match the plan.

    The planner keeps instance k of a client warm when P(demand >= k) x cold-start penalty
    outweighs the idle cost of holding it (per tier: active, shadow = paused, cold = created),
    within host capacity. Forecast-only clients are planned and recorded, never touched.
    """
    _settings(runs_flows=True)
    from flows.provision import provision_pools

    summary = provision_pools(dry_run=dry_run)
    totals = summary.totals
    desired = ", ".join(f"{n} {tier}" for tier, n in sorted(summary.desired.items())) or "none"
    console.print(f"Plan {summary.plan_id}: containers wanted now: {desired}.")
    console.print(
        f"Expected over the plan: cost {totals.get('expected_cost', 0):.4f} and "
        f"{totals.get('expected_cold_starts', 0):.1f} cold starts, vs a reactive policy's "
        f"{totals.get('reactive_cost', 0):.4f} and {totals.get('reactive_cold_starts', 0):.1f}."
    )
    if summary.unserved:
        console.print(
            f"[yellow]{summary.unserved} instance-windows could not be placed[/] "
            "(see table unserved)."
        )
    if summary.forecast_only:
        console.print(f"Forecast-only (not touched): {', '.join(summary.forecast_only)}")
    if dry_run:
        console.print(
            "Dry run: the plan is recorded in plans/allocations; no container was touched."
        )
        return
    actions = (
        ", ".join(f"{n} {kind}" for kind, n in sorted(summary.actions.items())) or "no changes"
    )
    console.print(f"Applied on {summary.runtime}: {actions}.")
    for failure in summary.failures:
        console.print(f"  [red]failed[/] {failure}")
    console.print("See the pools: prewarm pools")
    if summary.failures:
        raise typer.Exit(1)


@app.command()
def reconcile(
    no_retrain: Annotated[
        bool, typer.Option("--no-retrain", help="Detect and record drift but do not retrain.")
    ] = False,
) -> None:
    """Compare what happened with what was predicted, record drift, retrain drifted clients.

    Scores new buckets against their forecasts (error, coverage, pinball; where usage has no
    actual, what the client reported with its feedback) and against the plan's warm capacity
    (cold starts, idle cost, cost of a reactive autoscaler), records drift once per episode,
    and retrains the drifted clients that are due (see `prewarm retrain`). It never touches
    the pools. Rows land in `reconciliations` and `drift_events`.
    """
    _settings(runs_flows=True)
    from flows.reconcile import reconcile_pools

    summary = reconcile_pools(retrain=not no_retrain)
    coverage = f"{summary.coverage:.0%}" if summary.coverage is not None else "-"
    console.print(
        f"Reconciled {summary.buckets} buckets ({summary.rows} rows): 80% band covered {coverage}; "
        f"{summary.cold_starts:.0f} cold starts vs {summary.reactive_cold_starts:.0f} for a "
        f"reactive policy; cost {summary.cost:.4f} vs {summary.reactive_cost:.4f}."
    )
    if not summary.drifted:
        console.print("Drift: none.")
    for client_id, reason in sorted(summary.drifted.items()):
        if client_id in summary.retrained:
            done = f"retrained as version {summary.retrained[client_id]}"
        else:
            done = f"not retrained: {summary.waiting.get(client_id, '-')}"
        console.print(f"  drift {client_id}: {reason} ({done})")
    if summary.retraining is not None:
        _print_retraining(summary.retraining)
    console.print(
        'See: prewarm sql "select client_id, window_start, metric, predicted_p50, actual, '
        'cold_starts, idle_cost from reconciliations order by window_start desc limit 10"'
    )


@app.command()
def retrain() -> None:
    """Retrain the clients whose forecasts drifted (or that clients rated poorly), when due.

    A client with an open drift episode is retrained when it was not retrained for drift or
    feedback within PREWARM_RETRAIN_COOLDOWN and has usage newer than its last model saw;
    the others are listed with why they wait. Each version is tagged with its trigger.
    """
    _settings(runs_flows=True)
    from flows.retrain import retrain_drifted

    _print_retraining(retrain_drifted())


def _print_retraining(summary: Any) -> None:
    """The table of a retrain-drifted run: who was retrained (trigger, version), who waits."""
    if not (summary.retrained or summary.skipped or summary.failures):
        console.print("Retraining: no open drift episode.")
        return
    table = Table("client", "trigger", "version", "alias", "why")
    for done in sorted(summary.retrained, key=lambda r: r.client_id):
        alias = "champion" if done.promoted else "challenger"
        table.add_row(done.client_id, done.trigger, done.version, alias, done.reason)
    for client_id, why in sorted(summary.skipped.items()):
        table.add_row(client_id, "-", "-", "-", f"skipped: {why}")
    for client_id, why in sorted(summary.failures.items()):
        table.add_row(client_id, "-", "-", "-", f"[red]failed[/]: {why}")
    console.print(table)
    console.print(
        f"Retrained {len(summary.retrained)}, {len(summary.skipped)} waiting, "
        f"{len(summary.failures)} failed in {summary.seconds:.1f} s."
    )


class RuntimeName(StrEnum):
    docker = "docker"
    process = "process"


@app.command()
def pools(
    release_all: Annotated[
        bool, typer.Option("--release-all", help="Release every member of the pool.")
    ] = False,
    release_stray: Annotated[
        bool,
        typer.Option(
            "--release-stray", help="Release the pool's members found on another runtime."
        ),
    ] = False,
    migrate_to: Annotated[
        RuntimeName | None,
        typer.Option(
            "--migrate-to",
            help="Move the pool to this runtime: warm the current plan there, then release "
            "the old members.",
        ),
    ] = None,
) -> None:
    """List the pool by client and tier on the runtime it lives on, members found elsewhere,
    and recent churn.

    A pool lives on one runtime, recorded when it was first provisioned; every command uses
    that one (an unavailable runtime is an error, never a silent switch). Members carrying
    the pool's label on another runtime are listed as strays: release them with
    --release-stray, or move the whole pool with --migrate-to.
    """
    settings = _settings()
    from flows import pool_admin

    if sum([release_all, release_stray, migrate_to is not None]) > 1:
        raise PrewarmError("Give at most one of --release-all, --release-stray, --migrate-to.")
    if release_all:
        name, released = pool_admin.release_everything(settings)
        console.print(f"Released {released} members of pool {settings.pool!r} on {name}.")
        return
    if release_stray:
        released = pool_admin.release_strays(settings)
        done = ", ".join(f"{n} on {name}" for name, n in released.items()) or "none found"
        console.print(f"Released strays of pool {settings.pool!r}: {done}.")
        return
    if migrate_to is not None:
        moved = pool_admin.migrate_pool(settings, migrate_to.value)
        console.print(
            f"Pool {settings.pool!r} moved from {moved.source} to {moved.target}: "
            f"{moved.created} members created there, {moved.released} released on {moved.source}."
        )
        if moved.drained:
            console.print(
                f"  {len(moved.drained)} members serving requests were left to drain; release "
                "them later with `prewarm pools --release-stray`."
            )
        return
    view = pool_admin.view_pool(settings)
    if view.runtime is None:
        console.print(f"Pool {settings.pool!r} has no runtime yet: nothing was provisioned.")
    else:
        table = Table(
            "client", "active", "shadow", "cold", "endpoints",
            title=f"pool {settings.pool!r} on {view.runtime}",
        )  # fmt: skip
        by_client: dict[str, dict[str, list]] = {}
        for member in view.members:
            by_client.setdefault(member.client_id, {}).setdefault(member.tier, []).append(member)
        for client_id in sorted(by_client):
            tiers = by_client[client_id]
            endpoints = [m.endpoint for m in tiers.get("active", []) if m.endpoint]
            table.add_row(
                client_id,
                *(str(len(tiers.get(tier, []))) for tier in ("active", "shadow", "cold")),
                ", ".join(endpoints[:2]) + (" ..." if len(endpoints) > 2 else ""),
            )
        console.print(table)
        console.print(
            f"{len(view.members)} members on {view.runtime}. "
            "Recorded history: tables pool_members, pool_events; views v_churn, v_cycles."
        )
    for name, members in view.strays.items():
        clients = len({m.client_id for m in members})
        console.print(
            f"[yellow]{len(members)} members of pool {settings.pool!r} ({clients} clients) "
            f"found on {name}[/], which is not the pool's runtime: release them with "
            f"`prewarm pools --release-stray`, or move the pool with "
            f"`prewarm pools --migrate-to {name}`."
        )
    if view.churn.height:
        last = view.churn.row(0, named=True)
        console.print(
            f"Churn in the hour from {last['hour']:%Y-%m-%d %H:%M}: {last['created']} created, "
            f"{last['released']} released ({last['churn']} members/hour); "
            f"{last['requests']} requests, {last['cold_starts']} of them cold."
        )


@app.command()
def cycle(
    feed: Annotated[
        str | None,
        typer.Option(
            help="Where new usage comes from: none (work on what the warehouse holds), "
            "spool:DIR, trace:DIR or synthetic. Followed from now on; default: the feed the "
            "warehouse follows (none if it follows none)."
        ),
    ] = None,
    speed: Annotated[
        float | None,
        typer.Option(min=0.001, help="trace:DIR only: replay N times faster than real time."),
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the summary here.")] = None,
) -> None:
    """Run one cycle of the loop: ingest -> predict -> plan -> apply -> score, on one clock.

    The cycle ingests what the feed has new (by watermark, never overwriting a stored row),
    predicts only when the data or a model changed, plans from after the moment it expects
    to finish, makes the pool match the plan (nothing else ever decides which members
    exist), and scores the buckets that arrived. Two cycles on the same data make no runtime
    action the second time. Cycles never overlap. `prewarm up` runs one every PREWARM_CYCLE.
    """
    _settings(runs_flows=True)
    from flows.cycle import prewarm_cycle, write_json

    summary = prewarm_cycle(feed=feed, speed=speed)
    actions = ", ".join(f"{n} {kind}" for kind, n in summary.actions.items() if n) or "none"
    lag = f"{summary.lag_s:.0f} s" if summary.lag_s is not None else "-"
    console.print(
        f"Cycle {summary.cycle_id} on feed {summary.feed}, clock {summary.clock}: "
        f"watermark {summary.watermark or '-'}, {summary.ingested_rows:,} rows ingested, "
        f"{'predicted' if summary.predicted else 'no new data or model: forecasts current'}."
    )
    console.print(
        f"Plan {summary.plan_id} from {summary.first_window}; runtime actions on "
        f"{summary.runtime}: {actions}"
        + (f" ({summary.failed_actions} failed)" if summary.failed_actions else "")
        + (f"; {summary.drained} busy members left to drain" if summary.drained else "")
        + f". Lag {lag}; churn {summary.churn_per_hour} members/hour; {summary.seconds:.1f} s."
    )
    if summary.drifted:
        console.print(
            f"{len(summary.drifted)} clients drifted ({len(summary.retrain_eligible)} due for "
            "retraining: `prewarm retrain`, run after cycles under `prewarm up`)."
        )
    for note in summary.notes:
        console.print(f"  note: {note}")
    if json_out:
        write_json(summary, json_out)
        console.print(f"wrote {json_out}")
    if summary.failed_actions:
        raise typer.Exit(1)


clients_app = typer.Typer(help="Clients: API keys and provisioning mode.", no_args_is_help=True)
app.add_typer(clients_app, name="clients")


@clients_app.command("mode")
def clients_mode(
    client_id: Annotated[str, typer.Argument(help="The client id.")],
    mode: Annotated[
        Mode, typer.Argument(help="provision, or forecast-only (plan, touch nothing).")
    ],
) -> None:
    """Set whether prewarm provisions for a client or only forecasts and records plans."""
    settings = _settings()
    from warehouse.pools import set_client_mode

    previous = set_client_mode(settings.warehouse_path, client_id, mode.value)
    console.print(f"{client_id}: {previous} -> {mode.value}")


schema_app = typer.Typer(
    help="Composite workload schemas: base <- extensions <- anticipated.", no_args_is_help=True
)
app.add_typer(schema_app, name="schema")


@schema_app.command("show")
def schema_show(client_id: Annotated[str, typer.Argument(help="The client id.")]) -> None:
    """Print a client's composite schema (with its anticipated section when forecast)."""
    settings = _settings()
    from flows.schemas import show_client_composite
    from provisioning.schema import show_composite

    sys.stdout.write(show_composite(show_client_composite(settings, client_id)) + "\n")


@schema_app.command("add")
def schema_add(
    client_id: Annotated[str, typer.Argument(help="The client id.")],
    path: Annotated[Path, typer.Argument(help="A JSON extension document.")],
) -> None:
    """Validate a schema extension file and store it for a client (replaces a namesake)."""
    settings = _settings()
    from flows.schemas import add_extension

    name = add_extension(settings, client_id, path)
    console.print(
        f"Stored extension {name!r} for {client_id}. See: prewarm schema show {client_id}"
    )


images_app = typer.Typer(help="The local worker image (no registry needed).", no_args_is_help=True)
app.add_typer(images_app, name="images")


@images_app.command("build")
def images_build(
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if it exists.")] = False,
) -> None:
    """Build prewarm/worker:latest from busybox-static with `docker import`."""
    _settings()
    from provisioning.runtime.images import build_image

    tag = build_image(force=force)
    console.print(f"Image {tag} is ready.")


inventory_app = typer.Typer(help="Hosts and their capacity.", no_args_is_help=True)
app.add_typer(inventory_app, name="inventory")


@inventory_app.command("load")
def inventory_load(
    path: Annotated[Path, typer.Argument(help="A TOML inventory (see inventory.toml).")],
) -> None:
    """Replace the stored inventory with the hosts of a TOML file."""
    settings = _settings()
    from provisioning.inventory import load_inventory
    from warehouse.pools import store_inventory

    inventory = load_inventory(path)
    store_inventory(settings.warehouse_path, inventory, str(path))
    console.print(f"Stored {inventory.height} hosts from {path}.")


feed_app = typer.Typer(
    help="The one feed this warehouse follows: where each cycle's new usage comes from.",
    no_args_is_help=True,
)
app.add_typer(feed_app, name="feed")


@feed_app.command("show")
def feed_show() -> None:
    """The feed followed, its parameters, its clock and watermark, and the files taken."""
    settings = _settings()
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
    settings = _settings()
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


@app.command()
def api(
    host: Annotated[
        str, typer.Option(help="Interface to bind (loopback by default).")
    ] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="Port (default PREWARM_API_PORT, 8000).")] = None,
) -> None:
    """Serve the client API (FastAPI; OpenAPI docs at /docs) until interrupted."""
    settings = _settings()
    from api.app import create_app
    from api.server import serve
    from flows.runtime import open_pool_runtime
    from provisioning.runtime.leases import LeaseBook, lease_book_path

    app_ = create_app(
        settings.warehouse_path,
        lambda: open_pool_runtime(settings),
        settings.pool_scope,
        leases=LeaseBook(lease_book_path(settings.data_dir, settings.pool)),
        lease_seconds=settings.activation_lease_seconds,
        burst_max=settings.burst_max,
        activate_rate=settings.activate_rate,
        activate_burst=settings.activate_burst,
        allowed_images=settings.allowed_image_list,
    )
    serve(app_, host=host, port=port or settings.api_port)


@clients_app.command("add")
def clients_add(client_id: Annotated[str, typer.Argument(help="The client id.")]) -> None:
    """Register a client (if new) and issue its API key, printed once on the last line."""
    settings = _settings()
    from warehouse.api_keys import issue_key

    key = issue_key(
        settings.warehouse_path, client_id, create_client=True, freq_seconds=settings.freq_seconds
    )
    console.print(f"API key for {client_id} (shown once, stored only as a hash):")
    sys.stdout.write(key + "\n")


@clients_app.command("rotate-key")
def clients_rotate_key(client_id: Annotated[str, typer.Argument(help="The client id.")]) -> None:
    """Issue a new API key for a client; the old key stops working at once."""
    settings = _settings()
    from warehouse.api_keys import rotate_key

    key = rotate_key(settings.warehouse_path, client_id)
    console.print(f"New API key for {client_id} (the previous one no longer works):")
    sys.stdout.write(key + "\n")


@app.command()
def up(
    check: Annotated[
        bool,
        typer.Option("--check", help="Start everything, verify health and schedules, stop."),
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for each service.")] = 120.0,
) -> None:
    """Start the local stack: Prefect UI :4200, MLflow UI :5000, API :8000, the schedules.

    Runs the Prefect server, the MLflow UI, the client API and the deployments (prewarm-cycle
    every PREWARM_CYCLE, daily training, on-demand flows) as child processes (logs in
    data/logs); Ctrl-C stops everything cleanly.
    With --check it starts everything, verifies every health endpoint and every
    deployment's schedule through the Prefect API, stops, and exits 0 or says what failed.
    """
    settings = _settings()
    from flows import stack

    if stack.prefect_server_running(settings):
        raise PrewarmError(
            f"Something already answers on port {settings.prefect_port} (another `prewarm up`?). "
            "Stop it first, or set PREWARM_PREFECT_PORT."
        )
    services = stack.services(settings)
    problems: list[str] = []

    def _interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # `kill` (SIGTERM), e.g. from a service manager, stops the stack like Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        for service in services:
            console.print(f"starting {service.name} ...")
            stack.start(service)
            problem = stack.wait_healthy(service, timeout)
            if problem:
                problems.append(problem)
                break
            if service.name == "prefect":
                from flows.locks import ensure_limit

                ensure_limit(stack.prefect_api_url(settings))
        if not problems:
            lines, missing = stack.check_deployments(settings, timeout)
            problems += missing
            for line in lines:
                console.print(f"  scheduled: {line}")
        if problems:
            for problem in problems:
                console.print(f"[red]problem:[/] {problem}")
            raise typer.Exit(1)
        console.print(
            f"[green]healthy[/]: Prefect UI http://127.0.0.1:{settings.prefect_port}, "
            f"MLflow UI http://127.0.0.1:{settings.mlflow_port}, "
            f"API http://127.0.0.1:{settings.api_port}/docs; logs in {settings.data_dir / 'logs'}"
        )
        if check:
            console.print(
                "check passed: the cycle and training schedules, the on-demand deployments, "
                "MLflow and the API are healthy."
            )
            return
        console.print("Press Ctrl-C to stop.")
        while all(s.process is not None and s.process.poll() is None for s in services):
            time.sleep(1.0)
        dead = [s for s in services if s.process is not None and s.process.poll() is not None]
        for service in dead:
            code = service.process.returncode if service.process else None
            console.print(f"[red]{service.name} stopped[/] (exit {code}); see {service.log_path}")
        raise typer.Exit(1)
    except KeyboardInterrupt:
        console.print("stopping ...")
    finally:
        for service in reversed(services):
            stack.stop(service)
        console.print("stopped.")


@app.command()
def replay(
    trace: Annotated[Path, typer.Option(help="An Azure-Functions-format trace directory.")],
    warmup: Annotated[int, typer.Option(min=1, help="Minutes used as history only.")] = 240,
    policies: Annotated[
        str,
        typer.Option(
            help="Comma-separated policies, or 'all' (e.g. hybrid_histogram,prewarm@100)."
        ),
    ] = "all",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results here.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Draw idle vs cold starts to this PNG.")] = None,
) -> None:
    """Replay a trace minute by minute: prewarm against production keep-alive policies.

    Policies: none, fixed keep-alive 10/20 min, the hybrid histogram of "Serverless in the
    Wild" (ATC 2020), prewarm@R (this project's forecasters and planner at cost ratio R) and
    an oracle. Reports cold starts per invocation, p75 per-function cold %, idle memory.
    """
    _settings()
    from flows.progress import progress_bars, tracker
    from provisioning.replay import plot_replay, render_table, run_replay

    if not trace.is_dir():
        raise PrewarmError(f"No trace directory at {trace}.")
    with progress_bars():
        result = run_replay(trace, warmup, [policies], progress=tracker("Replaying"))
    header, *rows = render_table(result)
    table = Table(*header, title=f"replay of {trace} after {warmup} min of history")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print(f"runtime {result['settings']['runtime_s']:.1f} s")
    if json_out:
        json_out.write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"wrote {json_out}")
    if plot:
        plot_replay(result, plot)
        console.print(f"wrote {plot}")


@app.command()
def soak(
    trace: Annotated[Path, typer.Option(help="An Azure-Functions-format trace directory.")],
    warmup: Annotated[
        int, typer.Option(min=2, help="Minutes used as history (ingest + train).")
    ] = 240,
    minutes: Annotated[int, typer.Option(min=1, help="Minutes replayed live.")] = 120,
    speed: Annotated[
        float, typer.Option(min=1.0, help="Replay N times faster than real time.")
    ] = 60.0,
    runtime: Annotated[RuntimeName, typer.Option(help="Where the pool runs.")] = (
        RuntimeName.process
    ),
    ratio: Annotated[
        float, typer.Option(min=0.001, help="Cost ratio R of prewarm replay's prewarm@R.")
    ] = 700.0,
    cycle: Annotated[str, typer.Option(help="Cycle interval, in replayed time.")] = "5min",
    workdir: Annotated[
        Path, typer.Option(help="The soak's own world (wiped if a previous soak made it).")
    ] = Path("data/soak"),
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the report here.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Draw live vs simulated to this PNG.")] = None,
    keep: Annotated[
        bool, typer.Option("--keep", help="Leave the soak's pool running afterwards.")
    ] = False,
) -> None:
    """Replay a trace live against the real loop, and compare it with its simulation.

    The first WARMUP minutes are history (ingested and trained on); then every replayed
    minute, each function's need goes through the real activation path while prewarm-cycle
    runs on its cadence on a real runtime, SPEED times faster than real time. The same
    minutes are then simulated through the same decisions with ideal timing. Reports cold
    starts and idle memory live vs simulated, contradicting actions, lag, orphans, MLflow
    versions and memory. Runs in WORKDIR, never in your warehouse.
    """
    from flows.settings import Settings as _Settings
    from flows.settings import export_settings, parse_freq_any

    if not trace.is_dir():
        raise PrewarmError(f"No trace directory at {trace}.")
    try:
        parse_freq_any(cycle)
    except ValueError as error:
        raise PrewarmError(str(error)) from None
    from flows.soak import (
        SoakOptions,
        prepare_workdir,
        soak_pool,
        soak_settings,
        write_soak_files,
    )
    from provisioning.replay import load_trace, reference_memory

    options = SoakOptions(
        trace=trace.resolve(), workdir=workdir.resolve(), warmup=warmup, minutes=minutes,
        speed=speed, runtime=runtime.value, ratio=ratio, cycle=cycle, keep=keep,
    )  # fmt: skip
    reference = reference_memory(load_trace(options.trace).memory_mb)
    prepare_workdir(options.workdir)
    write_soak_files(options, reference)
    export_settings(soak_settings(options, pool=soak_pool(options.workdir)))
    _Settings()  # the soak's settings must validate before anything runs
    _settings(runs_flows=True)
    from flows.soak import plot_soak, run_soak

    started = time.perf_counter()
    report = run_soak(options, lambda text: console.print(text))
    live, sim = report.live, report.simulated
    table = Table("", "live", "simulated", title=f"soak of {trace} ({minutes} min at {speed:g}x)")
    for key in ("invocations", "cold_starts", "cold_start_per_invocation", "zero_cold_share",
                "idle_mb_minutes", "idle_vs_fixed10"):  # fmt: skip
        table.add_row(key, _fmt(live[key]), _fmt(sim[key]))
    console.print(table)
    console.print(
        f"{report.cycles} cycles, actions {report.actions}, contradicting actions "
        f"{report.contradicting_actions}, lag p50 {_fmt(report.lag_s['p50'])} s "
        f"(max {_fmt(report.lag_s['max'])}), orphans {report.orphans}, MLflow versions "
        f"{report.mlflow_versions}, cycle process RSS {report.rss_mb['start']:.0f} -> "
        f"{report.rss_mb['end']:.0f} MB; {time.perf_counter() - started:.0f} s."
    )
    if json_out:
        from dataclasses import asdict

        json_out.write_text(json.dumps(asdict(report), indent=2, default=str) + "\n")
        console.print(f"wrote {json_out}")
    if plot:
        plot_soak(report, plot)
        console.print(f"wrote {plot}")


@app.command()
def demo(
    trace: Annotated[
        Path | None,
        typer.Option(help="An Azure-Functions-format trace directory instead of synthetic data."),
    ] = None,
    clients: Annotated[int, typer.Option(min=1, help="Synthetic clients.")] = 50,
    days: Annotated[int, typer.Option(min=2, help="Synthetic days of history.")] = 14,
    replay_minutes: Annotated[
        int, typer.Option(min=0, help="Minutes held back and replayed as if live, then reconciled.")
    ] = 60,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Show the run's log on the console too.")
    ] = False,
) -> None:
    """Run the main job once on the embedded defaults and say where to look next.

    ingest -> validate -> train (missing or stale models) -> predict profiles -> provision
    (Docker when a daemon answers, processes otherwise) -> the last hour arrives -> reconcile.
    The run's log (Prefect's, MLflow's and other libraries' messages) goes to data/logs/demo.log.
    """
    settings = _settings(runs_flows=True)
    from flows.logs import output_to_log
    from flows.pipeline import prewarm_pipeline
    from flows.progress import progress_bars

    started = time.perf_counter()
    source = "azure-functions" if trace else "synthetic"
    log_path = settings.data_dir / "logs" / "demo.log"
    with contextlib.nullcontext() if verbose else output_to_log(log_path), progress_bars():
        summary = prewarm_pipeline(
            source=source, path=trace, clients=clients, days=days, replay_minutes=replay_minutes
        )
    _print_demo_summary(settings, summary, time.perf_counter() - started)
    if not verbose:
        console.print(f"The run's log: {log_path}")


def _print_demo_summary(settings: Settings, summary: Any, seconds: float) -> None:
    from warehouse.reads import summarize_warehouse

    landed = summarize_warehouse(settings.warehouse_path)
    trained, provisioned, reconciled = summary.trained, summary.provisioned, summary.reconciled
    totals = provisioned.totals
    table = Table("", "", title=f"prewarm demo ({seconds:.0f} s)", show_header=False)
    table.add_row("clients", f"{landed.clients:,} ({landed.usage_rows:,} usage rows)")
    if trained is not None:
        table.add_row(
            "models",
            f"{len(trained.registrations)} trained, {trained.promoted} promoted to champion, "
            f"{len(trained.fallbacks)} on the global model",
        )
    else:
        table.add_row("models", "all up to date (none retrained)")
    table.add_row(
        "profiles",
        f"{summary.predicted.profiles} demand windows for {summary.predicted.clients} clients",
    )
    pools = ", ".join(f"{n} {tier}" for tier, n in sorted(provisioned.desired.items())) or "none"
    table.add_row("pools now", f"{pools} on {provisioned.runtime}")
    table.add_row(
        "plan (next hour)",
        f"expected cost {totals.get('expected_cost', 0):.4f}, "
        f"{totals.get('expected_cold_starts', 0):.1f} cold starts; reactive: "
        f"{totals.get('reactive_cost', 0):.4f}, {totals.get('reactive_cold_starts', 0):.1f}",
    )
    coverage = f"{reconciled.coverage:.0%}" if reconciled.coverage is not None else "-"
    table.add_row(
        "replayed hour",
        f"{reconciled.buckets} buckets: 80% band covered {coverage}, "
        f"{reconciled.cold_starts:.0f} cold starts vs reactive "
        f"{reconciled.reactive_cold_starts:.0f}, "
        f"cost {reconciled.cost:.4f} vs reactive {reconciled.reactive_cost:.4f}",
    )
    if reconciled.drifted:
        table.add_row(
            "drift",
            f"{len(reconciled.drifted)} clients drifted, {len(reconciled.retrained)} retrained",
        )
    console.print(table)
    console.print(f"Warehouse: {settings.warehouse_path} (DuckDB). Try:")
    for query in (
        "select * from v_client_accuracy order by wmape desc limit 10",
        "select * from v_pool_status",
        "select * from v_cost_vs_reactive",
        "select * from v_upcoming_windows limit 10",
    ):
        console.print(f'  prewarm sql "{query}"')
    console.print("Watch it run: prewarm up (Prefect UI :4200, MLflow UI :5000, API :8000)")


def main() -> None:
    """Entry point: run the CLI, turning expected failures into one clear message."""
    try:
        # Outside standalone mode a command's `typer.Exit(code)` comes back as the return value.
        code = app(standalone_mode=False)
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
    except typer.TyperException as error:
        # Usage errors (unknown command, bad option value: exit 2) from the click that typer
        # vendors; upstream `click.ClickException` is not their base.
        show = getattr(error, "show", None)
        if show is not None:
            show()
        else:
            errors.print(f"Error: {error.format_message()}", highlight=False, soft_wrap=True)
        raise SystemExit(error.exit_code) from None
    raise SystemExit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
