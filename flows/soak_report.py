"""The soak's report: live against simulated yardsticks, and its plot.

After the live loop (`flows.soak`), the same minutes run through the same decisions with
ideal timing (`simulation.soak.simulate_soak`), predicting at each cycle with the model
versions the live cycle of the same slot used; the report sets the two ledgers side by side
with cycles, runtime actions, contradicting actions, lag, orphans, MLflow versions and the
memory of the cycle process.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from flows.settings import Settings
from flows.soak_world import SOAK_HOST, SoakOptions


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


def _report(
    options: SoakOptions,
    settings: Settings,
    trace: Any,
    cycles: list[LiveCycle],
    trained: Any,
    rss_start: float,
    say: Callable[[str], None],
) -> SoakReport:
    from simulation.soak import count_contradictions, fixed10_idle, soak_metrics

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
    from simulation.soak import Ledger

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
    from simulation.soak import EVENT_SCHEMA
    from warehouse.db import connect, fetch_frame

    with connect(settings.warehouse_path, read_only=True) as con:
        actions = fetch_frame(
            con,
            "SELECT happened_at, action, member_id, client_id, host FROM pool_events"
            " WHERE ok AND action IN ('create', 'release') ORDER BY happened_at",
        )
    epoch = datetime(1970, 1, 1)
    rows = [
        {
            "at": replay_time((r["happened_at"] - epoch).total_seconds()),
            "kind": r["action"],
            "member_id": r["member_id"],
            "client_id": r["client_id"],
            "host": r["host"],
            "by": "controller",
        }
        for r in actions.iter_rows(named=True)
    ]
    for line in lines:
        for member_id, client_id, wall in line["created"]:
            rows.append(
                {
                    "at": replay_time(wall),
                    "kind": "create",
                    "member_id": member_id,
                    "client_id": client_id,
                    "host": SOAK_HOST,
                    "by": "request",
                }
            )
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
    from simulation.soak import SimCycle, simulate_soak
    from warehouse.clients import read_clients
    from warehouse.sources.azure_functions import load_azure_functions
    from warehouse.usage import read_calendar

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
        trace,
        options.warmup,
        options.minutes,
        plan,
        cycle_timing(settings),
        clients=clients.select("client_id", "tier", "mode"),
        sizes=sizes,
        inventory=load_inventory(options.workdir / "inventory.toml"),
        costs=_costs(settings),
        usage=load_azure_functions(options.trace, day=settings.trace_day).rows,
        predict=predict,
    )


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
