"""Feeds: specs, the recorded feed, population checks, clocks and the batches each feed has
ready, on real DuckDB files (loading here bypasses validation; tests/flows covers that)."""

from __future__ import annotations

import hashlib
import os
import shutil
from datetime import date, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import FIXTURES
from warehouse import feed_sources
from warehouse.db import connect, fetch_one, fetch_value
from warehouse.errors import SourceError
from warehouse.feed_screen import KNOWN_CLIENT, NOT_LATE, read_newest_buckets, screen_report
from warehouse.feed_sources import spool_candidates, synthetic_extension
from warehouse.feeds import (
    Feed,
    FeedError,
    FeedMismatch,
    feed_clock,
    follow_feed,
    parse_feed,
    pending_batches,
    read_feed,
    watermark,
)
from warehouse.ingest import BatchRecord, load_batch
from warehouse.sources.azure_functions import load_azure_functions
from warehouse.sources.base import ExtractedBatch, restrict_batch
from warehouse.sources.events import read_events
from warehouse.sources.synthetic import generate_synthetic
from warehouse.validation import validate_batch

AZURE = FIXTURES / "azure_tiny"
TRACE_DAY = date(2019, 7, 15)
FIRST_MINUTE = datetime(2019, 7, 15, 8, 0)  # the fixture's minutes are 480..489
END = datetime(2026, 1, 10)
NOW = datetime(2026, 3, 1, 12, 0)


def _load(path: Path, batch: ExtractedBatch) -> None:
    """Store a batch as it is (no validation), as an earlier ingest would have."""
    record = BatchRecord(
        batch.content_hash[:16], "loaded", batch.rows.height, batch.rows.height, 0, ""
    )
    quarantine = pl.DataFrame(
        schema={"row_number": pl.Int64, "row": pl.String, "expectation": pl.String}
    )
    load_batch(path, batch, batch.rows, quarantine, record, datetime(2026, 1, 1))


def _synthetic(clients: int, days: int = 2, end: datetime = END, seed: int = 7) -> ExtractedBatch:
    return generate_synthetic(n_clients=clients, days=days, end=end, freq_seconds=300, seed=seed)


