"""Flow `reconcile-pools`: compare what happened with what was predicted, correct the pools
now, and retrain the clients whose forecasts drifted.

1. Score every newly arrived bucket against the latest forecast made before it (error,
   coverage, pinball) and, on concurrency, against the warm capacity the plan held (cold
   starts, idle cost, and what a reactive autoscaler would have paid): `reconciliations`.
2. Observe the pool: CPU and memory of active members (`pool_member_stats`).
3. Correct the pool at once: members the current plan window wants, topped up to the demand
   just observed when it exceeded them (the reactive safety net: prewarm is never worse than
   reactive), and members idle beyond the plan released.
4. Detect drift (coverage or pinball beyond thresholds, or poor client feedback) and retrain
   exactly those clients, recording why (`drift_events`).
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import polars as pl
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from flows.artifacts import publish_reconciliation
from flows.locks import warehouse_write
from flows.provision import open_runtime
from flows.settings import Settings
from flows.train import train_flow
from provisioning.apply import reconcile_once
from provisioning.costs import CostModel, load_cost_model
from provisioning.monitoring import DriftThresholds, detect_drift, pool_outcomes, score_forecasts
from provisioning.runtime.base import ContainerRuntime
from warehouse.db import connect, fetch_frame, utc_now
from warehouse.monitoring import (
    annotate_reconciliations,
    read_planned_capacity,
    read_reconciliation_history,
    read_unreconciled,
    write_drift_events,
    write_member_stats,
    write_reconciliations,
)
from warehouse.pools import write_pool_state
from warehouse.reads import read_clients, read_feedback_signals, read_recent_usage

FEEDBACK_LOOKBACK = timedelta(days=2)


@dataclass
class ReconcileSummary:
    """What one reconciliation did."""

    buckets: int = 0
    rows: int = 0
    coverage: float | None = None
    cold_starts: float = 0.0
    reactive_cold_starts: float = 0.0
    cost: float = 0.0
    reactive_cost: float = 0.0
    scaled_up: dict[str, int] = field(default_factory=dict)
    actions: dict[str, int] = field(default_factory=dict)
    drifted: dict[str, str] = field(default_factory=dict)
    retrained: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def _costs(settings: Settings) -> CostModel:
    return load_cost_model(settings.costs_path) if settings.costs_path else CostModel()


@task(cache_policy=NONE)
def reconcile_buckets(settings: Settings, reconciled_at: datetime) -> pl.DataFrame:
    """Score new buckets against their forecasts and the plan's capacity; write and return."""
    path = settings.warehouse_path
    pairs = read_unreconciled(path)
    if pairs.height == 0:
        return pairs
    scored = score_forecasts(pairs)
    clients = read_clients(path).select(
        "client_id", "tier", "freq_seconds",
        pl.col("container_cpu").fill_null(0.5).alias("cpu"),
        pl.col("container_memory_mb").fill_null(512.0).alias("memory_mb"),
    )  # fmt: skip
    demand = scored.filter(pl.col("metric") == "concurrency").select(
        "client_id", "ts", pl.col("actual").alias("need")
    )
    outcomes = None
    if demand.height:
        demand = _with_previous_need(settings, demand).join(clients, on="client_id", how="left")
        demand = _with_capacity(demand, read_planned_capacity(path))
        frames = [
            pool_outcomes(group, _costs(settings), int(freq))
            for (freq,), group in demand.group_by("freq_seconds")
        ]
        outcomes = pl.concat(frames).with_columns(pl.lit("concurrency").alias("metric"))
    rows = scored.rename(
        {
            "ts": "window_start",
            "p10": "predicted_p10",
            "p50": "predicted_p50",
            "p90": "predicted_p90",
        }
    )
    if outcomes is not None:
        rows = rows.join(
            outcomes.rename({"ts": "window_start"}).select(
                "client_id",
                "window_start",
                "metric",
                "cold_starts",
                "idle_cost",
                "reactive_cost",
                "reactive_cold_starts",
                "cost",
            ),
            on=["client_id", "window_start", "metric"],
            how="left",
        )
    else:
        rows = rows.with_columns(
            pl.lit(None, dtype=pl.Float64).alias(c)
            for c in ("cold_starts", "idle_cost", "reactive_cost", "reactive_cold_starts", "cost")
        )
    rows = rows.with_columns(
        pl.lit(None, dtype=pl.String).alias("action"),
        pl.lit(None, dtype=pl.String).alias("reason"),
        pl.lit(reconciled_at).cast(pl.Datetime("us")).alias("reconciled_at"),
    ).select(
        "client_id", "window_start", "window_end", "metric", "predicted_p10", "predicted_p50",
        "predicted_p90", "actual", "error", "covered", "pinball", "cold_starts", "idle_cost",
        "reactive_cost", "reactive_cold_starts", "cost", "action", "reason", "reconciled_at",
    )  # fmt: skip
    with warehouse_write():
        write_reconciliations(path, rows)
    return rows


