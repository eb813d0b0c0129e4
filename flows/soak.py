"""`prewarm soak`: the live loop against its simulator, on a trace replayed live.

1. A fresh world of its own under the work directory (warehouse, MLflow registry, pool):
   the operator's data is never touched.
2. Warmup: the trace's first minutes are history: ingested, validated, and a forecaster
   trained and registered per function.
3. Live: the warehouse follows the trace as a feed replayed `speed` times faster than real
   time; a first cycle prepares the pool; then every replayed minute each function's need is
   sent through the real activation path (`flows.soak_traffic`, its own process) while
   `prewarm-cycle` runs on its cadence (in replayed time) on a real runtime, and clients the
   cycles find drifted are retrained after them, as under `prewarm up`.
4. Simulated: the same minutes through the same decisions with ideal timing
   (`simulation.soak.simulate_soak`), predicting with the same registered models.
5. The report: live and simulated yardsticks, cycles, runtime actions, contradicting actions,
   lag, orphans, MLflow versions, memory of the cycle process; JSON and a plot.

Costs are prewarm replay's for a cost ratio R: idle cost in proportion to memory and a cold
start worth R idle minutes of the median function (`replay.plan_warm`), with the planner
keeping members running (tier active), as prewarm@R does, plus the default cost model's
price of a warming step relative to a cold start (2%: hysteresis). The host is declared
large (the replay's is unbounded): the soak measures the loop, not packing. Retraining runs
at a lower CPU priority than the cycles, as background work should.

This module runs steps 2 and 3 (`run_soak`); step 1 is `flows.soak_world`, steps 4 and 5
`flows.soak_report`, whose names are importable from here too.
"""

from __future__ import annotations

import json
import logging
import math
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flows.settings import Settings, child_environment
from flows.soak_report import LiveCycle, SoakReport, _report, plot_soak
from flows.soak_world import (
    MARKER,
    SOAK_HOST,
    SoakOptions,
    prepare_workdir,
    soak_pool,
    soak_settings,
    write_soak_files,
)

log = logging.getLogger(__name__)

TRAFFIC_START_S = 5.0  # seconds the traffic process has to start before its first minute
RETRAIN_NICENESS = 10  # retraining is background work: the loop's cycles come first

__all__ = [
    "MARKER",
    "RETRAIN_NICENESS",
    "SOAK_HOST",
    "TRAFFIC_START_S",
    "LiveCycle",
    "SoakOptions",
    "SoakReport",
    "plot_soak",
    "prepare_workdir",
    "run_soak",
    "soak_pool",
    "soak_settings",
    "write_soak_files",
]


def run_soak(options: SoakOptions, say: Callable[[str], None]) -> SoakReport:
    """Run the whole soak in this process's (already exported) soak world."""
    from flows.cycle import prewarm_cycle
    from flows.feed import complete_feed
    from flows.ingest import ingest_usage
    from flows.locks import warehouse_write
    from flows.runtime import open_pool_runtime
    from flows.train import train_flow
    from simulation.trace import load_trace
    from warehouse.feeds import follow_feed, parse_feed

    settings = Settings()
    trace = load_trace(options.trace)
    if options.warmup + options.minutes > trace.minutes:
        from core.errors import PrewarmError

        raise PrewarmError(
            f"The trace has {trace.minutes} minutes: --warmup {options.warmup} plus --minutes "
            f"{options.minutes} do not fit."
        )
    sim_start = trace.ts(options.warmup)
    say(f"warmup: ingesting {options.warmup} minutes and training {trace.functions} functions")
    ingest_usage(source="azure-functions", path=options.trace, until=sim_start)
    trained = train_flow(settings)(trigger="schedule")
    runtime = open_pool_runtime(settings)
    spec = complete_feed(parse_feed(f"trace:{options.trace}", speed=options.speed), settings)
    with warehouse_write():
        follow_feed(settings.warehouse_path, spec, now=_utc())
    say(f"live: first cycle at {sim_start:%H:%M} (pool {settings.pool} on {runtime.name})")
    traffic: subprocess.Popen[bytes] | None = None
    try:
        began = time.time()
        first = prewarm_cycle(at=sim_start, lead_seconds=0.0)
        prime = LiveCycle(
            0,
            began,
            began,
            time.time() - began,
            first.clock,
            0.0,
            None,
            dict(first.actions),
            first.failed_actions,
            _rss_mb(),
            dict(first.step_seconds),
        )
        configs = _cold_start_configs(settings, trace)
        # The replay clock reaches sim_start a few seconds from now, so the traffic process
        # is up and waiting when its first minute is due.
        with warehouse_write():
            feed = follow_feed(
                settings.warehouse_path, spec, now=_utc() + timedelta(seconds=TRAFFIC_START_S)
            )
        # The feed keeps its anchor as naive UTC: the traffic's clock is the same instant.
        wall_start = (
            datetime.fromisoformat(str(feed.params["wall_start"])).replace(tzinfo=UTC).timestamp()
        )
        traffic = _start_traffic(options, settings, configs, wall_start)
        rss_start = _rss_mb()
        cycles = [prime, *_run_cycles(options, wall_start, say)]
        say("live: waiting for the last minutes' traffic")
        code = traffic.wait()
        if code != 0:
            from core.errors import PrewarmError

            raise PrewarmError(
                f"the soak's traffic process failed (exit {code}); see "
                f"{options.workdir / 'traffic.log'}"
            )
    except BaseException:
        # A soak that fails leaves nothing running: its traffic, then its pool.
        if traffic is not None and traffic.poll() is None:
            traffic.kill()
            traffic.wait()
        from flows.pool_admin import release_everything

        release_everything(settings)
        raise
    say("simulated: the same minutes through the same decisions, ideal timing")
    return _report(options, settings, trace, cycles, trained, rss_start, say)


