"""Planner capacity and packing: fallbacks and reasons, home hosts, forecast-only, properties."""

from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provisioning.costs import CostModel
from provisioning.planner import UNSERVED_SCHEMA, PlannerConfig, desired_members, plan_pools
from tests.provisioning.test_planner_decision import (
    FIRST,
    NOW,
    STEP,
    _clients,
    _counts,
    _exceedance,
)

# --- capacity -----------------------------------------------------------------------------

SURE = CostModel(cold_start_penalty={"premium": 0.2})  # a premium cold start hurts: go active


def _host(name: str, cpu: float, memory: float, **extra: float) -> dict:
    return {"host": name, "cpu_cores": cpu, "memory_mb": memory, **extra}


def test_short_cpu_falls_back_to_shadow_by_priority_and_says_why():
    # Both want one 1.5-core container active; 2 cores hold one. a (confidence 1) saves
    # more than b (0.9), so b is paused instead, with the reason recorded.
    plan = plan_pools(
        _clients(
            {"client_id": "a", "tier": "premium", "container_cpu": 1.5},
            {"client_id": "b", "tier": "premium", "container_cpu": 1.5, "confidence": 0.9},
        ),
        pl.DataFrame([_host("h", 2.0, 4096.0)]),
        NOW,
        exceedance=pl.concat([_exceedance("a", [0.99]), _exceedance("b", [0.99])]),
        costs=SURE,
        config=PlannerConfig(windows=1),
    )
    assert _counts(plan) == {("a", "active"): 1, ("b", "shadow"): 1}
    assert plan.unserved.schema == pl.Schema(UNSERVED_SCHEMA)
    assert plan.unserved.select(
        "client_id", "tier", "placed_as", "instances", "reason"
    ).to_dicts() == [
        {
            "client_id": "b",
            "tier": "active",
            "placed_as": "shadow",
            "instances": 1,
            "reason": "cpu capacity short",
        }
    ]
    assert plan.totals["downgraded_instances"] == 1.0


def test_burst_reserve_and_oversized_containers():
    # 4 cores, half reserved: two of three 1-core instances go active. A 8-core client
    # can never be active on a 4-core host.
    plan = plan_pools(
        _clients(
            {"client_id": "a", "tier": "premium"},
            {"client_id": "huge", "tier": "premium", "container_cpu": 8.0},
        ),
        pl.DataFrame([_host("h", 4.0, 65536.0)]),
        NOW,
        exceedance=pl.concat([_exceedance("a", [0.999] * 3), _exceedance("huge", [0.999])]),
        costs=SURE,
        config=PlannerConfig(windows=1, burst_reserve=0.5),
    )
    counts = _counts(plan)
    assert counts[("a", "active")] == 2
    reasons = {(r["client_id"], r["reason"]) for r in plan.unserved.iter_rows(named=True)}
    assert reasons == {("a", "cpu capacity short"), ("huge", "container larger than any host")}


def test_room_split_across_hosts_is_fragmentation_not_shortage():
    # Three 1-core instances, two hosts of 1.5 cores: 3 cores in all admit them, but each
    # host holds one; the third is paused instead, and the reason says why.
    plan = plan_pools(
        _clients({"client_id": "a", "tier": "premium"}),
        pl.DataFrame([_host("h1", 1.5, 8192.0), _host("h2", 1.5, 8192.0)]),
        NOW,
        exceedance=_exceedance("a", [0.999] * 3),
        costs=SURE,
        config=PlannerConfig(windows=1),
    )
    assert _counts(plan) == {("a", "active"): 2, ("a", "shadow"): 1}
    row = plan.unserved.row(0, named=True)
    assert (row["tier"], row["placed_as"], row["reason"]) == (
        "active",
        "shadow",
        "no host has room left (fragmented)",
    )


def test_a_pool_stays_on_its_host_even_when_another_is_cheaper():
    hosts = pl.DataFrame(
        [
            _host("cheap", 8.0, 16384.0, cost_core_minute=0.0001),
            _host("dear", 8.0, 16384.0, cost_core_minute=0.001),
        ]
    )
    clients = _clients({"client_id": "a", "tier": "premium"}, {"client_id": "b", "tier": "premium"})
    exceedance = pl.concat([_exceedance("a", [0.99, 0.99]), _exceedance("b", [0.99])])
    held = pl.DataFrame({"client_id": ["a"], "tier": ["active"], "host": ["dear"], "count": [1]})
    plan = plan_pools(
        clients,
        hosts,
        NOW,
        exceedance=exceedance,
        current_pool=held,
        costs=SURE,
        config=PlannerConfig(windows=1),
    )
    members = desired_members(plan, NOW)
    assert members.to_dicts() == [
        {"client_id": "a", "tier": "active", "host": "dear", "count": 2},
        {"client_id": "b", "tier": "active", "host": "cheap", "count": 1},
    ]