def _fingerprint(path: Path) -> tuple:
    """The file's bytes, table sizes and a checksum of every usage value."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with connect(path, read_only=True) as con:
        counts = fetch_one(
            con,
            "SELECT (SELECT count(*) FROM usage), (SELECT count(*) FROM clients),"
            " (SELECT count(*) FROM feed_state), (SELECT count(*) FROM quarantine)",
        )
        checksum = fetch_value(
            con,
            "SELECT sum(hash(client_id, ts, requests, concurrency, cpu_cores, memory_mb,"
            " net_mbps, io_ops, batch_id)) FROM usage",
        )
    return digest, counts, checksum


# --- specs --------------------------------------------------------------------------------


def test_parse_feed_understands_every_kind(tmp_path):
    assert parse_feed("none") == Feed("none")
    assert parse_feed(" synthetic ").describe() == "synthetic"
    spool = parse_feed(f"spool:{tmp_path}")
    assert spool.kind == "spool" and spool.location == tmp_path.resolve()
    assert spool.describe() == f"spool:{tmp_path.resolve()}"
    trace = parse_feed(f"trace:{AZURE}", speed=60)
    assert trace.describe() == f"trace:{AZURE.resolve()}"
    assert trace.params == {"speed": 60.0}


@pytest.mark.parametrize(
    ("text", "speed", "says"),
    [
        ("kafka:topic", 1.0, "not understood"),
        ("spool", 1.0, "needs a directory"),
        ("spool:/no/such/dir", 1.0, "no directory at /no/such/dir"),
        ("trace:{fixture}", 0.0, "must be above 0"),
        ("trace:{fixture}", -2.0, "must be above 0"),
        ("synthetic", 60.0, "trace feeds only"),
        ("none:/tmp", 1.0, "takes no directory"),
    ],
)
def test_parse_feed_refuses_bad_specs_with_a_sentence(text, speed, says):
    with pytest.raises(FeedError, match=says):
        parse_feed(text.format(fixture=AZURE), speed=speed)


def test_spool_ignores_hidden_in_progress_and_foreign_files(tmp_path):
    for name in ("b.csv", "a.jsonl", ".c.csv", "d.csv.tmp", "e.csv.partial", "README.txt"):
        (tmp_path / name).write_text("client_id,ts\n")
    (tmp_path / "sub.csv").mkdir()
    assert {p.name for p in spool_candidates(tmp_path)} == {"a.jsonl", "b.csv"}


# --- following ----------------------------------------------------------------------------


def test_follow_none_then_read_it_back(warehouse_path):
    assert read_feed(warehouse_path) is None
    stored = follow_feed(warehouse_path, Feed("none"), now=NOW)
    assert read_feed(warehouse_path) == stored == Feed("none")


def test_synthetic_refused_on_another_population_and_nothing_changes(warehouse_path):
    _load(warehouse_path, _synthetic(6))
    before = _fingerprint(warehouse_path)
    feed = Feed("synthetic", params={"clients": 50, "seed": 7, "freq_seconds": 300})
    with pytest.raises(FeedMismatch) as refused:
        follow_feed(warehouse_path, feed, now=NOW)
    message = str(refused.value)
    assert "Refused to follow synthetic" in message
    assert "it makes 50 clients" in message and "holds usage of 6" in message
    assert "44 differ" in message and "44 only in the feed (e.g. c0006, c0007, c0008)" in message
    assert "Nothing was written" in message and "PREWARM_SYNTHETIC_CLIENTS" in message
    assert _fingerprint(warehouse_path) == before
    assert read_feed(warehouse_path) is None


def test_synthetic_refused_when_another_seed_made_the_same_ids(warehouse_path):
    _load(warehouse_path, _synthetic(6, seed=3))
    before = _fingerprint(warehouse_path)
    feed = Feed("synthetic", params={"clients": 6, "seed": 7, "freq_seconds": 300})
    with pytest.raises(FeedMismatch, match="another seed or source made them"):
        follow_feed(warehouse_path, feed, now=NOW)
    assert _fingerprint(warehouse_path) == before
    follow_feed(warehouse_path, Feed("synthetic", params={"clients": 6, "seed": 3}), now=NOW)
    assert read_feed(warehouse_path).params == {
        "clients": 6,
        "seed": 3,
        "freq_seconds": 300,
        "days": 14,
    }


def test_trace_refused_on_a_synthetic_warehouse(warehouse_path):
    _load(warehouse_path, _synthetic(2))
    before = _fingerprint(warehouse_path)
    with pytest.raises(FeedMismatch) as refused:
        follow_feed(warehouse_path, parse_feed(f"trace:{AZURE}"), now=NOW)
    message = str(refused.value)
    assert f"trace:{AZURE.resolve()}" in message
    assert "it makes 3 clients" in message and "5 differ" in message
    assert "2 only in the warehouse (e.g. c0000, c0001)" in message
    assert _fingerprint(warehouse_path) == before


# --- clocks -------------------------------------------------------------------------------


def test_trace_clock_starts_at_the_first_minute_of_an_empty_warehouse(warehouse_path):
    feed = follow_feed(warehouse_path, parse_feed(f"trace:{AZURE}", speed=60), now=NOW)
    assert feed.params == {
        "speed": 60.0,
        "day": "2019-07-15",
        "sim_start": FIRST_MINUTE.isoformat(),
        "wall_start": NOW.isoformat(),
    }
    assert read_feed(warehouse_path) == feed
    assert feed_clock(warehouse_path, feed, NOW) == FIRST_MINUTE
    # 3.5 wall seconds at 60x are 3.5 trace minutes.
    later = feed_clock(warehouse_path, feed, NOW + timedelta(seconds=3.5))
    assert later == FIRST_MINUTE + timedelta(minutes=3, seconds=30)


def test_trace_slices_whole_minutes_before_the_clock_exactly_once(warehouse_path):
    feed = follow_feed(warehouse_path, parse_feed(f"trace:{AZURE}", speed=60), now=NOW)
    clock = feed_clock(warehouse_path, feed, NOW + timedelta(seconds=3.5))
    (first,) = pending_batches(warehouse_path, feed, clock)
    minutes = sorted(first.batch.rows.get_column("ts").unique().to_list())
    assert minutes == [FIRST_MINUTE + timedelta(minutes=m) for m in range(3)]  # 08:03 is not over
    assert first.batch.rows.height == 9 and first.batch.clients.height == 3
    _load(warehouse_path, first.batch)
    assert watermark(warehouse_path) == FIRST_MINUTE + timedelta(minutes=2)
    assert pending_batches(warehouse_path, feed, clock) == []  # nothing twice
    (second,) = pending_batches(warehouse_path, feed, clock + timedelta(minutes=30))
    assert second.batch.rows.get_column("ts").min() == FIRST_MINUTE + timedelta(minutes=3)
    assert second.batch.rows.height == 21  # the remaining 7 minutes, trace exhausted
    assert second.batch.clients is None  # known clients keep their attributes


def test_trace_resumes_after_the_minutes_already_stored(warehouse_path):
    whole = load_azure_functions(AZURE, day=TRACE_DAY)
    _load(warehouse_path, restrict_batch(whole, until=FIRST_MINUTE + timedelta(minutes=5)))
    feed = follow_feed(warehouse_path, parse_feed(f"trace:{AZURE}", speed=2), now=NOW)
    assert feed.params["sim_start"] == (FIRST_MINUTE + timedelta(minutes=5)).isoformat()


def test_none_clock_is_one_bucket_past_the_watermark(warehouse_path):
    assert feed_clock(warehouse_path, Feed("none"), NOW) == NOW
    _load(warehouse_path, _synthetic(2))
    assert watermark(warehouse_path) == END - timedelta(minutes=5)
    assert feed_clock(warehouse_path, Feed("none"), NOW) == END
    assert feed_clock(warehouse_path, Feed("spool"), NOW) == NOW


# --- synthetic extension ------------------------------------------------------------------


def test_generator_values_do_not_depend_on_the_window():
    """Counter-based: a bucket is the same in any window, except late joiners' join times."""
    long = _synthetic(40, days=14, end=END + timedelta(hours=2))
    short = _synthetic(40, days=1, end=END + timedelta(hours=2))
    both = short.rows.join(long.rows, on=["client_id", "ts"], suffix="_long")
    assert both.height > 10_000
    for metric in ("requests", "concurrency", "cpu_cores", "memory_mb", "net_mbps", "io_ops"):
        assert (both[metric] == both[f"{metric}_long"]).all(), metric
    window = long.rows.filter(pl.col("ts") >= short.rows["ts"].min())
    missing = window.join(short.rows, on=["client_id", "ts"], how="anti")
    late = short.clients.filter(pl.col("attributes").str.contains('"archetype": "late"'))
    assert set(missing["client_id"]) <= set(late["client_id"])  # only joins are relative


