"""`prewarm pools --plot`: what each host held over time (members, CPU of active members,
memory of active and shadow ones), from the timed pool events and each member's size in the
plan that created it; a host that went away keeps its history."""

from __future__ import annotations

import json
from datetime import datetime

import polars as pl

from flows.pool_plot import held_over_time, read_sized_events
from warehouse.db import connect

T = [datetime(2026, 11, 30, 12, m) for m in range(0, 60, 10)]


def _event(member, host, action, tier, at, cpu, memory_mb):
    return {
        "member_id": member,
        "host": host,
        "action": action,
        "tier": tier,
        "at": at,
        "cpu": cpu,
        "memory_mb": memory_mb,
    }


def _by_host(curve: pl.DataFrame) -> dict[str, list[tuple]]:
    return {
        host: list(part.select("at", "members", "cpu", "memory_mb").iter_rows())
        for (host,), part in curve.partition_by("host", as_dict=True, maintain_order=True).items()
    }


def test_active_members_hold_cpu_and_memory_shadow_ones_memory_cold_ones_nothing():
    events = pl.DataFrame(
        [
            _event("m1", "a", "create", "shadow", T[0], 0.5, 256.0),
            _event("m3", "b", "create", "cold", T[0], 0.25, 128.0),
            _event("m1", "a", "activate", "active", T[1], 0.5, 256.0),
            _event("m2", "a", "create", "active", T[1], 1.0, 512.0),
            _event("m1", "a", "shadow", "shadow", T[2], 0.5, 256.0),
            _event("m3", None, "activate", "active", T[2], 0.25, 128.0),  # host only on create
            _event("m1", "a", "release", "shadow", T[3], 0.5, 256.0),
            _event("m3", "b", "release", "active", T[4], 0.25, 128.0),
        ]
    )
    by_host = _by_host(held_over_time(events, until=T[5]))
    assert by_host["a"] == [
        (T[0], 1, 0.0, 256.0),
        (T[1], 2, 1.5, 768.0),
        (T[2], 2, 1.0, 768.0),
        (T[3], 1, 1.0, 512.0),
        (T[5], 1, 1.0, 512.0),
    ]
    assert by_host["b"] == [
        (T[0], 1, 0.0, 0.0),
        (T[2], 1, 0.25, 128.0),
        (T[4], 0, 0.0, 0.0),
        (T[5], 0, 0.0, 0.0),
    ]


def test_a_member_without_any_host_is_drawn_on_the_unnamed_host():
    events = pl.DataFrame([_event("m9", None, "create", "shadow", T[0], 1.0, 64.0)])
    assert _by_host(held_over_time(events, until=T[1])) == {
        "-": [(T[0], 1, 0.0, 64.0), (T[1], 1, 0.0, 64.0)]
    }


def test_no_events_no_lines():
    empty = pl.DataFrame(
        schema={
            "member_id": pl.String,
            "host": pl.String,
            "action": pl.String,
            "tier": pl.String,
            "at": pl.Datetime("us"),
            "cpu": pl.Float64,
            "memory_mb": pl.Float64,
        }
    )
    assert held_over_time(empty, T[0]).height == 0


def _allocation(con, plan_id, client_id, cpu, memory_mb):
    con.execute(
        "INSERT INTO allocations VALUES"
        " (?, ?, ?, ?, 'shadow', 1, 'a', 'provision', 0, 0, 0, ?, ?, ?)",
        [
            plan_id,
            client_id,
            T[0],
            T[5],
            json.dumps({"cpu": cpu, "memory_mb": memory_mb}),
            cpu,
            memory_mb,
        ],
    )


def _pool_event(con, member_id, client_id, plan_id, action, tier, at, ok=True):
    con.execute(
        "INSERT INTO pool_events (member_id, client_id, plan_id, runtime, action, tier, host,"
        " ms, ok, happened_at) VALUES (?, ?, ?, 'process', ?, ?, 'a', 1.0, ?, ?)",
        [member_id, client_id, plan_id, action, tier, ok, at],
    )


def test_each_member_is_sized_by_the_plan_that_created_it(warehouse_path):
    with connect(warehouse_path) as con:
        _allocation(con, "p1", "c1", 0.5, 256)
        _allocation(con, "p2", "c1", 2.0, 1024)  # the client grew in the next plan
        _pool_event(con, "m1", "c1", "p1", "create", "shadow", T[0])
        _pool_event(con, "m1", "c1", "p2", "activate", "active", T[2])  # kept by plan p2
        _pool_event(con, "m2", "c1", "p2", "create", "shadow", T[1])
        _pool_event(con, "m3", "c1", None, "activate", "active", T[1])  # a burst, no plan
        _pool_event(con, "m4", "c1", "p1", "create", "shadow", T[1], ok=False)  # failed
    events, _ = read_sized_events(warehouse_path)
    sizes = {
        row[0]: row[1:]
        for row in events.select("member_id", "cpu", "memory_mb").unique().iter_rows()
    }
    assert sizes == {"m1": (0.5, 256.0), "m2": (2.0, 1024.0), "m3": (2.0, 1024.0)}


def test_the_cli_draws_a_png(run_cli, tmp_path):
    assert run_cli("ingest", "--source", "synthetic", "--clients", "2", "--days", "1")[0] == 0
    out = tmp_path / "hosts.png"
    code, stdout, _ = run_cli("pools", "--plot", str(out))
    assert code == 0 and "Drew what 0 hosts held over time" in stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
