"""Cost model: the documented table of rates, derived prices per tier, TOML loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from provisioning.costs import CostConfigError, CostModel, cost_model_from_dict, load_cost_model

REPO = Path(__file__).resolve().parents[2]


def test_table_lists_every_rate_with_its_unit_and_default():
    table = {row["field"]: (row["unit"], row["value"]) for row in CostModel().table()}
    assert table == {
        "core_minute": ("$ / core-minute", 0.0008),
        "memory_gib_minute": ("$ / GiB-minute", 0.0001),
        "disk_gib_minute": ("$ / GiB-minute", 0.000002),
        "container_disk_gib": ("GiB / container", 1.0),
        "default_cold_start_penalty": ("$ / cold start", 0.005),
        "cold_start_seconds": ("s", 10.0),
        "start_seconds": ("s", 2.0),
        "unpause_seconds": ("s", 0.2),
        "scaling_action": ("$ / action", 0.0001),
        "cold_start_penalty.free": ("$ / cold start", 0.001),
        "cold_start_penalty.premium": ("$ / cold start", 0.02),
        "cold_start_penalty.standard": ("$ / cold start", 0.005),
    }


def test_idle_cost_per_tier_holds_cpu_memory_and_disk_as_documented():
    costs = CostModel()
    # 2 cores, 1536 MiB = 1.5 GiB; disk = 1 GiB x 0.000002
    disk = 0.000002
    assert costs.idle_per_minute("active", 2.0, 1536.0) == pytest.approx(
        2 * 0.0008 + 1.5 * 0.0001 + disk
    )
    assert costs.idle_per_minute("shadow", 2.0, 1536.0) == pytest.approx(1.5 * 0.0001 + disk)
    assert costs.idle_per_minute("cold", 2.0, 1536.0) == pytest.approx(disk)


def test_idle_cost_is_vectorised_and_takes_a_hosts_own_rates():
    costs = CostModel()
    rates = costs.idle_per_minute(
        "active", np.array([1.0, 4.0]), np.array([1024.0, 2048.0]), core_minute=0.001
    )
    assert rates == pytest.approx([0.001 + 0.0001 + 0.000002, 0.004 + 0.0002 + 0.000002])
    with pytest.raises(ValueError, match="unknown warm tier 'warm'"):
        costs.idle_per_minute("warm", 1.0, 1.0)


def test_cold_penalty_by_tier_with_a_default_for_unknown_tiers():
    costs = CostModel()
    assert costs.cold_penalty("premium") == 0.02
    assert costs.cold_penalty("free") == 0.001
    assert costs.cold_penalty("enterprise") == 0.005
    assert costs.cold_penalty(None) == 0.005


def test_activation_penalty_is_the_cold_penalty_times_the_wait_share():
    costs = CostModel()
    # shadow: 0.2 s of a 10 s cold start = 2%; cold: 2 s = 20%; active: no wait
    assert costs.activation_penalty("shadow", "premium") == pytest.approx(0.02 * 0.02)
    assert costs.activation_penalty("cold", "standard") == pytest.approx(0.005 * 0.2)
    assert costs.activation_penalty("active", "premium") == 0.0


def test_loads_the_costs_section_of_the_example_inventory():
    costs = load_cost_model(REPO / "inventory.toml")
    assert costs.scaling_action == 0.0001
    assert dict(costs.cold_start_penalty) == {"free": 0.001, "standard": 0.005, "premium": 0.02}


def test_a_partial_penalty_table_keeps_the_other_tiers():
    costs = cost_model_from_dict({"cold_start_penalty": {"gold": 0.05}, "core_minute": 1})
    assert costs.cold_penalty("gold") == 0.05
    assert costs.cold_penalty("free") == 0.001
    assert costs.core_minute == 1.0


def test_missing_section_gives_the_defaults(tmp_path: Path):
    path = tmp_path / "c.toml"
    path.write_text("[hosts_unrelated]\nx = 1\n")
    assert load_cost_model(path) == CostModel()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"core_minutes": 1.0}, "unknown key(s) core_minutes"),
        ({"core_minute": "cheap"}, "costs.core_minute: expected a number, got str 'cheap'"),
        ({"scaling_action": True}, "costs.scaling_action: expected a number, got bool"),
        ({"core_minute": -1.0}, "core_minute must be a finite number >= 0, got -1.0"),
        ({"cold_start_seconds": 0}, "cold_start_seconds must be > 0"),
        ({"start_seconds": 20}, "latencies must be ordered unpause_seconds <= start_seconds"),
        ({"cold_start_penalty": {"free": -2}}, "cold_start_penalty.free must be a finite number"),
        ({"cold_start_penalty": 3}, "costs.cold_start_penalty: expected a table"),
    ],
)
def test_bad_values_name_the_key(values: dict, message: str):
    with pytest.raises(CostConfigError) as error:
        cost_model_from_dict(values)
    assert message in str(error.value)


def test_the_penalty_table_cannot_be_mutated_behind_the_planner():
    costs = CostModel()
    with pytest.raises(TypeError):
        costs.cold_start_penalty["free"] = 1.0  # type: ignore[index]
