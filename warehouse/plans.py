"""Plans in the warehouse: recording one with the members it wants, and the one definition of
"the latest plan" that every reader uses.

The latest plan is the applied (not dry-run) plan with the highest `seq`. `seq` is assigned
inside the writing transaction as one more than the highest so far (warehouse writes are
serialised), so plans are ordered by when they were made, never by the data clock: two plans
made on the same data still have a clear order, and a dry run is never mistaken for what the
pool holds.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import polars as pl

from core.times import utc_now
from warehouse.db import connect, fetch_frame, fetch_value, insert_frame, transaction

LATEST_APPLIED_PLAN = "SELECT plan_id FROM plans WHERE NOT dry_run ORDER BY seq DESC LIMIT 1"


def write_plan(
    path: Path,
    plan: Any,
    dry_run: bool,
    configs: dict[str, dict[str, Any]],
    targets: pl.DataFrame | None = None,
    cycle_id: str | None = None,
) -> int:
    """Record a plan (totals, desired pool with each client's container config, unserved, and
    the targets apply makes true); return its sequence number."""
    client = pl.col("client_id")
    allocations = plan.desired.with_columns(
        client.replace_strict(
            {cid: json.dumps(cfg) for cid, cfg in configs.items()},
            default=None,
            return_dtype=pl.String,
        ).alias("config"),
        *(
            client.replace_strict(
                {cid: _number(cfg.get(key)) for cid, cfg in configs.items()},
                default=None,
                return_dtype=pl.Float64,
            ).alias(f"member_{key}")
            for key in ("cpu", "memory_mb")
        ),
    )
    with connect(path) as con, transaction(con):
        seq = int(fetch_value(con, "SELECT coalesce(max(seq), 0) + 1 FROM plans") or 1)
        con.execute(
            "INSERT INTO plans (plan_id, seq, cycle_id, created_at, recorded_at, first_window,"
            " tick_seconds, windows, buffer_seconds, dry_run, totals)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?::JSON)",
            [
                plan.plan_id,
                seq,
                cycle_id,
                plan.created_at,
                utc_now(),
                plan.first_window,
                plan.tick_seconds,
                plan.windows,
                plan.buffer_seconds,
                dry_run,
                json.dumps(plan.totals),
            ],
        )
        insert_frame(con, "allocations", allocations, {"config": "config::JSON"})
        insert_frame(con, "unserved", plan.unserved)
        if targets is not None and targets.height:
            insert_frame(
                con, "plan_targets", targets.with_columns(pl.lit(plan.plan_id).alias("plan_id"))
            )
    return seq


def _number(value: Any) -> float | None:
    """A config's size field as `(config->>'cpu')::DOUBLE` reads it (None when absent)."""
    return float(value) if value is not None else None


def latest_applied_plan(con: duckdb.DuckDBPyConnection) -> str | None:
    """The id of the newest applied plan, or None before any plan was applied."""
    value = fetch_value(con, LATEST_APPLIED_PLAN)
    return str(value) if value is not None else None


def read_applied_targets(path: Path) -> tuple[str | None, pl.DataFrame, dict[str, dict]]:
    """The newest applied plan: its id, its targets and each client's container config."""
    with connect(path, read_only=True) as con:
        plan_id = latest_applied_plan(con)
        if plan_id is None:
            return None, pl.DataFrame(), {}
        targets = fetch_frame(
            con,
            "SELECT client_id, host, active, shadow, cold, hold, floor_need, reason"
            " FROM plan_targets WHERE plan_id = ? ORDER BY client_id, host",
            [plan_id],
        )
        configs = fetch_frame(
            con,
            "SELECT DISTINCT client_id, config::VARCHAR AS config FROM allocations"
            " WHERE plan_id = ? AND config IS NOT NULL",
            [plan_id],
        )
    return plan_id, targets, {cid: json.loads(cfg) for cid, cfg in configs.iter_rows()}


