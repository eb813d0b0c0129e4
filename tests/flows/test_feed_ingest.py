"""`ingest_feed` and `prewarm feed` end to end: real DuckDB files, real Great Expectations."""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import pytest

import warehouse.ingest as ingest_module
from flows.feed import ingest_feed
from flows.ingest import ingest_usage
from flows.settings import Settings
from tests.conftest import FIXTURES
from warehouse.db import connect, fetch_frame, fetch_one, fetch_value
from warehouse.feed_screen import KNOWN_CLIENT, NOT_LATE
from warehouse.feeds import Feed, FeedMismatch, feed_clock, follow_feed, parse_feed, read_feed

AZURE = FIXTURES / "azure_tiny"
T0 = datetime(2026, 2, 1, 10, 0)  # the events history: buckets 10:00 .. 10:25
NOW = datetime(2026, 3, 1, 12, 0)
FIRST_MINUTE = datetime(2019, 7, 15, 8, 0)


@pytest.fixture
def settings(data_dir: Path, prefect_harness: None) -> Settings:
    return Settings()


def _value(path: Path, sql: str, params: list | None = None):
    with connect(path, read_only=True) as con:
        return fetch_value(con, sql, params)


def _fingerprint(path: Path) -> tuple:
    """Table sizes and a checksum of every usage value."""
    with connect(path, read_only=True) as con:
        return fetch_one(
            con,
            "SELECT (SELECT count(*) FROM usage), (SELECT count(*) FROM clients),"
            " (SELECT count(*) FROM ingest_batches), (SELECT count(*) FROM feed_files),"
            " (SELECT count(*) FROM quarantine), (SELECT sum(hash(client_id, ts, requests,"
            " concurrency, cpu_cores, memory_mb, net_mbps, io_ops, batch_id)) FROM usage)",
        )


def _rows(path: Path, sql: str) -> list[tuple]:
    with connect(path, read_only=True) as con:
        return fetch_frame(con, sql).rows()


def _no_duplicate_keys(path: Path) -> bool:
    return _value(path, "SELECT count(*) = count(DISTINCT (client_id, ts)) FROM usage")


def _write(path: Path, rows: list[tuple[str, datetime, float]], mtime: float | None = None) -> Path:
    lines = ["client_id,ts,requests,cpu_ms"]
    lines += [f"{cid},{ts.isoformat()}Z,{requests},{requests * 100}" for cid, ts, requests in rows]
    path.write_text("\n".join(lines) + "\n")
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


@pytest.fixture
def spool(settings: Settings, tmp_path: Path) -> tuple[Path, Feed]:
    """A warehouse with clients a and b (history up to 10:25) following an empty spool."""
    history = [(cid, T0 + timedelta(minutes=5 * i), 10.0 + i) for cid in "ab" for i in range(6)]
    ingest_usage(source="events", path=_write(tmp_path / "history.csv", history))
    directory = tmp_path / "spool"
    directory.mkdir()
    feed = follow_feed(settings.warehouse_path, parse_feed(f"spool:{directory}"), now=NOW)
    return directory, feed


def test_spool_file_is_taken_once_and_late_or_unknown_rows_are_quarantined(settings, spool):
    directory, feed = spool
    path = settings.warehouse_path
    stored_late = _value(
        path,
        "SELECT requests FROM usage WHERE client_id = 'a' AND ts = ?",
        [T0 + timedelta(minutes=20)],
    )
    _write(
        directory / "0001.csv",
        [
            ("a", T0 + timedelta(minutes=30), 5.0),
            ("a", T0 + timedelta(minutes=31), 2.0),
            ("a", T0 + timedelta(minutes=21), 99.0),  # inside a stored bucket: late
            ("stranger", T0 + timedelta(minutes=30), 1.0),  # never seen: not invented
        ],
    )
    _write(directory / ".0002.csv", [("b", T0 + timedelta(minutes=30), 1.0)])  # hidden
    _write(directory / "0003.csv.tmp", [("b", T0 + timedelta(minutes=30), 1.0)])  # unfinished

    first = ingest_feed(settings, feed, NOW)
    assert (first.batches, first.files_taken, first.files_rejected) == (1, 1, 0)
    assert (first.rows_loaded, first.rows_quarantined) == (1, 2)
    assert first.watermark == T0 + timedelta(minutes=30)
    assert (
        _value(
            path,
            "SELECT requests FROM usage WHERE client_id = 'a' AND ts = ?",
            [T0 + timedelta(minutes=30)],
        )
        == 7.0
    )
    assert (
        _value(
            path,
            "SELECT requests FROM usage WHERE client_id = 'a' AND ts = ?",
            [T0 + timedelta(minutes=20)],
        )
        == stored_late
    )
    assert _value(path, "SELECT count(*) FROM clients WHERE client_id = 'stranger'") == 0
    with connect(path, read_only=True) as con:
        quarantined = fetch_frame(
            con,
            "SELECT q.row_number, q.expectation FROM quarantine q JOIN feed_files f"
            " USING (batch_id) ORDER BY 1",
        )
    assert quarantined.rows() == [(3, NOT_LATE), (4, KNOWN_CLIENT)]

    before = _fingerprint(path)
    again = ingest_feed(settings, feed, NOW)
    assert (again.batches, again.files_taken, again.rows_loaded) == (0, 0, 0)
    assert _fingerprint(path) == before

    (directory / "0003.csv.tmp").rename(directory / "0003.csv")  # the writer's final rename
    third = ingest_feed(settings, feed, NOW)
    assert (third.files_taken, third.rows_loaded) == (1, 1)
    assert _value(path, "SELECT count(*) FROM feed_files WHERE status = 'loaded'") == 2
    assert _no_duplicate_keys(path)


