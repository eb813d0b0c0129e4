"""The `prewarm` command line: every user-facing action, each a thin call into a flow."""

from __future__ import annotations

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

from flows.settings import Settings, configure_environment
from warehouse.errors import PrewarmError

app = typer.Typer(
    help="prewarm: forecast each client's demand and warm capacity before it arrives.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Piped output (logs, CI) gets wide tables instead of an 80-column squeeze.
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 160)
errors = Console(stderr=True, soft_wrap=True)


class Source(StrEnum):
    synthetic = "synthetic"
    azure_functions = "azure-functions"
    events = "events"


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

    summary = train_flow(settings)(client_ids=clients or None)
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
        bool, typer.Option("--no-retrain", help="Detect drift but do not retrain.")
    ] = False,
) -> None:
    """Compare what happened with what was predicted, correct pools, retrain drifted clients.

    Scores new buckets against their forecasts (error, coverage, pinball) and the plan's
    warm capacity (cold starts, idle cost, cost of a reactive autoscaler), scales up at once
    when demand exceeded warm capacity, releases idle capacity beyond the plan, and retrains
    the clients whose forecasts drifted. Rows land in `reconciliations` and `drift_events`.
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
    actions = ", ".join(f"{n} {kind}" for kind, n in sorted(summary.actions.items())) or "none"
    console.print(f"Pool corrections: {actions}; scaled up at once: {summary.scaled_up or 'none'}.")
    for client_id, reason in sorted(summary.drifted.items()):
        done = "retrained" if client_id in summary.retrained else "not retrained"
        console.print(f"  drift {client_id} ({done}): {reason}")
    console.print(
        'See: prewarm sql "select client_id, window_start, metric, predicted_p50, actual, '
        'cold_starts, idle_cost from reconciliations order by window_start desc limit 10"'
    )


@app.command()
def pools(
    release_all: Annotated[
        bool, typer.Option("--release-all", help="Release every container prewarm holds.")
    ] = False,
) -> None:
    """List warm pools by client and tier, as the runtime reports them."""
    settings = _settings()
    from flows.provision import open_runtime
    from provisioning.apply import release_all as release_everything

    runtime = open_runtime(settings)
    if release_all:
        released = release_everything(runtime, settings.pool_scope)
        console.print(f"Released {released} members on {runtime.name}.")
        return
    members = runtime.list({"prewarm.managed": "1", **settings.pool_scope})
    table = Table(
        "client",
        "active",
        "shadow",
        "cold",
        "endpoints",
        title=f"pool {settings.pool!r} on {runtime.name}",
    )
    by_client: dict[str, dict[str, list]] = {}
    for member in members:
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
    console.print(f"{len(members)} members. Recorded history: table pool_members, pool_events.")


clients_app = typer.Typer(help="Clients: API keys and provisioning mode.", no_args_is_help=True)
app.add_typer(clients_app, name="clients")


class Mode(StrEnum):
    provision = "provision"
    forecast_only = "forecast-only"


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
    from flows.provision import open_runtime

    app_ = create_app(settings.warehouse_path, lambda: open_runtime(settings), settings.pool_scope)
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

    Runs the Prefect server, the MLflow UI, the client API and the five scheduled
    deployments as child processes (logs in data/logs); Ctrl-C stops everything cleanly.
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
            console.print("check passed: 5 scheduled deployments, MLflow and the API are healthy.")
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
) -> None:
    """Run the main job once on the embedded defaults and say where to look next.

    ingest -> validate -> train (missing or stale models) -> predict profiles -> provision
    (Docker when a daemon answers, processes otherwise) -> the last hour arrives -> reconcile.
    """
    settings = _settings(runs_flows=True)
    from flows.pipeline import prewarm_pipeline
    from flows.progress import progress_bars

    started = time.perf_counter()
    source = "azure-functions" if trace else "synthetic"
    with progress_bars():
        summary = prewarm_pipeline(
            source=source, path=trace, clients=clients, days=days, replay_minutes=replay_minutes
        )
    _print_demo_summary(settings, summary, time.perf_counter() - started)


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


if __name__ == "__main__":
    main()