def _with_previous_need(settings: Settings, demand: pl.DataFrame) -> pl.DataFrame:
    """Each bucket's need in the bucket before it (what a reactive policy would hold)."""
    usage = read_recent_usage(settings.warehouse_path, 2).select(
        "client_id", "ts", pl.col("concurrency").alias("previous_need")
    )
    return (
        demand.sort("client_id", "ts")
        .join_asof(
            usage.sort("client_id", "ts").with_columns(pl.col("ts").alias("previous_ts")),
            left_on="ts",
            right_on="ts",
            by="client_id",
            strategy="backward",
            allow_exact_matches=False,
            check_sortedness=False,  # sorted above, within each client
        )
        .drop("previous_ts", strict=False)
    )


def _with_capacity(demand: pl.DataFrame, capacity: pl.DataFrame) -> pl.DataFrame:
    """Attach the planned active/shadow/cold members of the window covering each bucket."""
    if capacity.height == 0:
        return demand.with_columns(pl.lit(0).alias(t) for t in ("active", "shadow", "cold"))
    joined = demand.sort("ts").join_asof(
        capacity.sort("window_start"),
        left_on="ts",
        right_on="window_start",
        by="client_id",
        strategy="backward",
        check_sortedness=False,  # sorted above, within each client
    )
    inside = pl.col("window_end").is_not_null() & (pl.col("ts") < pl.col("window_end"))
    return joined.with_columns(
        pl.when(inside).then(pl.col(t)).otherwise(0).fill_null(0).alias(t)
        for t in ("active", "shadow", "cold")
    )


@task(cache_policy=NONE)
def observe_members(settings: Settings, runtime: ContainerRuntime, observed_at: datetime) -> int:
    """Record CPU and memory of the pool's active members (paused ones use no CPU)."""
    members = [
        m
        for m in runtime.list({"prewarm.managed": "1", **settings.pool_scope})
        if m.tier == "active"
    ]
    if not members:
        return 0

    def stats(member: Any) -> dict[str, Any] | None:
        try:
            values = runtime.stats(member.id)
        except Exception:  # a member released meanwhile: nothing to observe
            return None
        return {
            "member_id": member.id, "client_id": member.client_id, "runtime": runtime.name,
            "tier": member.tier, "cpu_percent": values.get("cpu_percent"),
            "memory_mb": values.get("memory_mb"), "observed_at": observed_at,
        }  # fmt: skip

    # Docker answers stats about once a second per container: ask in parallel.
    with ThreadPoolExecutor(max_workers=8) as pool:
        rows = [r for r in pool.map(stats, members) if r is not None]
    frame = pl.DataFrame(rows).with_columns(
        pl.col("cpu_percent", "memory_mb").cast(pl.Float64),
        pl.col("observed_at").cast(pl.Datetime("us")),
    )
    with warehouse_write():
        write_member_stats(settings.warehouse_path, frame)
    return frame.height


def _current_plan(settings: Settings, at: datetime) -> tuple[str | None, pl.DataFrame, dict]:
    """The newest applied plan's wanted members for the window covering `at` (the present:
    provisioning looks a buffer ahead, reconciliation corrects what is live now), and its
    rendered container configs."""
    with connect(settings.warehouse_path, read_only=True) as con:
        plan = fetch_frame(
            con, "SELECT plan_id FROM plans WHERE NOT dry_run ORDER BY created_at DESC LIMIT 1"
        )
        if plan.height == 0:
            return None, pl.DataFrame(), {}
        plan_id = plan.item()
        desired = fetch_frame(
            con,
            "SELECT client_id, tier, host, sum(count)::BIGINT AS count FROM allocations"
            " WHERE plan_id = ? AND mode = 'provision' AND tier IN ('active', 'shadow', 'cold')"
            " AND window_start <= ? AND ? < window_end AND count > 0 GROUP BY ALL",
            [plan_id, at, at],
        )
        configs = fetch_frame(
            con,
            "SELECT DISTINCT client_id, config::VARCHAR AS config FROM allocations"
            " WHERE plan_id = ? AND config IS NOT NULL",
            [plan_id],
        )
    specs = {cid: json.loads(cfg) for cid, cfg in configs.iter_rows()}
    return plan_id, desired, specs


