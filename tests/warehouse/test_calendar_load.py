"""`prewarm calendar load FILE`: an operator's own events, validated with Great Expectations
like usage (quarantine, a batch record, refusal of a malformed file with nothing loaded),
idempotent, bounded, and read by the forecasters' features."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import polars as pl
import pytest

from models.features import calendar_flags, make_feature_spec
from warehouse.calendar_validation import MAX_KINDS
from warehouse.db import connect, fetch_frame
from warehouse.usage import read_calendar

GOOD = """region,start,end,name,kind
global,2026-12-24T00:00:00Z,2026-12-27T00:00:00Z,Christmas,holiday
eu,2026-11-27,2026-11-28,Black Friday,sale
eu,2026-12-01T02:00:00+01:00,2026-12-01T04:00:00+01:00,DB upgrade,maintenance
us,1764201600,1764460800,Cyber weekend,sale
"""


def _write(tmp_path: Path, text: str, name: str = "calendar.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _table(warehouse: Path, sql: str) -> list[dict]:
    with connect(warehouse, read_only=True) as con:
        return fetch_frame(con, sql).to_dicts()


def test_a_calendar_loads_its_events_in_utc_once(run_cli, tmp_path, warehouse_path):
    path = _write(tmp_path, GOOD)
    code, out, _ = run_cli("calendar", "load", str(path))
    assert code == 0, out
    assert "4 events (4 rows read, 0 quarantined)" in out
    events = {e["name"]: e for e in read_calendar(warehouse_path).to_dicts()}
    assert set(events) == {"Christmas", "Black Friday", "DB upgrade", "Cyber weekend"}
    assert events["DB upgrade"]["start_ts"] == datetime(2026, 12, 1, 1)  # +01:00 -> UTC
    assert events["Black Friday"]["end_ts"] == datetime(2026, 11, 28)
    assert events["Cyber weekend"]["start_ts"] == datetime(2025, 11, 27)  # epoch seconds
    assert events["Christmas"]["region"] == "global"

    code, out, _ = run_cli("calendar", "load", str(path))  # the same content again
    assert code == 0 and "Already loaded" in out
    assert read_calendar(warehouse_path).height == 4
    batches = _table(warehouse_path, "SELECT source, status, rows_loaded FROM ingest_batches")
    assert batches == [{"source": "calendar", "status": "loaded", "rows_loaded": 4}]


def test_a_file_missing_columns_is_refused_and_nothing_loads(run_cli, tmp_path, warehouse_path):
    assert run_cli("calendar", "load", str(_write(tmp_path, GOOD, "first.csv")))[0] == 0
    bad = _write(tmp_path, "region,start,name\neu,2026-01-01,New year\n", "bad.csv")
    code, out, err = run_cli("calendar", "load", str(bad))
    assert code == 1
    assert "'end', 'kind' missing" in err and "Nothing was loaded" in err
    assert "Traceback" not in out + err
    assert read_calendar(warehouse_path).height == 4  # what was there stays
    rejected = _table(
        warehouse_path, "SELECT status FROM ingest_batches WHERE location LIKE '%bad.csv'"
    )
    assert rejected == [{"status": "rejected"}]


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"\xff\xfe\x00garbage\x00\x01", "missing (columns needed: region, start, end, name, kind"),
        (b"region,start,end,name,kind\n", "the file has no rows"),
    ],
)
def test_an_unreadable_or_empty_file_is_refused(run_cli, tmp_path, warehouse_path, content, why):
    path = tmp_path / "broken.csv"
    path.write_bytes(content)
    code, _, err = run_cli("calendar", "load", str(path))
    assert code == 1 and why in err
    assert read_calendar(warehouse_path).height == 0


def test_bad_rows_go_to_quarantine_with_what_they_failed(
    run_cli, tmp_path, warehouse_path, monkeypatch
):
    monkeypatch.setenv("PREWARM_QUARANTINE_MAX_SHARE", "1.0")
    rows = [
        "region,start,end,name,kind",
        "eu,2026-03-01,2026-03-02,Launch day,launch",  # good
        "eu,2026-03-05,2026-03-04,Backwards,sale",  # ends before it starts
        "../etc,2026-03-01,2026-03-02,Path,sale",  # not a region
        "eu,2026-03-01,2026-03-02,Shouting,SALE",  # not a lowercase word
        "eu,not a date,2026-03-02,Unparsable,sale",
        f"eu,2026-03-01,2026-03-02,{'x' * 200},sale",  # name too long
        "eu,2026-01-01,2028-01-01,Forever,sale",  # longer than a year
    ]
    code, out, _ = run_cli("calendar", "load", str(_write(tmp_path, "\n".join(rows) + "\n")))
    assert code == 0, out
    assert "1 events (7 rows read, 6 quarantined)" in out
    assert [e["name"] for e in read_calendar(warehouse_path).to_dicts()] == ["Launch day"]
    quarantined = _table(warehouse_path, 'SELECT row_number, "row", expectation FROM quarantine')
    why = {q["row_number"]: q["expectation"] for q in quarantined}
    assert set(why) == {2, 3, 4, 5, 6, 7}
    assert "end - start" in why[2] and "end - start" in why[7]
    assert "match_regex(region)" in why[3]
    assert "match_regex(kind)" in why[4]
    assert "not_be_null" in why[5]
    assert "lengths_to_be_between(name" in why[6]
    row = json.loads(next(q["row"] for q in quarantined if q["row_number"] == 3))
    assert row == {
        "region": "../etc",
        "start": "2026-03-01",
        "end": "2026-03-02",
        "name": "Path",
        "kind": "sale",
    }


def test_too_many_failing_rows_reject_the_whole_file(run_cli, tmp_path, warehouse_path):
    text = GOOD + "eu,2026-03-05,2026-03-04,Backwards,sale\n"  # 1 of 5 > the 5% default
    code, _, err = run_cli("calendar", "load", str(_write(tmp_path, text)))
    assert code == 1 and "1 of 5 rows (20.0%) failed validation" in err
    assert read_calendar(warehouse_path).height == 0


def test_the_kinds_are_bounded_across_files(run_cli, tmp_path, warehouse_path):
    first = ["region,start,end,name,kind"] + [
        f"global,2026-01-{d:02d},2026-01-{d + 1:02d},event {d},kind_{d}"
        for d in range(1, MAX_KINDS)
    ]
    assert run_cli("calendar", "load", str(_write(tmp_path, "\n".join(first) + "\n")))[0] == 0
    more = "region,start,end,name,kind\nglobal,2026-02-01,2026-02-02,a,extra_a\n"
    more += "global,2026-02-03,2026-02-04,b,extra_b\n"
    code, _, err = run_cli("calendar", "load", str(_write(tmp_path, more, "more.csv")))
    assert code == 1
    assert f"at most {MAX_KINDS} kinds" in err and "this file adds 2 (extra_a, extra_b)" in err
    assert read_calendar(warehouse_path).height == MAX_KINDS - 1


def test_loaded_kinds_become_features_where_and_when_their_events_are(
    run_cli, tmp_path, warehouse_path
):
    assert run_cli("calendar", "load", str(_write(tmp_path, GOOD)))[0] == 0
    calendar = read_calendar(warehouse_path)
    spec = make_feature_spec(300, 12, 14 * 288, calendar=calendar)
    assert {"sale", "maintenance", "holiday"} <= set(spec.calendar_kinds)
    keys = pl.DataFrame(
        {
            "region": ["eu", "us", "eu", "eu"],
            "ts": [
                datetime(2026, 11, 27, 12),  # Black Friday, eu only
                datetime(2026, 11, 27, 12),
                datetime(2026, 12, 1, 1, 30),  # the maintenance window, in UTC
                datetime(2026, 12, 25, 9),  # Christmas is global
            ],
        }
    )
    flags = calendar_flags(keys, calendar, ("sale", "maintenance", "holiday"))
    got = flags.select("_cal_sale", "_cal_maintenance", "_cal_holiday").rows()
    assert got == [(1.0, 0.0, 0.0), (0.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)]
