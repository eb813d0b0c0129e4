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
   (`provisioning.soak.simulate_soak`), predicting with the same registered models.
5. The report: live and simulated yardsticks, cycles, runtime actions, contradicting actions,
   lag, orphans, MLflow versions, memory of the cycle process; JSON and a plot.

Costs are prewarm replay's for a cost ratio R: idle cost in proportion to memory and a cold
start worth R idle minutes of the median function (`replay.plan_warm`), with the planner
keeping members running (tier active), as prewarm@R does, plus the default cost model's
price of a warming step relative to a cold start (2%: hysteresis). The host is declared
large (the replay's is unbounded): the soak measures the loop, not packing. Retraining runs
at a lower CPU priority than the cycles, as background work should.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from flows.settings import Settings, child_environment
from provisioning.costs import CostModel

log = logging.getLogger(__name__)

MARKER = ".prewarm-soak"  # a work directory the soak made (and may wipe on the next run)
TRAFFIC_START_S = 5.0  # seconds the traffic process has to start before its first minute
RETRAIN_NICENESS = 10  # retraining is background work: the loop's cycles come first
SOAK_HOST = "soak"


@dataclass(frozen=True)
class SoakOptions:
    """What `prewarm soak` was asked for."""

    trace: Path
    workdir: Path
    warmup: int = 240
    minutes: int = 120
    speed: float = 60.0
    runtime: str = "process"
    ratio: float = 700.0
    cycle: str = "5min"
    delay: str = "10min"
    keep: bool = False


@dataclass
class LiveCycle:
    """One live cycle as the soak saw it."""

    index: int
    due: float
    began: float
    seconds: float
    clock: str
    lead_s: float
    lag_s: float | None
    actions: dict[str, int]
    failed: int
    rss_mb: float
    steps: dict[str, float] = field(default_factory=dict)
    retrain_started: bool = False


@dataclass
class SoakReport:
    """Everything `--json` writes (see the module docstring)."""

    live: dict[str, float]
    simulated: dict[str, float]
    cycles: int
    actions: dict[str, int]
    contradicting_actions: int
    lag_s: dict[str, float | None]
    orphans: int
    mlflow_versions: int
    rss_mb: dict[str, float | None]
    settings: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


# --- the soak's own world ---------------------------------------------------------------


def soak_pool(workdir: Path) -> str:
    """The pool name of a work directory's soak (its members never mix with another's)."""
    return "soak-" + hashlib.sha256(str(workdir.resolve()).encode()).hexdigest()[:8]


def prepare_workdir(workdir: Path) -> None:
    """An empty work directory, or a previous soak's (its pool released, then wiped);
    anything else is refused."""
    from core.errors import PrewarmError

    if workdir.exists() and any(workdir.iterdir()):
        if not (workdir / MARKER).exists():
            raise PrewarmError(
                f"{workdir} is not empty and was not made by `prewarm soak`: refusing to touch "
                "it. Give an empty or new --workdir."
            )
        _release_previous(workdir)
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / MARKER).write_text("made by prewarm soak; wiped by the next soak here\n")


def _release_previous(workdir: Path) -> None:
    """Release whatever a previous soak here left running (kept, or interrupted)."""
    from provisioning.apply import release_all
    from provisioning.runtime.docker_runtime import DockerRuntime
    from provisioning.runtime.process_runtime import ProcessRuntime
    from provisioning.runtime.select import PROCESS_STATE_FILE, docker_unavailable_reason

    scope = {"prewarm.pool": soak_pool(workdir)}
    state = workdir / "data" / PROCESS_STATE_FILE
    if state.exists():
        runtime = ProcessRuntime(state)
        release_all(runtime, scope)
        runtime.sweep_strays()
    if docker_unavailable_reason() is None:
        release_all(DockerRuntime(), scope)