def test_a_crash_mid_load_leaves_the_file_to_be_taken_exactly_once(settings, spool, monkeypatch):
    directory, feed = spool
    path = settings.warehouse_path
    _write(directory / "0001.csv", [("a", T0 + timedelta(minutes=30), 5.0)])
    before = _fingerprint(path)

    def crash(*args, **kwargs):
        raise RuntimeError("power cut after the usage rows were written")

    # The taken-file row is the transaction's last write: usage and the batch record are in.
    monkeypatch.setattr(ingest_module, "_insert_taken_files", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        ingest_feed(settings, feed, NOW)
    assert _fingerprint(path) == before
    monkeypatch.undo()

    done = ingest_feed(settings, feed, NOW)
    assert (done.files_taken, done.rows_loaded) == (1, 1)
    assert ingest_feed(settings, feed, NOW).files_taken == 0
    assert _value(path, "SELECT count(*) FROM feed_files") == 1
    assert (
        _value(path, "SELECT count(*) FROM usage WHERE ts = ?", [T0 + timedelta(minutes=30)]) == 1
    )
    assert _no_duplicate_keys(path)


def test_a_rejected_file_is_recorded_never_retried_and_the_next_file_loads(settings, spool):
    directory, feed = spool
    path = settings.warehouse_path
    bad = [("a", T0 + timedelta(minutes=30 + i), -1.0 if i < 5 else 1.0) for i in range(10)]
    _write(directory / "0001.csv", bad, mtime=1_000_000)
    _write(directory / "0002.csv", [("b", T0 + timedelta(minutes=30), 3.0)], mtime=2_000_000)

    result = ingest_feed(settings, feed, NOW)
    assert (result.batches, result.files_taken, result.files_rejected) == (2, 2, 1)
    assert result.rows_loaded == 1 and result.rows_quarantined == 5
    assert any("Rejected" in note and "0001.csv" in note for note in result.notes)
    statuses = dict(_rows(path, "SELECT regexp_extract(path, '[^/]+$'), status FROM feed_files"))
    assert statuses == {"0001.csv": "rejected", "0002.csv": "loaded"}
    rejected_batch = _value(path, "SELECT batch_id FROM feed_files WHERE status = 'rejected'")
    assert _value(
        path, "SELECT status FROM ingest_batches WHERE batch_id = ?", [rejected_batch]
    ) == ("rejected")
    assert _value(path, "SELECT count(*) FROM quarantine WHERE batch_id = ?", [rejected_batch]) == 5
    assert (
        _value(
            path,
            "SELECT count(*) FROM usage WHERE client_id = 'a' AND ts > ?",
            [T0 + timedelta(minutes=25)],
        )
        == 0
    )
    assert ingest_feed(settings, feed, NOW).batches == 0  # not retried


def test_the_same_content_under_a_new_name_is_taken_but_not_loaded_again(settings, spool):
    directory, feed = spool
    path = settings.warehouse_path
    first = _write(directory / "0001.csv", [("a", T0 + timedelta(minutes=30), 5.0)])
    ingest_feed(settings, feed, NOW)
    before = _value(path, "SELECT count(*) FROM usage")
    shutil.copy(first, directory / "0001-resent.csv")
    result = ingest_feed(settings, feed, NOW)
    assert (result.files_taken, result.batches, result.rows_loaded) == (1, 0, 0)
    assert (
        _value(path, "SELECT status FROM feed_files WHERE path LIKE '%resent.csv'") == "duplicate"
    )
    assert _value(path, "SELECT count(*) FROM usage") == before


def test_trace_feed_replays_whole_minutes_exactly_once(settings):
    path = settings.warehouse_path
    feed = follow_feed(path, parse_feed(f"trace:{AZURE}", speed=60), now=NOW)
    clock = feed_clock(path, feed, NOW + timedelta(seconds=3.5))
    assert clock == FIRST_MINUTE + timedelta(minutes=3, seconds=30)
    first = ingest_feed(settings, feed, clock)
    assert (first.rows_loaded, first.watermark) == (9, FIRST_MINUTE + timedelta(minutes=2))
    assert ingest_feed(settings, feed, clock).rows_loaded == 0
    rest = ingest_feed(settings, feed, feed_clock(path, feed, NOW + timedelta(minutes=1)))
    assert (rest.rows_loaded, rest.watermark) == (21, FIRST_MINUTE + timedelta(minutes=9))
    assert _value(path, "SELECT count(*) FROM usage") == 30  # the whole trace, once
    assert _value(path, "SELECT count(*) FROM clients WHERE attributes IS NOT NULL") == 3
    assert _no_duplicate_keys(path)


def test_synthetic_feed_extends_the_population_and_never_changes_a_stored_row(settings):
    path = settings.warehouse_path
    feed = follow_feed(path, Feed("synthetic", params={"clients": 3, "days": 1}), now=NOW)
    history = ingest_feed(settings, feed, NOW)
    assert history.rows_loaded == 3 * 288
    with connect(path, read_only=True) as con:
        stored = fetch_frame(con, "SELECT * FROM usage ORDER BY client_id, ts")
        attributes = fetch_frame(con, "SELECT client_id, attributes FROM clients ORDER BY 1")

    later = ingest_feed(settings, feed, NOW + timedelta(hours=1, minutes=2))
    assert later.rows_loaded == 3 * 12 and later.rows_quarantined == 0
    assert later.watermark == NOW + timedelta(minutes=55)
    with connect(path, read_only=True) as con:
        old_rows = fetch_frame(
            con, "SELECT * FROM usage WHERE ts < ? ORDER BY client_id, ts", [NOW]
        )
        assert fetch_frame(con, "SELECT client_id, attributes FROM clients ORDER BY 1").equals(
            attributes
        )
        assert (
            fetch_value(con, "SELECT count(DISTINCT client_id) FROM usage WHERE ts >= ?", [NOW])
            == 3
        )
    assert old_rows.equals(stored)
    assert _no_duplicate_keys(path)


def test_a_feed_whose_population_no_longer_matches_raises_and_writes_nothing(settings):
    path = settings.warehouse_path
    feed = follow_feed(path, Feed("synthetic", params={"clients": 2, "days": 1}), now=NOW)
    ingest_usage(source="azure-functions", path=AZURE)  # someone ingests a trace by hand
    before = _fingerprint(path)
    with pytest.raises(FeedMismatch, match="no longer matches.*3 only in the warehouse"):
        ingest_feed(settings, feed, NOW)
    assert _fingerprint(path) == before


def test_cli_follow_and_show(run_cli, warehouse_path, tmp_path):
    code, out, err = run_cli("feed", "show")
    assert code == 0, err
    assert "follows no feed yet" in out
    directory = tmp_path / "inbox"
    directory.mkdir()
    code, out, err = run_cli("feed", "follow", f"spool:{directory}")
    assert code == 0, err
    assert f"now follows spool:{directory.resolve()} (freq_seconds=300)" in out
    code, out, err = run_cli("feed", "show")
    assert code == 0, err
    assert f"spool:{directory.resolve()}" in out and "files taken" in out
    assert read_feed(warehouse_path).kind == "spool"

    code, out, err = run_cli("feed", "follow", f"trace:{AZURE}", "--speed", "60")
    assert code == 0, err
    code, out, err = run_cli("feed", "show")
    assert "speed=60.0" in out and "sim_start=2019-07-15T08:00:00" in out
    assert "│ clock     │ 2019-07-15 08:" in out  # the replay clock, a few trace minutes in


def test_cli_refuses_a_mismatched_population_with_one_paragraph(run_cli, warehouse_path):
    code, _, err = run_cli("ingest", "--source", "azure-functions", "--path", str(AZURE))
    assert code == 0, err
    before = _fingerprint(warehouse_path)
    code, out, err = run_cli("feed", "follow", "synthetic")
    assert code == 1
    assert "Refused to follow synthetic" in err and "3 only in the warehouse" in err
    assert "50 only in the feed (e.g. c0000, c0001, c0002)" in err
    assert _fingerprint(warehouse_path) == before
    assert read_feed(warehouse_path) is None

    code, _, err = run_cli("feed", "follow", "trace:/no/such/trace")
    assert code == 1 and "no directory at /no/such/trace" in err
    code, _, err = run_cli("feed", "follow", f"trace:{AZURE}", "--speed", "0")
    assert code == 1 and "must be above 0" in err
