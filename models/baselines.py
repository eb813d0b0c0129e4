"""Reference forecasts and the error measures every forecaster is judged by.

A model earns its place only by beating these on the same points: naive (the last value) is
hard to beat a few steps ahead, seasonal naive (the value one day or one week before the
target) captures a regular daily or weekly shape. All functions are pointwise over
(origin, horizon) pairs of one series on a regular grid: `origins` index the last observed
value, the forecast is for index origin + horizon.
"""

from __future__ import annotations

import numpy as np


def naive_forecast(values: np.ndarray, origins: np.ndarray, horizons: np.ndarray) -> np.ndarray:
    """The last known value at the origin, whatever the horizon (missing values carried on)."""
    del horizons  # the same value at every horizon
    return _forward_filled(values)[np.asarray(origins)]


def seasonal_naive_forecast(
    values: np.ndarray, origins: np.ndarray, horizons: np.ndarray, season_steps: int
) -> np.ndarray | None:
    """The value at the target's position `m` seasons back, m = ceil(h / season).

    m is the smallest number of seasons that lands at or before the origin, so no value after
    the origin is used. None when some point would need history before the series starts.
    """
    origins = np.asarray(origins)
    horizons = np.asarray(horizons)
    back = season_steps * np.ceil(horizons / season_steps).astype(np.int64)
    source = origins + horizons - back
    if source.size and source.min() < 0:
        return None
    return _forward_filled(values)[source]


def wmape(actual: np.ndarray, forecast: np.ndarray) -> float | None:
    """Weighted MAPE: sum |actual - forecast| / sum |actual| (None when actuals are all 0)."""
    actual = np.asarray(actual, dtype=np.float64)
    denominator = np.abs(actual).sum()
    if actual.size == 0 or denominator == 0:
        return None
    return float(np.abs(actual - np.asarray(forecast, dtype=np.float64)).sum() / denominator)


def pinball(actual: np.ndarray, forecast: np.ndarray, quantile: float) -> float | None:
    """Mean pinball (quantile) loss of a quantile forecast, in the series' units."""
    actual = np.asarray(actual, dtype=np.float64)
    if actual.size == 0:
        return None
    diff = actual - np.asarray(forecast, dtype=np.float64)
    return float(np.mean(np.maximum(quantile * diff, (quantile - 1.0) * diff)))


def coverage(actual: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float | None:
    """Share of actuals inside [lower, upper] (bounds included)."""
    actual = np.asarray(actual, dtype=np.float64)
    if actual.size == 0:
        return None
    return float(np.mean((np.asarray(lower) <= actual) & (actual <= np.asarray(upper))))


def _forward_filled(values: np.ndarray) -> np.ndarray:
    """Carry the last non-missing value over NaNs (leading NaNs stay)."""
    values = np.asarray(values, dtype=np.float64)
    missing = np.isnan(values)
    if not missing.any():
        return values
    last = np.where(~missing, np.arange(values.size), 0)
    np.maximum.accumulate(last, out=last)
    filled = values[last]
    filled[np.cumsum(~missing) == 0] = np.nan
    return filled