def soak_settings(options: SoakOptions, pool: str) -> dict[str, str]:
    """The PREWARM_* values of the soak's world (see `flows.settings.export_settings`)."""
    work = options.workdir.resolve()
    return {
        "data_dir": str(work / "data"),
        "duckdb_path": str(work / "data" / "warehouse.duckdb"),
        "mlflow_tracking_uri": f"sqlite:///{work / 'mlflow.db'}",
        "mlflow_artifacts_dir": str(work / "artifacts"),
        "freq": "1min",
        # A cycle looks at most lead + cycle + delay ahead (about 20 minutes); a 4-hour
        # warmup of 1-minute buckets fits a 15-minute horizon, not an hour's.
        "horizon": "15min",
        "runtime": options.runtime,
        "pool": pool,
        "costs_path": str(work / "costs.toml"),
        "inventory_path": str(work / "inventory.toml"),
        "cycle": options.cycle,
        "scale_down_delay": options.delay,
    }


def write_soak_files(options: SoakOptions, reference_mb: float) -> None:
    """The cost model of prewarm@R and a host the pool never fills."""
    penalty = options.ratio * reference_mb / 1024.0
    # A warming step is priced against a cold start as the default cost model prices it
    # (2%): the planner's hysteresis band is that ratio, what keeps plans from flapping.
    default = CostModel()
    action = penalty * default.scaling_action / default.default_cold_start_penalty
    (options.workdir / "costs.toml").write_text(
        "# prewarm replay's cost model at ratio R (see flows/soak.py)\n"
        "[costs]\n"
        "core_minute = 0.0\nmemory_gib_minute = 1.0\ndisk_gib_minute = 0.0\n"
        f"default_cold_start_penalty = {penalty!r}\nscaling_action = {action!r}\n\n"
        '[planner]\nwarm_tiers = ["active"]\n'
    )
    (options.workdir / "inventory.toml").write_text(
        "# declared large, like the replay's unbounded host: the soak measures the loop\n"
        f'[[hosts]]\nname = "{SOAK_HOST}"\ncpu_cores = 100000\nmemory_mb = 1000000000\n'
    )


# --- the run ----------------------------------------------------------------------------


def run_soak(options: SoakOptions, say: Callable[[str], None]) -> SoakReport:
    """Run the whole soak in this process's (already exported) soak world."""
    from flows.cycle import prewarm_cycle
    from flows.feed import complete_feed
    from flows.ingest import ingest_usage
    from flows.locks import warehouse_write
    from flows.runtime import open_pool_runtime
    from flows.train import train_flow
    from provisioning.replay import load_trace
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
            0, began, began, time.time() - began, first.clock, 0.0, None, dict(first.actions),
            first.failed_actions, _rss_mb(), dict(first.step_seconds),
        )  # fmt: skip
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
    from provisioning.schema import render_container_config

    return {
        str(cid): render_container_config(client_composite(settings.warehouse_path, str(cid)))
        for cid in trace.client_ids
    }


def _start_traffic(
    options: SoakOptions, settings: Settings, configs: dict[str, dict], wall_start: float
) -> subprocess.Popen[bytes]:
    from provisioning.runtime.leases import lease_book_path

    config = {
        "trace": str(options.trace), "runtime": options.runtime,
        "data_dir": str(settings.data_dir), "scope": settings.pool_scope,
        "lease_book": str(lease_book_path(settings.data_dir, settings.pool)),
        "configs": configs, "host": SOAK_HOST, "speed": options.speed,
        "first_minute": options.warmup, "minutes": options.minutes, "wall_start": wall_start,
        "out": str(options.workdir / "traffic.jsonl"),
    }  # fmt: skip
    path = options.workdir / "traffic-config.json"
    path.write_text(json.dumps(config))
    log_file = (options.workdir / "traffic.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "flows.soak_traffic", str(path)],
        stdout=log_file, stderr=subprocess.STDOUT, env=child_environment(),
    )  # fmt: skip


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
            index, due, began, time.time() - began, summary.clock, summary.lead_s,
            summary.lag_s, dict(summary.actions), summary.failed_actions, _rss_mb(),
            dict(summary.step_seconds),
        )  # fmt: skip
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
        stdout=log_file, stderr=subprocess.STDOUT, env=child_environment(),
    )  # fmt: skip


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return math.nan


# --- the report -------------------------------------------------------------------------


