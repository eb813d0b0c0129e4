"""The Great Expectations suites: which rows pass, which go to quarantine and why."""

from __future__ import annotations

import json
from datetime import datetime

import polars as pl
import pytest

from warehouse.sources.base import ExtractedBatch
from warehouse.validation import describe_rejection, validate_batch

NOW = datetime(2026, 1, 10)


def _series(rows: dict, freq_seconds: int = 300, kind: str = "series") -> ExtractedBatch:
    frame = pl.DataFrame(rows).with_columns(pl.col("ts").cast(pl.Datetime("us")))
    frame = frame.with_columns(
        pl.col(c).cast(pl.Float64) for c in frame.columns if c not in ("client_id", "ts")
    )
    return ExtractedBatch(
        source="test",
        location="test.csv",
        content_hash="h",
        freq_seconds=freq_seconds,
        rows=frame,
        kind=kind,  # type: ignore[arg-type]
    )


def _good(n: int = 4) -> dict:
    return {
        "client_id": ["a"] * n,
        "ts": [datetime(2026, 1, 5, 0, 5 * i) for i in range(n)],
        "requests": [float(i) for i in range(n)],
        "cpu_cores": [0.5] * n,
    }


def test_clean_series_passes_whole():
    report = validate_batch(_series(_good()), now=NOW)
    assert report.rows_in == 4
    assert report.good.height == 4
    assert report.quarantine.height == 0
    assert report.batch_failures == []


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        ("requests", -1.0, "expect_column_values_to_be_between(requests"),
        ("requests", float("nan"), "expect_column_values_to_not_be_null(requests)"),
        ("requests", None, "expect_column_values_to_not_be_null(requests)"),
        ("cpu_cores", float("inf"), "expect_column_values_to_be_between(cpu_cores"),
        ("cpu_cores", float("-inf"), "expect_column_values_to_be_between(cpu_cores"),
        ("ts", datetime(2026, 1, 5, 0, 7), "ts not on the 300s grid"),
        ("ts", datetime(2031, 1, 1), "expect_column_values_to_be_between(ts"),
        ("ts", None, "expect_column_values_to_not_be_null(ts)"),
        ("client_id", None, "expect_column_values_to_not_be_null(client_id)"),
        ("client_id", "bad id;drop", "expect_column_values_to_match_regex(client_id)"),
    ],
)
def test_bad_value_is_quarantined_with_its_expectation(column, value, expected):
    rows = _good()
    rows[column][2] = value
    report = validate_batch(_series(rows), now=NOW)
    assert report.good.height == 3
    assert report.quarantine["row_number"].to_list() == [3]
    assert expected in report.quarantine["expectation"][0]
    original = json.loads(report.quarantine["row"][0])
    assert original["client_id"] == (rows["client_id"][2])


def test_duplicate_keys_quarantine_every_copy():
    rows = _good()
    rows["ts"][3] = rows["ts"][1]
    report = validate_batch(_series(rows), now=NOW)
    assert sorted(report.quarantine["row_number"].to_list()) == [2, 4]
    assert all("duplicate key" in e for e in report.quarantine["expectation"])
    assert report.good.height == 2


def test_row_failing_two_expectations_is_quarantined_once_naming_both():
    rows = _good()
    rows["requests"][0] = -5.0
    rows["cpu_cores"][0] = None
    report = validate_batch(_series(rows), now=NOW)
    assert report.quarantine.height == 1
    label = report.quarantine["expectation"][0]
    assert "requests" in label and "cpu_cores" in label
    assert report.row_failures == {
        "expect_column_values_to_be_between(requests, 0, 1e+15): negative or infinite": 1,
        "expect_column_values_to_not_be_null(cpu_cores): empty, non-numeric or NaN": 1,
    }


