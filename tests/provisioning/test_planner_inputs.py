"""Planner inputs: demand from quantiles and exceedance, priors, windows, config, bad rows."""

from __future__ import annotations

from datetime import UTC, timedelta

import numpy as np
import polars as pl
import pytest

from provisioning.costs import CostModel
from provisioning.planner import (
    DESIRED_SCHEMA,
    PlannerConfig,
    PlanWindowError,
    base_rates,
    desired_members,
    exceedance_from_quantiles,
    need_levels,
    plan_pools,
    planner_config_from_dict,
)
from tests.provisioning.test_planner_decision import (
    BIG_HOST,
    FIRST,
    NOW,
    STEP,
    _clients,
    _exceedance,
    _none_row,
)

# --- demand from quantiles ----------------------------------------------------------------


def test_quantile_interpolation_by_hand():
    # p10 = 2, p50 = 4, p90 = 8. Lower tail from 2 - (4 - 2) / 4 = 1.5. P(need >= k) =
    # P(X > k - 1): X > 0, X > 1 certain; X > 2: 0.9; X > 3: 0.9 - 0.4 x 1/2 = 0.7;
    # X > 4: 0.5; X > 5..7: 0.5 - 0.4 x (1/4, 2/4, 3/4) = 0.4, 0.3, 0.2; X > 8: 0.1;
    # X > 9: exponential tail 0.1 exp(-1 / theta), theta = 4 / ln 5, i.e. 0.1 x 5^(-1/4).
    p = exceedance_from_quantiles(np.array([2.0]), np.array([4.0]), np.array([8.0]), 10)
    expected = [1, 1, 0.9, 0.7, 0.5, 0.4, 0.3, 0.2, 0.1, 0.1 * 5**-0.25]
    assert p[0] == pytest.approx(expected)


def test_quantile_interpolation_lower_tail_below_zero():
    # p10 = 0.1, p50 = 0.9, p90 = 2: the lower tail runs from 0.1 - 0.8 / 4 = -0.1 to 0.1,
    # so half its 10% lies at or below 0: P(need >= 1) = P(X > 0) = 0.95.
    # P(need >= 2) = P(X > 1), in the p50-p90 segment: 0.5 - 0.4 x (1 - 0.9) / (2 - 0.9).
    p = exceedance_from_quantiles(np.array([0.1]), np.array([0.9]), np.array([2.0]), 2)
    assert p[0] == pytest.approx([0.95, 0.5 - 0.4 * 0.1 / 1.1])


def test_quantile_interpolation_point_masses_and_crossed_quantiles():
    # All quantiles at 2: need is 2 for sure. All zero: no need. Crossed: sorted first.
    p = exceedance_from_quantiles(
        np.array([2.0, 0.0, 4.0]), np.array([2.0, 0.0, 2.0]), np.array([2.0, 0.0, 8.0]), 4
    )
    assert p[0] == pytest.approx([1, 1, 0, 0])
    assert p[1] == pytest.approx([0, 0, 0, 0])
    assert p[2] == pytest.approx([1, 1, 0.9, 0.7])


def test_exceedance_wins_and_the_quantile_tail_continues_above_its_levels():
    # Exceedance levels 1-2 = 0.8, 0.6; quantiles (2, 4, 8) give 1, 1, 0.9, 0.7 for 1-4.
    # Levels 3-4 take min(0.6, quantile) = 0.6, 0.6: sum over K = 4 is 2.6.
    config = PlannerConfig(windows=1, warm_tiers=(), max_level=4)
    quantiles = pl.DataFrame({"client_id": ["a"], "ts": [FIRST], "p10": [2.0], "p50": [4.0]})
    quantiles = quantiles.with_columns(p90=pl.lit(8.0))
    common = {"clients": _clients({"client_id": "a"}), "inventory": pl.DataFrame(BIG_HOST)}
    both = plan_pools(
        **common,
        now=NOW,
        exceedance=_exceedance("a", [0.8, 0.6]),
        quantiles=quantiles,
        config=config,
    )
    only_q = plan_pools(**common, now=NOW, quantiles=quantiles, config=config)
    assert _none_row(both, "a")["expected_cold_starts"] == pytest.approx(2.6)
    assert _none_row(only_q, "a")["expected_cold_starts"] == pytest.approx(3.6)


def test_buckets_inside_a_window_count_by_their_peak_and_other_metrics_are_ignored():
    config = PlannerConfig(windows=1, warm_tiers=())
    exceedance = pl.DataFrame(
        {
            "client_id": ["a", "a"],
            "ts": [FIRST, FIRST + timedelta(minutes=1)],
            "level": [1, 1],
            "p_exceed": [0.3, 0.7],
        }
    )
    quantiles = pl.DataFrame(
        {
            "client_id": ["b", "b"],
            "metric": ["concurrency", "memory_mb"],
            "ts": [FIRST, FIRST],
            "p10": [2.0, 500.0],
            "p50": [2.0, 500.0],
            "p90": [2.0, 500.0],
        }
    )
    plan = plan_pools(
        _clients({"client_id": "a"}, {"client_id": "b"}),
        pl.DataFrame(BIG_HOST),
        NOW,
        exceedance=exceedance,
        quantiles=quantiles,
        config=config,
    )
    assert _none_row(plan, "a")["expected_cold_starts"] == pytest.approx(0.7)
    assert _none_row(plan, "b")["expected_cold_starts"] == pytest.approx(2.0)


