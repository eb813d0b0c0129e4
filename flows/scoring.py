"""Flow `score-outcomes`: score what was predicted and planned against what happened, record
drift, and retrain the drifted clients that are due. It never touches the pools: keeping
them at what demand needs is provisioning's job.

1. Score every newly arrived bucket against the latest forecast made before it (error,
   coverage, pinball) and, on concurrency, against the warm capacity the plan held (cold
   starts, idle cost, and what a reactive autoscaler would have paid): `forecast_scores`.
   Where usage has no actual but the client reported one with its feedback, that is scored.
2. Observe the pool: CPU and memory of active members (`pool_member_stats`).
3. Detect drift (coverage or pinball beyond thresholds, or poor client feedback) and record
   it once per episode (`drift_events`): an episode stays open until the client is next
   trained, so repeated cycles add no rows.
4. Retrain the drifted clients that are eligible (flows/retrain.py: a cooldown per client,
   and only on new data).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

import polars as pl
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from core.errors import PrewarmError
from core.times import utc_now
from flows.artifacts import publish_scores
from flows.locks import warehouse_write
from flows.retrain import RetrainSummary, retrain_candidates, retrain_drifted
from flows.runtime import bound_runtime, open_runtime_named
from flows.settings import Settings
from models.feedback import fill_from_feedback, reported_actuals
from models.retraining import retrain_decisions
from provisioning.costs import CostModel, load_cost_model
from provisioning.outcomes import DriftThresholds, detect_drift, pool_outcomes, score_forecasts
from provisioning.runtime.base import ContainerRuntime
from warehouse.clients import read_clients
from warehouse.feedback import read_feedback_signals, read_reported_actuals
from warehouse.scores import (
    annotate_scores,
    read_open_drift,
    read_planned_capacity,
    read_score_history,
    read_unscored,
    write_drift_events,
    write_member_stats,
    write_scores,
)
from warehouse.usage import read_recent_usage

FEEDBACK_LOOKBACK = timedelta(days=2)


@dataclass
class ScoreSummary:
    """What one scoring run did."""

    buckets: int = 0
    rows: int = 0
    coverage: float | None = None
    cold_starts: float = 0.0
    reactive_cold_starts: float = 0.0
    cost: float = 0.0
    reactive_cost: float = 0.0
    drifted: dict[str, str] = field(default_factory=dict)  # client -> reason
    waiting: dict[str, str] = field(default_factory=dict)  # drifted, not retrained: why
    retrained: dict[str, str] = field(default_factory=dict)  # client -> version registered
    retraining: RetrainSummary | None = None
    seconds: float = 0.0


def _costs(settings: Settings) -> CostModel:
    return load_cost_model(settings.costs_path) if settings.costs_path else CostModel()


@task(cache_policy=NONE)
def score_buckets(settings: Settings, scored_at: datetime) -> pl.DataFrame:
    """Score new buckets against their forecasts and the plan's capacity; write and return."""
    path = settings.warehouse_path
    pairs = _with_reported_actuals(path, read_unscored(path))
    if pairs.height == 0:
        return pairs
    scored = score_forecasts(pairs)
    clients = read_clients(path).select(
        "client_id",
        "tier",
        "freq_seconds",
        pl.col("container_cpu").fill_null(0.5).alias("cpu"),
        pl.col("container_memory_mb").fill_null(512.0).alias("memory_mb"),
    )
    demand = scored.filter(pl.col("metric") == "concurrency").select(
        "client_id", "ts", pl.col("actual").alias("need")
    )
    outcomes = None
    if demand.height:
        demand = _with_previous_need(settings, demand).join(clients, on="client_id", how="left")
        # polars types min() as any scalar; that of a `ts` column is a datetime.
        since = cast(datetime, demand.get_column("ts").min())
        demand = _with_capacity(demand, read_planned_capacity(path, since))
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
        pl.lit(scored_at).cast(pl.Datetime("us")).alias("scored_at"),
    ).select(
        "client_id",
        "window_start",
        "window_end",
        "metric",
        "predicted_p10",
        "predicted_p50",
        "predicted_p90",
        "actual",
        "error",
        "covered",
        "pinball",
        "cold_starts",
        "idle_cost",
        "reactive_cost",
        "reactive_cold_starts",
        "cost",
        "action",
        "reason",
        "scored_at",
    )
    with warehouse_write():
        write_scores(path, rows)
    return rows


def _with_reported_actuals(path: Path, pairs: pl.DataFrame) -> pl.DataFrame:
    """Pairs with the buckets usage left without an actual scored against what the client
    reported with its feedback (those still without one are dropped)."""
    unmeasured = pairs.filter(pl.col("actual").is_null())
    if unmeasured.height == 0:
        return pairs
    clients = sorted(unmeasured.get_column("client_id").unique())
    reported = reported_actuals(read_reported_actuals(path, clients))
    filled = fill_from_feedback(pairs, reported, add_missing=False).drop_nulls("actual")
    get_run_logger().info(
        "%d buckets scored against actuals reported with feedback",
        filled.height - (pairs.height - unmeasured.height),
    )
    return filled


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
            "member_id": member.id,
            "client_id": member.client_id,
            "runtime": runtime.name,
            "tier": member.tier,
            "cpu_percent": values.get("cpu_percent"),
            "memory_mb": values.get("memory_mb"),
            "observed_at": observed_at,
        }

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


