"""A block of warehouse work on one connection: every `connect` inside reuses it (no new
database instance), transactions stay per caller, and other files open as before."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import duckdb
import pytest

import flows.locks as locks
import warehouse.db as db
from warehouse.db import connect, fetch_value, shared_connection, transaction


@pytest.fixture
def opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files `warehouse.db` opened a DuckDB database for, in order."""
    seen: list[str] = []
    real = db._open

    def counting(path: Path, read_only: bool, wait_s: float) -> duckdb.DuckDBPyConnection:
        seen.append(Path(path).name)
        return real(path, read_only, wait_s)

    monkeypatch.setattr(db, "_open", counting)
    return seen


def test_connects_inside_a_block_share_one_open(tmp_path: Path, opens: list[str]):
    path = tmp_path / "warehouse.duckdb"
    with shared_connection(path):
        with connect(path) as con:
            con.execute("CREATE TABLE notes (n INTEGER)")
            con.execute("INSERT INTO notes VALUES (1)")
        with connect(path, read_only=True) as con:
            assert fetch_value(con, "SELECT sum(n) FROM notes") == 1
        with shared_connection(path), connect(path) as con:  # nested: still the same one
            con.execute("INSERT INTO notes VALUES (2)")
    assert opens == ["warehouse.duckdb"]
    # Closed at the end of the block: another open sees both rows and succeeds at once.
    with connect(path, read_only=True, wait_s=0) as con:
        assert fetch_value(con, "SELECT sum(n) FROM notes") == 3
    assert opens == ["warehouse.duckdb", "warehouse.duckdb"]


def test_a_failed_transaction_in_a_block_rolls_back_only_itself(tmp_path: Path):
    path = tmp_path / "warehouse.duckdb"
    with shared_connection(path):
        with connect(path) as con:
            con.execute("CREATE TABLE notes (n INTEGER)")
        with pytest.raises(RuntimeError), connect(path) as con, transaction(con):
            con.execute("INSERT INTO notes VALUES (5)")
            raise RuntimeError("half-way")
        with connect(path) as con, transaction(con):
            con.execute("INSERT INTO notes VALUES (7)")
    with connect(path, read_only=True) as con:
        assert fetch_value(con, "SELECT list(n) FROM notes") == [7]


def test_another_file_inside_a_block_opens_its_own(tmp_path: Path, opens: list[str]):
    with shared_connection(tmp_path / "a.duckdb"):
        with connect(tmp_path / "b.duckdb") as con:
            con.execute("CREATE TABLE only_b (n INTEGER)")
        with connect(tmp_path / "a.duckdb") as con:
            assert (
                fetch_value(con, "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'only_b'")
                == 0
            )
    assert opens == ["a.duckdb", "b.duckdb"]


def test_the_write_slot_is_taken_once_by_nested_holders(monkeypatch: pytest.MonkeyPatch):
    """`warehouse_session` holds the slot and the writes inside it ask again: a one-slot
    limit that is not reentrant would wait on itself for its 10-minute timeout."""
    taken: list[str] = []

    @contextmanager
    def one_slot(name: str, **_: object):
        assert not taken, "the slot was asked for while this thread already held it"
        taken.append(name)
        try:
            yield
        finally:
            taken.remove(name)

    monkeypatch.setattr(locks, "_limit_exists", lambda: True)
    monkeypatch.setattr(locks, "concurrency", one_slot)
    with locks.warehouse_write():
        with locks.warehouse_write():
            assert taken == [locks.WAREHOUSE_WRITE_LIMIT]
        assert taken == [locks.WAREHOUSE_WRITE_LIMIT]
    assert taken == []
    with locks.warehouse_write():  # released above: taken again, not skipped
        assert taken == [locks.WAREHOUSE_WRITE_LIMIT]
