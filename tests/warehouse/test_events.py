"""Event-log reader (CSV, Parquet, JSONL) and event aggregation to usage buckets."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from warehouse.errors import SourceError
from warehouse.sources.events import aggregate_events, read_events

EVENTS = Path(__file__).resolve().parents[1] / "fixtures" / "events"

# calls.csv / calls.jsonl, timestamps converted to UTC by hand:
#   2024-03-01T10:00:05Z       -> 10:00:05
#   2024-03-01T12:00:40+02:00  -> 10:00:40
#   1709287265 (epoch seconds) -> 1709251200 is 2024-03-01 00:00 UTC, +36065 s -> 10:01:05
#   2024-03-01T05:01:10-05:00  -> 10:01:10
#   2024-03-01 10:01:50 naive  -> 10:01:50 (taken as UTC)
EXPECTED_ROWS = pl.DataFrame(
    {
        "client_id": ["a", "a", "b", "a", "b"],
        "ts": [
            datetime(2024, 3, 1, 10, 0, 5),
            datetime(2024, 3, 1, 10, 0, 40),
            datetime(2024, 3, 1, 10, 1, 5),
            datetime(2024, 3, 1, 10, 1, 10),
            datetime(2024, 3, 1, 10, 1, 50),
        ],
        "requests": [1.0, 1.0, 2.0, 1.0, 1.0],
        "duration_ms": [30000.0, 45000.0, 130000.0, 0.0, 500.5],
        "bytes_in": [1_000_000.0, 0.0, 0.0, 2000.0, 10.0],
        "bytes_out": [500_000.0, 250_000.0, 0.0, 1000.0, 20.0],
    },
    schema_overrides={"ts": pl.Datetime("us")},
)


def _write_parquet(path: Path) -> Path:
    """The same events as a typed Parquet file (tz-aware timestamps, integer counts)."""
    pl.DataFrame(
        {
            "client_id": ["a", "a", "b", "a", "b"],
            "ts": [
                datetime(2024, 3, 1, 10, 0, 5, tzinfo=UTC),
                datetime(2024, 3, 1, 10, 0, 40, tzinfo=UTC),
                datetime(2024, 3, 1, 10, 1, 5, tzinfo=UTC),
                datetime(2024, 3, 1, 10, 1, 10, tzinfo=UTC),
                datetime(2024, 3, 1, 10, 1, 50, tzinfo=UTC),
            ],
            "requests": [1, 1, 2, 1, 1],
            "duration_ms": [30000.0, 45000.0, 130000.0, 0.0, 500.5],
            "bytes_in": [1_000_000, 0, 0, 2000, 10],
            "bytes_out": [500_000, 250_000, 0, 1000, 20],
            "region": ["eu", "eu", "us", "eu", "us"],
        }
    ).write_parquet(path)
    return path


def test_csv_parquet_and_jsonl_give_the_same_rows(tmp_path):
    batches = [
        read_events(EVENTS / "calls.csv", 60),
        read_events(_write_parquet(tmp_path / "calls.parquet"), 60),
        read_events(EVENTS / "calls.jsonl", 60),
    ]

    for batch in batches:
        assert batch.source == "events"
        assert batch.kind == "events"
        assert batch.read_error is None
        assert batch.clients is None
        assert batch.calendar is None
        assert batch.rows.equals(EXPECTED_ROWS), batch.location
        assert batch.rows.schema == EXPECTED_ROWS.schema
        assert batch.notes == ["ignored unknown column(s): region"]


def test_raw_keeps_the_original_strings_row_for_row():
    csv = read_events(EVENTS / "calls.csv", 60)
    jsonl = read_events(EVENTS / "calls.jsonl", 60)

    assert csv.raw is not None
    assert jsonl.raw is not None
    assert set(csv.raw.dtypes) == {pl.String()}
    assert csv.raw.columns == [
        "client_id",
        "ts",
        "requests",
        "duration_ms",
        "bytes_in",
        "bytes_out",
        "region",
    ]
    assert csv.raw["ts"].to_list()[1:3] == ["2024-03-01T12:00:40+02:00", "1709287265"]
    assert csv.raw.row(4) == ("b", "2024-03-01 10:01:50", "1", "500.5", "10", "20", "us")
    assert jsonl.raw.equals(csv.raw)


def test_timezone_offsets_are_converted_to_naive_utc(tmp_path):
    path = tmp_path / "offsets.csv"
    path.write_text(
        "client_id,ts\n"
        "a,2024-06-30T23:30:00-02:00\n"  # crosses midnight and month: 2024-07-01 01:30
        "a,2024-07-01T05:15:00.250+05:30\n"  # 05:15:00.25 - 5:30 -> 2024-06-30 23:45:00.25
        "a,2024-07-01T00:00:00z\n"
        "a,2024-07-01T01:00:00+0100\n"  # compact offset -> 00:00
        "a,1719792000.5\n"  # 2024-07-01 00:00 UTC is 1719792000, plus half a second
        "a,yesterday\n"
        "a,\n"
    )

    rows = read_events(path, 60).rows

    assert rows["ts"].to_list() == [
        datetime(2024, 7, 1, 1, 30),
        datetime(2024, 6, 30, 23, 45, 0, 250_000),
        datetime(2024, 7, 1, 0, 0),
        datetime(2024, 7, 1, 0, 0),
        datetime(2024, 7, 1, 0, 0, 0, 500_000),
        None,
        None,
    ]
    assert rows["ts"].dtype == pl.Datetime("us")


def test_bad_numbers_become_null_and_nan_stays_nan(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("client_id,ts,requests,memory_mb\na,2024-01-01T00:00:00Z,x,nan\n,0, 7 ,-inf\n")

    batch = read_events(path, 60)

    assert batch.rows.height == 2
    assert batch.rows["requests"].to_list() == [None, 7.0]
    memory = batch.rows["memory_mb"].to_list()
    assert math.isnan(memory[0])
    assert memory[1] == -math.inf
    assert batch.rows["client_id"].to_list() == ["a", None]
    assert batch.rows["ts"].to_list() == [datetime(2024, 1, 1), datetime(1970, 1, 1)]
    assert batch.raw is not None
    assert batch.raw.row(1) == ("", "0", " 7 ", "-inf")


def test_wrong_delimiter_gives_rows_without_key_columns():
    batch = read_events(EVENTS / "semicolon.csv", 60)

    assert batch.read_error is None
    assert "client_id" not in batch.rows.columns
    assert "ts" not in batch.rows.columns
    assert batch.rows.height == 2  # still aligned with raw
    assert batch.raw is not None
    assert batch.raw.columns == ["client_id;ts;requests"]
    assert batch.notes == ["ignored unknown column(s): client_id;ts;requests"]


def test_empty_and_header_only_files_give_empty_rows():
    empty = read_events(EVENTS / "empty.csv", 60)
    header_only = read_events(EVENTS / "header_only.csv", 60)

    assert empty.read_error is None
    assert empty.rows.height == 0
    assert header_only.read_error is None
    assert header_only.rows.height == 0
    assert header_only.rows.schema == pl.Schema(
        {"client_id": pl.String(), "ts": pl.Datetime("us"), "requests": pl.Float64()}
    )


def test_missing_key_columns_do_not_raise(tmp_path):
    path = tmp_path / "no_ts.jsonl"
    path.write_text('{"client_id": "a", "requests": 3}\n{"client_id": "b", "requests": 4}\n')

    batch = read_events(path, 60)

    assert batch.rows.columns == ["client_id", "requests"]
    assert batch.rows["requests"].to_list() == [3.0, 4.0]


def test_unparsable_file_sets_read_error(tmp_path):
    parquet = tmp_path / "broken.parquet"
    parquet.write_bytes(b"this is not parquet")
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("client_id,ts\na,1,extra\n")

    for path in (parquet, ragged):
        batch = read_events(path, 60)
        assert batch.read_error is not None
        assert batch.read_error.startswith(f"cannot parse {path.name}")
        assert "\n" not in batch.read_error
        assert batch.rows.height == 0


def test_unknown_extension_lists_the_supported_ones(tmp_path):
    path = tmp_path / "events.txt"
    path.write_text("client_id,ts\n")

    with pytest.raises(SourceError) as error:
        read_events(path, 60)

    assert "'.txt'" in str(error.value)
    assert "supported: .csv, .parquet, .pq, .jsonl, .ndjson" in str(error.value)


def test_missing_path_is_a_source_error(tmp_path):
    with pytest.raises(SourceError, match="not found"):
        read_events(tmp_path / "absent.csv", 60)


def test_content_hash_depends_on_bytes_and_frequency(tmp_path):
    copy = tmp_path / "calls.csv"
    copy.write_bytes((EVENTS / "calls.csv").read_bytes())

    assert read_events(copy, 60).content_hash == read_events(EVENTS / "calls.csv", 60).content_hash
    assert read_events(copy, 60).content_hash != read_events(copy, 300).content_hash
    copy.write_text(copy.read_text().replace("500.5", "500.6"))
    assert read_events(copy, 60).content_hash != read_events(EVENTS / "calls.csv", 60).content_hash


def test_aggregates_per_call_fields_by_hand():
    rows = pl.DataFrame(
        {
            "client_id": ["a", "a", "a", "b"],
            "ts": [
                datetime(2024, 1, 1, 10, 0, 5),
                datetime(2024, 1, 1, 10, 0, 40),
                datetime(2024, 1, 1, 10, 1, 10),
                datetime(2024, 1, 1, 10, 0, 59),
            ],
            "duration_ms": [30000.0, 45000.0, 0.0, 130000.0],
            "cpu_ms": [6000.0, 3000.0, 100.0, 60000.0],
            "bytes_in": [1_000_000.0, 0.0, 2000.0, 0.0],
            "bytes_out": [500_000.0, 250_000.0, 1000.0, 0.0],
            "memory_mb": [128.0, 256.0, 64.0, 512.0],
            "io_ops": [2.0, 3.0, 0.0, 1.0],
        }
    )

    usage = aggregate_events(rows, 60)

    assert usage.columns == [
        "client_id",
        "ts",
        "requests",
        "concurrency",
        "cpu_cores",
        "memory_mb",
        "net_mbps",
        "io_ops",
    ]
    assert usage["client_id"].to_list() == ["a", "a", "b"]
    assert usage["ts"].to_list() == [
        datetime(2024, 1, 1, 10, 0),
        datetime(2024, 1, 1, 10, 1),
        datetime(2024, 1, 1, 10, 0),
    ]
    # no requests column: one request per event -> a@10:00 2, a@10:01 1, b@10:00 1
    assert usage["requests"].to_list() == [2.0, 1.0, 1.0]
    # ceil(75000/60000) = ceil(1.25) = 2; ceil(0/60000) = 0 but it had a call -> 1;
    # ceil(130000/60000) = ceil(2.17) = 3
    assert usage["concurrency"].to_list() == [2.0, 1.0, 3.0]
    # (6000 + 3000)/60000 = 0.15; 100/60000; 60000/60000 = 1
    assert usage["cpu_cores"].to_list() == pytest.approx([0.15, 100 / 60000, 1.0])
    assert usage["memory_mb"].to_list() == [256.0, 64.0, 512.0]
    # (1e6 + 0 + 5e5 + 2.5e5) bytes * 8 / 1e6 / 60 s = 14 / 60; 3000 * 8 / 1e6 / 60 = 0.0004; 0
    assert usage["net_mbps"].to_list() == pytest.approx([14 / 60, 0.0004, 0.0])
    assert usage["io_ops"].to_list() == [5.0, 0.0, 1.0]
    assert set(usage.dtypes[2:]) == {pl.Float64()}


def test_aggregates_per_interval_fields_by_hand():
    rows = pl.DataFrame(
        {
            "client_id": ["c", "c", "c"],
            "ts": [
                datetime(2024, 1, 1, 10, 0),
                datetime(2024, 1, 1, 10, 2),
                datetime(2024, 1, 1, 10, 5),
            ],
            "requests": [10.0, 5.0, 0.0],
            "concurrency": [2.0, 4.0, 0.0],
            "cpu_cores": [0.5, 1.5, 0.0],
            "net_mbps": [4.0, 2.0, 0.0],
            # present but ignored: the direct columns win over derivations
            "duration_ms": [999_999.0, 999_999.0, 0.0],
        }
    )

    usage = aggregate_events(rows, 300)

    # 10:00 and 10:02 share the 5-minute bucket 10:00; 10:05 is the next one
    assert usage.columns == ["client_id", "ts", "requests", "concurrency", "cpu_cores", "net_mbps"]
    assert usage["ts"].to_list() == [datetime(2024, 1, 1, 10, 0), datetime(2024, 1, 1, 10, 5)]
    assert usage["requests"].to_list() == [15.0, 0.0]  # 10 + 5
    assert usage["concurrency"].to_list() == [4.0, 0.0]  # max(2, 4)
    assert usage["cpu_cores"].to_list() == [1.0, 0.0]  # mean(0.5, 1.5)
    assert usage["net_mbps"].to_list() == [3.0, 0.0]  # mean(4, 2)


def test_zero_requests_need_no_instance():
    rows = pl.DataFrame(
        {
            "client_id": ["d", "d"],
            "ts": [datetime(2024, 1, 1, 0, 0, 10), datetime(2024, 1, 1, 0, 1, 10)],
            "requests": [0.0, 4.0],
            "duration_ms": [0.0, 40.0],
        }
    )

    usage = aggregate_events(rows, 60)

    # no calls -> 0 instances; 4 calls of 10 ms -> ceil(40/60000) = 1
    assert usage["concurrency"].to_list() == [0.0, 1.0]
    assert usage.columns == ["client_id", "ts", "requests", "concurrency"]


def test_read_then_aggregate_the_fixture():
    usage = aggregate_events(read_events(EVENTS / "calls.csv", 60).rows, 60)

    assert usage.rows() == [
        # a@10:00: 2 calls, ceil(75000/60000) = 2, (1e6 + 5e5 + 2.5e5) * 8 / 1e6 / 60
        ("a", datetime(2024, 3, 1, 10, 0), 2.0, 2.0, pytest.approx(14 / 60)),
        # a@10:01: 1 call of 0 ms still holds an instance; 3000 B * 8 / 1e6 / 60 = 0.0004
        ("a", datetime(2024, 3, 1, 10, 1), 1.0, 1.0, pytest.approx(0.0004)),
        # b@10:01: 2 + 1 calls, ceil(130500.5/60000) = ceil(2.18) = 3, 30 B * 8 / 1e6 / 60
        ("b", datetime(2024, 3, 1, 10, 1), 3.0, 3.0, pytest.approx(4e-6)),
    ]


def test_aggregating_without_keys_is_refused():
    with pytest.raises(SourceError, match="ts"):
        aggregate_events(pl.DataFrame({"client_id": ["a"], "requests": [1.0]}), 60)
