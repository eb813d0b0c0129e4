"""Profile windows from hand-made forecasts: when, how long, peaks and confidence."""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl
import pytest

from models.profile import build_profiles, confidence_score, idle_floors

T0 = datetime(2026, 1, 5, 12, 0)
STEP = timedelta(minutes=5)


def _forecasts(client: str, metric: str, p50: list[float], spread: float = 1.0) -> pl.DataFrame:
    n = len(p50)
    return pl.DataFrame(
        {
            "client_id": [client] * n,
            "metric": [metric] * n,
            "origin": [T0] * n,
            "ts": [T0 + STEP * (h + 1) for h in range(n)],
            "horizon": list(range(1, n + 1)),
            "p10": [max(0.0, v - spread) for v in p50],
            "p50": [float(v) for v in p50],
            "p90": [float(v + spread) for v in p50],
            "model_name": [f"forecaster-{client}"] * n,
            "model_version": ["3"] * n,
        }
    )


def _floors(client: str, metric: str, floor: float, level: float = 4.0) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "client_id": [client],
            "metric": [metric],
            "floor": [float(floor)],
            "mean_level": [float(level)],
        }
    )


def _quality(client: str, metric: str, coverage: float = 0.8, pinball: float = 0.0) -> pl.DataFrame:
    return pl.DataFrame(
        {"client_id": [client], "metric": [metric], "coverage_80": [coverage], "pinball": [pinball]}
    )


def test_two_windows_with_start_end_duration_and_peaks():
    # floor 1: buckets 3-5 (p50 2,5,3) and bucket 12 (p50 4) are above it, 30 minutes apart.
    concurrency = _forecasts("a", "concurrency", [0, 1, 2, 5, 3, 1, 0, 0, 0, 0, 0, 4])
    memory = _forecasts("a", "memory_mb", [0, 0, 100, 400, 300, 0, 0, 0, 0, 0, 0, 50], spread=10)
    profiles = build_profiles(
        pl.concat([concurrency, memory]),
        pl.concat([_floors("a", "concurrency", 1.0), _floors("a", "memory_mb", 0.0, 100)]),
        _quality("a", "concurrency"),
        300,
        T0,
    )
    assert profiles.height == 2
    first, second = profiles.to_dicts()
    assert first["window_start"] == T0 + STEP * 3  # horizon 3 is the third bucket
    assert first["window_end"] == T0 + STEP * 6  # exclusive: after horizon 5
    assert first["duration_minutes"] == 15.0
    assert first["concurrency_p50"] == 5.0 and first["concurrency_p90"] == 6.0
    assert first["memory_mb_p50"] == 400.0 and first["memory_mb_p90"] == 410.0
    assert first["requests_p50"] is None  # a metric the client lacks stays unknown
    assert second["window_start"] == T0 + STEP * 12 and second["duration_minutes"] == 5.0
    assert first["model_version"] == "3"


def test_sparse_client_window_comes_from_exceedance():
    forecasts = _forecasts("s", "concurrency", [0, 0, 0, 0], spread=0.0)
    exceedance = pl.DataFrame(
        {
            "client_id": ["s"] * 4,
            "ts": [T0 + STEP * (h + 1) for h in range(4)],
            "level": [1] * 4,
            "p_exceed": [0.1, 0.7, 0.6, 0.2],
        }
    )
    profiles = build_profiles(
        forecasts,
        _floors("s", "concurrency", 0.0),
        _quality("s", "concurrency"),
        300,
        T0,
        exceedance,
    )
    assert profiles.height == 1
    row = profiles.row(0, named=True)
    assert row["window_start"] == T0 + STEP * 2 and row["duration_minutes"] == 10.0
    assert row["p_active"] == 0.7


def test_no_demand_means_no_windows():
    forecasts = _forecasts("q", "requests", [0, 0, 0], spread=0.0)
    profiles = build_profiles(
        forecasts, _floors("q", "requests", 0.0), _quality("q", "requests"), 300, T0
    )
    assert profiles.height == 0
    assert "confidence" in profiles.columns


def test_confidence_formula_by_hand():
    # coverage 0.8 -> 1; pinball 1 over level 4 -> 1/1.25 = 0.8; width 1 -> 1/2 = 0.5
    assert confidence_score(0.8, 1.0, 4.0, 1.0) == pytest.approx(0.4)
    # coverage 0.4 -> 1 - 0.4/0.8 = 0.5; perfect accuracy and sharpness
    assert confidence_score(0.4, 0.0, 4.0, 0.0) == pytest.approx(0.5)
    assert confidence_score(0.0, 0.0, 1.0, 0.0) == 0.0


def test_wider_band_lowers_confidence():
    narrow = build_profiles(
        _forecasts("a", "concurrency", [4, 4], spread=0.5),
        _floors("a", "concurrency", 1.0),
        _quality("a", "concurrency"),
        300,
        T0,
    )
    wide = build_profiles(
        _forecasts("a", "concurrency", [4, 4], spread=3.0),
        _floors("a", "concurrency", 1.0),
        _quality("a", "concurrency"),
        300,
        T0,
    )
    # widths (1/4 and 6/4): 1/(1.25) = 0.8 and 1/(2.5) = 0.4
    assert narrow["confidence"][0] == pytest.approx(0.8)
    assert wide["confidence"][0] == pytest.approx(0.4)


