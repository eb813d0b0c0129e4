"""Forecast errors, pool outcomes and drift on hand-made frames, every number worked out by hand."""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl
import pytest

from provisioning.costs import CostModel
from provisioning.outcomes import DriftThresholds, detect_drift, pool_outcomes, score_forecasts

T0 = datetime(2026, 1, 5)


def test_error_coverage_and_pinball():
    pairs = pl.DataFrame(
        {"p10": [1.0, 1.0], "p50": [2.0, 2.0], "p90": [4.0, 4.0], "actual": [3.0, 6.0]}
    )
    scored = score_forecasts(pairs)
    assert scored["error"].to_list() == [1.0, 4.0]
    assert scored["covered"].to_list() == [True, False]
    # actual 3: q10 0.1*2=0.2, q50 0.5*1=0.5, q90 (0.9-1)*(3-4)=0.1 -> mean 0.8/3
    # actual 6: 0.1*5=0.5, 0.5*4=2.0, 0.9*2=1.8 -> mean 4.3/3
    assert scored["pinball"].to_list() == pytest.approx([0.8 / 3, 4.3 / 3])


def test_cold_starts_idle_cost_and_reactive_cost():
    costs = CostModel()
    demand = pl.DataFrame(
        {
            "client_id": ["a", "a", "b"],
            "ts": [T0, T0 + timedelta(minutes=5), T0],
            "need": [3.0, 1.0, 0.0],
            "previous_need": [0.0, 3.0, 2.0],
            "active": [1, 1, 0],
            "shadow": [1, 1, 1],
            "cold": [0, 1, 0],
            "tier": ["premium", "premium", "free"],
            "cpu": [1.0, 1.0, 0.5],
            "memory_mb": [1024.0, 1024.0, 512.0],
        }
    )
    out = pool_outcomes(demand, costs, 300)
    active = costs.idle_per_minute("active", 1.0, 1024.0)
    shadow = costs.idle_per_minute("shadow", 1.0, 1024.0)
    cold = costs.idle_per_minute("cold", 1.0, 1024.0)
    shadow_b = costs.idle_per_minute("shadow", 0.5, 512.0)
    active_b = costs.idle_per_minute("active", 0.5, 512.0)
    premium, free = costs.cold_penalty("premium"), costs.cold_penalty("free")
    # a@0: need 3, capacity 2 (active+shadow both used) -> 1 cold start, nothing idle;
    #      reactive held 0 -> 3 cold starts.
    # a@5: need 1 served by the active one; shadow and cold idle 5 minutes;
    #      reactive held 3 -> 0 cold starts, 2 running instances idle.
    # b@0: need 0; one shadow idle; reactive held 2 running, idle.
    assert out["capacity"].to_list() == [2.0, 3.0, 1.0]
    assert out["cold_starts"].to_list() == [1.0, 0.0, 0.0]
    assert out["idle_cost"].to_list() == pytest.approx([0.0, (shadow + cold) * 5, shadow_b * 5])
    assert out["cost"].to_list() == pytest.approx([premium, (shadow + cold) * 5, shadow_b * 5])
    assert out["reactive_cold_starts"].to_list() == [3.0, 0.0, 0.0]
    assert out["reactive_cost"].to_list() == pytest.approx(
        [3 * premium, 2 * active * 5, 2 * active_b * 5]
    )
    assert free > 0


def _history(client: str, covered: list[bool], pinball: float = 0.1) -> pl.DataFrame:
    n = len(covered)
    return pl.DataFrame(
        {
            "client_id": [client] * n,
            "window_start": [T0 + timedelta(minutes=5 * i) for i in range(n)],
            "metric": ["concurrency"] * n,
            "actual": [2.0] * n,
            "covered": covered,
            "pinball": [pinball] * n,
        }
    )


def test_drift_flags_exactly_the_clients_beyond_thresholds():
    thresholds = DriftThresholds(min_windows=12, lookback_windows=36, min_coverage=0.5)
    history = pl.concat(
        [
            _history("good", [True] * 20),
            _history("missing", [True] * 10 + [False] * 20),  # last 20 of 30: 10/30 covered
            _history("wide", [True] * 20, pinball=1.5),  # 1.5 / mean actual 2 = 0.75 > 0.5
            _history("young", [False] * 5),  # too few windows to judge
        ]
    )
    feedback = pl.DataFrame(
        {"client_id": ["grumpy", "happy"], "window_start": [T0, T0], "score": [1, 5]}
    )
    drift = detect_drift(history, feedback, thresholds)
    reasons = dict(drift.select("client_id", "reason").iter_rows())
    assert set(reasons) == {"missing", "wide", "grumpy"}
    assert "coverage 0.33" in reasons["missing"]
    assert "pinball 0.75" in reasons["wide"]
    assert reasons["grumpy"].startswith("feedback: 1 recent rating")


def test_drift_judges_only_the_most_recent_windows():
    thresholds = DriftThresholds(min_windows=12, lookback_windows=12, min_coverage=0.5)
    # Bad long ago, good lately: the last 12 windows are all covered.
    history = _history("recovered", [False] * 30 + [True] * 12)
    assert detect_drift(history, pl.DataFrame(), thresholds).height == 0
