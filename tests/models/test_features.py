"""Feature rows from tiny literal frames, every number worked out by hand."""

from __future__ import annotations

import pickle
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest

from models.features import (
    FeatureSpec,
    assemble_rows,
    build_series,
    calendar_flags,
    make_feature_spec,
    regular_grid,
    to_long,
)

T0 = datetime(2026, 1, 5)  # a Monday, 00:00 UTC
FIVE_MIN = timedelta(minutes=5)
HOUR = timedelta(hours=1)


def _usage(client: str, values: list[float], step: timedelta = FIVE_MIN) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "client_id": [client] * len(values),
            "ts": [T0 + i * step for i in range(len(values))],
            "requests": [float(v) for v in values],
        },
        schema={"client_id": pl.String, "ts": pl.Datetime("us"), "requests": pl.Float64},
    )


def _scales(clients: list[str], scale: float) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "client_id": clients,
            "metric": ["requests"] * len(clients),
            "scale": [scale] * len(clients),
        }
    )


def _rows(
    usage: pl.DataFrame,
    spec: FeatureSpec,
    pairs: pl.DataFrame,
    scale: float = 1.0,
    calendar: pl.DataFrame | None = None,
    clients: pl.DataFrame | None = None,
) -> pl.DataFrame:
    grid = regular_grid(usage, spec.freq_seconds, ["requests"], extend_steps=spec.horizon_steps)
    ids = usage.get_column("client_id").unique().to_list()
    series = build_series(to_long(grid, ["requests"]), spec, _scales(ids, scale), calendar, clients)
    return assemble_rows(series, pairs, spec)


def _step(moment: datetime, freq_seconds: int) -> int:
    return int((moment - datetime(1970, 1, 1)).total_seconds()) // freq_seconds


SMALL = FeatureSpec(
    freq_seconds=300,
    horizon_steps=12,
    lags=(1, 2),
    rolling=(("mean", 3), ("max", 3), ("min", 3), ("std", 3)),
    ewm_half_lives=(),
    slopes=(2,),
    seasons=(),
)


def test_origin_features_are_scaled_and_relative_to_the_last_value():
    # values 2, 4, 6, 10, 8 at 00:00..00:20; origin = 00:20 (value 8), scale 2 -> z = 1,2,3,5,4
    usage = _usage("a", [2, 4, 6, 10, 8])
    origin = _step(T0 + 4 * FIVE_MIN, 300)
    pairs = pl.DataFrame({"client_id": ["a"], "step": [origin], "horizon": [1]})
    row = _rows(usage, SMALL, pairs, scale=2.0).row(0, named=True)

    assert row["level"] == pytest.approx(4.0)  # 8 / 2
    assert row["lag_1"] == pytest.approx(5 - 4)  # z(t-1) - z(t)
    assert row["lag_2"] == pytest.approx(3 - 4)
    assert row["mean_3"] == pytest.approx((3 + 5 + 4) / 3 - 4)
    assert row["max_3"] == pytest.approx(5 - 4)
    assert row["min_3"] == pytest.approx(3 - 4)
    assert row["std_3"] == pytest.approx(np.std([3, 5, 4], ddof=1))
    # slope over 2 steps: mean(z[3], z[4]) - mean(z[1], z[2]) = 4.5 - 2.5
    assert row["slope_2"] == pytest.approx(2.0)
    # the target (00:25) is beyond the data: unknown
    assert row["target"] is None


def test_target_is_the_scaled_change_and_time_features_describe_the_target():
    usage = _usage("a", [2, 4, 6, 10, 8, 12])
    origin = _step(T0 + 2 * FIVE_MIN, 300)  # value 6
    pairs = pl.DataFrame({"client_id": ["a", "a"], "step": [origin, origin], "horizon": [1, 3]})
    rows = _rows(usage, SMALL, pairs, scale=2.0).sort("horizon")

    assert rows.get_column("target").to_list() == pytest.approx([(10 - 6) / 2, (12 - 6) / 2])
    assert rows.get_column("target_ts").to_list() == [T0 + 3 * FIVE_MIN, T0 + 5 * FIVE_MIN]
    assert rows.get_column("hour").to_list() == pytest.approx([15 / 60, 25 / 60])
    assert rows.get_column("dow").to_list() == [1.0, 1.0]  # Monday
    assert rows.get_column("horizon").to_list() == [1, 3]


def test_seasonal_lookup_stays_at_or_before_the_origin():
    # hourly data, a day = 24 steps; horizon up to 30 h needs two seasons back beyond 24 h
    spec = FeatureSpec(
        freq_seconds=3600,
        horizon_steps=30,
        lags=(1,),
        rolling=(),
        ewm_half_lives=(),
        slopes=(),
        seasons=(24,),
    )
    values = [float(i * i) for i in range(60)]  # z = i^2 (scale 1)
    usage = _usage("a", values, step=HOUR)
    t = 55
    origin = _step(T0 + t * HOUR, 3600)
    pairs = pl.DataFrame({"client_id": ["a", "a"], "step": [origin, origin], "horizon": [2, 26]})
    rows = _rows(usage, spec, pairs).sort("horizon")
    near, far = rows.row(0, named=True), rows.row(1, named=True)

    # h = 2: one day back, index t + 2 - 24 = 33
    assert near["season_24_gap"] == pytest.approx(33**2 - t**2)
    assert near["season_24_change"] == pytest.approx(33**2 - (t - 24) ** 2)
    # h = 26 > 24: two days back, index t + 26 - 48 = 33 again, anchored at t - 48
    assert far["season_24_gap"] == pytest.approx(33**2 - t**2)
    assert far["season_24_change"] == pytest.approx(33**2 - (t - 48) ** 2)