def test_idle_floor_is_lower_quartile_of_last_week():
    ts = [T0 + STEP * i for i in range(8)]
    history = pl.DataFrame(
        {"client_id": ["a"] * 8, "ts": ts, "requests": [0.0, 0, 0, 4, 8, 8, 8, 12]}
    )
    floors = idle_floors(history, 300)
    row = floors.row(0, named=True)
    # sorted 0,0,0,4,8,8,8,12: 25th percentile with 'lower' interpolation -> index 1.75 -> 0
    assert row["floor"] == 0.0
    assert row["mean_level"] == 5.0


def test_every_resource_gets_its_own_confidence():
    # One window (buckets 2-4). Concurrency: calibrated, exact, band 1 wide. Memory: its own
    # holdout is off (coverage 0.4) and its band is wider relative to its level.
    concurrency = _forecasts("a", "concurrency", [0, 0, 4, 4, 4, 0])
    memory = _forecasts("a", "memory_mb", [0, 0, 100, 100, 100, 0], spread=50)
    quality = pl.concat(
        [_quality("a", "concurrency"), _quality("a", "memory_mb", coverage=0.4, pinball=10.0)]
    )
    profiles = build_profiles(
        pl.concat([concurrency, memory]),
        pl.concat([_floors("a", "concurrency", 1.0), _floors("a", "memory_mb", 0.0, 100)]),
        quality,
        300,
        T0,
    )
    (window,) = profiles.to_dicts()
    # concurrency: band (5 - 3) / 4 = 0.5 -> 1 * 1 * 1/1.5
    assert window["concurrency_confidence"] == pytest.approx(confidence_score(0.8, 0.0, 4.0, 0.5))
    assert window["concurrency_confidence"] == window["confidence"]  # the demand metric's
    # memory: band (150 - 50) / 100 = 1.0; coverage 0.4 -> 0.5; pinball 10 / level 100
    assert window["memory_mb_confidence"] == pytest.approx(confidence_score(0.4, 10.0, 100.0, 1.0))
    assert window["memory_mb_confidence"] < window["concurrency_confidence"]
    assert window["requests_confidence"] is None  # no forecast of it: no confidence


def test_a_lull_shorter_than_half_an_hour_does_not_end_a_window():
    # floor 1: active 2-3, idle 4-7 (20 minutes), active 8-9, idle 10-15 (30 minutes), 16.
    p50 = [0, 3, 3, 0, 0, 0, 0, 3, 3, 0, 0, 0, 0, 0, 0, 3]
    profiles = build_profiles(
        _forecasts("a", "concurrency", p50),
        _floors("a", "concurrency", 1.0),
        _quality("a", "concurrency"),
        300,
        T0,
    )
    spans = [(w["window_start"], w["window_end"]) for w in profiles.to_dicts()]
    assert spans == [(T0 + STEP * 2, T0 + STEP * 10), (T0 + STEP * 16, T0 + STEP * 17)]


def test_past_the_horizon_a_window_starts_and_ends_where_the_line_between_steps_crosses():
    # Horizon steps 1-3 every bucket, then the reach every 6: steps 9, 15, 21, 27.
    steps = [1, 2, 3, 9, 15, 21, 27]
    p50 = [0.0, 0.0, 0.0, 0.0, 6.0, 6.0, 0.0]
    forecasts = _forecasts("a", "requests", p50).with_columns(
        pl.Series("horizon", steps, dtype=pl.Int64),
        pl.Series("ts", [T0 + STEP * h for h in steps]),
    )
    profiles = build_profiles(
        forecasts, _floors("a", "requests", 1.0), _quality("a", "requests"), 300, T0
    )
    (window,) = profiles.to_dicts()
    # 9 -> 15 climbs 1 a bucket: 2 at step 11 is the first above 1; 21 -> 27 falls 1 a
    # bucket: 2 at step 25 is the last.
    assert window["window_start"] == T0 + STEP * 11
    assert window["window_end"] == T0 + STEP * 26
    assert window["requests_p50"] == 6.0  # peaks come from the forecast steps inside


def test_requests_say_when_a_client_of_short_calls_is_busy():
    # Concurrency sits at its floor (one instance in flight all day); requests swing.
    concurrency = _forecasts("a", "concurrency", [1, 1, 1, 1, 1, 1])
    requests = _forecasts("a", "requests", [2, 2, 9, 9, 2, 2])
    exceedance = pl.DataFrame(
        {
            "client_id": ["a"] * 6,
            "ts": [T0 + STEP * (h + 1) for h in range(6)],
            "level": [1] * 6,
            "p_exceed": [0.99] * 6,
        }
    )
    profiles = build_profiles(
        pl.concat([concurrency, requests]),
        pl.concat([_floors("a", "concurrency", 1.0), _floors("a", "requests", 3.0)]),
        pl.concat([_quality("a", "concurrency"), _quality("a", "requests")]),
        300,
        T0,
        exceedance,
    )
    (window,) = profiles.to_dicts()
    # P(one in flight) is high all along, but only says when for a sparse client (floor 0).
    assert (window["window_start"], window["window_end"]) == (T0 + STEP * 3, T0 + STEP * 5)
    assert window["confidence"] == window["requests_confidence"]