def test_extension_adds_every_bucket_of_every_client_as_one_long_window_would():
    after = END - timedelta(minutes=5)
    end = END + timedelta(days=1, hours=3, minutes=7)
    parts = synthetic_extension(40, 7, 300, after, end)
    assert len(parts) == 2  # a day at most per batch
    rows = pl.concat([part.rows for part in parts])
    buckets = (datetime(2026, 1, 11, 3, 5) - END) // timedelta(minutes=5)
    assert rows.height == 40 * buckets  # late joiners included, no gap
    assert rows["ts"].min() == END and rows["ts"].max() == datetime(2026, 1, 11, 3, 0)
    reference = _synthetic(40, days=4, end=datetime(2026, 1, 11, 3, 5)).rows
    same = rows.join(reference, on=["client_id", "ts"], suffix="_ref")
    assert same.height == rows.height
    assert (same["requests"] == same["requests_ref"]).all()
    assert (same["memory_mb"] == same["memory_mb_ref"]).all()
    assert all(p.clients is None for p in parts)


def test_synthetic_feed_loads_history_then_only_new_buckets(warehouse_path):
    feed = follow_feed(warehouse_path, Feed("synthetic", params={"clients": 3, "days": 1}), now=NOW)
    (history,) = pending_batches(warehouse_path, feed, NOW + timedelta(minutes=2))
    assert history.batch.rows.height == 3 * 288 and history.batch.clients.height == 3
    _load(warehouse_path, history.batch)
    assert watermark(warehouse_path) == NOW - timedelta(minutes=5)
    (more,) = pending_batches(warehouse_path, feed, NOW + timedelta(minutes=12))
    assert sorted(more.batch.rows["ts"].unique()) == [NOW, NOW + timedelta(minutes=5)]
    assert set(more.batch.rows["client_id"]) == {"c0000", "c0001", "c0002"}