def _report(
    options: SoakOptions,
    settings: Settings,
    trace: Any,
    cycles: list[LiveCycle],
    trained: Any,
    rss_start: float,
    say: Callable[[str], None],
) -> SoakReport:
    from provisioning.soak import count_contradictions, fixed10_idle, soak_metrics

    minute_s = 60.0 / options.speed
    lines = [json.loads(x) for x in (options.workdir / "traffic.jsonl").read_text().splitlines()]
    live = _live_ledger(trace, options, lines)
    reference = fixed10_idle(trace, options.warmup, options.minutes)
    wall_start = lines[0]["due"] if lines else time.time()
    simulation = _simulate(options, settings, trace, cycles, wall_start)
    sim_start = trace.ts(options.warmup)

    def replay_time(wall: float) -> datetime:
        return sim_start + timedelta(seconds=(wall - wall_start) * options.speed)

    events = _live_events(settings, lines, replay_time)
    delay = timedelta(seconds=_seconds(options.delay))
    lags = [c.lag_s for c in cycles if c.lag_s is not None]
    timed = [c.seconds for c in cycles if c.index > 0]  # the first also warms every cache
    hour = [c.rss_mb for c in cycles if replay_time(c.began) >= sim_start + timedelta(hours=1)]
    actions = dict.fromkeys(("create", "release", "pause", "unpause", "start"), 0)
    for c in cycles:
        for kind, n in c.actions.items():
            actions[kind] = actions.get(kind, 0) + n
    orphans, residual = _orphans(options, settings, lines)
    versions = _mlflow_versions(settings)
    report = SoakReport(
        live=soak_metrics(live, reference),
        simulated=soak_metrics(simulation.ledger, reference),
        cycles=len(cycles),
        actions=actions,
        contradicting_actions=count_contradictions(events, delay),
        lag_s={
            "p50": statistics.median(lags) if lags else None,
            "max": max(lags) if lags else None,
        },
        orphans=orphans + residual,
        mlflow_versions=versions,
        rss_mb={
            "start": rss_start,
            "first_hour": hour[0] if hour else None,
            "end": cycles[-1].rss_mb if cycles else rss_start,
        },
        settings={**{k: str(v) for k, v in asdict(options).items()}, "minute_wall_s": minute_s},
        details={
            "simulated_actions": simulation.actions,
            "simulated_contradicting_actions": count_contradictions(simulation.events, delay),
            "traffic_late_s": {
                "p50": statistics.median([x["late_s"] for x in lines]) if lines else None,
                "max": max((x["late_s"] for x in lines), default=None),
            },
            "activation_failures": sum(x["failures"] for x in lines),
            "cycle_seconds": {
                "p50": statistics.median(timed) if timed else None,
                "max": max(timed, default=None),
            },
            "retrains_started": sum(c.retrain_started for c in cycles),
            "trained_at_warmup": len(trained.registrations),
            "orphans_before_release": orphans,
            "left_after_release": residual,
            "per_minute": _per_minute(live, simulation.ledger, trace, options),
            "cycles": [asdict(c) for c in cycles],
        },
    )
    say("report ready")
    return report


def _seconds(text: str) -> int:
    from flows.settings import parse_freq_any

    return parse_freq_any(text)


def _live_ledger(trace: Any, options: SoakOptions, lines: list[dict[str, Any]]) -> Any:
    from provisioning.soak import Ledger

    ledger = Ledger.empty(trace, options.warmup, options.minutes)
    index = {cid: i for i, cid in enumerate(ledger.client_ids)}
    for line in lines:
        offset = int(line["minute"]) - options.warmup
        for cid, n in line["warm"].items():
            if cid in index:
                ledger.warm[index[cid], offset] = n
        for cid, n in line["cold"].items():
            if cid in index:
                ledger.cold[index[cid], offset] = n
    return ledger


