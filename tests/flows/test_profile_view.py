"""The terminal chart of `prewarm profile`: a p50 bar and a p90 mark per bucket, long
horizons merged by their max into a bounded number of lines, windows marked."""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl

from flows.profile_view import chart_lines

T0 = datetime(2026, 11, 30, 0, 0)


def _series(p50: list[float], p90: list[float]) -> pl.DataFrame:
    ts = [T0 + timedelta(minutes=5 * i) for i in range(len(p50))]
    return pl.DataFrame({"ts": ts, "p50": p50, "p90": p90})


def test_bars_scale_to_the_highest_p90_and_mark_the_windows():
    lines = chart_lines(
        _series([0.0, 2.0, 4.0], [1.0, 4.0, 8.0]),
        [(T0 + timedelta(minutes=5), T0 + timedelta(minutes=10))],
        width=8,
    )
    assert lines == [
        "11-30 00:00  |         0.00 /   1.00",
        "11-30 00:05 ██  |      2.00 /   4.00  ◀",
        "11-30 00:10 ████   |   4.00 /   8.00",
    ]


def test_a_long_horizon_is_merged_by_its_max_into_bounded_lines():
    p50 = [float(i % 10) for i in range(576)]  # 48 h of 5-minute buckets
    lines = chart_lines(_series(p50, [v + 1 for v in p50]), [], max_rows=24)
    assert len(lines) == 24
    assert all(line.endswith("9.00 /  10.00") for line in lines)  # each group's max


def test_no_forecast_no_chart():
    assert chart_lines(_series([], []), []) == []


def test_a_day_of_mixed_steps_is_an_hour_a_line_and_marks_the_windows_it_overlaps():
    # The horizon's hour every 5 minutes, then every half hour to a day.
    steps = list(range(1, 13)) + list(range(18, 289, 6))
    ts = [T0 + timedelta(minutes=5 * h) for h in steps]
    series = pl.DataFrame(
        {"ts": ts, "p50": [float(h) for h in steps], "p90": [h + 1.0 for h in steps]}
    )
    window = (T0 + timedelta(hours=6, minutes=20), T0 + timedelta(hours=7, minutes=40))
    lines = chart_lines(series, [window])
    assert len(lines) == 24
    assert lines[0].startswith("11-30 00:05") and lines[-1].startswith("11-30 23:05")
    assert lines[0].endswith("12.00 /  13.00")  # the first hour's max
    assert [i for i, line in enumerate(lines) if line.endswith("◀")] == [6, 7]