def read_applied_config(con: duckdb.DuckDBPyConnection, client_id: str) -> dict[str, Any] | None:
    """The container config the newest applied plan rendered for the client (what its members
    were created with), or None when no applied plan holds one for it."""
    value = fetch_value(
        con,
        f"SELECT config::VARCHAR FROM allocations WHERE plan_id = ({LATEST_APPLIED_PLAN})"
        " AND client_id = ? AND config IS NOT NULL LIMIT 1",
        [client_id],
    )
    return json.loads(value) if value is not None else None


def read_applied_sizes(path: Path) -> dict[str, tuple[float, float]]:
    """Each client's member size (cpu, memory MB) in the newest applied plan's configs: what
    its members were created with (sizing keeps it unless the forecast moves far enough)."""
    with connect(path, read_only=True) as con:
        rows = fetch_frame(
            con,
            f"""
            SELECT client_id, any_value(member_cpu) AS cpu,
                   any_value(member_memory_mb) AS memory_mb
            FROM allocations
            WHERE plan_id = ({LATEST_APPLIED_PLAN}) AND config IS NOT NULL
            GROUP BY client_id
            """,
        )
    return {
        r["client_id"]: (r["cpu"], r["memory_mb"])
        for r in rows.iter_rows(named=True)
        if r["cpu"] is not None and r["memory_mb"] is not None
    }


def read_recent_sizes(path: Path, since: datetime) -> list[dict[str, tuple[float, float]]]:
    """Each client's member size (cpu, memory MB) in the plan in force at `since` (wall
    clock; the newest applied by then: an empty dict when there was none) and in every plan
    applied after it, a dict per plan in order: what tells a size still settling from one
    that has held."""
    with connect(path, read_only=True) as con:
        rows = fetch_frame(
            con,
            """
            WITH applied AS (SELECT plan_id, seq, recorded_at FROM plans WHERE NOT dry_run),
            in_force AS (SELECT max(seq) AS seq FROM applied WHERE recorded_at <= ?)
            SELECT p.seq, p.seq = (SELECT seq FROM in_force) AS in_force, a.client_id,
                   any_value(a.member_cpu) AS cpu,
                   any_value(a.member_memory_mb) AS memory_mb
            FROM allocations a JOIN applied p USING (plan_id)
            WHERE a.config IS NOT NULL
              AND (p.recorded_at > ? OR p.seq = (SELECT seq FROM in_force))
            GROUP BY p.seq, a.client_id
            ORDER BY p.seq, a.client_id
            """,
            [since, since],
        )
    plans: dict[int, dict[str, tuple[float, float]]] = {}
    if not rows.height or not rows.row(0, named=True)["in_force"]:
        plans[0] = {}  # nothing was in force: every size since is new
    for r in rows.iter_rows(named=True):
        if r["cpu"] is not None and r["memory_mb"] is not None:
            plans.setdefault(r["seq"], {})[r["client_id"]] = (r["cpu"], r["memory_mb"])
    return list(plans.values())


def read_recent_targets(path: Path, since: datetime) -> pl.DataFrame:
    """Per client and host, the most members any plan applied since `since` (wall clock)
    wanted (client_id, host, total): what scale-down stabilisation holds."""
    with connect(path, read_only=True) as con:
        return fetch_frame(
            con,
            """
            SELECT t.client_id, t.host, max(t.active + t.shadow + t.cold)::BIGINT AS total
            FROM plan_targets t JOIN plans p USING (plan_id)
            WHERE NOT p.dry_run AND p.recorded_at > ?
            GROUP BY ALL
            """,
            [since],
        )


def planned_host(con: duckdb.DuckDBPyConnection, client_id: str) -> str | None:
    """The host the newest applied plan keeps the client's members on, or None."""
    frame = fetch_frame(
        con,
        f"SELECT host FROM plan_targets WHERE plan_id = ({LATEST_APPLIED_PLAN})"
        " AND client_id = ? AND host IS NOT NULL"
        " ORDER BY active + shadow + cold DESC, host LIMIT 1",
        [client_id],
    )
    return frame.item(0, 0) if frame.height else None
