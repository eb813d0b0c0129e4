"""The holdout picture a reviewer opens in MLflow: valid SVG whatever the text, every
forecast bucket drawn inside the plot area, round ticks that span the data."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

import polars as pl

from models.plots import BOTTOM, LEFT, RIGHT, TOP, plot_forecast_vs_actual, time_ticks, value_ticks

NS = {"svg": "http://www.w3.org/2000/svg"}


def _frame(n: int = 288) -> pl.DataFrame:
    start = datetime(2026, 1, 18)
    actual = [50 + 40 * math.sin(i / 20) for i in range(n)]
    return pl.DataFrame(
        {
            "ts": [start + timedelta(minutes=5 * i) for i in range(n)],
            "actual": actual,
            "p10": [a - 10 for a in actual],
            "p50": [a + 1 for a in actual],
            "p90": [a + 12 for a in actual],
        }
    )


def _points(element: ET.Element) -> list[tuple[float, float]]:
    pairs = (p.split(",") for p in element.attrib["points"].split())
    return [(float(a), float(b)) for a, b in pairs]


def test_every_bucket_is_drawn_inside_the_plot_area():
    spike = pl.int_range(288) == 157
    frame = _frame().with_columns(pl.when(spike).then(200.0).otherwise("actual").alias("actual"))
    root = ET.fromstring(plot_forecast_vs_actual(frame, "c1: requests", "requests"))
    p50, actual = root.findall("svg:polyline", NS)  # drawn in this order
    band = root.find("svg:polygon", NS)
    assert band is not None
    assert len(_points(actual)) == len(_points(p50)) == frame.height
    assert len(_points(band)) == 2 * frame.height
    for x, y in _points(actual) + _points(p50) + _points(band):
        assert LEFT <= x <= RIGHT and TOP <= y <= BOTTOM
    # Time runs left to right; the largest actual is the highest point (smallest y).
    xs = [x for x, _ in _points(actual)]
    assert xs == sorted(xs) and xs[0] == LEFT and xs[-1] == RIGHT
    highest = min(range(frame.height), key=lambda i: _points(actual)[i][1])
    assert highest == 157


def test_hostile_text_stays_text():
    title = 'c1 <script>alert("x")</script> & </svg>'
    root = ET.fromstring(plot_forecast_vs_actual(_frame(), title, "<metric>"))
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert title in texts and "<metric>" in texts
    assert root.find(".//svg:script", NS) is None


def test_rows_missing_a_value_are_left_out_and_none_left_says_so():
    frame = _frame(10).with_columns(
        pl.when(pl.int_range(10) == 3).then(None).otherwise(pl.col("actual")).alias("actual"),
        pl.when(pl.int_range(10) == 5).then(float("nan")).otherwise(pl.col("p90")).alias("p90"),
    )
    root = ET.fromstring(plot_forecast_vs_actual(frame, "t", "m"))
    assert len(_points(root.findall("svg:polyline", NS)[1])) == 8

    empty = ET.fromstring(plot_forecast_vs_actual(frame.clear(), "t", "m"))
    assert empty.find("svg:polyline", NS) is None
    texts = [t.text for t in empty.iter("{http://www.w3.org/2000/svg}text")]
    assert "no rows with an actual and a forecast" in texts


def test_value_ticks_are_round_and_span_the_data():
    for low, high in [(0.0, 135.0), (-3.2, 7.9), (0.001, 0.0042), (1_200.0, 1_200.0), (5e6, 9e6)]:
        ticks = value_ticks(low, high)
        assert ticks[0] <= low and ticks[-1] >= high
        steps = {round(b - a, 9) for a, b in zip(ticks, ticks[1:], strict=False)}
        assert len(steps) == 1
        (step,) = steps
        mantissa = step / 10 ** math.floor(math.log10(step))
        assert round(mantissa, 6) in {1, 2, 2.5, 5}
        assert 2 <= len(ticks) <= 12
    assert value_ticks(0.0, 135.0) == [0, 50, 100, 150]


def test_time_ticks_fall_on_whole_hours_from_midnight():
    start = datetime(2026, 1, 18, tzinfo=UTC).timestamp()
    ticks = time_ticks(start + 60, start + 86_400 - 300)
    assert [(t - start) / 3600 for t in ticks] == [3, 6, 9, 12, 15, 18, 21]
