"""The cycle's history kept to a retention (`prune_history`): what is older goes, what the
loop needs whatever its age stays, and a second prune deletes nothing."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from warehouse.db import connect, fetch_frame
from warehouse.history import prune_history
from warehouse.plans import LATEST_APPLIED_PLAN

NOW = datetime(2026, 12, 1, 12, 0)
CUT = NOW - timedelta(days=7)
DATA = datetime(2026, 1, 19)  # the data clock of the windows: months before the wall clock


def _days_ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def _plan(con, plan_id: str, seq: int, dry_run: bool, recorded: datetime) -> None:
    con.execute(
        "INSERT INTO plans (plan_id, created_at, first_window, tick_seconds, windows,"
        " buffer_seconds, dry_run, totals, seq, recorded_at)"
        " VALUES (?, ?, ?, 300, 1, 0, ?, '{}', ?, ?)",
        [plan_id, DATA, DATA, dry_run, seq, recorded],
    )
    con.execute(
        "INSERT INTO allocations (plan_id, client_id, window_start, window_end, tier, count,"
        " host, mode, expected_cost, expected_cold_starts, priority)"
        " VALUES (?, 'a', ?, ?, 'active', 1, 'h', 'provision', 0, 0, 1)",
        [plan_id, DATA, DATA + timedelta(minutes=5)],
    )
    con.execute("INSERT INTO plan_targets VALUES (?, 'a', 'h', 1, 0, 0, 1, 0, NULL)", [plan_id])
    con.execute(
        "INSERT INTO unserved (plan_id, client_id, window_start, tier, placed_as, instances,"
        " mode, reason)"
        " VALUES (?, 'a', ?, 'active', 'cold', 1, 'provision', 'full')",
        [plan_id, DATA],
    )


def _score(con, client: str, bucket: int, metric: str, scored: datetime) -> None:
    window = DATA + timedelta(minutes=5 * bucket)
    con.execute(
        "INSERT INTO forecast_scores (client_id, window_start, window_end, metric, actual,"
        " covered, scored_at) VALUES (?, ?, ?, ?, 1, true, ?)",
        [client, window, window + timedelta(minutes=5), metric, scored],
    )


def _fill(path: Path) -> None:
    with connect(path) as con:
        _plan(con, "old-applied", 1, False, _days_ago(10))
        _plan(con, "old-dry", 2, True, _days_ago(9))
        _plan(con, "new-applied", 3, False, _days_ago(1))
        _plan(con, "new-dry", 4, True, _days_ago(0.5))
        # a: an old and a new score; b: only old ones, its newest bucket in two metrics.
        _score(con, "a", 1, "requests", _days_ago(10))
        _score(con, "a", 2, "requests", _days_ago(1))
        _score(con, "b", 1, "requests", _days_ago(12))
        _score(con, "b", 2, "requests", _days_ago(11))
        _score(con, "b", 2, "concurrency", _days_ago(11))
        for days in (8, 0.1):
            con.execute(
                "INSERT INTO pool_member_stats VALUES ('m', 'a', 'process', 'active', 1, 1, ?)",
                [_days_ago(days)],
            )
            con.execute(
                "INSERT INTO pool_events (member_id, client_id, runtime, action, ok, happened_at)"
                " VALUES ('m', 'a', 'process', 'create', true, ?)",
                [_days_ago(days)],
            )
        for member, released in (
            ("gone", _days_ago(8)),
            ("recent", _days_ago(0.1)),
            ("live", None),
        ):
            con.execute(
                "INSERT INTO pool_members (member_id, client_id, runtime, tier, released_at,"
                " observed_at) VALUES (?, 'a', 'process', 'shadow', ?, ?)",
                [member, released, NOW],
            )


def _ids(path: Path, sql: str) -> list[tuple]:
    with connect(path, read_only=True) as con:
        return fetch_frame(con, sql).rows()


def test_history_older_than_the_retention_goes_and_what_the_loop_needs_stays(warehouse_path):
    _fill(warehouse_path)

    deleted = prune_history(warehouse_path, CUT)

    assert deleted == {
        "allocations": 2,
        "plan_targets": 2,
        "unserved": 2,
        "plans": 2,
        "forecast_scores": 2,
        "pool_member_stats": 1,
        "pool_events": 1,
        "pool_members": 1,
    }
    for table in ("plans", "allocations", "plan_targets", "unserved"):
        left = _ids(warehouse_path, f"SELECT plan_id FROM {table} ORDER BY plan_id")
        assert left == [("new-applied",), ("new-dry",)], table
    # a keeps its new score; b, scored only long ago, keeps its newest bucket (both metrics):
    # its next scoring starts there.
    assert _ids(
        warehouse_path,
        "SELECT client_id, window_start, metric FROM forecast_scores ORDER BY ALL",
    ) == [
        ("a", DATA + timedelta(minutes=10), "requests"),
        ("b", DATA + timedelta(minutes=10), "concurrency"),
        ("b", DATA + timedelta(minutes=10), "requests"),
    ]
    assert _ids(warehouse_path, "SELECT member_id FROM pool_members ORDER BY 1") == [
        ("live",),
        ("recent",),
    ]
    assert prune_history(warehouse_path, CUT) == {}  # converges


def test_the_newest_applied_plan_stays_however_old(warehouse_path):
    """Members were created from it: a loop idle for longer than the retention still has
    the plan its pool follows; a dry run recorded after it does not count."""
    with connect(warehouse_path) as con:
        _plan(con, "older", 1, False, _days_ago(30))
        _plan(con, "applied", 2, False, _days_ago(20))
        _plan(con, "dry", 3, True, _days_ago(10))

    assert prune_history(warehouse_path, CUT)["plans"] == 2

    assert _ids(warehouse_path, "SELECT plan_id FROM plans") == [("applied",)]
    assert _ids(warehouse_path, LATEST_APPLIED_PLAN) == [("applied",)]
    assert _ids(warehouse_path, "SELECT plan_id FROM allocations") == [("applied",)]


def test_a_prune_is_due_once_an_hour_on_the_wall_clock(warehouse_path):
    from warehouse.history import prune_due, record_prune

    hour = timedelta(hours=1)
    with connect(warehouse_path):
        pass  # a warehouse never pruned
    assert prune_due(warehouse_path, NOW, hour)
    record_prune(warehouse_path, NOW)
    assert not prune_due(warehouse_path, NOW, hour)
    assert not prune_due(warehouse_path, NOW + timedelta(minutes=59), hour)
    assert prune_due(warehouse_path, NOW + hour, hour)
    # A clock set back (the last prune dated in the future) prunes and starts over.
    assert prune_due(warehouse_path, NOW - timedelta(minutes=5), hour)
    record_prune(warehouse_path, NOW - timedelta(minutes=5))
    assert not prune_due(warehouse_path, NOW, hour)
    with connect(warehouse_path, read_only=True) as con:
        rows = fetch_frame(con, "SELECT * FROM prunes").rows()
    assert rows == [("history", NOW - timedelta(minutes=5))]  # one row, rewritten