def test_demand_above_max_level_is_reported_unserved():
    # p99 = p90 + (p90 - p50) / ln 5 x ln 10 = 150 + 71.53 -> 222 instances, 64 planned.
    quantiles = pl.DataFrame(
        {"client_id": ["a"], "ts": [FIRST], "p10": [80.0], "p50": [100.0], "p90": [150.0]}
    )
    plan = plan_pools(
        _clients({"client_id": "a", "container_cpu": 0.01, "container_memory_mb": 1.0}),
        pl.DataFrame(BIG_HOST),
        NOW,
        quantiles=quantiles,
        config=PlannerConfig(windows=1),
    )
    row = plan.unserved.row(0, named=True)
    assert (row["tier"], row["placed_as"], row["instances"]) == ("any", "none", 158)
    assert row["reason"] == "demand above max_level: p99 needs 222 instances, the plan covers 64"


def test_base_rates_from_history():
    usage = pl.DataFrame({"client_id": ["a"] * 4 + ["b"], "concurrency": [0.0, 1.0, 2.0, 0.5, 0.0]})
    rates = base_rates(need_levels(usage, max_level=2), max_level=2)
    # a: ceil -> 0, 1, 2, 1: need >= 1 in 3 of 4, >= 2 in 1 of 4; b: never
    assert rates.to_dicts() == [
        {"client_id": "a", "level": 1, "p_exceed": 0.75},
        {"client_id": "a", "level": 2, "p_exceed": 0.25},
        {"client_id": "b", "level": 1, "p_exceed": 0.0},
        {"client_id": "b", "level": 2, "p_exceed": 0.0},
    ]


# --- windows, buffer, desired members -----------------------------------------------------


def test_windows_start_after_the_buffer_and_desired_members_looks_ahead_by_it():
    exceedance = pl.concat([_exceedance("a", [0.99], window=w) for w in range(-1, 3)])
    plan = plan_pools(
        _clients({"client_id": "a", "tier": "premium"}),
        pl.DataFrame(BIG_HOST),
        NOW.replace(tzinfo=UTC),
        exceedance=exceedance,
        config=PlannerConfig(windows=3),
    )
    assert plan.first_window == FIRST
    assert plan.buffer_seconds == 310.0
    assert plan.window_starts == [FIRST, FIRST + STEP, FIRST + 2 * STEP]
    assert plan.desired["window_start"].min() == FIRST  # the 12:00 row was too late to plan
    assert plan.desired.schema == pl.Schema(DESIRED_SCHEMA)
    members = desired_members(plan, NOW)
    assert members.to_dicts() == [{"client_id": "a", "tier": "active", "host": "big", "count": 1}]
    # 12:14:49 + 310 s = 12:19:59, the last window [12:15, 12:20); 12:14:50 is past the plan
    assert desired_members(plan, NOW + timedelta(minutes=14, seconds=49)).height == 1
    with pytest.raises(PlanWindowError, match="outside it: compute a new plan"):
        desired_members(plan, NOW + timedelta(minutes=14, seconds=50))
    with pytest.raises(PlanWindowError):
        desired_members(plan, NOW - timedelta(minutes=5))


def test_planner_config_from_a_toml_section():
    config = planner_config_from_dict({"tick_seconds": 60, "warm_tiers": ["shadow"]})
    assert config == PlannerConfig(tick_seconds=60, warm_tiers=("shadow",))
    assert config.buffer(CostModel()) == 70.0
    with pytest.raises(ValueError, match="unknown key"):
        planner_config_from_dict({"ticks": 1})
    with pytest.raises(ValueError, match="burst_reserve must be in"):
        PlannerConfig(burst_reserve=1.0)


@pytest.mark.parametrize(
    ("clients", "message"),
    [
        (_clients({"client_id": "a", "mode": "dry-run"}), "client 'a' has mode 'dry-run'"),
        (_clients({"client_id": "a", "confidence": 1.5}), "client 'a' has confidence 1.5"),
        (_clients({"client_id": "a"}, {"client_id": "a"}), "duplicate client_id 'a'"),
        (_clients({"client_id": "a", "container_cpu": 0.0}), "client 'a' has container_cpu 0.0"),
    ],
)
def test_bad_client_rows_are_named(clients: pl.DataFrame, message: str):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        plan_pools(clients, pl.DataFrame(BIG_HOST), NOW)


def test_demand_for_an_unknown_client_is_an_error():
    with pytest.raises(
        ValueError, match="exceedance: demand for client\\(s\\) not in clients: 'z'"
    ):
        plan_pools(
            _clients({"client_id": "a"}),
            pl.DataFrame(BIG_HOST),
            NOW,
            exceedance=_exceedance("z", [0.5]),
        )