def test_missing_key_column_fails_the_batch_and_names_columns_found():
    rows = _good()
    del rows["ts"]
    frame = pl.DataFrame(rows)
    batch = ExtractedBatch("test", "x.csv", "h", 300, frame)
    report = validate_batch(batch, now=NOW)
    assert report.good.height == 0
    assert len(report.batch_failures) == 1
    assert "column 'ts' is missing" in report.batch_failures[0]
    assert "'client_id', 'requests', 'cpu_cores'" in report.batch_failures[0]
    assert "Rejected x.csv" in describe_rejection(batch, report, 0.05)


def test_empty_input_fails_the_batch():
    batch = ExtractedBatch("test", "empty.csv", "h", 300, pl.DataFrame())
    report = validate_batch(batch, now=NOW)
    assert any("no rows" in f for f in report.batch_failures)


def test_unknown_metric_column_in_a_series_fails_the_batch():
    rows = _good()
    rows["gpu_hours"] = [1.0] * 4
    report = validate_batch(_series(rows), now=NOW)
    assert report.batch_failures and "gpu_hours" in report.batch_failures[0]


def test_read_error_fails_the_batch_with_the_reason():
    batch = ExtractedBatch("test", "bin.csv", "h", 300, pl.DataFrame(), read_error="not UTF-8")
    report = validate_batch(batch, now=NOW)
    assert report.batch_failures == ["the file is readable: not UTF-8"]


def test_events_skip_grid_and_uniqueness_checks():
    rows = {
        "client_id": ["a", "a", "a"],
        "ts": [datetime(2026, 1, 5, 0, 0, 1)] * 3,
        "duration_ms": [10.0, 20.0, -1.0],
    }
    report = validate_batch(_series(rows, kind="events"), now=NOW)
    assert report.good.height == 2
    assert report.quarantine["row_number"].to_list() == [3]


def test_quarantine_keeps_the_raw_text_when_the_source_has_it():
    rows = _good(2)
    rows["requests"][1] = None
    batch = _series(rows)
    batch.raw = pl.DataFrame(
        {"client_id": ["a", "a"], "ts": ["t0", "t1"], "requests": ["0", "lots"]}
    )
    report = validate_batch(batch, now=NOW)
    assert json.loads(report.quarantine["row"][0]) == {
        "client_id": "a",
        "ts": "t1",
        "requests": "lots",
    }


def test_rejection_message_reports_share_and_examples():
    rows = _good(4)
    rows["requests"][0] = -1.0
    rows["requests"][1] = -2.0
    batch = _series(rows)
    report = validate_batch(batch, now=NOW)
    message = describe_rejection(batch, report, 0.05)
    assert "2 of 4 rows (50.0%)" in message
    assert "above the 5.0% limit" in message
    assert "row 1:" in message and "row 2:" in message
    assert message.endswith("Nothing was loaded.")


def test_suite_results_come_back_in_the_order_of_the_expectations():
    # GX groups results by column (in order of first appearance): a suite that interleaves
    # columns would get them back shuffled, and quarantine rows would name the wrong check.
    import great_expectations as gx
    import pandas as pd

    from warehouse.validation import run_suite

    frame = pd.DataFrame({"a": [1, None], "b": ["x", "Y"]})
    ex = gx.expectations
    expectations = [
        ex.ExpectColumnValuesToNotBeNull(column="a"),
        ex.ExpectColumnValuesToNotBeNull(column="b"),
        ex.ExpectColumnValuesToMatchRegex(column="b", regex=r"\A[a-z]\Z"),
        ex.ExpectColumnValuesToBeBetween(column="a", min_value=0, max_value=0),
    ]
    results = run_suite(frame, "order", expectations)
    got = [(r.expectation_config.type, r.expectation_config.kwargs["column"]) for r in results]
    assert got == [
        ("expect_column_values_to_not_be_null", "a"),
        ("expect_column_values_to_not_be_null", "b"),
        ("expect_column_values_to_match_regex", "b"),
        ("expect_column_values_to_be_between", "a"),
    ]
    assert [r.result.get("unexpected_index_list") for r in results] == [[1], [], [1], [0]]