def _live_events(
    settings: Settings, lines: list[dict[str, Any]], replay_time: Callable[[float], datetime]
) -> pl.DataFrame:
    """Controller creates and releases of the pool, and the members requests created, on
    the replay's clock."""
    from provisioning.soak import EVENT_SCHEMA
    from warehouse.db import connect, fetch_frame

    with connect(settings.warehouse_path, read_only=True) as con:
        actions = fetch_frame(
            con,
            "SELECT happened_at, action, member_id, client_id, host FROM pool_events"
            " WHERE ok AND action IN ('create', 'release') ORDER BY happened_at",
        )
    epoch = datetime(1970, 1, 1)
    rows = [
        {"at": replay_time((r["happened_at"] - epoch).total_seconds()), "kind": r["action"],
         "member_id": r["member_id"], "client_id": r["client_id"], "host": r["host"],
         "by": "controller"}
        for r in actions.iter_rows(named=True)
    ]  # fmt: skip
    for line in lines:
        for member_id, client_id, wall in line["created"]:
            rows.append(
                {"at": replay_time(wall), "kind": "create", "member_id": member_id,
                 "client_id": client_id, "host": SOAK_HOST, "by": "request"}
            )  # fmt: skip
    return pl.DataFrame(rows, schema=EVENT_SCHEMA)


def _simulate(
    options: SoakOptions, settings: Settings, trace: Any, cycles: list[LiveCycle], wall_start: float
) -> Any:
    """The simulated soak, predicting at each cycle with the model versions the live cycle
    of the same slot predicted with (retraining replaced some during the soak)."""
    from flows.provision import _costs, cycle_timing
    from models.prediction import predict_clients
    from models.registry import load_forecaster_version
    from provisioning.inventory import load_inventory
    from provisioning.soak import SimCycle, simulate_soak
    from warehouse.reads import read_calendar, read_clients
    from warehouse.sources.azure_functions import load_azure_functions

    clients = read_clients(settings.warehouse_path)
    calendar = read_calendar(settings.warehouse_path)
    runs = _prediction_runs(settings)
    loaded: dict[tuple[str, str], Any] = {}
    sizes = {
        r["client_id"]: (0.5, float(r["container_memory_mb"] or 512.0))
        for r in clients.iter_rows(named=True)
    }
    sim_start = trace.ts(options.warmup)
    cycle_s = _seconds(options.cycle)
    live = {c.index: c for c in cycles}

    def wall_of(clock: datetime) -> float:
        """When the live loop predicted for the slot at `clock` (its cycle's end)."""
        slot = round((clock - sim_start).total_seconds() / cycle_s)
        if slot in live:
            return live[slot].began + live[slot].seconds
        return wall_start + (clock - sim_start).total_seconds() / options.speed

    def predict(clock: datetime, usage: pl.DataFrame) -> tuple:
        versions = _versions_at(runs, wall_of(clock))
        forecasters = {}
        for cid, version in versions.items():
            if (cid, version) not in loaded:
                loaded[(cid, version)] = load_forecaster_version(
                    cid, version, settings.mlflow_tracking_uri
                )
            forecasters[cid] = (loaded[(cid, version)], version)
        histories = {
            cid: frame
            for (cid,), frame in usage.partition_by("client_id", as_dict=True).items()
            if cid in forecasters
        }
        predicted = predict_clients(
            histories, calendar, {c: forecasters[c] for c in histories}, 60, clock
        )
        if predicted is None:
            return None, None, pl.DataFrame()
        quantiles = predicted.forecasts.filter(pl.col("metric") == "concurrency")
        return predicted.exceedance, quantiles, predicted.profiles

    lead_of = {c.index: c.lead_s for c in cycles if c.index > 0}
    lead = statistics.median(lead_of.values()) if lead_of else 0.0
    plan = [SimCycle(sim_start, 0.0)]
    k = 1
    while (clock := sim_start + timedelta(seconds=k * cycle_s)) < trace.ts(
        options.warmup + options.minutes
    ):
        # Every slot of the cadence, as an ideal clock runs it (the live loop may skip one
        # when a cycle runs long); each with the lead its live twin planned with.
        plan.append(SimCycle(clock, lead_of.get(k, lead)))
        k += 1
    return simulate_soak(
        trace, options.warmup, options.minutes, plan, cycle_timing(settings),
        clients=clients.select("client_id", "tier", "mode"), sizes=sizes,
        inventory=load_inventory(options.workdir / "inventory.toml"), costs=_costs(settings),
        usage=load_azure_functions(options.trace, day=settings.trace_day).rows, predict=predict,
    )  # fmt: skip


