"""Turn forecast scores and client feedback into adjustments for the next training.

A client whose recent windows were badly covered (actuals outside [p10, p90]) or who rated
recent forecasts poorly (score <= 2 of 5) gets the training rows since the first such window
up-weighted, so the refit follows the new behaviour instead of averaging it away. The weight
grows with the share of missed windows: 1 + 4 x miss share (at most 5); a poor rating
counts as a miss share of 0.75. Bias corrections are
left to the refit itself: the data of those windows is already in the next training set.

The actual usage a client reports with its rating fills what the warehouse never measured
(`fill_from_feedback`): labels for training, actuals for scoring.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import datetime, timedelta

import polars as pl

from core.vocabulary import METRICS
from models.forecaster import Adjustments

log = logging.getLogger(__name__)

LOOKBACK = timedelta(days=2)
POOR_SCORE = 2
POOR_FEEDBACK_SHARE = 0.75  # a poor rating weighs like three windows in four missed
MAX_WEIGHT = 5.0
_EPOCH = datetime(1970, 1, 1)


def adjustments_from_signals(
    scores: pl.DataFrame, feedback: pl.DataFrame, now: datetime
) -> dict[str, Adjustments]:
    """Per client, the adjustments its recent signals call for (absent: no change)."""
    since = now - LOOKBACK
    flagged: dict[str, tuple[datetime, float]] = {}
    if scores.height:
        recent = scores.filter((pl.col("window_start") >= since) & pl.col("covered").is_not_null())
        misses = recent.group_by("client_id").agg(
            (1 - pl.col("covered").cast(pl.Float64).mean()).alias("miss_share"),
            pl.col("window_start").filter(~pl.col("covered")).min().alias("first_miss"),
        )
        for cid, share, first in misses.filter(pl.col("miss_share") > 0.5).iter_rows():
            flagged[cid] = (first, share)
    if feedback.height:
        poor = (
            feedback.filter((pl.col("window_start") >= since) & (pl.col("score") <= POOR_SCORE))
            .group_by("client_id")
            .agg(pl.col("window_start").min())
        )
        for cid, first in poor.iter_rows():
            start, share = flagged.get(cid, (first, 0.0))
            flagged[cid] = (min(start, first), max(share, POOR_FEEDBACK_SHARE))
    return {
        cid: Adjustments(recent_since=start, recent_weight=min(MAX_WEIGHT, 1 + 4 * share))
        for cid, (start, share) in flagged.items()
    }


def describe_weighting(adjustments: Adjustments | None) -> str:
    """How a training weighted its recent rows, for a model's tags: e.g. `recent x3.2 since
    2026-11-28T10:00`, or `none`."""
    if adjustments is None or adjustments.recent_since is None or adjustments.recent_weight == 1:
        return "none"
    return (
        f"recent x{adjustments.recent_weight:.1f} since {adjustments.recent_since:%Y-%m-%dT%H:%M}"
    )


def reported_actuals(feedback: pl.DataFrame) -> pl.DataFrame:
    """The usage clients reported with feedback, spread over every bucket of each window (the
    newest report wins where windows overlap): client_id, metric, ts, actual.

    feedback: client_id, window_start, window_end, actual (JSON text {metric: value} or
    null), received_at, freq_seconds (the client's bucket width). A bucket belongs to a window
    when it overlaps it, so an unaligned start still covers its bucket.
    """
    rows = []
    reported = feedback.filter(pl.col("actual").is_not_null()).sort("received_at")
    for row in reported.iter_rows(named=True):
        freq = int(row["freq_seconds"])
        first = _bucket_start(row["window_start"], freq)
        buckets = math.ceil((row["window_end"] - first).total_seconds() / freq)
        for metric, value in _parse_actual(row["client_id"], row["actual"]).items():
            rows.append((row["client_id"], metric, first, buckets, freq, value, row["received_at"]))
    schema: dict[str, pl.DataType | type[pl.DataType]] = {
        "client_id": pl.String,
        "metric": pl.String,
        "first": pl.Datetime("us"),
        "buckets": pl.Int64,
        "freq_seconds": pl.Int64,
        "actual": pl.Float64,
        "received_at": pl.Datetime("us"),
    }
    spread = (
        pl.DataFrame(rows, schema=schema, orient="row")
        .with_columns(pl.int_ranges(0, pl.col("buckets")).alias("k"))
        .explode("k")
        .drop_nulls("k")
        .with_columns(
            (pl.col("first") + pl.duration(seconds=pl.col("k") * pl.col("freq_seconds"))).alias(
                "ts"
            )
        )
    )
    return (
        spread.sort("received_at", descending=True, maintain_order=True)
        .unique(["client_id", "metric", "ts"], keep="first", maintain_order=True)
        .select("client_id", "metric", "ts", "actual")
        .sort("client_id", "metric", "ts")
    )


def fill_from_feedback(
    actuals: pl.DataFrame, reported: pl.DataFrame, *, add_missing: bool
) -> pl.DataFrame:
    """Long actuals (client_id, metric, ts, actual, any other columns) with every null actual
    a client reported filled in and, with `add_missing`, a row added for every reported
    bucket that has none. A measured value always wins over a reported one.

    The one place where reported actuals meet measured ones: training labels and scoring
    both go through it.
    """
    keys = ["client_id", "metric", "ts"]
    if reported.height == 0:
        return actuals
    incoming = reported.select(*keys, pl.col("actual").alias("_reported"))
    joined = actuals.join(incoming, on=keys, how="full" if add_missing else "left", coalesce=True)
    return joined.with_columns(pl.coalesce("actual", "_reported").alias("actual")).drop("_reported")


def fill_usage_from_feedback(usage: pl.DataFrame, reported: pl.DataFrame) -> pl.DataFrame:
    """Usage (client_id, ts, metric columns) with reported actuals as labels where the
    warehouse has none: a null metric, or a bucket with no row at all.

    Only buckets within each client's span of `usage` are filled: before it lies history the
    caller did not ask for, and after it the measurement may still arrive (a hole between the
    last row and a later report would also read as zero demand).
    """
    metrics = [m for m in METRICS if m in usage.columns]
    if reported.height == 0 or usage.height == 0 or not metrics:
        return usage
    spans = usage.group_by("client_id").agg(
        pl.col("ts").min().alias("_first"), pl.col("ts").max().alias("_last")
    )
    inside = (
        reported.filter(pl.col("metric").is_in(metrics))
        .join(spans, on="client_id")
        .filter(pl.col("ts").is_between(pl.col("_first"), pl.col("_last")))
        .drop("_first", "_last")
    )
    if inside.height == 0:
        return usage
    touched = inside.get_column("client_id").unique().to_list()
    affected = usage.filter(pl.col("client_id").is_in(touched))
    long = affected.select("client_id", "ts", *metrics).unpivot(
        index=["client_id", "ts"], variable_name="metric", value_name="actual"
    )
    filled = (
        fill_from_feedback(long, inside, add_missing=True)
        .pivot(on="metric", index=["client_id", "ts"], values="actual")
        .with_columns(pl.col(m).cast(usage.schema[m]) for m in metrics)
    )
    others = [c for c in usage.columns if c not in ("client_id", "ts", *metrics)]
    if others:
        filled = filled.join(
            affected.select("client_id", "ts", *others), on=["client_id", "ts"], how="left"
        )
    filled = filled.with_columns(pl.col("ts").cast(usage.schema["ts"])).select(usage.columns)
    return pl.concat(
        [usage.filter(~pl.col("client_id").is_in(touched)), filled], how="vertical"
    ).sort("client_id", "ts")


def _bucket_start(moment: datetime, freq_seconds: int) -> datetime:
    """The start of the (epoch-aligned) bucket holding `moment`."""
    offset = (moment - _EPOCH) % timedelta(seconds=freq_seconds)
    return moment - offset


def _parse_actual(client_id: str, text: str) -> dict[str, float]:
    """Reported values by metric; anything that is not a known metric with a finite,
    non-negative number is left out (the API validates, older rows may not have been)."""
    try:
        values = json.loads(text)
    except (TypeError, ValueError):
        log.warning("feedback of %s: actual %r is not JSON; ignored", client_id, text)
        return {}
    if not isinstance(values, dict):
        return {}
    kept = {}
    for metric, value in values.items():
        if (
            metric in METRICS
            and isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
            and value >= 0
        ):
            kept[metric] = float(value)
        else:
            log.warning("feedback of %s: actual %s=%r ignored", client_id, metric, value)
    return kept
