"""The one scoring of quantile forecasts and baselines, pinned with hand-computed numbers."""

from __future__ import annotations

import numpy as np
import pytest

from models.scoring import QUANTILES, baseline_wmapes, point_metrics

ACTUAL = np.array([1.0, 2.0, 3.0])
# p10, p50, p90 per point; the last point falls above its p90 (2 of 3 covered, bounds count).
FORECAST = np.array([[0.0, 1.0, 2.0], [2.0, 1.0, 3.0], [2.0, 3.0, 2.5]])


def test_quantile_levels_are_p10_p50_p90():
    assert QUANTILES == (0.1, 0.5, 0.9)


def test_point_metrics_by_hand():
    scores = point_metrics(ACTUAL, FORECAST)
    assert list(scores) == [
        "wmape",
        "pinball_p10",
        "pinball_p50",
        "pinball_p90",
        "pinball",
        "coverage_80",
    ]
    # p50 misses by 0, 1, 0 against |actual| summing to 6.
    assert scores["wmape"] == pytest.approx(1 / 6)
    # p10 under by 1, 0, 1 -> 0.1 each; p50 under by 0, 1, 0 -> 0.5; p90 over by 1, 1 -> 0.1
    # each and under by 0.5 -> 0.45.
    assert scores["pinball_p10"] == pytest.approx(0.2 / 3)
    assert scores["pinball_p50"] == pytest.approx(0.5 / 3)
    assert scores["pinball_p90"] == pytest.approx(0.65 / 3)
    assert scores["pinball"] == pytest.approx(0.15)
    assert scores["coverage_80"] == pytest.approx(2 / 3)
    assert all(isinstance(v, float) for v in scores.values())


def test_point_metrics_without_points_is_all_none():
    scores = point_metrics(np.array([]), np.zeros((0, 3)))
    assert scores == dict.fromkeys(
        ["wmape", "pinball_p10", "pinball_p50", "pinball_p90", "pinball", "coverage_80"]
    )


def test_point_metrics_on_all_zero_actuals_has_no_wmape_but_the_rest():
    scores = point_metrics(np.array([0.0, 0.0]), np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 1.0]]))
    assert scores["wmape"] is None
    assert scores["pinball_p10"] == 0.0
    assert scores["pinball_p50"] == pytest.approx(0.25)
    assert scores["pinball_p90"] == pytest.approx(0.1)
    assert scores["pinball"] == pytest.approx(0.35 / 3)
    assert scores["coverage_80"] == 1.0


# Half-day buckets: a day season is 2 steps, a week 14 (longer than these values).
VALUES = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
ORIGINS, HORIZONS = np.array([3, 3]), np.array([1, 2])  # targets at 4 and 5
HALF_DAY = 43_200


def test_baseline_wmapes_by_hand_leaves_out_a_season_the_history_cannot_reach():
    actual = VALUES[ORIGINS + HORIZONS]
    scores = baseline_wmapes(actual, VALUES, ORIGINS, HORIZONS, HALF_DAY)
    assert list(scores) == ["naive", "seasonal_naive_day"]
    assert scores["naive"] == pytest.approx(3 / 11)  # forecasts 4, 4 for 5, 6
    assert scores["seasonal_naive_day"] == pytest.approx(4 / 11)  # forecasts 3, 4


def test_baseline_wmapes_with_every_season():
    values = np.arange(1.0, 11.0)  # daily buckets: a day season is 1 step, a week 7
    scores = baseline_wmapes(np.array([10.0]), values, np.array([8]), np.array([1]), 86_400)
    assert list(scores) == ["naive", "seasonal_naive_day", "seasonal_naive_week"]
    assert scores["naive"] == pytest.approx(0.1)  # 9 for 10
    assert scores["seasonal_naive_day"] == pytest.approx(0.1)  # a day back: 9
    assert scores["seasonal_naive_week"] == pytest.approx(0.7)  # a week back: 3


def test_baseline_wmapes_leaves_out_a_season_landing_on_a_missing_value():
    values = np.array([np.nan, 2.0, 3.0, 4.0])
    scores = baseline_wmapes(np.array([3.0]), values, np.array([1]), np.array([1]), HALF_DAY)
    assert scores == {"naive": pytest.approx(1 / 3)}


def test_baseline_wmapes_on_all_zero_actuals_keeps_the_keys_with_none():
    scores = baseline_wmapes(np.zeros(2), VALUES, ORIGINS, HORIZONS, HALF_DAY)
    assert scores == {"naive": None, "seasonal_naive_day": None}
