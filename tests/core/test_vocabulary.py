"""The shared words: each StrEnum, its plain tuple and its Literal say the same thing."""

from datetime import UTC, datetime, timedelta, timezone
from typing import get_args

import polars as pl
import pytest

from core import vocabulary as v
from core.times import aware_utc, floor_to, naive_utc, naive_utc_expr


@pytest.mark.parametrize(
    ("enum", "values", "literal"),
    [
        (v.Tier, v.TIERS, v.TierName),
        (v.Mode, v.MODES, v.ModeName),
        (v.Metric, v.METRICS, v.MetricName),
        (v.Source, v.SOURCES, v.SourceName),
    ],
)
def test_enum_tuple_and_literal_agree(enum, values, literal) -> None:
    assert tuple(member.value for member in enum) == values
    assert get_args(literal) == values
    assert all(type(value) is str for value in values)  # polars wants plain strings


def test_tiers_run_warmest_first() -> None:
    assert v.TIERS == ("active", "shadow", "cold")


def test_naive_and_aware_utc_round_trip() -> None:
    plus_two = timezone(timedelta(hours=2))
    moment = datetime(2026, 3, 1, 12, 30, tzinfo=plus_two)
    assert naive_utc(moment) == datetime(2026, 3, 1, 10, 30)
    assert naive_utc(datetime(2026, 3, 1, 10, 30)) == datetime(2026, 3, 1, 10, 30)
    assert aware_utc(datetime(2026, 3, 1, 10, 30)) == datetime(2026, 3, 1, 10, 30, tzinfo=UTC)
    assert aware_utc(moment).utcoffset() == timedelta(0)


def test_naive_utc_expr_converts_zoned_columns_and_keeps_naive_ones() -> None:
    paris_noon = pl.Series("ts", [datetime(2026, 3, 1, 12, 0)]).dt.replace_time_zone("Europe/Paris")
    frame = pl.DataFrame([paris_noon.dt.cast_time_unit("ms")])
    zoned = frame.select(naive_utc_expr(frame, "ts")).item()
    assert zoned == datetime(2026, 3, 1, 11, 0)
    naive = pl.DataFrame({"ts": [datetime(2026, 3, 1, 12, 0)]})
    assert naive.select(naive_utc_expr(naive, "ts")).item() == datetime(2026, 3, 1, 12, 0)


def test_floor_to_rounds_down_to_the_tick() -> None:
    tick = timedelta(minutes=5)
    assert floor_to(datetime(2026, 3, 1, 12, 7, 59), tick) == datetime(2026, 3, 1, 12, 5)
    assert floor_to(datetime(2026, 3, 1, 12, 5), tick) == datetime(2026, 3, 1, 12, 5)
