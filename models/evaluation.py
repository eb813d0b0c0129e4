"""Score forecasters on one window, the same way for all: the promotion gate's yardstick.

A challenger and the current champion are compared on the challenger's holdout window (the
last day of history, which the challenger did not train on): origins every `horizon` steps,
each forecasting the next `horizon` steps from the data before it. The seasonal-naive
baseline is scored on exactly the same points.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

import numpy as np
import polars as pl

from models.baselines import naive_forecast, seasonal_naive_forecast, wmape
from models.forecaster import forecast_origins
from models.scoring import point_metrics


@dataclass(frozen=True)
class WindowScore:
    """Mean over metrics of p50 wMAPE (and coverage), plus the per-bucket predictions."""

    wmape: float
    coverage_80: float | None
    baseline_wmape: float | None
    baseline: str
    predictions: pl.DataFrame  # origin, metric, ts, horizon, p10, p50, p90, actual


def holdout_start(history: pl.DataFrame, days: float) -> datetime:
    """Start of the last `days` of a history (the window a challenger has not trained on)."""
    last = history.get_column("ts").max()
    assert isinstance(last, datetime)
    return last - timedelta(days=days)


def score_window(
    forecaster: Any,
    history: pl.DataFrame,
    start: datetime,
    calendar: pl.DataFrame | None = None,
) -> WindowScore | None:
    """Score `forecaster` on [start, end of history); None when the window holds no origin."""
    config = forecaster.config
    horizon, freq = config.horizon_steps, config.freq_seconds
    # polars types max() as any scalar; that of a `ts` column is a datetime (None when the
    # history is empty: the comparison below then raises TypeError, as it always has).
    last = cast(datetime, history.get_column("ts").max())
    origins = []
    origin = start
    while origin + timedelta(seconds=horizon * freq) <= last:
        origins.append(origin)
        origin += timedelta(seconds=horizon * freq)
    if not origins:
        return None
    forecasts = forecast_origins(forecaster, history, origins, calendar, horizon)
    metrics = [m for m in forecaster.metrics if m in history.columns]
    actual = history.select("ts", *metrics).unpivot(
        index="ts", variable_name="metric", value_name="actual"
    )
    scored = forecasts.join(actual, on=["ts", "metric"], how="inner").drop_nulls("actual")
    if scored.height == 0:
        return None
    per_metric, covered, baselines = [], [], []
    baseline = "seasonal naive (1 day)"
    steps_per_day = config.steps_per_day
    for metric in metrics:
        rows = scored.filter(pl.col("metric") == metric)
        if rows.height == 0:
            continue
        quantiles = rows.select("p10", "p50", "p90").to_numpy()
        scores = point_metrics(rows["actual"].to_numpy(), quantiles)
        score, cov = scores["wmape"], scores["coverage_80"]
        if score is None:
            continue
        per_metric.append(score)
        if cov is not None:
            covered.append(cov)
        base, baseline = _baseline_wmape(history, metric, rows, freq, steps_per_day)
        if base is not None:
            baselines.append(base)
    if not per_metric:
        return None
    return WindowScore(
        wmape=float(np.mean(per_metric)),
        coverage_80=float(np.mean(covered)) if covered else None,
        baseline_wmape=float(np.mean(baselines)) if len(baselines) == len(per_metric) else None,
        baseline=baseline,
        predictions=scored,
    )


def _baseline_wmape(
    history: pl.DataFrame, metric: str, rows: pl.DataFrame, freq: int, season: int
) -> tuple[float | None, str]:
    """Seasonal naive (one day) on the same points; plain naive when a day is not available."""
    ordered = history.sort("ts")
    first = ordered.get_column("ts").min()
    steps = (
        ((ordered.get_column("ts") - first).dt.total_seconds() // freq).cast(pl.Int64).to_numpy()
    )
    values = np.full(int(steps.max()) + 1, np.nan)
    values[steps] = ordered.get_column(metric).cast(pl.Float64).fill_null(np.nan).to_numpy()
    origin_steps = ((rows["origin"] - first).dt.total_seconds() // freq).cast(pl.Int64).to_numpy()
    horizons = rows["horizon"].to_numpy().astype(np.int64)
    actual = rows["actual"].to_numpy()
    forecast = seasonal_naive_forecast(values, origin_steps, horizons, season)
    if forecast is not None:
        return wmape(actual, forecast), "seasonal naive (1 day)"
    return wmape(actual, naive_forecast(values, origin_steps, horizons)), "naive"
