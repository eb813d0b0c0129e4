"""Targets: span maxima, the reactive floor, the stabilising hold, and room on hosts."""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl
import pytest

from provisioning.targets import pool_targets, targets_as_desired, targets_hold

T0 = datetime(2026, 11, 30, 12, 0)
TICK = timedelta(minutes=5)


def _desired(rows: list[tuple[str, int, str, int]], host: str = "h1", mode: str = "provision"):
    """rows: (client, window index, tier, count)."""
    return pl.DataFrame(
        [
            {
                "client_id": c,
                "window_start": T0 + w * TICK,
                "tier": t,
                "count": n,
                "host": host,
                "mode": mode,
            }
            for c, w, t, n in rows
        ],
        schema={
            "client_id": pl.String,
            "window_start": pl.Datetime("us"),
            "tier": pl.String,
            "count": pl.Int64,
            "host": pl.String,
            "mode": pl.String,
        },
    )


def _row(frame: pl.DataFrame, client: str) -> dict:
    rows = frame.filter(pl.col("client_id") == client).to_dicts()
    assert len(rows) == 1, rows
    return rows[0]


def test_span_takes_each_windows_most_members_counted_from_the_warmest_tier():
    desired = _desired([("a", 0, "active", 2), ("a", 1, "shadow", 3), ("a", 3, "active", 9)])
    targets = pool_targets(desired, T0, T0 + 2 * TICK, T0 + 2 * TICK)
    row = _row(targets, "a")
    # window 0: 2 running; window 1: 3 warm (none running): 2 active + 1 shadow cover both
    assert (row["active"], row["shadow"], row["cold"]) == (2, 1, 0)
    assert row["hold"] == 3  # window 3 (9 active) is beyond the span and the look-ahead


def test_look_ahead_windows_hold_members_without_creating_them():
    desired = _desired([("a", 0, "active", 1), ("a", 2, "active", 4)])
    targets = pool_targets(desired, T0, T0 + TICK, T0 + 3 * TICK)
    row = _row(targets, "a")
    assert (row["active"], row["hold"]) == (1, 4)


def test_floor_tops_up_to_the_need_just_observed_in_the_floor_tier():
    desired = _desired([("a", 0, "active", 1)])
    floor = pl.DataFrame({"client_id": ["a", "b"], "need": [3.2, 2.0]})
    targets = pool_targets(desired, T0, T0 + TICK, T0 + TICK, floor=floor)
    a, b = _row(targets, "a"), _row(targets, "b")
    assert (a["active"], a["shadow"], a["floor_need"]) == (1, 3, 4)  # ceil(3.2) = 4 warm
    assert "floor" in a["reason"]
    assert (b["active"], b["shadow"], b["floor_need"]) == (0, 2, 2)


def test_floor_counts_only_warm_members_and_starts_a_planned_cold_one_first():
    desired = _desired([("a", 0, "cold", 2)])
    floor = pl.DataFrame({"client_id": ["a"], "need": [1.0]})
    row = _row(pool_targets(desired, T0, T0 + TICK, T0 + TICK, floor=floor), "a")
    assert (row["shadow"], row["cold"]) == (1, 1)


def test_floor_is_placed_only_where_the_host_has_room():
    desired = _desired([("a", 0, "shadow", 1)])
    floor = pl.DataFrame({"client_id": ["a"], "need": [5.0]})
    clients = pl.DataFrame(
        {"client_id": ["a"], "container_cpu": [0.5], "container_memory_mb": [512.0]}
    )
    inventory = pl.DataFrame({"host": ["h1"], "cpu_cores": [2.0], "memory_mb": [1536.0]})
    row = _row(
        pool_targets(
            desired, T0, T0 + TICK, T0 + TICK, floor=floor, clients=clients, inventory=inventory
        ),
        "a",
    )
    assert row["shadow"] == 3  # 3 x 512 MB fill the host; 2 more would not fit
    assert "2 without room" in row["reason"]


