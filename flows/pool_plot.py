"""`prewarm pools --plot OUT.png`: what each host held over time: members, and the capacity
they held as the planner counts it (an active member: its CPU and memory; a shadow (paused)
member: its memory; a cold one: nothing), against each host's planned capacity.

Read from `pool_events` (every create, shadow, activate and release, timed, on the host the
plan chose) and each member's size in the plan that created it (`allocations`), so the
picture covers the pool's whole recorded history, including hosts that went away.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import polars as pl

from core.times import utc_now
from warehouse.db import connect, fetch_frame

HELD = ("members", "cpu", "memory_mb")
CURVE_SCHEMA = pl.Schema(
    {
        "host": pl.String(),
        "at": pl.Datetime("us"),
        "members": pl.Int64(),
        "cpu": pl.Float64(),
        "memory_mb": pl.Float64(),
    }
)


def held_over_time(events: pl.DataFrame, until: datetime) -> pl.DataFrame:
    """Per host, what its members held after each event: host, at, members, cpu, memory_mb
    (step functions; what is still held counts until `until`).

    `events`: member_id, host, action, tier, at, cpu, memory_mb (the member's size), one row
    per successful action. After a release a member holds nothing; otherwise its tier says
    what it holds.
    """
    if events.height == 0:
        return pl.DataFrame(schema=CURVE_SCHEMA)
    alive = pl.col("action") != "release"
    held = events.sort("member_id", "at").with_columns(
        # A member stays on the host it was first placed on (a move is a release + create).
        pl.col("host").drop_nulls().first().over("member_id").fill_null("-"),
        alive.cast(pl.Int64).alias("members"),
        pl.when(alive & (pl.col("tier") == "active"))
        .then(pl.col("cpu"))
        .otherwise(0.0)
        .alias("cpu"),
        pl.when(alive & pl.col("tier").is_in(["active", "shadow"]))
        .then(pl.col("memory_mb"))
        .otherwise(0.0)
        .alias("memory_mb"),
    )
    # What each event changed: the member's new holding minus its previous one.
    changes = held.with_columns(
        (pl.col(c) - pl.col(c).shift(1).over("member_id").fill_null(0)).alias(c) for c in HELD
    )
    per_moment = (
        changes.group_by("host", "at").agg(pl.col(c).sum() for c in HELD).sort("host", "at")
    )
    curve = per_moment.with_columns(pl.col(c).cum_sum().over("host") for c in HELD)
    ends = (
        curve.group_by("host")
        .agg(pl.col(c).last() for c in HELD)
        .with_columns(pl.lit(until).cast(pl.Datetime("us")).alias("at"))
    )
    columns = ["host", "at", *HELD]
    return (
        pl.concat([curve.select(columns), ends.select(columns)])
        .cast(CURVE_SCHEMA)
        .sort("host", "at")
    )


def read_sized_events(warehouse: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(successful pool events with each member's size, the hosts' planned capacity).

    A member's size is its client's container config in the plan that created it, else the
    client's largest in any plan (a member made outside a plan, e.g. an API burst)."""
    with connect(warehouse, read_only=True) as con:
        events = fetch_frame(
            con,
            """
            WITH sizes AS (
                SELECT plan_id, client_id,
                       max(member_cpu) AS cpu,
                       max(member_memory_mb) AS memory_mb
                FROM allocations WHERE config IS NOT NULL
                GROUP BY plan_id, client_id
            ),
            client_sizes AS (
                SELECT client_id, max(cpu) AS cpu, max(memory_mb) AS memory_mb
                FROM sizes GROUP BY client_id
            ),
            members AS (
                SELECT member_id, arg_min(plan_id, happened_at) AS plan_id
                FROM pool_events WHERE ok AND member_id IS NOT NULL GROUP BY member_id
            )
            SELECT e.member_id, e.host, e.action, e.tier, e.happened_at AS at,
                   coalesce(s.cpu, c.cpu, 0) AS cpu,
                   coalesce(s.memory_mb, c.memory_mb, 0) AS memory_mb
            FROM pool_events e
            JOIN members m USING (member_id)
            LEFT JOIN sizes s ON s.plan_id = m.plan_id AND s.client_id = e.client_id
            LEFT JOIN client_sizes c ON c.client_id = e.client_id
            WHERE e.ok
            """,
        )
        capacity = fetch_frame(
            con, "SELECT host, planned_cpu_cores, planned_memory_mb FROM v_hosts"
        )
    return events, capacity


def plot_pool_hosts(warehouse: Path, out: Path) -> int:
    """Draw what each host held over the recorded history to `out`; return the hosts drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    events, capacity = read_sized_events(warehouse)
    curve = held_over_time(events, utc_now())
    limits = {row["host"]: row for row in capacity.iter_rows(named=True)}
    panels = (
        ("members", "members held", None),
        ("cpu", "CPU cores held (active)", "planned_cpu_cores"),
        ("memory_mb", "memory held, MB (active + shadow)", "planned_memory_mb"),
    )
    figure, axes = plt.subplots(len(panels), 1, figsize=(10, 8), sharex=True)
    hosts = curve.get_column("host").unique(maintain_order=True).to_list()
    for host in hosts:
        line = curve.filter(pl.col("host") == host)
        for ax, (column, _, limit) in zip(axes, panels, strict=True):
            drawn = ax.step(line["at"].to_list(), line[column].to_list(), where="post", label=host)
            planned = limits.get(host, {}).get(limit) if limit else None
            if planned is not None:  # the host's planned capacity, in the line's colour
                ax.axhline(planned, color=drawn[0].get_color(), linestyle="--", linewidth=0.8)
    for ax, (_, label, _) in zip(axes, panels, strict=True):
        ax.set_ylabel(label)
    axes[0].set_title("prewarm pool per host over time (dashed: the host's planned capacity)")
    axes[-1].set_xlabel("time (UTC)")
    if hosts:
        axes[0].legend(loc="upper left")
    figure.autofmt_xdate()
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return len(hosts)
