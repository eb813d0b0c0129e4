"""Planner decisions: the newsvendor rule and tier choice by hand, actions, confidence.

Also home of the small frame builders the other planner test files import.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import polars as pl
import pytest

from models.exceedance import critical_probability
from provisioning.costs import CostModel
from provisioning.planner import PlannerConfig, plan_pools

NOW = datetime(2026, 1, 5, 12, 0)
# Default buffer: 10 s cold start + one 300 s tick; now + 310 s lies in the 12:05 window.
FIRST = datetime(2026, 1, 5, 12, 5)
STEP = timedelta(minutes=5)
BIG_HOST = {"host": ["big"], "cpu_cores": [1000.0], "memory_mb": [1e7]}


def _clients(*rows: dict) -> pl.DataFrame:
    defaults = {
        "tier": "standard",
        "container_cpu": 1.0,
        "container_memory_mb": 1024.0,
        "mode": "provision",
        "confidence": 1.0,
    }
    return pl.DataFrame([{**defaults, **row} for row in rows])


def _exceedance(client: str, p: list[float], window: int = 0) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "client_id": [client] * len(p),
            "ts": [FIRST + window * STEP] * len(p),
            "level": list(range(1, len(p) + 1)),
            "p_exceed": p,
        }
    )


def _counts(plan, window: int = 0) -> dict[tuple[str, str], int]:
    rows = plan.desired.filter(
        (pl.col("window_start") == FIRST + window * STEP) & (pl.col("tier") != "none")
    )
    out: dict[tuple[str, str], int] = {}
    for row in rows.iter_rows(named=True):
        key = (row["client_id"], row["tier"])
        out[key] = out.get(key, 0) + row["count"]
    return out


def _none_row(plan, client: str, window: int = 0) -> dict:
    rows = plan.desired.filter(
        (pl.col("client_id") == client)
        & (pl.col("tier") == "none")
        & (pl.col("window_start") == FIRST + window * STEP)
    )
    assert rows.height == 1
    return rows.row(0, named=True)


# --- the newsvendor rule on hand examples -------------------------------------------------

# Active tier only, no actions, 1 core at $0.001 per core-minute over a 5-minute window:
# idle cost I T = 0.005; cold-start penalty C = 0.015. Keep instance k warm when
# p C >= (1 - p) I T, i.e. p >= I T / (I T + C) = 0.005 / 0.020 = 0.25.
NEWSVENDOR = CostModel(
    core_minute=0.001,
    memory_gib_minute=0.0,
    disk_gib_minute=0.0,
    scaling_action=0.0,
    cold_start_penalty={"standard": 0.015},
)


def test_critical_ratio_of_the_hand_example():
    # R = C / (I T) = 0.015 / 0.005 = 3: the threshold is 1 / (1 + R) = 0.25.
    assert critical_probability(0.015 / 0.005) == pytest.approx(0.25)


def test_newsvendor_keeps_the_instances_above_the_critical_ratio():
    # P(need >= k) = 0.9, 0.6, 0.3 are >= 0.25: three warm; 0.2 and 0.05 are left cold.
    plan = plan_pools(
        _clients({"client_id": "a"}),
        pl.DataFrame(BIG_HOST),
        NOW,
        exceedance=_exceedance("a", [0.9, 0.6, 0.3, 0.2, 0.05]),
        costs=NEWSVENDOR,
        config=PlannerConfig(windows=1, warm_tiers=("active",)),
    )
    assert _counts(plan) == {("a", "active"): 3}
    none = _none_row(plan, "a")
    # expected cold starts: 0.2 + 0.05 = 0.25, each at C = 0.015
    assert none["expected_cold_starts"] == pytest.approx(0.25)
    assert none["expected_cost"] == pytest.approx(0.25 * 0.015)
    # idle of the warm three: (0.1 + 0.4 + 0.7) x 0.005 = 0.006; total 0.006 + 0.00375
    assert plan.totals["expected_cost"] == pytest.approx(0.00975)
    # reactive: every instance a cold start, (0.9 + 0.6 + 0.3 + 0.2 + 0.05) x 0.015
    assert plan.totals["reactive_cost"] == pytest.approx(2.05 * 0.015)
    assert plan.totals["reactive_cold_starts"] == pytest.approx(2.05)


# Every tier, 1 core and 1 GiB, 5-minute window, no actions:
#   idle per window: active (0.002 + 0.0002 + 0.00001) x 5 = 0.01105
#                    shadow (0.0002 + 0.00001) x 5         = 0.00105
#                    cold   0.00001 x 5                    = 0.00005
#   penalties: C = 0.01; start 2 s / 10 s -> 0.002; unpause 0.5 s / 10 s -> 0.0005
#   none = 0.01 p; cold = 0.00005 + 0.00195 p; shadow = 0.00105 - 0.00055 p;
#   active = 0.01105 (1 - p)
#   none -> cold at p = 0.00005 / 0.00805 = 0.0062; cold -> shadow at p = 0.001 / 0.0025
#   = 0.4; shadow -> active at p = 0.01 / 0.0105 = 0.952.
TIERED = CostModel(
    core_minute=0.002,
    memory_gib_minute=0.0002,
    disk_gib_minute=0.00001,
    container_disk_gib=1.0,
    scaling_action=0.0,
    cold_start_penalty={"standard": 0.01},
    start_seconds=2.0,
    unpause_seconds=0.5,
)


def test_each_instance_takes_its_cheapest_tier():
    # 0.99 active; 0.9 and 0.5 shadow; 0.3 and 0.01 cold; 0.005 none.
    plan = plan_pools(
        _clients({"client_id": "a"}),
        pl.DataFrame(BIG_HOST),
        NOW,
        exceedance=_exceedance("a", [0.99, 0.9, 0.5, 0.3, 0.01, 0.005]),
        costs=TIERED,
        config=PlannerConfig(windows=1),
    )
    assert _counts(plan) == {("a", "active"): 1, ("a", "shadow"): 2, ("a", "cold"): 2}
    assert _none_row(plan, "a")["expected_cold_starts"] == pytest.approx(0.005)
    rows = {r["tier"]: r for r in plan.desired.iter_rows(named=True)}
    # shadow: idle (0.1 + 0.5) x 0.00105 + hits (0.9 + 0.5) x 0.0005
    assert rows["shadow"]["expected_cost"] == pytest.approx(0.6 * 0.00105 + 1.4 * 0.0005)


def test_warming_costs_an_action_so_a_held_container_outlives_the_bar_for_a_new_one():
    # A = 0.0005, p = 0.03 (TIERED rates): none = 0.03 x (0.01 + A) = 0.000315;
    # cold = 0.97 x 0.00005 + 0.03 x (0.002 + A) = 0.0001235, + A = 0.0006235 if created.
    # A new container is not worth creating; one that exists is worth keeping.
    costs = CostModel(**{**TIERED.__dict__, "scaling_action": 0.0005})
    common = {
        "clients": _clients({"client_id": "a"}),
        "inventory": pl.DataFrame(BIG_HOST),
        "now": NOW,
        "exceedance": _exceedance("a", [0.03]),
        "costs": costs,
        "config": PlannerConfig(windows=1),
    }
    fresh = plan_pools(**common)
    held = plan_pools(
        **common,
        current_pool=pl.DataFrame({"client_id": ["a"], "tier": ["cold"], "host": ["big"]}),
    )
    assert _counts(fresh) == {}
    assert _counts(held) == {("a", "cold"): 1}
    kept = held.desired.filter(pl.col("tier") == "cold").row(0, named=True)
    assert kept["expected_cost"] == pytest.approx(0.0001235)


def test_confidence_mixes_the_forecast_with_the_base_rate():
    # P_eff = 0.5 x 0.8 + 0.5 x prior; with every tier off, it all shows as cold starts.
    config = PlannerConfig(windows=1, warm_tiers=())
    common = {
        "clients": _clients({"client_id": "a", "confidence": 0.5}),
        "inventory": pl.DataFrame(BIG_HOST),
        "now": NOW,
        "exceedance": _exceedance("a", [0.8]),
        "config": config,
    }
    without_prior = plan_pools(**common)
    with_prior = plan_pools(
        **common, priors=pl.DataFrame({"client_id": ["a"], "level": [1], "p_exceed": [0.4]})
    )
    assert _none_row(without_prior, "a")["expected_cold_starts"] == pytest.approx(0.4)
    assert _none_row(with_prior, "a")["expected_cold_starts"] == pytest.approx(0.6)
    # A window with no forecast at all falls back to the base rate, whatever the confidence.
    no_forecast = plan_pools(
        **{**common, "exceedance": None},
        priors=pl.DataFrame({"client_id": ["a"], "level": [1], "p_exceed": [0.4]}),
    )
    assert _none_row(no_forecast, "a")["expected_cold_starts"] == pytest.approx(0.4)


# --- the planner's threshold is the newsvendor critical probability -----------------------


def _threshold(idle: float, penalty: float) -> float:
    """critical_probability(R), R = penalty / idle; no idle cost (R = inf) keeps all warm."""
    return critical_probability(penalty / idle if idle > 0 else math.inf)


@pytest.mark.parametrize(
    ("idle", "penalty", "threshold"),
    [
        (0.005, 0.015, 0.25),
        (0.01, 0.01, 0.5),
        (0.002, 0.05, 0.002 / 0.052),
        (0.05, 0.002, 0.05 / 0.052),
        (0.0, 0.015, 0.0),  # idle costs nothing: anything that may be needed is kept warm
        (0.005, 0.0, 1.0),  # a cold start costs nothing: nothing is worth keeping warm
    ],
)
def test_the_planner_keeps_warm_exactly_the_levels_at_or_above_critical_probability(
    idle: float, penalty: float, threshold: float
):
    # Active tier only, no actions, 1 core over a 5-minute window: I T = idle, C = penalty.
    # The planner's break-even p C = (1 - p) I T is p = I T / (I T + C) = 1 / (1 + C / I T).
    assert _threshold(idle, penalty) == pytest.approx(threshold)
    near = [threshold + d for d in (-1e-6, 1e-6, -0.05, 0.05)]
    grid = [0.999, 0.9, 0.6, 0.4, 0.2, 0.05, 0.001, *near]
    p = sorted((v for v in grid if 0.0 < v < 1.0), reverse=True)
    costs = CostModel(
        core_minute=idle / 5.0,
        memory_gib_minute=0.0,
        disk_gib_minute=0.0,
        scaling_action=0.0,
        cold_start_penalty={"standard": penalty},
    )
    plan = plan_pools(
        _clients({"client_id": "a"}),
        pl.DataFrame(BIG_HOST),
        NOW,
        exceedance=_exceedance("a", p),
        costs=costs,
        config=PlannerConfig(windows=1, warm_tiers=("active",)),
    )
    warm = sum(v >= _threshold(idle, penalty) for v in p)
    assert _counts(plan) == ({("a", "active"): warm} if warm else {})


def test_with_no_idle_cost_and_no_penalty_nothing_is_kept_warm():
    # R = 0 / 0 has no critical probability; every option costs 0 and ties go to none.
    costs = CostModel(
        core_minute=0.0,
        memory_gib_minute=0.0,
        disk_gib_minute=0.0,
        scaling_action=0.0,
        cold_start_penalty={"standard": 0.0},
    )
    plan = plan_pools(
        _clients({"client_id": "a"}),
        pl.DataFrame(BIG_HOST),
        NOW,
        exceedance=_exceedance("a", [0.999, 0.5, 0.01]),
        costs=costs,
        config=PlannerConfig(windows=1, warm_tiers=("active",)),
    )
    assert _counts(plan) == {}