def test_hold_keeps_what_recent_targets_and_recent_need_wanted():
    desired = _desired([("a", 0, "active", 1)])
    recent_targets = pl.DataFrame(
        {"client_id": ["a", "gone"], "host": ["h1", "h1"], "total": [5, 2]}
    )
    recent_need = pl.DataFrame({"client_id": ["a", "c"], "need": [2.0, 1.5]})
    inventory = pl.DataFrame(
        {"host": ["h2", "h1"], "cpu_cores": [8.0, 8.0], "memory_mb": [1e5, 1e5]}
    )
    targets = pool_targets(
        desired,
        T0,
        T0 + TICK,
        T0 + TICK,
        recent_targets=recent_targets,
        recent_need=recent_need,
        inventory=inventory,
    )
    assert _row(targets, "a")["hold"] == 5
    gone = _row(targets, "gone")  # no longer planned, but wanted within the delay: kept
    assert (gone["active"] + gone["shadow"] + gone["cold"], gone["hold"]) == (0, 2)
    assert gone["reason"].startswith("hold")
    c = _row(targets, "c")
    assert c["hold"] == 2 and c["host"] == "h1"  # no home yet: the first host by name


def test_forecast_only_clients_get_no_target():
    desired = pl.concat(
        [_desired([("a", 0, "active", 1)]), _desired([("f", 0, "active", 3)], mode="forecast-only")]
    )
    floor = pl.DataFrame({"client_id": ["f"], "need": [4.0]})
    recent_targets = pl.DataFrame({"client_id": ["f"], "host": ["h1"], "total": [3]})
    targets = pool_targets(
        desired, T0, T0 + TICK, T0 + TICK, floor=floor, recent_targets=recent_targets
    )
    assert targets.get_column("client_id").to_list() == ["a"]


def test_hold_is_cut_where_held_warm_members_would_overfill_a_hosts_memory():
    desired = _desired([("a", 0, "active", 2)])
    recent_targets = pl.DataFrame({"client_id": ["b"], "host": ["h1"], "total": [4]})
    clients = pl.DataFrame(
        {
            "client_id": ["a", "b"],
            "container_cpu": [0.5, 0.5],
            "container_memory_mb": [512.0, 512.0],
        }
    )
    inventory = pl.DataFrame({"host": ["h1"], "cpu_cores": [4.0], "memory_mb": [2048.0]})

    def held(tier: str) -> dict:
        current = pl.DataFrame({"client_id": ["b"], "tier": [tier], "host": ["h1"], "count": [4]})
        targets = pool_targets(
            desired,
            T0,
            T0 + TICK,
            T0 + TICK,
            recent_targets=recent_targets,
            clients=clients,
            inventory=inventory,
            current=current,
        )
        assert _row(targets, "a")["hold"] == 2
        return _row(targets, "b")

    warm = held("shadow")
    assert warm["hold"] == 2  # 2 x 512 of a + 2 x 512 held paused = the host's 2048
    assert "host h1 full" in warm["reason"]
    assert held("cold")["hold"] == 4  # created, not started: they hold no memory


def test_targets_convert_to_the_reconcilers_inputs():
    desired = _desired([("a", 0, "active", 1), ("a", 0, "shadow", 2)])
    targets = pool_targets(desired, T0, T0 + TICK, T0 + 2 * TICK)
    rows = targets_as_desired(targets).to_dicts()
    assert rows == [
        {"client_id": "a", "tier": "active", "count": 1, "host": "h1"},
        {"client_id": "a", "tier": "shadow", "count": 2, "host": "h1"},
    ]
    assert targets_hold(targets) == {("a", "h1"): 3}


def test_an_unknown_floor_tier_is_refused():
    with pytest.raises(ValueError, match="floor_tier"):
        pool_targets(_desired([]), T0, T0 + TICK, T0 + TICK, floor_tier="warm")


def test_a_more_cautious_plan_over_the_look_ahead_holds_what_it_would_keep():
    desired = _desired([("a", 0, "active", 1), ("a", 2, "active", 1)])
    cautious = _desired([("a", 0, "active", 1), ("a", 2, "active", 3)])
    row = _row(pool_targets(desired, T0, T0 + TICK, T0 + 3 * TICK, lookahead=cautious), "a")
    assert (row["active"], row["hold"]) == (1, 3)  # created for the plan, held for the caution
