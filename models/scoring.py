"""Scoring quantile forecasts against actuals and against the baselines, one way for all.

`point_metrics` scores a p10/p50/p90 forecast (wMAPE of p50, pinball loss per quantile and
their mean, p10-p90 coverage); `baseline_wmapes` scores naive and seasonal naive (one day,
one week) on exactly the same (origin, horizon) points. The forecaster's holdout report,
the rolling-origin backtest and the promotion gate's window score all use them.
"""

from __future__ import annotations

import numpy as np

from models.baselines import coverage, naive_forecast, pinball, seasonal_naive_forecast, wmape
from models.features import DAY_SECONDS, WEEK_SECONDS

QUANTILES: tuple[float, float, float] = (0.1, 0.5, 0.9)
SEASONS: tuple[tuple[str, int], ...] = (
    ("seasonal_naive_day", DAY_SECONDS),
    ("seasonal_naive_week", WEEK_SECONDS),
)


def point_metrics(actual: np.ndarray, quantiles: np.ndarray) -> dict[str, float | None]:
    """wMAPE of p50, pinball per quantile and their mean, and p10-p90 coverage.

    `quantiles` is (n, 3): p10, p50, p90 per actual. A measure that cannot be computed
    (no points; wMAPE also when every actual is 0) is None, and so is the mean pinball then.
    """
    losses = [pinball(actual, quantiles[:, i], q) for i, q in enumerate(QUANTILES)]
    known = [loss for loss in losses if loss is not None]
    return {
        "wmape": wmape(actual, quantiles[:, 1]),
        "pinball_p10": losses[0],
        "pinball_p50": losses[1],
        "pinball_p90": losses[2],
        "pinball": None if len(known) < len(losses) else float(np.mean(known)),
        "coverage_80": coverage(actual, quantiles[:, 0], quantiles[:, 2]),
    }


def baseline_wmapes(
    actual: np.ndarray,
    values: np.ndarray,
    origins: np.ndarray,
    horizons: np.ndarray,
    freq_seconds: int,
) -> dict[str, float | None]:
    """wMAPE of each baseline on the points (origins index `values`, targets origin + h).

    Keys in order: "naive", then "seasonal_naive_day" and "seasonal_naive_week" only when
    every point has a full season of history with a value (see `seasonal_naive_forecast`).
    A value is None when the actuals are all 0.
    """
    scores = {"naive": wmape(actual, naive_forecast(values, origins, horizons))}
    for name, seconds in SEASONS:
        season = round(seconds / freq_seconds)
        forecast = seasonal_naive_forecast(values, origins, horizons, season)
        if forecast is not None and not np.isnan(forecast).any():
            scores[name] = wmape(actual, forecast)
    return scores


__all__ = ["QUANTILES", "SEASONS", "baseline_wmapes", "point_metrics"]
