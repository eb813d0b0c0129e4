"""`prewarm demo`: the whole job once on the embedded defaults, and its summary."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from core.vocabulary import SourceName
from flows.cli.common import console, load_settings
from flows.settings import Settings


def demo(
    trace: Annotated[
        Path | None,
        typer.Option(help="An Azure-Functions-format trace directory instead of synthetic data."),
    ] = None,
    clients: Annotated[int, typer.Option(min=1, help="Synthetic clients.")] = 50,
    days: Annotated[int, typer.Option(min=2, help="Synthetic days of history.")] = 14,
    replay_minutes: Annotated[
        int, typer.Option(min=0, help="Minutes held back and replayed as if live, then scored.")
    ] = 60,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Show the run's log on the console too.")
    ] = False,
) -> None:
    """Run the main job once on the embedded defaults and say where to look next.

    ingest -> validate -> train (missing or stale models) -> predict profiles -> provision
    (Docker when a daemon answers, processes otherwise) -> the last hour arrives -> score.
    The run's log (Prefect's, MLflow's and other libraries' messages) goes to data/logs/demo.log.
    """
    settings = load_settings(runs_flows=True)
    from flows.logs import output_to_log
    from flows.pipeline import prewarm_pipeline
    from flows.progress import progress_bars

    started = time.perf_counter()
    source: SourceName = "azure-functions" if trace else "synthetic"
    log_path = settings.data_dir / "logs" / "demo.log"
    with contextlib.nullcontext() if verbose else output_to_log(log_path), progress_bars():
        summary = prewarm_pipeline(
            source=source, path=trace, clients=clients, days=days, replay_minutes=replay_minutes
        )
    _print_demo_summary(settings, summary, time.perf_counter() - started)
    if not verbose:
        console.print(f"The run's log: {log_path}")


def _print_demo_summary(settings: Settings, summary: Any, seconds: float) -> None:
    from warehouse.usage import summarize_warehouse

    landed = summarize_warehouse(settings.warehouse_path)
    trained, provisioned, scored = summary.trained, summary.provisioned, summary.scored
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
    coverage = f"{scored.coverage:.0%}" if scored.coverage is not None else "-"
    table.add_row(
        "replayed hour",
        f"{scored.buckets} buckets: 80% band covered {coverage}, "
        f"{scored.cold_starts:.0f} cold starts vs reactive "
        f"{scored.reactive_cold_starts:.0f}, "
        f"cost {scored.cost:.4f} vs reactive {scored.reactive_cost:.4f}",
    )
    if scored.drifted:
        table.add_row(
            "drift",
            f"{len(scored.drifted)} clients drifted, {len(scored.retrained)} retrained",
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
    console.print(
        f"Watch it run: prewarm up (Prefect UI :{settings.prefect_port}, "
        f"MLflow UI :{settings.mlflow_port}, API :{settings.api_port})"
    )
