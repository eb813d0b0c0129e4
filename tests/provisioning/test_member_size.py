"""Members are sized from the forecast: what one instance is predicted to use at the p90 of
the busiest window ahead, with more headroom when that resource's forecast is less sure,
on a ladder of sizes (so a wobbling forecast does not resize members every cycle), within
the schema's bounds and the largest host."""

from __future__ import annotations

from datetime import datetime

import polars as pl
import pytest

from provisioning.member_size import ladder_up, member_sizes, resized_clients, upcoming
from provisioning.schema_model import Sizing

DECLARED = {"c1": (0.5, 512.0)}
HOST = {"max_cpu": 8.0, "max_memory_mb": 16_384.0}


def _profile(memory_p90: float, cpu_p90: float = 1.0, **extra: float | None) -> pl.DataFrame:
    row = {
        "client_id": "c1",
        "window_start": datetime(2026, 1, 5, 12),
        "window_end": datetime(2026, 1, 5, 13),
        "concurrency_p90": 2.0,  # two instances at peak: each carries half
        "cpu_cores_p90": cpu_p90,
        "memory_mb_p90": memory_p90,
        "cpu_cores_confidence": 1.0,
        "memory_mb_confidence": 1.0,
        **extra,
    }
    return pl.DataFrame([row])


def test_the_ladder_rounds_up_to_one_or_one_and_a_half_times_a_power_of_two():
    assert [ladder_up(v, 16.0) for v in (1, 16, 17, 24, 25, 32, 33, 700)] == [
        16,
        16,
        24,
        24,
        32,
        32,
        48,
        768,
    ]


def test_a_member_covers_one_instances_predicted_p90():
    cpu, memory = member_sizes(DECLARED, _profile(memory_p90=600.0), **HOST)["c1"]
    assert 300.0 <= memory <= 300.0 * 1.5  # 600 MB over two instances, rounded up a rung
    assert 0.5 <= cpu <= 0.5 * 1.5


def test_predicted_memory_doubling_doubles_the_member():
    before = member_sizes(DECLARED, _profile(memory_p90=600.0), **HOST)["c1"][1]
    after = member_sizes(DECLARED, _profile(memory_p90=1200.0), **HOST)["c1"][1]
    assert after == pytest.approx(2 * before)


def test_a_small_wobble_keeps_the_size():
    sizes = {
        member_sizes(DECLARED, _profile(memory_p90=m), **HOST)["c1"][1] for m in (520, 540, 570)
    }
    assert len(sizes) == 1


def test_less_confidence_in_a_resource_sizes_it_bigger():
    sure = member_sizes(DECLARED, _profile(memory_p90=600.0), **HOST)["c1"][1]
    unsure = member_sizes(DECLARED, _profile(memory_p90=600.0, memory_mb_confidence=0.1), **HOST)[
        "c1"
    ][1]
    assert unsure > sure
    assert unsure >= 300.0 * (1 + 0.5 * 0.9)


def test_the_size_stays_within_the_schema_bounds_and_the_largest_host():
    huge = _profile(memory_p90=1_000_000.0, cpu_p90=100.0)
    cpu, memory = member_sizes(DECLARED, huge, **HOST)["c1"]
    assert (cpu, memory) == (2.0, 2048.0)  # four times the declared size, by default
    bounded = {"c1": Sizing(max_memory_mb=1024.0, max_cpu=64.0).model_dump()}
    cpu, memory = member_sizes(DECLARED, huge, **HOST, sizing=bounded)["c1"]
    assert memory == 1024.0 and cpu == HOST["max_cpu"]  # the host, not the schema, binds
    tiny = _profile(memory_p90=1.0, cpu_p90=0.001)
    assert member_sizes(DECLARED, tiny, **HOST)["c1"] == (0.125, 128.0)  # a quarter


def test_a_client_can_keep_its_declared_size_or_has_no_forecast_to_size_by():
    fixed = {"c1": Sizing(from_forecast=False).model_dump()}
    assert member_sizes(DECLARED, _profile(memory_p90=4000.0), **HOST, sizing=fixed) == DECLARED
    no_memory = _profile(memory_p90=600.0).with_columns(pl.lit(None).alias("memory_mb_p90"))
    assert member_sizes(DECLARED, no_memory, **HOST)["c1"][1] == 512.0
    assert member_sizes(DECLARED, pl.DataFrame(), **HOST) == DECLARED


