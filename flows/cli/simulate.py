"""`prewarm replay` and `prewarm soak`: a trace replayed in simulation, or live against the
real loop."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from core.errors import PrewarmError
from flows.cli.common import RuntimeName, console, fmt, load_settings


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
    load_settings()
    from flows.progress import progress_bars, tracker
    from simulation.replay import run_replay
    from simulation.report import plot_replay, render_table

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
    from simulation.prewarm_policy import reference_memory
    from simulation.trace import load_trace

    options = SoakOptions(
        trace=trace.resolve(),
        workdir=workdir.resolve(),
        warmup=warmup,
        minutes=minutes,
        speed=speed,
        runtime=runtime.value,
        ratio=ratio,
        cycle=cycle,
        keep=keep,
    )
    reference = reference_memory(load_trace(options.trace).memory_mb)
    prepare_workdir(options.workdir)
    write_soak_files(options, reference)
    export_settings(soak_settings(options, pool=soak_pool(options.workdir)))
    _Settings()  # the soak's settings must validate before anything runs
    load_settings(runs_flows=True)
    from flows.soak import plot_soak, run_soak

    started = time.perf_counter()
    report = run_soak(options, lambda text: console.print(text))
    live, sim = report.live, report.simulated
    table = Table("", "live", "simulated", title=f"soak of {trace} ({minutes} min at {speed:g}x)")
    for key in (
        "invocations",
        "cold_starts",
        "cold_start_per_invocation",
        "zero_cold_share",
        "idle_mb_minutes",
        "idle_vs_fixed10",
    ):
        table.add_row(key, fmt(live[key]), fmt(sim[key]))
    console.print(table)
    console.print(
        f"{report.cycles} cycles, actions {report.actions}, contradicting actions "
        f"{report.contradicting_actions}, lag p50 {fmt(report.lag_s['p50'])} s "
        f"(max {fmt(report.lag_s['max'])}), orphans {report.orphans}, MLflow versions "
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