def test_synthetic_ingest_refuses_a_warehouse_that_gained_foreign_clients(warehouse_path):
    feed = follow_feed(warehouse_path, Feed("synthetic", params={"clients": 2}), now=NOW)
    _load(warehouse_path, load_azure_functions(AZURE, day=TRACE_DAY))
    with pytest.raises(FeedMismatch, match="no longer matches the feed it follows"):
        pending_batches(warehouse_path, feed, NOW)


# --- screening ----------------------------------------------------------------------------


def test_screen_quarantines_unknown_clients_and_late_rows(warehouse_path, tmp_path):
    _load(warehouse_path, _synthetic(2, days=1))  # c0000, c0001 up to END - 5 min
    events = tmp_path / "calls.csv"
    events.write_text(
        "client_id,ts,requests\n"
        f"c0000,{END - timedelta(minutes=3)},4\n"  # inside the newest stored bucket: late
        f"c0000,{END + timedelta(minutes=1)},2\n"
        f"stranger,{END + timedelta(minutes=1)},7\n"
        f"c0001,{END + timedelta(minutes=6)},1\n"
    )
    batch = read_events(events, freq_seconds=300)
    report = validate_batch(batch)
    screened = screen_report(batch, report, read_newest_buckets(warehouse_path), known_only=True)
    assert screened.good["client_id"].to_list() == ["c0000", "c0001"]
    quarantined = dict(
        zip(screened.quarantine["row_number"], screened.quarantine["expectation"], strict=True)
    )
    assert quarantined == {1: NOT_LATE, 3: KNOWN_CLIENT}
    assert '"client_id": "stranger"' in screened.quarantine["row"][1]
    assert screened.row_failures == {NOT_LATE: 1, KNOWN_CLIENT: 1}


def test_trace_directory_that_vanished_explains(warehouse_path, tmp_path):
    copy = tmp_path / "trace"
    shutil.copytree(AZURE, copy)
    feed = follow_feed(warehouse_path, parse_feed(f"trace:{copy}"), now=NOW)
    shutil.rmtree(copy)
    with pytest.raises(SourceError, match="does not exist"):
        pending_batches(warehouse_path, feed, NOW)


def test_spool_on_clients_of_another_bucket_width_is_refused(warehouse_path, tmp_path):
    _load(warehouse_path, load_azure_functions(AZURE, day=TRACE_DAY))  # 60 s buckets
    before = _fingerprint(warehouse_path)
    with pytest.raises(FeedMismatch, match="it makes 300s buckets but 3 of the warehouse"):
        follow_feed(warehouse_path, parse_feed(f"spool:{tmp_path}"), now=NOW)
    assert _fingerprint(warehouse_path) == before
    spool = Feed("spool", tmp_path.resolve(), {"freq_seconds": 60})
    assert follow_feed(warehouse_path, spool, now=NOW) == spool


def test_spool_backlog_is_taken_oldest_first_a_bounded_number_at_a_time(
    warehouse_path, tmp_path, monkeypatch
):
    monkeypatch.setattr(feed_sources, "SPOOL_FILES_PER_INGEST", 2)
    for age, name in enumerate(("c.csv", "a.csv", "b.csv")):
        file = tmp_path / name
        file.write_text(f"client_id,ts,requests\nx,{END},{age}\n")
        os.utime(file, (1_000_000 + age, 1_000_000 + age))
    feed = follow_feed(warehouse_path, parse_feed(f"spool:{tmp_path}"), now=NOW)
    pending = pending_batches(warehouse_path, feed, NOW)
    assert [Path(p.files[0].path).name for p in pending] == ["c.csv", "a.csv"]
    assert all(p.known_only and p.files[0].status == "loaded" for p in pending)
