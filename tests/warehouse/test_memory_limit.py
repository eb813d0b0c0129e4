"""The warehouse's memory bound (PREWARM_WAREHOUSE_MEMORY_MB): every connection the flows
open holds DuckDB to it, a bad value is one clear message, and `prewarm sql` keeps DuckDB's
own limit."""

from __future__ import annotations

import pytest

from core.errors import PrewarmError
from warehouse.adhoc import run_query
from warehouse.db import connect


def _limit(con) -> str:
    return con.execute("SELECT current_setting('memory_limit')").fetchone()[0]


def test_connections_are_bound_to_the_setting(warehouse_path, monkeypatch):
    with connect(warehouse_path) as con:
        assert _limit(con) == "488.2 MiB"  # the default, 512 MB
    monkeypatch.setenv("PREWARM_WAREHOUSE_MEMORY_MB", "2000")
    with connect(warehouse_path, read_only=True) as con:
        assert _limit(con) == "1.8 GiB"


@pytest.mark.parametrize("value", ["lots", "0", "63", "2000000", "1.5"])
def test_a_bad_value_is_refused_before_the_file_is_opened(warehouse_path, monkeypatch, value):
    monkeypatch.setenv("PREWARM_WAREHOUSE_MEMORY_MB", value)
    refused = pytest.raises(PrewarmError, match="WAREHOUSE_MEMORY_MB must be a whole number")
    with refused, connect(warehouse_path):
        pass
    assert not warehouse_path.exists()


def test_ad_hoc_sql_is_not_bound_by_it(warehouse_path, monkeypatch):
    monkeypatch.setenv("PREWARM_WAREHOUSE_MEMORY_MB", "64")
    with connect(warehouse_path):  # creates the warehouse
        pass
    shown = run_query(warehouse_path, "SELECT current_setting('memory_limit') AS m").item()
    assert shown not in ("61.0 MiB", "64.0 MiB")