# --- forecast-only ------------------------------------------------------------------------


def test_forecast_only_is_planned_marked_and_never_applied_nor_displacing():
    # fo would win on priority (premium) but only gets what the provisioning client left.
    plan = plan_pools(
        _clients(
            {"client_id": "fo", "tier": "premium", "mode": "forecast-only"},
            {"client_id": "p", "tier": "premium", "confidence": 0.9},
        ),
        pl.DataFrame([_host("h", 1.0, 65536.0)]),
        NOW,
        exceedance=pl.concat([_exceedance("fo", [0.999]), _exceedance("p", [0.999])]),
        costs=SURE,
        config=PlannerConfig(windows=1),
    )
    assert _counts(plan) == {("p", "active"): 1, ("fo", "shadow"): 1}
    fo_rows = plan.desired.filter(pl.col("client_id") == "fo")
    assert set(fo_rows["mode"]) == {"forecast-only"}
    assert desired_members(plan, NOW)["client_id"].to_list() == ["p"]
    assert plan.totals["forecast_only_expected_cost"] > 0


# --- properties ---------------------------------------------------------------------------

SIZES = [(0.25, 256.0), (0.5, 512.0), (1.0, 1024.0), (2.0, 4096.0), (4.0, 2048.0)]


@st.composite
def _scenarios(draw: st.DrawFn, ample: bool = False, exceedance_only: bool = False) -> dict:
    n = draw(st.integers(1, 6))
    windows = draw(st.integers(1, 3))
    levels = draw(st.integers(1, 5))
    ids = [f"c{i}" for i in range(n)]
    rows = []
    for client in ids:
        cpu, memory = draw(st.sampled_from(SIZES))
        rows.append(
            {
                "client_id": client,
                "tier": draw(st.sampled_from(["free", "standard", "premium", "gold", None])),
                "container_cpu": cpu,
                "container_memory_mb": memory,
                "container_net_mbps": draw(st.sampled_from([0.0, 50.0])),
                "mode": draw(st.sampled_from(["provision", "provision", "forecast-only"])),
                "confidence": draw(st.floats(0.0, 1.0)),
            }
        )
    unit = st.floats(0.0, 1.0)
    p = np.array(draw(st.lists(unit, min_size=n * windows * levels, max_size=n * windows * levels)))
    p = -np.sort(-p.reshape(n, windows, levels), axis=2)
    exceedance = pl.DataFrame(
        {
            "client_id": np.repeat(ids, windows * levels),
            "ts": [FIRST + w * STEP for _ in ids for w in range(windows) for _ in range(levels)],
            "level": np.tile(np.arange(1, levels + 1), n * windows),
            "p_exceed": p.ravel(),
        }
    )
    quantiles = None
    if not exceedance_only and draw(st.booleans()):
        q = np.sort(np.array(draw(st.lists(st.floats(0, 6), min_size=3 * n, max_size=3 * n))))
        quantiles = pl.DataFrame(
            {
                "client_id": ids,
                "ts": [FIRST + STEP * (windows - 1)] * n,
                "p10": q[:n],
                "p50": q[n : 2 * n],
                "p90": q[2 * n :],
            }
        )
    n_hosts = draw(st.integers(1, 3))
    scale = 1000.0 if ample else 1.0
    hosts = pl.DataFrame(
        [
            {
                "host": f"h{h}",
                "cpu_cores": scale * draw(st.sampled_from([1.0, 2.0, 4.0, 8.0])),
                "memory_mb": scale * draw(st.sampled_from([512.0, 2048.0, 8192.0])),
                "net_mbps": draw(st.sampled_from([None, 100.0])),
                "cost_core_minute": draw(st.sampled_from([None, 0.0004])),
            }
            for h in range(n_hosts)
        ],
        schema_overrides={"net_mbps": pl.Float64, "cost_core_minute": pl.Float64},
    )
    pool_clients = draw(st.lists(st.sampled_from(ids), max_size=4))
    pool = pl.DataFrame(
        {
            "client_id": pool_clients,
            "tier": [draw(st.sampled_from(["active", "shadow", "cold"])) for _ in pool_clients],
            "host": [f"h{draw(st.integers(0, n_hosts - 1))}" for _ in pool_clients],
            "count": [draw(st.integers(1, 3)) for _ in pool_clients],
        },
        schema={"client_id": pl.String, "tier": pl.String, "host": pl.String, "count": pl.Int64},
    )
    penalty = draw(st.sampled_from([1.0, 10.0, 100.0]))
    costs = CostModel(
        cold_start_penalty={t: v * penalty for t, v in CostModel().cold_start_penalty.items()},
        scaling_action=draw(st.sampled_from([0.0, 0.0001, 0.001])),
    )
    config = PlannerConfig(windows=windows, burst_reserve=draw(st.sampled_from([0.0, 0.25])))
    return {
        "clients": pl.DataFrame(rows),
        "inventory": hosts,
        "exceedance": exceedance,
        "quantiles": quantiles,
        "current_pool": pool,
        "costs": costs,
        "config": config,
        "p": p,
    }


