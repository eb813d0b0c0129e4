"""`prewarm provision`, `score`, `pools`, `cycle`, `images ...` and `inventory ...`:
the warm pools, the loop that keeps them and what they run on."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from core.errors import PrewarmError
from flows.cli.common import RuntimeName, console, errors, fmt, load_settings
from flows.cli.models import print_retraining

if TYPE_CHECKING:
    import polars as pl


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
    load_settings(runs_flows=True)
    from flows.progress import progress_bars
    from flows.provision import provision_pools

    with progress_bars():
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


NoRetrain = Annotated[
    bool, typer.Option("--no-retrain", help="Detect and record drift but do not retrain.")
]


def score(no_retrain: NoRetrain = False) -> None:
    """Score forecasts and pool outcomes against what happened, record drift, retrain.

    Scores new buckets against their forecasts (error, coverage, pinball; where usage has no
    actual, what the client reported with its feedback) and against the plan's warm capacity
    (cold starts, idle cost, cost of a reactive autoscaler), records drift once per episode,
    and retrains the drifted clients that are due (see `prewarm retrain`). It never touches
    the pools. Rows land in `forecast_scores` and `drift_events`.
    """
    load_settings(runs_flows=True)
    from flows.scoring import score_outcomes

    summary = score_outcomes(retrain=not no_retrain)
    coverage = f"{summary.coverage:.0%}" if summary.coverage is not None else "-"
    console.print(
        f"Scored {summary.buckets} buckets ({summary.rows} rows): 80% band covered {coverage}; "
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
        print_retraining(summary.retraining)
    console.print(
        'See: prewarm sql "select client_id, window_start, metric, predicted_p50, actual, '
        'cold_starts, idle_cost from forecast_scores order by window_start desc limit 10"'
    )


def reconcile(no_retrain: NoRetrain = False) -> None:
    """The old name of `prewarm score` (hidden; kept for scripts): says so, then scores."""
    errors.print("`prewarm reconcile` is now `prewarm score`", highlight=False, markup=False)
    score(no_retrain=no_retrain)


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
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            help="Also draw what each host held over time (PNG): members, CPU and memory "
            "against its planned capacity.",
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
    settings = load_settings()
    from flows import pool_admin

    if plot is not None:
        from flows.pool_plot import plot_pool_hosts

        drawn = plot_pool_hosts(settings.warehouse_path, plot)
        console.print(f"Drew what {drawn} hosts held over time to {plot}.")
    if sum([release_all, release_stray, migrate_to is not None]) > 1:
        raise PrewarmError("Give at most one of --release-all, --release-stray, --migrate-to.")
    if release_all:
        name, released = pool_admin.release_everything(settings)
        console.print(f"Released {released} members of pool {settings.pool!r} on {name}.")
        return
    if release_stray:
        strays = pool_admin.release_strays(settings)
        done = ", ".join(f"{n} on {name}" for name, n in strays.items()) or "none found"
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
        from provisioning.runtime.base import LABEL_HOST

        table = Table(
            "host",
            "client",
            "active",
            "shadow",
            "cold",
            "endpoints",
            title=f"pool {settings.pool!r} on {view.runtime}, by host",
        )
        grouped: dict[tuple[str, str], dict[str, list]] = {}
        for member in view.members:
            key = (member.labels.get(LABEL_HOST) or "-", member.client_id)
            grouped.setdefault(key, {}).setdefault(member.tier, []).append(member)
        for host, client_id in sorted(grouped):
            tiers = grouped[(host, client_id)]
            endpoints = [m.endpoint for m in tiers.get("active", []) if m.endpoint]
            table.add_row(
                host,
                client_id,
                *(str(len(tiers.get(tier, []))) for tier in ("active", "shadow", "cold")),
                ", ".join(endpoints[:2]) + (" ..." if len(endpoints) > 2 else ""),
            )
        console.print(table)
        hosts = len({host for host, _ in grouped})
        console.print(
            f"{len(view.members)} members on {view.runtime} ({hosts} hosts: `prewarm inventory` "
            "shows their capacity). Recorded history: tables pool_members, pool_events; views "
            "v_pool_status, v_hosts, v_churn, v_cycles."
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
    load_settings(runs_flows=True)
    from flows.cycle import prewarm_cycle, write_json

    summary = prewarm_cycle(feed=feed, speed=speed)
    actions = ", ".join(f"{n} {kind}" for kind, n in summary.actions.items() if n) or "none"
    lag = f"{summary.lag_s:.0f} s" if summary.lag_s is not None else "-"
    console.print(
        f"Cycle {summary.cycle_id} on feed {summary.feed}, clock {summary.clock}: "
        f"watermark {summary.watermark or '-'}, {summary.ingested_rows:,} rows ingested, "
        f"{summary.prediction_text()}."
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


images_app = typer.Typer(help="The local worker image (no registry needed).", no_args_is_help=True)


@images_app.command("build")
def images_build(
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if it exists.")] = False,
) -> None:
    """Build prewarm/worker:latest from this machine's Python with `docker import`."""
    load_settings()
    from provisioning.runtime.images import build_image

    tag = build_image(force=force)
    console.print(f"Image {tag} is ready.")


