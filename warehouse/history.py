"""The cycle's own history kept to a retention: plans with their allocations, targets and
unserved demand, forecast scores, member observations, pool events and released members.

Every cycle appends to each (a plan alone is ~24,000 allocation rows at 1,000 clients), and
scoring and planning read them every cycle: kept for ever, a loop left running gets slower
every day. What the loop reads is recent (plans within the scale-down delay, scores of the
last drift windows), so a retention of days loses nothing it needs; what it must keep
whatever its age is kept: the newest applied plan (members were created from it) and each
client's newest scored bucket (where its next scoring starts). Ages are on the wall clock
the rows were recorded by, never the data clock (a replayed history is months old).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from warehouse.db import connect, fetch_value, transaction
from warehouse.plans import LATEST_APPLIED_PLAN

# (table, DELETE condition on its rows `t`); `?` is the cut-off
_PRUNED = (
    ("allocations", "t.plan_id IN (SELECT plan_id FROM old_plans)"),
    ("plan_targets", "t.plan_id IN (SELECT plan_id FROM old_plans)"),
    ("unserved", "t.plan_id IN (SELECT plan_id FROM old_plans)"),
    ("plans", "t.plan_id IN (SELECT plan_id FROM old_plans)"),
    (
        "forecast_scores",
        "t.scored_at < ? AND t.window_start < ("
        "SELECT max(window_start) FROM forecast_scores l WHERE l.client_id = t.client_id)",
    ),
    ("pool_member_stats", "t.observed_at < ?"),
    ("pool_events", "t.happened_at < ?"),
    ("pool_members", "t.released_at < ?"),
)


def prune_history(path: Path, before: datetime) -> dict[str, int]:
    """Delete the history recorded before `before` (see the module docstring); return the
    rows deleted per table (tables with none left out). One transaction: a plan never
    loses its allocations without the plan itself."""
    deleted: dict[str, int] = {}
    with connect(path) as con, transaction(con):
        con.execute(
            f"""
            CREATE TEMP TABLE old_plans AS
            SELECT plan_id FROM plans
            WHERE coalesce(recorded_at, created_at) < ?
              AND plan_id IS DISTINCT FROM ({LATEST_APPLIED_PLAN})
            """,
            [before],
        )
        for table, condition in _PRUNED:
            params = [before] * condition.count("?")
            rows = int(fetch_value(con, f"DELETE FROM {table} t WHERE {condition}", params) or 0)
            if rows:
                deleted[table] = rows
        con.execute("DROP TABLE old_plans")
    return deleted


def prune_due(path: Path, now: datetime, every: timedelta) -> bool:
    """Whether the last prune (`prunes`, wall clock) was `every` or longer before `now`, or
    never happened, or is dated after `now` (the clock was set back: prune, and start over)."""
    with connect(path, read_only=True) as con:
        last = fetch_value(con, "SELECT pruned_at FROM prunes WHERE name = 'history'")
    return last is None or not last <= now < last + every


def record_prune(path: Path, now: datetime) -> None:
    """Note that the history was pruned at `now` (see `prune_due`)."""
    with connect(path) as con:
        con.execute(
            "INSERT INTO prunes VALUES ('history', ?)"
            " ON CONFLICT (name) DO UPDATE SET pruned_at = excluded.pruned_at",
            [now],
        )
