"""Baselines and error measures on series small enough to check by hand."""

from __future__ import annotations

import numpy as np
import pytest

from models.baselines import (
    coverage,
    naive_forecast,
    pinball,
    seasonal_naive_forecast,
    wmape,
)

# index:          0   1   2   3   4   5   6   7
SERIES = np.array([10, 20, 30, 11, 21, 31, 12, 22], dtype=float)


def test_naive_repeats_the_value_at_the_origin():
    origins = np.array([4, 4, 4, 6])
    horizons = np.array([1, 2, 3, 1])
    assert naive_forecast(SERIES, origins, horizons).tolist() == [21, 21, 21, 12]


def test_naive_carries_the_last_known_value_over_gaps():
    values = np.array([5.0, np.nan, np.nan, 7.0])
    assert naive_forecast(values, np.array([2]), np.array([1])).tolist() == [5.0]


def test_seasonal_naive_looks_one_season_back_from_the_target():
    # season 3: target 5 (origin 4, h 1) <- index 2; target 6 (origin 4, h 2) <- index 3
    origins = np.array([4, 4, 4])
    horizons = np.array([1, 2, 3])
    assert seasonal_naive_forecast(SERIES, origins, horizons, 3).tolist() == [30, 11, 21]


def test_seasonal_naive_goes_back_whole_seasons_beyond_the_origin():
    # season 2, h = 3: one season back is index 6 > origin 5, so two seasons: index 4
    forecast = seasonal_naive_forecast(SERIES, np.array([5]), np.array([3]), 2)
    assert forecast.tolist() == [21]


def test_seasonal_naive_is_none_without_a_full_season_of_history():
    assert seasonal_naive_forecast(SERIES, np.array([1]), np.array([1]), 3) is None


def test_wmape_by_hand():
    actual = np.array([10.0, 20.0, 30.0])
    forecast = np.array([12.0, 15.0, 30.0])
    assert wmape(actual, forecast) == pytest.approx((2 + 5 + 0) / 60)
    assert wmape(np.zeros(3), forecast) is None


def test_pinball_by_hand():
    actual = np.array([10.0, 10.0])
    forecast = np.array([8.0, 13.0])
    # q = 0.9: under-forecast by 2 costs 0.9 * 2, over-forecast by 3 costs 0.1 * 3
    assert pinball(actual, forecast, 0.9) == pytest.approx((1.8 + 0.3) / 2)
    assert pinball(actual, forecast, 0.5) == pytest.approx((1.0 + 1.5) / 2)


def test_coverage_counts_bounds_as_inside():
    actual = np.array([1.0, 5.0, 10.0, 11.0])
    lower = np.array([1.0, 6.0, 0.0, 0.0])
    upper = np.array([2.0, 9.0, 10.0, 10.0])
    assert coverage(actual, lower, upper) == pytest.approx(0.5)
