"""Feedback into training and scoring: reported actuals spread over buckets, merged under
measured ones, and the weighting a version is tagged with."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import polars as pl

from models.feedback import (
    describe_weighting,
    fill_from_feedback,
    fill_usage_from_feedback,
    reported_actuals,
)
from models.forecaster import Adjustments

T = datetime(2026, 1, 1, 10, 0)
STEP = timedelta(minutes=5)


def _feedback(*rows: tuple) -> pl.DataFrame:
    """(client, window start, window end, actual dict or None, received_at) rows, 5-min."""
    return pl.DataFrame(
        [
            (cid, start, end, json.dumps(actual) if actual is not None else None, got, 300)
            for cid, start, end, actual, got in rows
        ],
        schema={
            "client_id": pl.String,
            "window_start": pl.Datetime("us"),
            "window_end": pl.Datetime("us"),
            "actual": pl.String,
            "received_at": pl.Datetime("us"),
            "freq_seconds": pl.Int64,
        },
        orient="row",
    )


def test_reported_actuals_cover_every_bucket_of_the_window_newest_report_winning():
    feedback = _feedback(
        # 10:02-10:15 covers the 10:00, 10:05 and 10:10 buckets (an unaligned start keeps its own)
        ("a", T + timedelta(minutes=2), T + 3 * STEP, {"concurrency": 3, "requests": 10}, T),
        # a later report on 10:10-10:20 wins on 10:10
        ("a", T + 2 * STEP, T + 4 * STEP, {"concurrency": 7}, T + timedelta(days=1)),
        ("a", T, T + STEP, None, T),  # a rating without actuals adds nothing
        ("b", T, T + STEP, {"concurrency": -1, "no_such_metric": 2, "io_ops": 4.5}, T),
    )
    got = reported_actuals(feedback)
    assert got.rows() == [
        ("a", "concurrency", T, 3.0),
        ("a", "concurrency", T + STEP, 3.0),
        ("a", "concurrency", T + 2 * STEP, 7.0),
        ("a", "concurrency", T + 3 * STEP, 7.0),
        ("a", "requests", T, 10.0),
        ("a", "requests", T + STEP, 10.0),
        ("a", "requests", T + 2 * STEP, 10.0),
        ("b", "io_ops", T, 4.5),  # a negative value and an unknown metric are left out
    ]


def test_reported_values_fill_only_what_was_not_measured():
    measured = pl.DataFrame(
        {
            "client_id": ["a", "a", "a"],
            "metric": ["concurrency"] * 3,
            "ts": [T, T + STEP, T + 2 * STEP],
            "actual": [2.0, None, 4.0],
            "p50": [1.0, 1.0, 1.0],
        }
    )
    reported = pl.DataFrame(
        {
            "client_id": ["a"] * 3,
            "metric": ["concurrency"] * 3,
            "ts": [T, T + STEP, T + 3 * STEP],
            "actual": [9.0, 9.0, 9.0],
        }
    )
    scoring = fill_from_feedback(measured, reported, add_missing=False).sort("ts")
    assert scoring.get_column("actual").to_list() == [2.0, 9.0, 4.0]  # measured 2.0 stays
    assert scoring.get_column("p50").to_list() == [1.0, 1.0, 1.0]
    labels = fill_from_feedback(measured, reported, add_missing=True).sort("ts")
    assert labels.get_column("actual").to_list() == [2.0, 9.0, 4.0, 9.0]
    assert labels.get_column("p50").to_list() == [1.0, 1.0, 1.0, None]


def test_usage_gaps_inside_the_clients_span_become_labels():
    usage = pl.DataFrame(
        {
            "client_id": ["a"] * 4 + ["b"],
            "ts": [T, T + STEP, T + 3 * STEP, T + 5 * STEP, T],
            "requests": [1.0, 2.0, 3.0, 4.0, 5.0],
            "concurrency": [1.0, None, 1.0, 1.0, 1.0],
        }
    )
    reported = reported_actuals(
        _feedback(
            # before a's first row, over its null, its missing 10:10 and its measured 10:15,
            # and past its last row at 10:25
            ("a", T - STEP, T + 7 * STEP, {"concurrency": 6.0}, T),
            ("c", T, T + STEP, {"concurrency": 6.0}, T),  # a client not being trained
        )
    )
    filled = fill_usage_from_feedback(usage, reported)
    assert filled.columns == usage.columns
    assert filled.filter(pl.col("client_id") == "a").rows() == [
        ("a", T, 1.0, 1.0),
        ("a", T + STEP, 2.0, 6.0),
        ("a", T + 2 * STEP, None, 6.0),
        ("a", T + 3 * STEP, 3.0, 1.0),
        ("a", T + 4 * STEP, None, 6.0),
        ("a", T + 5 * STEP, 4.0, 1.0),
    ]
    assert filled.filter(pl.col("client_id") == "b").rows() == [("b", T, 5.0, 1.0)]
    assert fill_usage_from_feedback(usage, reported.clear()).equals(usage)


def test_weighting_is_described_for_the_model_tags():
    assert describe_weighting(None) == "none"
    assert describe_weighting(Adjustments()) == "none"
    recent = Adjustments(recent_since=datetime(2026, 11, 28, 10, 0), recent_weight=3.24)
    assert describe_weighting(recent) == "recent x3.2 since 2026-11-28T10:00"
