"""`prewarm sql` reads the warehouse and nothing else: no statement writes a file (the
warehouse included), attaches a database, loads an extension or reaches the network; every
result type renders in every output format. Driven through the real CLI, as an operator."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import socket
import subprocess
from datetime import datetime
from importlib import resources
from pathlib import Path

import duckdb
import pytest

from tests.security.cli import PREWARM, isolated_env
from warehouse.db import connect


def _sql(tmp_path: Path, query: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PREWARM, "sql", query, *args],
        env=isolated_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(root: Path) -> dict[str, str]:
    """Every file under root (relative path -> sha256): nothing may appear or change."""
    return {str(p.relative_to(root)): _sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def warehouse(tmp_path: Path) -> Path:
    """A migrated warehouse with two clients' usage (3 rows), and a second DuckDB file an
    ATTACH could try to write."""
    path = tmp_path / "data" / "warehouse.duckdb"
    with connect(path) as con:
        con.execute(
            "INSERT INTO clients (client_id, freq_seconds, source) VALUES"
            " ('a', 300, 'test'), ('b', 300, 'test')"
        )
        con.execute(
            "INSERT INTO usage (client_id, ts, requests, concurrency, batch_id) VALUES"
            " ('a', ?, 5, 1, 'b1'), ('a', ?, 7, 2, 'b1'), ('b', ?, 1, 1, 'b1')",
            [datetime(2026, 1, 5, 0, 0), datetime(2026, 1, 5, 0, 5), datetime(2026, 1, 5, 0, 0)],
        )
    other = duckdb.connect(str(tmp_path / "other.duckdb"))
    other.execute("CREATE TABLE t AS SELECT 42 AS x")
    other.close()
    return path


@pytest.fixture
def listener() -> socket.socket:
    """A local TCP port that records whether anything connected to it."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.setblocking(False)
    yield server
    server.close()


def _connected(server: socket.socket) -> bool:
    try:
        connection, _ = server.accept()
    except BlockingIOError:
        return False
    connection.close()
    return True


REFUSED = {
    "copy over the warehouse": "COPY (SELECT 'x') TO 'data/warehouse.duckdb'",
    "copy to a new file": "COPY (SELECT * FROM usage) TO 'leak.csv'",
    "copy as parquet": "COPY usage TO 'leak.parquet' (FORMAT parquet)",
    "export database": "EXPORT DATABASE 'dump'",
    "attach read-write, then delete": (
        "ATTACH 'other.duckdb' AS o (READ_WRITE); DELETE FROM o.t; CREATE TABLE o.u (y INT)"
    ),
    "attach a new database": "ATTACH 'fresh.duckdb' AS f",
    "install an extension": "INSTALL httpfs",
    "load an extension": "LOAD httpfs",
    "read a host file": "SELECT * FROM read_csv('/etc/hostname')",
    "list host files": "SELECT * FROM glob('/etc/*')",
    "undo the lockdown": "SET enable_external_access = true",
    "spill elsewhere": "SET temp_directory = 'spill'",
    "profile to a file": "PRAGMA profiling_output = 'profile.json'",
    "log to a file": "CALL enable_logging(storage = 'file', storage_path = 'logs')",
    "persistent secret": "CREATE PERSISTENT SECRET s (TYPE s3, KEY_ID 'k', SECRET 'v')",
    "write the warehouse": "DELETE FROM usage",
    "a write after a read": "SELECT 1; COPY (SELECT 1) TO 'late.csv'",
}


@pytest.mark.parametrize("query", list(REFUSED.values()), ids=list(REFUSED))
def test_refused_statement_changes_no_file(tmp_path: Path, warehouse: Path, query: str):
    before = _tree(tmp_path)
    result = _sql(tmp_path, query)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert _tree(tmp_path) == before  # the warehouse's bytes included; no file appeared
    with duckdb.connect(str(tmp_path / "other.duckdb"), read_only=True) as other:
        assert other.execute("SELECT x FROM t").fetchall() == [(42,)]