def _plan(scenario: dict, **overrides):
    args = {k: v for k, v in scenario.items() if k != "p"}
    args.update(overrides)
    return plan_pools(args.pop("clients"), args.pop("inventory"), NOW, **args)


PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(_scenarios())
def test_capacity_is_never_exceeded(scenario: dict):
    plan = _plan(scenario)
    reserve = 1.0 - scenario["config"].burst_reserve
    used = (
        plan.desired.filter(pl.col("tier").is_in(["active", "shadow"]))
        .join(scenario["clients"], on="client_id")
        .with_columns(active=pl.col("tier") == "active")
        .group_by("window_start", "host")
        .agg(
            (pl.col("container_cpu") * pl.col("count")).filter(pl.col("active")).sum().alias("cpu"),
            (pl.col("container_net_mbps") * pl.col("count"))
            .filter(pl.col("active"))
            .sum()
            .alias("net"),
            (pl.col("container_memory_mb") * pl.col("count")).sum().alias("memory"),
        )
        .join(scenario["inventory"], on="host")
    )
    for row in used.iter_rows(named=True):
        assert row["cpu"] <= row["cpu_cores"] * reserve + 1e-6
        assert row["memory"] <= row["memory_mb"] * reserve + 1e-6
        if row["net_mbps"] is not None:
            assert row["net"] <= row["net_mbps"] * reserve + 1e-6


@PROPERTY
@given(_scenarios(ample=True), st.data())
def test_more_demand_never_yields_fewer_containers(scenario: dict, data: st.DataObject):
    # With room to spare, raise every P(need >= k) (a stochastically larger demand).
    p = scenario["p"]
    bump = np.array(data.draw(st.lists(st.floats(0, 1), min_size=p.size, max_size=p.size)))
    larger = np.minimum(1.0, p + bump.reshape(p.shape))
    more = scenario["exceedance"].with_columns(p_exceed=pl.Series(larger.ravel()))
    before, after = _plan(scenario), _plan(scenario, exceedance=more)

    def keyed(plan) -> dict:
        warm = plan.desired.filter(pl.col("tier") != "none")
        grouped = warm.group_by("client_id", "window_start").agg(pl.col("count").sum())
        return {(c, w): n for c, w, n in grouped.iter_rows()}

    low, high = keyed(before), keyed(after)
    for key, count in low.items():
        assert high.get(key, 0) >= count, key


@PROPERTY
@given(_scenarios(exceedance_only=True))
def test_forecast_only_touches_nothing(scenario: dict):
    plan = _plan(scenario)
    fo = set(scenario["clients"].filter(pl.col("mode") == "forecast-only")["client_id"])
    rows = plan.desired.filter(pl.col("client_id").is_in(fo))
    assert set(rows["mode"]) <= {"forecast-only"}
    for window in plan.window_starts:
        members = desired_members(plan, window - timedelta(seconds=plan.buffer_seconds))
        assert not set(members["client_id"]) & fo
    # The provisioning clients' plan is the same with or without the forecast-only ones.
    alone = _plan(
        scenario,
        clients=scenario["clients"].filter(~pl.col("client_id").is_in(fo)),
        exceedance=scenario["exceedance"].filter(~pl.col("client_id").is_in(fo)),
        current_pool=scenario["current_pool"].filter(~pl.col("client_id").is_in(fo)),
    )
    provisioned = plan.desired.filter(~pl.col("client_id").is_in(fo))
    assert provisioned.equals(alone.desired)


@PROPERTY
@given(_scenarios())
def test_plans_are_deterministic_and_totals_add_up(scenario: dict):
    first, second = _plan(scenario), _plan(scenario)
    assert first.desired.equals(second.desired)
    assert first.unserved.equals(second.unserved)
    provisioned = first.desired.filter(pl.col("mode") == "provision")
    assert first.totals["expected_cost"] == pytest.approx(provisioned["expected_cost"].sum())
    assert first.totals["expected_cold_starts"] == pytest.approx(
        provisioned["expected_cold_starts"].sum()
    )
    assert math.isfinite(first.totals["reactive_cost"])
