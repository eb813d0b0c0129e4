"""The regular grid of forecasting: bucket steps since the epoch, and every client on a
complete grid of them, wide (one column per metric) or long (one row per metric).
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl


def step_of(ts: pl.Expr, freq_seconds: int) -> pl.Expr:
    """Bucket index since the epoch of a naive UTC timestamp."""
    return ts.dt.epoch("s") // freq_seconds


def ts_of(step: pl.Expr, freq_seconds: int) -> pl.Expr:
    """Bucket start (naive UTC, microseconds) of a bucket index."""
    return (step * freq_seconds * 1_000_000).cast(pl.Datetime("us"))


def regular_grid(
    usage: pl.DataFrame,
    freq_seconds: int,
    metrics: Sequence[str],
    extend_steps: int = 0,
    missing_as: float | None = None,
) -> pl.DataFrame:
    """Every client on a complete grid from its first to its last bucket, plus `extend_steps`.

    A bucket missing inside a client's span holds `missing_as` in every metric (series
    sources write idle buckets as zeros, so a hole means nothing was recorded); null cells
    of present rows and the extension stay null. Columns: client_id, step, ts, metrics.
    """
    stepped = usage.select(
        "client_id",
        step_of(pl.col("ts"), freq_seconds).alias("step"),
        *(pl.col(m).cast(pl.Float64) for m in metrics),
        pl.lit(True).alias("_present"),
    ).unique(subset=["client_id", "step"], keep="last")
    bounds = stepped.group_by("client_id").agg(
        pl.col("step").min().alias("lo"), pl.col("step").max().alias("hi")
    )
    grid = bounds.select(
        "client_id", "hi", pl.int_ranges("lo", pl.col("hi") + 1 + extend_steps).alias("step")
    ).explode("step")
    joined = grid.join(stepped, on=["client_id", "step"], how="left")
    if missing_as is not None:
        hole = pl.col("_present").is_null() & (pl.col("step") <= pl.col("hi"))
        joined = joined.with_columns(
            pl.when(hole).then(pl.lit(missing_as)).otherwise(pl.col(m)).alias(m) for m in metrics
        )
    return (
        joined.with_columns(ts_of(pl.col("step"), freq_seconds).alias("ts"))
        .select("client_id", "step", "ts", *metrics)
        .sort("client_id", "step")
    )


def to_long(grid: pl.DataFrame, metrics: Sequence[str]) -> pl.DataFrame:
    """One row per (client, metric, step): client_id, metric, step, ts, value."""
    return (
        grid.unpivot(
            index=["client_id", "step", "ts"],
            on=list(metrics),
            variable_name="metric",
            value_name="value",
        )
        .select("client_id", "metric", "step", "ts", pl.col("value").cast(pl.Float64))
        .sort("client_id", "metric", "step")
    )