@task(cache_policy=NONE)
def correct_pool(
    settings: Settings, runtime: ContainerRuntime, observed_at: datetime
) -> tuple[dict[str, int], dict[str, int]]:
    """Plan's current window, topped up to the need just observed; return (top-ups, actions)."""
    path = settings.warehouse_path
    usage = read_recent_usage(path, 1)
    if usage.height == 0 or "concurrency" not in usage.columns:
        return {}, {}
    latest = usage.sort("ts").group_by("client_id").last().select("client_id", "ts", "concurrency")
    data_now = latest.get_column("ts").max() + timedelta(seconds=settings.freq_seconds)
    plan_id, desired, specs = _current_plan(settings, data_now)
    if plan_id is None:
        return {}, {}
    clients = read_clients(path)
    untouchable = set(clients.filter(pl.col("mode") == "forecast-only").get_column("client_id"))
    held = desired.group_by("client_id").agg(pl.col("count").sum().alias("held"))
    short = (
        latest.join(held, on="client_id", how="left")
        .with_columns(pl.col("held").fill_null(0))
        .filter(
            (pl.col("concurrency").ceil() > pl.col("held"))
            & pl.col("client_id").is_in(list(specs))
            & ~pl.col("client_id").is_in(list(untouchable))
        )
        .with_columns((pl.col("concurrency").ceil() - pl.col("held")).cast(pl.Int64).alias("extra"))
    )
    top_ups = dict(short.select("client_id", "extra").iter_rows())
    if top_ups:
        host = desired.get_column("host").drop_nulls().first() if desired.height else None
        extra = short.select(
            "client_id", pl.lit("active").alias("tier"), pl.lit(host).alias("host"),
            pl.col("extra").alias("count"),
        )  # fmt: skip
        desired = pl.concat([desired, extra], how="vertical_relaxed")
        desired = desired.group_by("client_id", "tier", "host").agg(pl.col("count").sum())
    result = reconcile_once(
        runtime, desired, specs, untouchable, plan_id, scope=settings.pool_scope
    )
    events = result.pool_events
    if "at" in events.columns:
        events = events.rename({"at": "happened_at"})
    events = events.with_columns(
        pl.lit(plan_id).alias("plan_id"),
        pl.lit(observed_at).cast(pl.Datetime("us")).alias("happened_at"),
    )
    with warehouse_write():
        write_pool_state(path, runtime.name, events, result.pool_members, observed_at)
    actions = dict(events.group_by("action").len().iter_rows()) if events.height else {}
    return top_ups, actions


@flow(name="reconcile-pools")
def reconcile_pools(retrain: bool = True) -> ReconcileSummary:
    """Reconcile predictions with actuals, correct the pools, retrain drifted clients."""
    started = time.perf_counter()
    settings = Settings()
    logger = get_run_logger()
    now = utc_now()
    summary = ReconcileSummary()
    rows = reconcile_buckets(settings, now)
    if rows.height:
        summary.rows = rows.height
        summary.buckets = rows.select("client_id", "window_start").unique().height
        covered = rows.get_column("covered").drop_nulls()
        summary.coverage = float(covered.cast(pl.Float64).mean()) if covered.len() else None
        summary.cold_starts = float(rows.get_column("cold_starts").fill_null(0).sum())
        summary.cost = float(rows.get_column("cost").fill_null(0).sum())
        summary.reactive_cost = float(rows.get_column("reactive_cost").fill_null(0).sum())
        summary.reactive_cold_starts = float(
            rows.get_column("reactive_cold_starts").fill_null(0).sum()
        )

    runtime = open_runtime(settings)
    observe_members(settings, runtime, now)
    summary.scaled_up, summary.actions = correct_pool(settings, runtime, now)

    history = read_reconciliation_history(settings.warehouse_path)
    _, feedback = read_feedback_signals(settings.warehouse_path, since=now - FEEDBACK_LOOKBACK)
    thresholds = DriftThresholds(
        min_windows=settings.drift_min_windows,
        min_coverage=settings.drift_min_coverage,
        max_relative_pinball=settings.drift_max_relative_pinball,
    )
    drift = detect_drift(history, feedback, thresholds)
    summary.drifted = dict(drift.select("client_id", "reason").iter_rows())
    versions: dict[str, str] = {}
    if retrain and summary.drifted:
        logger.info("retraining %d drifted clients: %s", len(summary.drifted), summary.drifted)
        trained = train_flow(settings)(client_ids=sorted(summary.drifted))
        versions = {r.client_id: r.version for r in trained.registrations}
        summary.retrained = {cid: summary.drifted[cid] for cid in versions}
    if drift.height:
        with warehouse_write():
            write_drift_events(
                settings.warehouse_path,
                drift.with_columns(
                    pl.lit(now).cast(pl.Datetime("us")).alias("detected_at"),
                    pl.col("client_id").is_in(list(versions)).alias("retrained"),
                    pl.col("client_id")
                    .replace_strict(versions, default=None, return_dtype=pl.String)
                    .alias("model_version"),
                ),
            )
    notes = {
        cid: ("scale-up", f"observed need above the plan: +{n} active")
        for cid, n in summary.scaled_up.items()
    }
    notes.update({cid: ("retrain", reason) for cid, reason in summary.drifted.items()})
    with warehouse_write():
        annotate_reconciliations(settings.warehouse_path, now, notes)
    publish_reconciliation(summary, rows)
    summary.seconds = time.perf_counter() - started
    logger.info(
        "reconciled %d buckets (coverage %s, %.1f cold starts, cost %.4f vs reactive %.4f); "
        "pool actions %s; drifted %d, retrained %d",
        summary.buckets, f"{summary.coverage:.2f}" if summary.coverage is not None else "-",
        summary.cold_starts, summary.cost, summary.reactive_cost, summary.actions or "none",
        len(summary.drifted), len(summary.retrained),
    )  # fmt: skip
    return summary