def _observed_runtime(settings: Settings) -> ContainerRuntime | None:
    """The runtime the pool lives on, to observe its members; None when no pool has been
    created yet (choosing its runtime is provisioning's job) or its runtime does not answer
    (scoring and drift must not wait on it)."""
    bound = bound_runtime(settings)
    if bound is None:
        return None
    try:
        return open_runtime_named(bound, settings)
    except PrewarmError as error:  # runtime errors included
        get_run_logger().warning("pool members not observed: %s", error)
        return None


@task(cache_policy=NONE)
def record_drift(settings: Settings, now: datetime) -> pl.DataFrame:
    """Detect drifted clients and record a drift for those with no open episode; return
    every drifted client: client_id, metric, value, threshold, reason, recorded (a new
    episode now), trigger, eligible (to retrain now), cooldown_until, why_not.

    `now` is the wall clock (UTC): episodes and the cooldown compare it with training times.
    """
    path = settings.warehouse_path
    _, feedback = read_feedback_signals(path, since=now - FEEDBACK_LOOKBACK)
    thresholds = DriftThresholds(
        min_windows=settings.drift_min_windows,
        min_coverage=settings.drift_min_coverage,
        max_relative_pinball=settings.drift_max_relative_pinball,
    )
    history = read_score_history(path, thresholds.lookback_windows)
    drift = detect_drift(history, feedback, thresholds)
    state = read_open_drift(path)
    fresh = drift.filter(~pl.col("client_id").is_in(state.get_column("client_id").to_list()))
    if fresh.height:
        with warehouse_write():
            write_drift_events(
                path,
                fresh.with_columns(
                    pl.lit(now).cast(pl.Datetime("us")).alias("detected_at"),
                    pl.lit(False).alias("retrained"),
                    pl.lit(None, dtype=pl.String).alias("model_version"),
                ),
            )
        state = read_open_drift(path)
    cooldown = timedelta(seconds=settings.retrain_cooldown_seconds)
    decisions = retrain_decisions(state, now, cooldown)
    return drift.with_columns(
        pl.col("client_id").is_in(fresh.get_column("client_id").to_list()).alias("recorded")
    ).join(decisions, on="client_id", how="left")


@flow(name="score-outcomes")
def score_outcomes(retrain: bool = True) -> ScoreSummary:
    """Score predictions against actuals, record drift, retrain the drifted clients due."""
    started = time.perf_counter()
    settings = Settings()
    logger = get_run_logger()
    now = utc_now()
    summary = ScoreSummary()
    rows = score_buckets(settings, now)
    if rows.height:
        summary.rows = rows.height
        summary.buckets = rows.select("client_id", "window_start").unique().height
        covered = rows.get_column("covered").drop_nulls()
        # The mean of a non-empty Float64 column is a float (polars types it as any literal).
        summary.coverage = (
            float(cast(float, covered.cast(pl.Float64).mean())) if covered.len() else None
        )
        summary.cold_starts = float(rows.get_column("cold_starts").fill_null(0).sum())
        summary.cost = float(rows.get_column("cost").fill_null(0).sum())
        summary.reactive_cost = float(rows.get_column("reactive_cost").fill_null(0).sum())
        summary.reactive_cold_starts = float(
            rows.get_column("reactive_cold_starts").fill_null(0).sum()
        )
    runtime = _observed_runtime(settings)
    if runtime is not None:
        observe_members(settings, runtime, now)

    drift = record_drift(settings, now)
    summary.drifted = dict(drift.select("client_id", "reason").iter_rows())
    # Open episodes of clients no longer drifting are retrained too: ask for all of them.
    if retrain and retrain_candidates(settings, utc_now()).get_column("eligible").any():
        summary.retraining = retrain_drifted()
        summary.retrained = {r.client_id: r.version for r in summary.retraining.retrained}
    for client_id, why_not in drift.select("client_id", "why_not").iter_rows():
        if client_id not in summary.retrained:
            summary.waiting[client_id] = why_not or (
                "retraining off" if not retrain else "retraining failed"
            )
    notes = {
        cid: ("retrain", f"{reason}; retrained as version {summary.retrained[cid]}")
        if cid in summary.retrained
        else ("drift", f"{reason}; not retrained: {summary.waiting[cid]}")
        for cid, reason in summary.drifted.items()
    }
    with warehouse_write():
        annotate_scores(settings.warehouse_path, now, notes)
    publish_scores(summary, rows)
    summary.seconds = time.perf_counter() - started
    logger.info(
        "scored %d buckets (coverage %s, %.1f cold starts, cost %.4f vs reactive %.4f); "
        "drifted %d, retrained %d",
        summary.buckets,
        f"{summary.coverage:.2f}" if summary.coverage is not None else "-",
        summary.cold_starts,
        summary.cost,
        summary.reactive_cost,
        len(summary.drifted),
        len(summary.retrained),
    )
    return summary
