"""`prewarm pools --plot`: members per host over time, from each member's life in the
warehouse (a host that went away keeps its history)."""

from __future__ import annotations

from datetime import datetime

import polars as pl

from flows.pool_plot import members_over_time

T = [datetime(2026, 11, 30, 12, m) for m in range(0, 60, 10)]


def test_members_per_host_step_up_at_creation_and_down_at_release():
    members = pl.DataFrame(
        {
            "host": ["a", "a", "b", None],
            "created_at": [T[0], T[1], T[1], T[2]],
            "released_at": [T[3], None, T[2], None],
        }
    )
    curve = members_over_time(members, until=T[5])
    by_host = {
        host: list(zip(part["at"].to_list(), part["members"].to_list(), strict=True))
        for (host,), part in curve.partition_by("host", as_dict=True, maintain_order=True).items()
    }
    assert by_host["a"] == [(T[0], 1), (T[1], 2), (T[3], 1), (T[5], 1)]
    assert by_host["b"] == [(T[1], 1), (T[2], 0), (T[5], 0)]
    assert by_host["-"] == [(T[2], 1), (T[5], 1)]  # a member without a host label


def test_no_members_no_lines():
    empty = pl.DataFrame(
        schema={
            "host": pl.String,
            "created_at": pl.Datetime("us"),
            "released_at": pl.Datetime("us"),
        }
    )
    assert members_over_time(empty, T[0]).height == 0


def test_the_cli_draws_a_png(run_cli, tmp_path):
    assert run_cli("ingest", "--source", "synthetic", "--clients", "2", "--days", "1")[0] == 0
    out = tmp_path / "hosts.png"
    code, stdout, _ = run_cli("pools", "--plot", str(out))
    assert code == 0 and "Drew the members of 0 hosts" in stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
