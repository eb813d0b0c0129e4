"""What happened against what was planned: forecast errors, pool outcomes, drift.

Pure functions over frames. Per client, bucket (the scoring window) and metric:

    error    = actual - p50
    covered  = p10 <= actual <= p90
    pinball  = mean over q in (0.1, 0.5, 0.9) of max(q * (actual - p_q), (q - 1) * (actual - p_q))

Per client and bucket, on the demand metric (concurrency: instances needed):

    capacity     = warm members planned for the bucket (active + shadow + cold)
    cold_starts  = max(0, need - capacity)                   instances that started cold
    idle_cost    = sum over tiers of unused members x that tier's $/min x bucket minutes
                   (the need is served by the warmest members first)
    cost         = idle_cost + cold_starts x the client's cold-start penalty
    reactive     = max(0, need - previous need) x cold-start penalty
                   + max(0, previous need - need) x active $/min x bucket minutes

`reactive` is what a purely reactive autoscaler would have paid: it holds, running, what
the last bucket needed, cold-starts every instance above it and idles what is left over.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from provisioning.costs import CostModel

QUANTILES = (("p10", 0.1), ("p50", 0.5), ("p90", 0.9))
TIER_ORDER = ("active", "shadow", "cold")  # who serves first


@dataclass(frozen=True)
class DriftThresholds:
    """When a client's forecasts are judged to have drifted (and it is retrained)."""

    min_windows: int = 24  # scored buckets needed before judging (2 h at 5 min)
    lookback_windows: int = 36  # the most recent buckets judged
    min_coverage: float = 0.5  # nominal is 0.8: half the actuals outside the band is drift
    max_relative_pinball: float = 0.5  # mean pinball / mean actual
    poor_feedback_score: int = 2  # a rating at or below this counts as poor


def score_forecasts(pairs: pl.DataFrame) -> pl.DataFrame:
    """Add error, covered and pinball to rows with p10, p50, p90 and actual."""
    losses = [
        pl.max_horizontal(
            q * (pl.col("actual") - pl.col(name)), (q - 1) * (pl.col("actual") - pl.col(name))
        )
        for name, q in QUANTILES
    ]
    return pairs.with_columns(
        (pl.col("actual") - pl.col("p50")).alias("error"),
        ((pl.col("actual") >= pl.col("p10")) & (pl.col("actual") <= pl.col("p90"))).alias(
            "covered"
        ),
        (pl.sum_horizontal(losses) / len(QUANTILES)).alias("pinball"),
    )


def pool_outcomes(demand: pl.DataFrame, costs: CostModel, bucket_seconds: int) -> pl.DataFrame:
    """Cold starts, idle cost and the reactive policy's cost per client and bucket.

    demand: client_id, ts, need (instances), previous_need, active, shadow, cold (planned
    warm members), tier (client tier), cpu, memory_mb (one container).
    """
    minutes = bucket_seconds / 60.0
    need = demand["need"].to_numpy().astype(np.float64)
    remaining = need.copy()
    idle_cost = np.zeros(demand.height)
    capacity = np.zeros(demand.height)
    cpu = demand["cpu"].to_numpy().astype(np.float64)
    memory = demand["memory_mb"].to_numpy().astype(np.float64)
    for tier in TIER_ORDER:
        held = demand[tier].fill_null(0).to_numpy().astype(np.float64)
        capacity += held
        used = np.minimum(held, remaining)
        remaining -= used
        rate = np.asarray(costs.idle_per_minute(tier, cpu, memory), dtype=np.float64)
        idle_cost += (held - used) * rate * minutes
    penalty = np.array([costs.cold_penalty(t) for t in demand["tier"].to_list()], dtype=np.float64)
    cold = np.maximum(0.0, need - capacity)
    previous = demand["previous_need"].fill_null(0.0).to_numpy().astype(np.float64)
    reactive_cold = np.maximum(0.0, need - previous)
    active_rate = np.asarray(costs.idle_per_minute("active", cpu, memory), dtype=np.float64)
    reactive_idle = np.maximum(0.0, previous - need) * active_rate * minutes
    return demand.select("client_id", "ts").with_columns(
        pl.Series("capacity", capacity),
        pl.Series("cold_starts", cold),
        pl.Series("idle_cost", idle_cost),
        pl.Series("cost", idle_cost + cold * penalty),
        pl.Series("reactive_cold_starts", reactive_cold),
        pl.Series("reactive_cost", reactive_cold * penalty + reactive_idle),
    )


def detect_drift(
    scores: pl.DataFrame,
    feedback: pl.DataFrame,
    thresholds: DriftThresholds,
) -> pl.DataFrame:
    """Clients whose recent forecasts drifted: client_id, metric, value, threshold, reason.

    scores: client_id, window_start, metric, actual, covered, pinball (history).
    feedback: client_id, window_start, score (recent ratings).
    """
    recent = (
        scores.drop_nulls("covered")
        .sort("window_start", descending=True)
        .group_by("client_id", "metric", maintain_order=True)
        .head(thresholds.lookback_windows)
    )
    stats = (
        recent.group_by("client_id", "metric")
        .agg(
            pl.len().alias("n"),
            pl.col("covered").cast(pl.Float64).mean().alias("coverage"),
            (pl.col("pinball").mean() / pl.col("actual").abs().mean().clip(lower_bound=1e-9)).alias(
                "relative_pinball"
            ),
        )
        .filter(pl.col("n") >= thresholds.min_windows)
    )
    rows = []
    for row in stats.sort("client_id", "metric").iter_rows(named=True):
        if row["coverage"] < thresholds.min_coverage:
            rows.append(
                (
                    row["client_id"],
                    row["metric"],
                    row["coverage"],
                    thresholds.min_coverage,
                    f"{row['metric']}: coverage {row['coverage']:.2f} of the 80% band over "
                    f"{row['n']} windows < {thresholds.min_coverage:.2f}",
                )
            )
        elif row["relative_pinball"] > thresholds.max_relative_pinball:
            rows.append(
                (
                    row["client_id"],
                    row["metric"],
                    row["relative_pinball"],
                    thresholds.max_relative_pinball,
                    f"{row['metric']}: pinball {row['relative_pinball']:.2f} x the mean level over "
                    f"{row['n']} windows > {thresholds.max_relative_pinball:.2f}",
                )
            )
    if feedback.height:
        poor = (
            feedback.filter(pl.col("score") <= thresholds.poor_feedback_score)
            .group_by("client_id")
            .agg(pl.col("score").min(), pl.len().alias("n"))
        )
        for client_id, score, n in poor.sort("client_id").iter_rows():
            rows.append(
                (
                    client_id,
                    "feedback",
                    float(score),
                    float(thresholds.poor_feedback_score),
                    f"feedback: {n} recent rating(s) at or below {thresholds.poor_feedback_score} "
                    f"(lowest {score})",
                )
            )
    schema = {
        "client_id": pl.String,
        "metric": pl.String,
        "value": pl.Float64,
        "threshold": pl.Float64,
        "reason": pl.String,
    }
    frame = pl.DataFrame(rows, schema=schema, orient="row")
    # One reason per client is enough to retrain it; keep the first (sorted) one.
    return frame.unique("client_id", keep="first", maintain_order=True)