def _utc() -> datetime:
    from core.times import utc_now

    return utc_now()


def _cold_start_configs(settings: Settings, trace: Any) -> dict[str, dict]:
    """Each function's rendered container config, as the API's cold start renders it."""
    from api.composite import client_composite
    from provisioning.schema_render import render_container_config

    return {
        str(cid): render_container_config(client_composite(settings.warehouse_path, str(cid)))
        for cid in trace.client_ids
    }


def _start_traffic(
    options: SoakOptions, settings: Settings, configs: dict[str, dict], wall_start: float
) -> subprocess.Popen[bytes]:
    from provisioning.runtime.leases import lease_book_path

    config = {
        "trace": str(options.trace),
        "runtime": options.runtime,
        "data_dir": str(settings.data_dir),
        "scope": settings.pool_scope,
        "lease_book": str(lease_book_path(settings.data_dir, settings.pool)),
        "configs": configs,
        "host": SOAK_HOST,
        "speed": options.speed,
        "first_minute": options.warmup,
        "minutes": options.minutes,
        "wall_start": wall_start,
        "out": str(options.workdir / "traffic.jsonl"),
    }
    path = options.workdir / "traffic-config.json"
    path.write_text(json.dumps(config))
    log_file = (options.workdir / "traffic.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "flows.soak_traffic", str(path)],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=child_environment(),
    )


def _run_cycles(
    options: SoakOptions, wall_start: float, say: Callable[[str], None]
) -> list[LiveCycle]:
    """Cycles on the replayed cadence until the last minute, and retraining after them."""
    from flows.cycle import prewarm_cycle
    from flows.settings import parse_freq_any

    cycle_wall = parse_freq_any(options.cycle) / options.speed
    wall_end = wall_start + options.minutes * 60.0 / options.speed
    cycles: list[LiveCycle] = []
    retraining: subprocess.Popen[bytes] | None = None
    index = 1
    while (due := wall_start + index * cycle_wall) < wall_end:
        time.sleep(max(0.0, due - time.time()))
        began = time.time()
        with _without_heartbeats():
            summary = prewarm_cycle()
        record = LiveCycle(
            index,
            due,
            began,
            time.time() - began,
            summary.clock,
            summary.lead_s,
            summary.lag_s,
            dict(summary.actions),
            summary.failed_actions,
            _rss_mb(),
            dict(summary.step_seconds),
        )
        if summary.retrain_eligible and (retraining is None or retraining.poll() is not None):
            retraining = _start_retraining(options)
            record.retrain_started = True
        cycles.append(record)
        say(
            f"cycle {index}: clock {summary.clock[11:16]}, {record.seconds:.1f} s, "
            f"{sum(summary.actions.values())} actions, lag {summary.lag_s or 0:.0f} s"
        )
        # A cycle that ran past its successor's slot: that slot is skipped, as the
        # deployment's concurrency limit cancels a run due while one still runs.
        index = max(index + 1, math.ceil((time.time() - wall_start) / cycle_wall))
    if retraining is not None:
        retraining.wait()
    return cycles


@contextmanager
def _without_heartbeats() -> Iterator[None]:
    """Flow runs without Prefect's liveness heartbeat: one is sent every 180 s of wall time
    (never twice in a replayed cycle of seconds), and the engine joins its thread at the
    end of the run, up to 1 s of wall time: a minute of replayed time at 60x."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def _start_retraining(options: SoakOptions) -> subprocess.Popen[bytes]:
    log_file = (options.workdir / "retrain.log").open("ab")
    return subprocess.Popen(
        ["nice", "-n", str(RETRAIN_NICENESS), sys.executable, "-m", "flows.cli", "retrain"],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env=child_environment(),
    )


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return math.nan
