"""`prewarm ingest` / the `ingest-usage` flow end to end, on real DuckDB files and real GX."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import FIXTURES
from warehouse.db import connect, fetch_value

AZURE = FIXTURES / "azure_tiny"


def _value(path: Path, sql: str):
    with connect(path, read_only=True) as con:
        return fetch_value(con, sql)


def _snapshot(path: Path) -> tuple:
    """Everything a bad input must not change."""
    if not path.exists():
        return (0, 0, 0)
    return (
        _value(path, "SELECT count(*) FROM usage"),
        _value(path, "SELECT coalesce(sum(requests), 0) FROM usage"),
        _value(path, "SELECT count(*) FROM clients"),
    )


def test_synthetic_ingest_twice_is_idempotent(run_cli, warehouse_path):
    args = ["ingest", "--clients", "3", "--days", "2", "--end", "2026-01-10T00:00:00"]
    code, out, err = run_cli(*args)
    assert code == 0, err
    assert "Loaded" in out
    first = _snapshot(warehouse_path)
    assert first[2] == 3
    assert first[0] > 0
    code, out, _ = run_cli(*args)
    assert code == 0
    assert "Already ingested" in out and "nothing added" in out
    assert _snapshot(warehouse_path) == first
    assert _value(warehouse_path, "SELECT count(*) FROM ingest_batches") == 1


def test_azure_trace_ingest_then_sql(run_cli, warehouse_path):
    code, out, err = run_cli("ingest", "--source", "azure-functions", "--path", str(AZURE))
    assert code == 0, err
    # 3 functions x 10 minutes in the fixture.
    assert "30 usage rows for 3 clients" in out
    code, out, _ = run_cli(
        "sql", "select count(distinct client_id) n from usage", "--format", "csv"
    )
    assert code == 0
    assert out.splitlines() == ["n", "3"]
    code, out, _ = run_cli("ingest", "--source", "azure-functions", "--path", str(AZURE))
    assert code == 0 and "Already ingested" in out
    assert _value(warehouse_path, "SELECT count(*) FROM usage") == 30
    freq = _value(warehouse_path, "SELECT DISTINCT freq_seconds FROM clients")
    assert freq == 60


def test_sql_json_and_errors(run_cli, warehouse_path):
    run_cli("ingest", "--source", "azure-functions", "--path", str(AZURE))
    code, out, _ = run_cli("sql", "select 1 as one, 'x' as two", "--format", "json")
    assert code == 0 and json.loads(out) == [{"one": 1, "two": "x"}]
    code, _, err = run_cli("sql", "select * from no_such_table")
    assert code == 1
    assert "The query failed" in err and "no_such_table" in err
    code, _, err = run_cli("sql", "delete from usage")
    assert code == 1 and "read-only" in err.lower()
    assert _value(warehouse_path, "SELECT count(*) FROM usage") == 30


def test_sql_without_warehouse_explains(run_cli):
    code, _, err = run_cli("sql", "select 1")
    assert code == 1 and "No warehouse at" in err and "prewarm ingest" in err


def _events(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


GOOD_EVENTS = "client_id,ts,requests\n" + "".join(
    f"e1,2026-01-05T00:{m:02d}:00Z,{m % 7}\n" for m in range(0, 60)
)


@pytest.mark.parametrize(
    ("name", "text", "expected"),
    [
        ("empty.csv", "", "the input has no rows"),
        (
            "semicolon.csv",
            "client_id;ts;requests\ne1;2026-01-05T00:00:00Z;1\n",
            "column 'client_id' is missing",
        ),
        (
            "header.csv",
            "customer,when,requests\ne1,2026-01-05T00:00:00Z,1\n",
            "column 'ts' is missing",
        ),
        (
            "text.csv",
            "client_id,ts,requests\n" + "e1,2026-01-05T00:00:00Z,many\n" * 3,
            "empty, non-numeric or NaN",
        ),
        (
            "neg.csv",
            "client_id,ts,requests\n" + "e1,2026-01-05T00:00:00Z,-4\n" * 3,
            "negative or infinite",
        ),
        (
            "nan.csv",
            "client_id,ts,requests\n" + "e1,2026-01-05T00:00:00Z,nan\n" * 3,
            "empty, non-numeric or NaN",
        ),
        (
            "inf.csv",
            "client_id,ts,requests\n" + "e1,2026-01-05T00:00:00Z,inf\n" * 3,
            "negative or infinite",
        ),
        (
            "badts.csv",
            "client_id,ts,requests\n" + "e1,yesterday,1\n" * 3,
            "missing or unparsable timestamp",
        ),
    ],
)
def test_bad_event_files_are_rejected_clearly_and_lose_nothing(
    run_cli, warehouse_path, tmp_path, name, text, expected
):
    code, _, err = run_cli(
        "ingest", "--source", "events", "--path", str(_events(tmp_path, "ok.csv", GOOD_EVENTS))
    )
    assert code == 0, err
    before = _snapshot(warehouse_path)
    bad = _events(tmp_path, name, text)
    code, out, err = run_cli("ingest", "--source", "events", "--path", str(bad))
    assert code == 1
    assert "Traceback" not in err + out
    assert expected in err
    assert str(bad) in err
    assert "Nothing was loaded" in err
    assert _snapshot(warehouse_path) == before
    status = _value(warehouse_path, f"SELECT status FROM ingest_batches WHERE location = '{bad}'")
    assert status == "rejected"


def test_a_few_bad_rows_are_quarantined_and_the_rest_loads(run_cli, warehouse_path, tmp_path):
    lines = GOOD_EVENTS.splitlines()
    lines[5] = "e1,2026-01-05T00:04:00Z,-3"  # 1 bad row of 60: under the 5% limit
    path = _events(tmp_path, "mostly.csv", "\n".join(lines) + "\n")
    code, out, err = run_cli("ingest", "--source", "events", "--path", str(path))
    assert code == 0, err
    assert "1 quarantined" in out
    row = _value(warehouse_path, 'SELECT "row" FROM quarantine')
    assert json.loads(row) == {"client_id": "e1", "ts": "2026-01-05T00:04:00Z", "requests": "-3"}
    # 59 good calls aggregated into twelve 5-minute buckets.
    assert _value(warehouse_path, "SELECT count(*) FROM usage") == 12
    total = sum(m % 7 for m in range(60)) - (4 % 7)
    assert _value(warehouse_path, "SELECT sum(requests) FROM usage") == total


def test_unsorted_and_duplicate_series_rows(run_cli, warehouse_path, tmp_path):
    trace = tmp_path / "trace"
    shutil.copytree(AZURE, trace)
    inv = next(trace.glob("*invocations.csv"))
    lines = inv.read_text().splitlines()
    lines.append(lines[1])  # the same function twice: every minute key duplicated
    inv.write_text("\n".join(lines) + "\n")
    code, _, err = run_cli("ingest", "--source", "azure-functions", "--path", str(trace))
    # 20 of 40 rows share a key with another row: far above 5%, the batch is rejected.
    assert code == 1
    assert "duplicate key" in err and "20 of 40 rows" in err
    assert _value(warehouse_path, "SELECT count(*) FROM quarantine") == 20


def test_events_out_of_order_load_sorted(run_cli, warehouse_path, tmp_path):
    lines = GOOD_EVENTS.splitlines()
    shuffled = [lines[0], *reversed(lines[1:])]
    path = _events(tmp_path, "reversed.csv", "\n".join(shuffled) + "\n")
    code, _, err = run_cli("ingest", "--source", "events", "--path", str(path))
    assert code == 0, err
    with connect(warehouse_path, read_only=True) as con:
        rows = con.execute("SELECT ts, requests FROM usage ORDER BY ts").fetchall()
    # bucket 00:00 holds minutes 0..4: 0+1+2+3+4 = 10
    assert rows[0][1] == 10.0
    assert len(rows) == 12


def test_missing_inputs_fail_with_one_message(run_cli, tmp_path):
    code, _, err = run_cli("ingest", "--source", "events", "--path", str(tmp_path / "nope.csv"))
    assert code == 1 and "Traceback" not in err and "nope.csv" in err
    trace = tmp_path / "partial"
    shutil.copytree(AZURE, trace)
    next(trace.glob("*memory.csv")).unlink()
    code, _, err = run_cli("ingest", "--source", "azure-functions", "--path", str(trace))
    assert code == 1 and "memory.csv" in err
    code, _, err = run_cli("ingest", "--source", "events")
    assert code == 1 and "--path is required" in err


def test_help_explains_every_command(run_cli):
    code, out, _ = run_cli("--help")
    assert code == 0
    for command in ("ingest", "sql", "score", "demo"):
        assert command in out
    assert "reconcile" not in out  # `score`'s old name still runs, unlisted
    code, out, _ = run_cli("ingest", "--help")
    assert code == 0 and "quarantine" in out and "--source" in out