@pytest.mark.parametrize(
    "query", ["COPY (SELECT 'x') TO 'data/warehouse.duckdb'", "SET enable_external_access = true"]
)
def test_a_refusal_says_why(tmp_path: Path, warehouse: Path, query: str):
    result = _sql(tmp_path, query)
    assert "prewarm sql only reads the warehouse" in result.stderr
    assert "are refused" in result.stderr


def test_network_is_never_reached(tmp_path: Path, warehouse: Path, listener: socket.socket):
    port = listener.getsockname()[1]
    for query in (
        f"SELECT * FROM read_csv('http://127.0.0.1:{port}/x.csv')",
        f"INSTALL httpfs FROM 'http://127.0.0.1:{port}'",
        f"SELECT * FROM 'http://127.0.0.1:{port}/y.parquet'",
    ):
        result = _sql(tmp_path, query)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert not _connected(listener), query


def _view_names() -> list[str]:
    sql = resources.files("warehouse").joinpath("views.sql").read_text()
    return re.findall(r"CREATE OR REPLACE VIEW (\w+)", sql)


def test_tables_and_every_documented_view_still_read(tmp_path: Path, warehouse: Path):
    views = _view_names()
    assert len(views) >= 5
    counts = ", ".join(f"(SELECT count(*) FROM {v}) AS {v}" for v in views)
    result = _sql(
        tmp_path,
        f"SELECT (SELECT sum(requests) FROM usage) AS requests, {counts}",
        "--format",
        "json",
    )
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert row["requests"] == 13.0
    assert set(row) == {"requests", *views}
    result = _sql(tmp_path, "SELECT client_id, count(*) AS n FROM usage GROUP BY 1 ORDER BY 1")
    assert result.returncode == 0
    assert re.search(r"\ba\s*│\s*2\b", result.stdout) and re.search(r"\bb\s*│\s*1\b", result.stdout)


# Types polars cannot import or CSV cannot write; each comes back as DuckDB's text for it.
ODD_TYPES = (
    "SELECT INTERVAL 5 MINUTE AS i, [1, 2] AS l, {'a': 1} AS s, MAP([1], [2]) AS m,"
    " 'ab'::BLOB AS b, 123456789012345678901234567890.12::DECIMAL(38, 2) AS d,"
    " 99999999999999999999999999999999999999::HUGEINT AS h, 'infinity'::DATE AS di,"
    " union_value(k := 1) AS u, TIMESTAMP '2026-01-05 10:00' AS t, 7 AS n, 7 AS n"
)
EXPECTED = {
    "i": "00:05:00",
    "l": "[1, 2]",
    "s": "{'a': 1}",
    "m": "{1=2}",
    "b": "ab",
    "d": "123456789012345678901234567890.12",
    "h": "99999999999999999999999999999999999999",
    "di": "infinity",
    "u": "1",
    "t": "2026-01-05 10:00:00",
    "n": 7,
    "n_1": 7,  # a repeated name is made unique, as DuckDB does
}


def test_every_result_type_renders_as_json(tmp_path: Path, warehouse: Path):
    result = _sql(tmp_path, ODD_TYPES, "--format", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [EXPECTED]


def test_every_result_type_renders_as_csv(tmp_path: Path, warehouse: Path):
    result = _sql(tmp_path, ODD_TYPES, "--format", "csv")
    assert result.returncode == 0, result.stderr
    (row,) = list(csv.DictReader(io.StringIO(result.stdout)))
    assert row == {k: str(v) for k, v in EXPECTED.items()}


def test_every_result_type_renders_as_a_table(tmp_path: Path, warehouse: Path):
    result = _sql(tmp_path, ODD_TYPES)
    assert result.returncode == 0, result.stderr
    for text in ("00:05:00", "[1, 2]", "{'a': 1}", "{1=2}", "infinity", "2026-01-05 10:00:00"):
        assert text in result.stdout


def test_a_statement_without_rows_is_not_an_error(tmp_path: Path, warehouse: Path):
    before = _sha256(warehouse)
    result = _sql(tmp_path, "CHECKPOINT", "--format", "json")
    assert result.returncode == 0, result.stderr
    assert _sha256(warehouse) == before
