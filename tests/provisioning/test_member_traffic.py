"""Each member carries the network and storage I/O its client's profile predicts, so host
network and I/O capacities in the inventory bind: a host never carries more active members
than its network allows, and the rest fall back to a tier that needs none."""

from __future__ import annotations

from datetime import datetime

import polars as pl
import pytest

from provisioning.cycle_plan import planner_clients
from provisioning.planner import PlannerConfig, plan_pools
from tests.provisioning.test_planner_decision import FIRST, NOW

PROFILE = {
    "client_id": "c1",
    "window_start": datetime(2026, 1, 5, 12),
    "concurrency_p90": 4.0,
    "net_mbps_p90": 200.0,  # Mbps at peak
    "io_ops_p90": 6000.0,  # operations in a 5-minute bucket at peak
    "confidence": 0.9,
}
CLIENTS = pl.DataFrame(
    {
        "client_id": ["c1", "c2"],
        "tier": ["premium", "free"],
        "mode": ["provision"] * 2,
        "freq_seconds": [300, 60],
    }
)
SIZES = {"c1": (0.5, 256.0), "c2": (0.25, 128.0)}


def test_a_member_carries_its_share_of_the_peak_traffic():
    profiles = pl.DataFrame(
        [
            PROFILE,
            {
                **PROFILE,
                "window_start": datetime(2026, 1, 5, 14),
                "net_mbps_p90": 120.0,
                "io_ops_p90": 1200.0,
                "concurrency_p90": 2.0,
            },  # 60 Mbps a member: the most any window asks (its I/O, 2 a second, is not)
            {
                **PROFILE,
                "client_id": "c2",
                "concurrency_p90": 0.3,
                "net_mbps_p90": None,
                "io_ops_p90": 600.0,
            },  # less than one request in flight: counts as one
        ]
    )
    frame = planner_clients(CLIENTS, SIZES, profiles).sort("client_id")
    rows = {r["client_id"]: r for r in frame.iter_rows(named=True)}
    assert rows["c1"]["container_net_mbps"] == pytest.approx(60.0)
    assert rows["c1"]["container_io_ops"] == pytest.approx(5.0)  # 6000 / 300 s / 4
    assert rows["c2"]["container_net_mbps"] == 0.0  # not forecast: not constrained
    assert rows["c2"]["container_io_ops"] == pytest.approx(10.0)  # 600 / 60 s / 1
    assert (rows["c1"]["container_cpu"], rows["c1"]["container_memory_mb"]) == SIZES["c1"]


def test_a_hosts_network_is_never_exceeded_by_predicted_traffic():
    profiles = pl.DataFrame([PROFILE])  # 50 Mbps a member
    clients = planner_clients(CLIENTS.filter(pl.col("client_id") == "c1"), SIZES, profiles)
    exceedance = pl.DataFrame(
        {"client_id": ["c1"] * 4, "ts": [FIRST] * 4, "level": [1, 2, 3, 4], "p_exceed": [0.99] * 4}
    )
    inventory = pl.DataFrame(
        {"host": ["h1"], "cpu_cores": [64.0], "memory_mb": [65536.0], "net_mbps": [120.0]}
    )
    plan = plan_pools(
        clients, inventory, NOW, exceedance=exceedance, config=PlannerConfig(windows=1)
    )
    desired = plan.desired.group_by("tier").agg(pl.col("count").sum())
    counts = dict(desired.iter_rows())
    assert counts.get("active", 0) == 2  # 2 x 50 <= 120 < 3 x 50
    assert counts.get("active", 0) + counts.get("shadow", 0) == 4  # the rest paused: no traffic
    assert "net" in " ".join(plan.unserved["reason"].to_list())


def test_a_less_certain_traffic_forecast_reserves_more_per_member():
    sure = {**PROFILE, "net_mbps_confidence": 1.0, "io_ops_confidence": 1.0}
    unsure = {**PROFILE, "net_mbps_confidence": 0.2, "io_ops_confidence": 0.6}
    by_confidence = {}
    for name, row in (("sure", sure), ("unsure", unsure)):
        frame = planner_clients(CLIENTS.head(1), {"c1": SIZES["c1"]}, pl.DataFrame([row]))
        by_confidence[name] = frame.row(0, named=True)
    assert by_confidence["sure"]["container_net_mbps"] == pytest.approx(50.0)  # 200 / 4
    # Headroom 1 + 0.5 x (1 - confidence): x1.4 for the network, x1.2 for I/O.
    assert by_confidence["unsure"]["container_net_mbps"] == pytest.approx(50.0 * 1.4)
    assert by_confidence["unsure"]["container_io_ops"] == pytest.approx(5.0 * 1.2)


def test_the_plan_is_tempered_by_how_sure_the_concurrency_forecast_is():
    # The window's confidence speaks for its demand metric (requests); the planner plans
    # concurrency, so that metric's own confidence tempers it when the profile has one.
    profiles = pl.DataFrame(
        [
            {**PROFILE, "concurrency_confidence": 0.3},
            {**PROFILE, "client_id": "c2", "concurrency_confidence": None},
        ]
    )
    frame = planner_clients(CLIENTS, SIZES, profiles)
    confidence = dict(frame.select("client_id", "confidence").iter_rows())
    assert confidence == {"c1": 0.3, "c2": 0.9}
    no_column = planner_clients(CLIENTS, SIZES, pl.DataFrame([PROFILE]))
    assert dict(no_column.select("client_id", "confidence").iter_rows()) == {"c1": 0.9, "c2": 1.0}