inventory_app = typer.Typer(
    help="Hosts, their engines and their capacity: `prewarm inventory` shows them.",
    invoke_without_command=True,
)


@inventory_app.callback()
def inventory_show(ctx: typer.Context) -> None:
    """Every host: its engine, health at the last probe, capacity (file, engine, planned),
    what the live members hold and what is free."""
    if ctx.invoked_subcommand is not None:
        return
    settings = load_settings()
    from warehouse.inventory import read_host_placement

    hosts = read_host_placement(settings.warehouse_path)
    if hosts.height == 0:
        console.print("No inventory stored yet: `prewarm inventory load FILE` or run a cycle.")
        return
    _print_hosts(hosts)


@inventory_app.command("discover")
def inventory_discover() -> None:
    """Ask every host's Docker Engine for its CPUs, memory and health now, record it, and
    show what the planner may use (the lower of file and engine, less the reserve)."""
    settings = load_settings()
    from flows.fleet import probe_fleet
    from provisioning.runtime.engines import host_status
    from warehouse.inventory import read_host_placement, read_inventory, write_host_status

    path = settings.warehouse_path
    inventory = read_inventory(path)
    if inventory.height == 0:
        raise PrewarmError("No inventory stored yet: `prewarm inventory load FILE` first.")
    status = host_status(inventory, probe_fleet(inventory))
    write_host_status(path, status)
    _print_hosts(read_host_placement(path))
    down = int((~status.get_column("healthy")).sum())
    if down:
        raise typer.Exit(1 if down == status.height else 0)


def _print_hosts(hosts: pl.DataFrame) -> None:
    """`warehouse.inventory.read_host_placement` as a table, then why each down host is down."""
    table = Table(
        "host",
        "engine",
        "health",
        "cpu file/engine/planned",
        "memory MiB file/engine/planned",
        "members a/s/c",
        "cpu used/free",
        "memory used/free",
        title="hosts",
    )
    for row in hosts.iter_rows(named=True):
        cpu, memory = row["planned_cpu_cores"], row["planned_memory_mb"]
        health = {None: "-", True: "up", False: "[red]DOWN[/]"}[row["healthy"]]
        table.add_row(
            row["host"],
            row["engine"],
            health,
            f"{fmt(row['file_cpu_cores'])}/{fmt(row['engine_cpu_cores'])}/{fmt(cpu)}",
            f"{_mib(row['file_memory_mb'])}/{_mib(row['engine_memory_mb'])}/{_mib(memory)}",
            f"{row['active']}/{row['shadow']}/{row['cold']}",
            f"{fmt(row['cpu_used'])}/{fmt(None if cpu is None else cpu - row['cpu_used'])}",
            f"{_mib(row['memory_used_mb'])}/"
            f"{_mib(None if memory is None else memory - row['memory_used_mb'])}",
        )
    console.print(table)
    for row in hosts.filter(hosts.get_column("healthy").not_()).iter_rows(named=True):
        console.print(f"[red]{row['host']} is down[/]: {row['error']}")


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


@inventory_app.command("load")
def inventory_load(
    path: Annotated[Path, typer.Argument(help="A TOML inventory (see inventory.toml).")],
) -> None:
    """Replace the stored inventory with the hosts of a TOML file."""
    settings = load_settings()
    from provisioning.inventory import load_inventory
    from warehouse.inventory import store_inventory

    inventory = load_inventory(path)
    store_inventory(settings.warehouse_path, inventory, str(path))
    console.print(f"Stored {inventory.height} hosts from {path}.")