def test_calendar_flags_apply_in_the_clients_region_and_globally():
    calendar = pl.DataFrame(
        {
            "region": ["eu-west", "global"],
            "start_ts": [T0 + 10 * FIVE_MIN, T0 + 20 * FIVE_MIN],
            "end_ts": [T0 + 12 * FIVE_MIN, T0 + 21 * FIVE_MIN],
            "name": ["eu holiday", "worldwide launch"],
            "kind": ["holiday", "launch"],
        },
        schema_overrides={"start_ts": pl.Datetime("us"), "end_ts": pl.Datetime("us")},
    )
    clients = pl.DataFrame(
        {
            "client_id": ["eu", "us"],
            "tier": ["free", "premium"],
            "region": ["eu-west", "us-east"],
            "service": ["api", "web"],
            "container_cpu": [0.5, 2.0],
            "container_memory_mb": [256.0, 1024.0],
        }
    )
    usage = pl.concat([_usage("eu", [1.0] * 30), _usage("us", [1.0] * 30)])
    spec = make_feature_spec(300, 12, train_steps=30, clients=clients, calendar=calendar)
    origin = _step(T0 + 9 * FIVE_MIN, 300)
    pairs = pl.DataFrame(
        {
            "client_id": ["eu", "eu", "eu", "us", "us"],
            "step": [origin] * 5,
            "horizon": [1, 3, 11, 1, 11],  # targets 00:50 (in), 01:00 (end, out), 01:40 (launch)
        }
    )
    rows = _rows(usage, spec, pairs, calendar=calendar, clients=clients).sort(
        "client_id", "horizon"
    )
    flags = {
        (r["client_id"], r["horizon"]): (r["holiday"], r["launch"])
        for r in rows.iter_rows(named=True)
    }
    assert flags[("eu", 1)] == (1.0, 0.0)
    assert flags[("eu", 3)] == (0.0, 0.0)  # end_ts is exclusive
    assert flags[("eu", 11)] == (0.0, 1.0)  # a 'global' event applies everywhere
    assert flags[("us", 1)] == (0.0, 0.0)  # another region's holiday does not
    assert flags[("us", 11)] == (0.0, 1.0)
    codes = {r["client_id"]: (r["tier"], r["region"], r["container_cpu"]) for r in rows.to_dicts()}
    assert codes["eu"] == (0.0, 0.0, 0.5)  # free, eu-west: first in sorted vocabularies
    assert codes["us"] == (1.0, 1.0, 2.0)


def test_calendar_flags_without_calendar_are_zero():
    keys = pl.DataFrame({"region": ["x"], "ts": [T0]})
    flags = calendar_flags(keys, None, ("holiday",))
    assert flags.get_column("_cal_holiday").to_list() == [0.0]


def test_features_at_an_origin_ignore_later_values():
    spec = make_feature_spec(300, 12, train_steps=600)
    base = [float(10 + (i % 7)) for i in range(700)]
    changed = base[:650] + [999.0] * 50
    origin = _step(T0 + 649 * FIVE_MIN, 300)
    pairs = pl.DataFrame({"client_id": ["a"] * 12, "step": [origin] * 12, "horizon": range(1, 13)})
    before = _rows(_usage("a", base), spec, pairs).select(spec.feature_names)
    after = _rows(_usage("a", changed), spec, pairs).select(spec.feature_names)
    assert before.equals(after)


def test_cross_metric_features_carry_other_metrics_last_hour_change():
    n = 300
    usage = pl.DataFrame(
        {
            "client_id": ["a"] * n,
            "ts": [T0 + i * FIVE_MIN for i in range(n)],
            "requests": [1.0] * n,
            "memory_mb": [float(i) for i in range(n)],
        }
    )
    spec = make_feature_spec(300, 12, train_steps=n, cross_metrics=["requests", "memory_mb"])
    grid = regular_grid(usage, 300, ["requests", "memory_mb"])
    scales = pl.DataFrame(
        {"client_id": ["a", "a"], "metric": ["requests", "memory_mb"], "scale": [1.0, 1.0]}
    )
    series = build_series(to_long(grid, ["requests", "memory_mb"]), spec, scales)
    origin = _step(T0 + 100 * FIVE_MIN, 300)
    pairs = pl.DataFrame({"client_id": ["a"], "step": [origin], "horizon": [1]})
    rows = assemble_rows(series, pairs, spec)
    # memory_mb is cross metric 1; it rose 12 over the last hour, on every metric's row
    assert rows.get_column("x1_lag_12").to_list() == [12.0, 12.0]
    assert rows.get_column("x0_lag_12").to_list() == [0.0, 0.0]


def test_regular_grid_fills_holes_and_extends_with_nulls():
    usage = _usage("a", [1.0, 2.0, 3.0]).filter(pl.col("requests") != 2.0)
    grid = regular_grid(usage, 300, ["requests"], extend_steps=2, missing_as=0.0)
    assert grid.get_column("requests").to_list() == [1.0, 0.0, 3.0, None, None]
    assert grid.get_column("ts").to_list() == [T0 + i * FIVE_MIN for i in range(5)]


def test_spec_keeps_seasons_history_allows_and_survives_pickle():
    short = make_feature_spec(300, 12, train_steps=3 * 288)
    long = make_feature_spec(300, 12, train_steps=9 * 288)
    assert short.seasons == (288,)
    assert long.seasons == (288, 2016)
    assert "season_2016_gap" in long.feature_names
    assert "season_2016_gap" not in short.feature_names
    assert long.profile_days == 8  # a day per training day but the last, at most 21
    assert pickle.loads(pickle.dumps(long)) == long
    with pytest.raises(AttributeError):
        long.lags = (1,)  # type: ignore[misc]
