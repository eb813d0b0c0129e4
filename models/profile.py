"""Predicted resource profiles: what each client will need, when, for how long, how sure.

A profile window is a span of buckets where the client's demand metric is expected busy:
its p50 above its busy threshold (`busy_thresholds`: the idle floor, plus half a call or
instance and a fifth of the way to its mean level, so the idle level's own wobble around
the floor makes no windows), or, for sparse clients (a floor of 0: idle at least a quarter
of the time), P(concurrency >= 1) at least `p_active` where the exceedance model scored it.
The demand metric is requests when known, else concurrency: concurrency counts instances in
flight, and a client of short calls holds one all day however its traffic swings, so only
its requests say when it is busy.

A window starts and ends where the demand crosses the threshold. Past the horizon the
forecast has a step only every `profile_stride` buckets (the reach, `models.forecaster.reach`):
between two steps the demand is read off the straight line joining them, so an edge falls on
the bucket where that line crosses, within one step of where the demand itself would. A
lull shorter than `MIN_LULL` does not end a window: past the horizon it would be shorter
than a step, below what the forecast can tell.

For each window: start, end (exclusive), duration, the peak p50 and p90 of every resource
(over the forecast steps inside it), the peak P(active), and a confidence.

Confidence in [0, 1] multiplies three scores, each 1 when perfect:

    coverage score  = max(0, 1 - |coverage_80 - 0.8| / 0.8)   calibrated intervals
    accuracy score  = 1 / (1 + pinball / mean level)            small, scale-free loss
    sharpness score = 1 / (1 + mean((p90 - p10) / max(p50, floor, 1e-9)) over the window)

coverage and pinball come from the model's holdout backtest on the demand metric; the width
from the forecast itself, so a wide band lowers confidence even for a well-scored model.

Every resource gets a confidence of its own the same way (`<metric>_confidence`): its own
holdout coverage and pinball, its own band over the window, against its own idle floor and
level. A resource without a forecast in the window has none (null). `confidence` is the
demand metric's.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl

from core.vocabulary import METRICS

PROFILE_METRICS = METRICS
DEMAND_METRICS = ("requests", "concurrency")
FLOOR_QUANTILE = 0.25
FLOOR_LOOKBACK_DAYS = 7
# Demand is counted (calls, instances): busy is at least half a unit over the idle floor,
# and at least this share of the way from the floor to the mean level (see the module doc).
MIN_ACTIVE_LEVEL = 0.5
BUSY_SHARE = 0.2
MIN_LULL = timedelta(minutes=30)


def demand_metric(metrics: list[str]) -> str:
    """The metric that says 'the client is busy': requests, else concurrency, else the first."""
    for metric in DEMAND_METRICS:
        if metric in metrics:
            return metric
    return metrics[0]


def idle_floors(history: pl.DataFrame, freq_seconds: int) -> pl.DataFrame:
    """Per client and metric, the level below which it counts as idle: the 25th percentile of
    its last week (0 for clients idle at least a quarter of the time)."""
    lookback = FLOOR_LOOKBACK_DAYS * 86_400 // freq_seconds
    metrics = [m for m in PROFILE_METRICS if m in history.columns]
    recent = history.sort("client_id", "ts").group_by("client_id").tail(lookback)
    return (
        recent.unpivot(index=["client_id", "ts"], on=metrics, variable_name="metric")
        .drop_nulls("value")
        .group_by("client_id", "metric")
        .agg(
            pl.col("value").quantile(FLOOR_QUANTILE, interpolation="lower").alias("floor"),
            pl.col("value").mean().alias("mean_level"),
        )
    )


def busy_thresholds(floors: pl.DataFrame) -> pl.DataFrame:
    """Per client and metric of `floors` (from `idle_floors`), its floor and the level its
    p50 must pass to count as busy: half a unit over the floor, and at least `BUSY_SHARE`
    of the way from the floor to the mean level."""
    floor = pl.col("floor").fill_null(0.0)
    rise = (pl.col("mean_level").fill_null(0.0) - floor).clip(lower_bound=0.0) * BUSY_SHARE
    return floors.select(
        "client_id",
        "metric",
        floor.alias("floor"),
        (floor + pl.max_horizontal(rise, pl.lit(MIN_ACTIVE_LEVEL))).alias("threshold"),
    )


def confidence_score(
    coverage_80: float | None, pinball: float | None, mean_level: float, relative_width: float
) -> float:
    """The documented confidence formula (see module docstring)."""
    coverage_score = 0.5 if coverage_80 is None else max(0.0, 1 - abs(coverage_80 - 0.8) / 0.8)
    accuracy_score = 0.5 if pinball is None else 1 / (1 + pinball / max(mean_level, 1e-9))
    sharpness_score = 1 / (1 + max(relative_width, 0.0))
    return round(min(1.0, coverage_score * accuracy_score * sharpness_score), 4)


def build_profiles(
    forecasts: pl.DataFrame,
    floors: pl.DataFrame,
    quality: pl.DataFrame,
    freq_seconds: int,
    generated_at: datetime,
    exceedance: pl.DataFrame | None = None,
    p_active: float = 0.5,
) -> pl.DataFrame:
    """Turn forecasts into profile windows (one row per client and window).

    Args:
        forecasts: client_id, metric, origin, ts, horizon, p10, p50, p90, model_name, model_version.
        floors: client_id, metric, floor, mean_level (from `idle_floors`).
        quality: client_id, metric, coverage_80, pinball (holdout scores of the model).
        exceedance: client_id, ts, level, p_exceed (optional; level 1 marks sparse activity).
    """
    if forecasts.height == 0:
        return _empty_profiles()
    demand = (
        forecasts.group_by("client_id")
        .agg(pl.col("metric").unique().alias("metrics"))
        .with_columns(
            pl.col("metrics")
            .map_elements(lambda ms: demand_metric(list(ms)), return_dtype=pl.String)
            .alias("metric")
        )
        .select("client_id", "metric")
    )
    buckets = (
        forecasts.join(demand, on=["client_id", "metric"])
        .join(busy_thresholds(floors), on=["client_id", "metric"], how="left")
        .with_columns(
            pl.col("floor").fill_null(0.0), pl.col("threshold").fill_null(MIN_ACTIVE_LEVEL)
        )
    )
    if exceedance is not None and exceedance.height:
        p_one = exceedance.filter(pl.col("level") == 1).select(
            "client_id", "ts", pl.col("p_exceed").alias("p_active")
        )
        buckets = buckets.join(p_one, on=["client_id", "ts"], how="left")
    else:
        buckets = buckets.with_columns(pl.lit(None, dtype=pl.Float64).alias("p_active"))
    active = pl.col("p50") > pl.col("threshold")
    sparse_active = (pl.col("floor") == 0) & (pl.col("p_active").fill_null(0.0) >= p_active)
    buckets = _on_every_bucket(buckets, freq_seconds).with_columns(
        (active | sparse_active).alias("active")
    )
    windows = _windows(buckets, freq_seconds)
    if windows.height == 0:
        return _empty_profiles()
    # The forecast steps inside each window (past the horizon, not every bucket has one).
    window_buckets = (
        forecasts.select("client_id", "ts")
        .unique()
        .join(windows.select("client_id", "run", "window_start", "window_end"), on="client_id")
        .filter(pl.col("ts").is_between("window_start", "window_end", closed="left"))
        .select("client_id", "run", "ts")
    )
    peaks = _peaks(forecasts, window_buckets)
    per_resource = _resource_confidence(forecasts, window_buckets, floors, quality)
    scored = windows.join(peaks, on=["client_id", "run"], how="left").join(
        per_resource, on=["client_id", "run"], how="left"
    )
    # The window's confidence is its demand metric's own (scored in `_resource_confidence`).
    demand_confidence = pl.coalesce(
        pl.when(pl.col("demand_metric") == metric).then(pl.col(f"{metric}_confidence"))
        for metric in PROFILE_METRICS
    )
    profiles = scored.with_columns(
        demand_confidence.alias("confidence"),
        pl.lit(generated_at).cast(pl.Datetime("us")).alias("generated_at"),
        ((pl.col("window_end") - pl.col("window_start")).dt.total_seconds() / 60.0).alias(
            "duration_minutes"
        ),
    )
    return profiles.select(_empty_profiles().columns).sort("client_id", "window_start")


def _on_every_bucket(buckets: pl.DataFrame, freq_seconds: int) -> pl.DataFrame:
    """Each client's demand forecast on every bucket from its first step to its last: p50
    on the straight line between two forecast steps, the rest held from the step before
    (P(active) only where the exceedance model scored it)."""
    grid = (
        buckets.group_by("client_id")
        .agg(
            pl.datetime_ranges(
                pl.col("ts").min(), pl.col("ts").max(), interval=f"{freq_seconds}s"
            ).alias("ts")
        )
        .explode("ts")
    )
    held = [c for c in buckets.columns if c not in ("client_id", "ts", "p50", "p_active")]
    return (
        grid.join(buckets, on=["client_id", "ts"], how="left")
        .sort("client_id", "ts")
        .with_columns(
            pl.col("p50").interpolate().over("client_id"),
            pl.col(held).forward_fill().over("client_id"),
        )
    )


def _windows(buckets: pl.DataFrame, freq_seconds: int) -> pl.DataFrame:
    """Runs of active buckets (one client's buckets consecutive and every bucket present),
    those closer than `MIN_LULL` joined: client_id, run, window_start, window_end, origin,
    demand_metric, p_active (the peak), model_name, model_version."""
    step = pl.duration(seconds=freq_seconds)
    runs = (
        buckets.with_columns(
            (pl.col("active") != pl.col("active").shift(1).over("client_id"))
            .fill_null(True)
            .cum_sum()
            .over("client_id")
            .alias("run")
        )
        .filter(pl.col("active"))
        .group_by("client_id", "run")
        .agg(
            pl.col("ts").min().alias("window_start"),
            (pl.col("ts").max() + step).alias("window_end"),
            pl.col("origin").first(),
            pl.col("metric").first().alias("demand_metric"),
            pl.col("p_active").max(),
            pl.col("model_name").first(),
            pl.col("model_version").first(),
        )
        .sort("client_id", "window_start")
    )
    lull = pl.col("window_start") - pl.col("window_end").shift(1).over("client_id")
    return (
        runs.with_columns(
            (lull >= MIN_LULL).fill_null(True).cum_sum().over("client_id").alias("run")
        )
        .group_by("client_id", "run")
        .agg(
            pl.col("window_start").min(),
            pl.col("window_end").max(),
            pl.col("origin", "demand_metric").first(),
            pl.col("p_active").max(),
            pl.col("model_name", "model_version").first(),
        )
    )


def _peaks(forecasts: pl.DataFrame, window_buckets: pl.DataFrame) -> pl.DataFrame:
    """Max p50 and p90 of every metric over each window's buckets, one column per pair."""
    in_windows = forecasts.join(window_buckets, on=["client_id", "ts"])
    per_metric = in_windows.group_by("client_id", "run", "metric").agg(
        pl.col("p50").max(), pl.col("p90").max()
    )
    wide = per_metric.pivot(on="metric", index=["client_id", "run"], values=["p50", "p90"])
    renames = {}
    for column in wide.columns:
        for q in ("p50", "p90"):
            prefix = f"{q}_"
            if column.startswith(prefix):
                renames[column] = f"{column.removeprefix(prefix)}_{q}"
    wide = wide.rename(renames)
    for metric in PROFILE_METRICS:
        for q in ("p50", "p90"):
            if f"{metric}_{q}" not in wide.columns:
                wide = wide.with_columns(pl.lit(None, dtype=pl.Float64).alias(f"{metric}_{q}"))
    return wide


def _resource_confidence(
    forecasts: pl.DataFrame,
    window_buckets: pl.DataFrame,
    floors: pl.DataFrame,
    quality: pl.DataFrame,
) -> pl.DataFrame:
    """`<metric>_confidence` per window: each resource scored like the demand metric, on its
    own holdout quality, band width, floor and level (null without a forecast)."""
    in_windows = forecasts.join(window_buckets, on=["client_id", "ts"]).join(
        floors.select("client_id", "metric", "floor", "mean_level"),
        on=["client_id", "metric"],
        how="left",
    )
    scored = (
        in_windows.group_by("client_id", "run", "metric")
        .agg(
            (
                (pl.col("p90") - pl.col("p10"))
                / pl.max_horizontal(pl.col("p50"), pl.col("floor").fill_null(0.0), pl.lit(1e-9))
            )
            .mean()
            .alias("relative_width"),
            pl.col("mean_level").first(),
        )
        .join(quality, on=["client_id", "metric"], how="left")
    )
    values = [
        confidence_score(cov, pin, level or 0.0, width or 0.0)
        for cov, pin, level, width in scored.select(
            "coverage_80", "pinball", "mean_level", "relative_width"
        ).iter_rows()
    ]
    long = scored.select(
        "client_id", "run", "metric", pl.Series("confidence", values, dtype=pl.Float64)
    )
    names = [f"{metric}_confidence" for metric in PROFILE_METRICS]
    if long.height == 0:
        return (
            window_buckets.select("client_id", "run")
            .unique()
            .with_columns(pl.lit(None, dtype=pl.Float64).alias(name) for name in names)
        )
    wide = long.pivot(on="metric", index=["client_id", "run"], values="confidence")
    wide = wide.rename({m: f"{m}_confidence" for m in wide.columns if m in PROFILE_METRICS})
    return wide.with_columns(
        pl.lit(None, dtype=pl.Float64).alias(name) for name in names if name not in wide.columns
    ).select("client_id", "run", *names)


def _empty_profiles() -> pl.DataFrame:
    schema: dict[str, pl.DataType] = {
        "client_id": pl.String(),
        "generated_at": pl.Datetime("us"),
        "origin": pl.Datetime("us"),
        "window_start": pl.Datetime("us"),
        "window_end": pl.Datetime("us"),
        "duration_minutes": pl.Float64(),
    }
    for metric in PROFILE_METRICS:
        schema[f"{metric}_p50"] = pl.Float64()
        schema[f"{metric}_p90"] = pl.Float64()
    schema.update(
        {
            "p_active": pl.Float64(),
            "confidence": pl.Float64(),
            "model_name": pl.String(),
            "model_version": pl.String(),
        }
    )
    for metric in PROFILE_METRICS:
        schema[f"{metric}_confidence"] = pl.Float64()
    return pl.DataFrame(schema=schema)