def test_members_are_sized_for_the_busiest_window_still_ahead():
    early = _profile(memory_p90=4000.0)
    late = _profile(memory_p90=600.0).with_columns(
        pl.lit(datetime(2026, 1, 5, 14)).alias("window_start"),
        pl.lit(datetime(2026, 1, 5, 15)).alias("window_end"),
    )
    profiles = pl.concat([early, late])
    both = member_sizes(DECLARED, upcoming(profiles, datetime(2026, 1, 5, 11)), **HOST)
    after_early = member_sizes(DECLARED, upcoming(profiles, datetime(2026, 1, 5, 13)), **HOST)
    assert both["c1"][1] > after_early["c1"][1]


def test_a_window_past_the_horizon_does_not_size_members_now():
    # A profile reaches a day; the cycle sizes for the windows inside its forecast horizon.
    tonight = _profile(memory_p90=4000.0).with_columns(
        pl.lit(datetime(2026, 1, 5, 20)).alias("window_start"),
        pl.lit(datetime(2026, 1, 5, 21)).alias("window_end"),
    )
    profiles = pl.concat([_profile(memory_p90=600.0), tonight])
    first = datetime(2026, 1, 5, 11)
    within_hour = upcoming(profiles, first, datetime(2026, 1, 5, 12, 30))
    assert within_hour.height == 1
    assert member_sizes(DECLARED, within_hour, **HOST)["c1"][1] <= 600.0 * 1.5 / 2
    whole_day = member_sizes(DECLARED, upcoming(profiles, first), **HOST)["c1"][1]
    assert whole_day >= 4000.0 / 2


def test_sizing_bounds_must_be_ordered():
    with pytest.raises(ValueError, match="min_memory_mb 900.0 is above max_memory_mb 100.0"):
        Sizing(min_memory_mb=900.0, max_memory_mb=100.0)


def test_members_grow_once_outgrown_and_shrink_only_to_half_their_size_or_less():
    now = {"c1": (0.5, 768.0)}
    held = member_sizes(
        DECLARED, _profile(memory_p90=1500.0, memory_mb_confidence=0.0), **HOST, current=now
    )["c1"][1]
    assert held == 768.0  # 750 MB an instance fits 768 (its headroom would want 1536)
    grown = member_sizes(DECLARED, _profile(memory_p90=2000.0), **HOST, current=now)["c1"][1]
    assert grown == 1024.0  # 1000 MB an instance outgrows 768: grows
    kept = member_sizes(DECLARED, _profile(memory_p90=1000.0), **HOST, current=now)["c1"][1]
    assert kept == 768.0  # 512 would do, but that is more than half of 768: kept
    shrunk = member_sizes(DECLARED, _profile(memory_p90=500.0), **HOST, current=now)["c1"][1]
    assert shrunk == 256.0  # 256 is a third of 768: shrinks


def test_a_client_without_a_window_ahead_keeps_the_size_it_has():
    # Windows entering and leaving the horizon flipped such a client between its declared
    # size (0.5 cores here) and its forecast one every few cycles, replacing its members.
    now = {"c1": (0.125, 1024.0)}
    assert member_sizes(DECLARED, pl.DataFrame(), **HOST, current=now) == now
    assert member_sizes(DECLARED, pl.DataFrame(), **HOST) == DECLARED  # nothing to keep yet
    no_cpu = _profile(memory_p90=2000.0).with_columns(pl.lit(None).alias("cpu_cores_p90"))
    assert member_sizes(DECLARED, no_cpu, **HOST, current=now)["c1"] == (0.125, 1024.0)


def test_a_size_still_settling_grows_but_does_not_shrink():
    now = {"c1": (0.5, 768.0)}
    small = _profile(memory_p90=500.0)  # 256 MB an instance: a third of 768
    assert member_sizes(DECLARED, small, **HOST, current=now, settling={"c1"})["c1"][1] == 768.0
    assert member_sizes(DECLARED, small, **HOST, current=now, settling={"c2"})["c1"][1] == 256.0
    big = _profile(memory_p90=2000.0)
    assert member_sizes(DECLARED, big, **HOST, current=now, settling={"c1"})["c1"][1] == 1024.0


def test_a_size_settles_once_it_has_held_since_the_plan_in_force_when_the_delay_began():
    in_force = {"a": (0.5, 512.0), "b": (1.0, 256.0), "d": (1.0, 64.0)}
    since = [
        {"a": (0.5, 512.0), "b": (1.0, 512.0), "c": (2.0, 64.0)},
        {"a": (0.5, 512.0), "b": (1.0, 256.0), "c": (2.0, 64.0)},
    ]
    # b was resized (and back), c sized for the first time; a held; d is no longer planned.
    assert resized_clients([in_force, *since]) == {"b", "c"}
    assert resized_clients([in_force]) == set()
    assert resized_clients([]) == set()