def _prediction_runs(settings: Settings) -> list[tuple[float, dict[str, str]]]:
    """Every live prediction run: (wall time, client -> model version), oldest first."""
    from warehouse.db import connect, fetch_frame

    with connect(settings.warehouse_path, read_only=True) as con:
        rows = fetch_frame(
            con,
            "SELECT generated_at, client_id, any_value(model_version) AS version"
            " FROM forecasts GROUP BY 1, 2 ORDER BY 1",
        )
    runs: dict[float, dict[str, str]] = {}
    for row in rows.iter_rows(named=True):
        wall = row["generated_at"].replace(tzinfo=UTC).timestamp()
        runs.setdefault(wall, {})[row["client_id"]] = row["version"]
    return sorted(runs.items())


def _versions_at(runs: list[tuple[float, dict[str, str]]], wall: float) -> dict[str, str]:
    """The versions of the newest prediction run made by `wall` (the first run before it)."""
    chosen = runs[0][1] if runs else {}
    for at, versions in runs:
        if at > wall:
            break
        chosen = versions
    return chosen


def _orphans(
    options: SoakOptions, settings: Settings, lines: list[dict[str, Any]]
) -> tuple[int, int]:
    """(members no record accounts for, members left after releasing the pool)."""
    from flows.pool_admin import release_everything
    from flows.runtime import open_runtime_named
    from provisioning.runtime.base import LABEL_MANAGED
    from warehouse.db import connect

    runtime = open_runtime_named(options.runtime, settings)
    listed = runtime.list({LABEL_MANAGED: "1", **settings.pool_scope})
    with connect(settings.warehouse_path, read_only=True) as con:
        recorded = {
            r[0]
            for r in con.execute(
                "SELECT member_id FROM pool_members WHERE released_at IS NULL"
            ).fetchall()
        }
    by_requests = {member_id for x in lines for member_id, _, _ in x["created"]}
    unknown = [m for m in listed if m.id not in recorded and m.id not in by_requests]
    strays = getattr(runtime, "strays", None)
    orphans = len(unknown) + (len(strays()) if callable(strays) else 0)
    if options.keep:
        return orphans, 0
    release_everything(settings)
    left = runtime.list({LABEL_MANAGED: "1", **settings.pool_scope})
    return orphans, len(left) + (len(strays()) if callable(strays) else 0)


def _mlflow_versions(settings: Settings) -> int:
    from mlflow import MlflowClient

    client = MlflowClient(settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)
    return len(client.search_model_versions(max_results=200_000))


def _per_minute(live: Any, simulated: Any, trace: Any, options: SoakOptions) -> dict[str, list]:
    return {
        "minute": list(range(options.warmup, options.warmup + options.minutes)),
        "need": live.need.sum(axis=0).tolist(),
        "live_cold": live.cold.sum(axis=0).tolist(),
        "simulated_cold": simulated.cold.sum(axis=0).tolist(),
        "live_warm": live.warm.sum(axis=0).tolist(),
        "simulated_warm": simulated.warm.sum(axis=0).tolist(),
    }


def plot_soak(report: SoakReport, path: Path) -> None:
    """Live against simulated: cold starts and warm members per replayed minute."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = report.details["per_minute"]
    minutes = np.array(series["minute"])
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    top.plot(minutes, series["live_cold"], label="live", color="tab:red")
    top.plot(minutes, series["simulated_cold"], label="simulated", color="tab:gray", ls="--")
    top.set_ylabel("cold starts / minute")
    top.legend(loc="upper right")
    bottom.plot(minutes, series["live_warm"], label="live warm members", color="tab:blue")
    bottom.plot(minutes, series["simulated_warm"], label="simulated", color="tab:gray", ls="--")
    bottom.plot(minutes, series["need"], label="need", color="tab:green", lw=0.8)
    bottom.set_ylabel("instances")
    bottom.set_xlabel("trace minute")
    bottom.legend(loc="upper right")
    live, sim = report.live, report.simulated
    figure.suptitle(
        f"prewarm soak: live {live['cold_start_per_invocation']:.5f} vs simulated "
        f"{sim['cold_start_per_invocation']:.5f} cold starts per invocation; idle "
        f"{live['idle_vs_fixed10']:.2f}x vs {sim['idle_vs_fixed10']:.2f}x keep-alive 10"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
