"""`prewarm pools --plot OUT.png`: the members each host held over time, one line per host.

Read from `pool_members` (each member's creation and release, on the host the plan chose),
so the picture covers the pool's whole recorded history, including hosts that went away.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import polars as pl

from core.times import utc_now
from warehouse.db import connect, fetch_frame


def members_over_time(members: pl.DataFrame, until: datetime) -> pl.DataFrame:
    """Per host, the number of members alive after each creation or release: host, at,
    members (a step function; a member still alive counts until `until`)."""
    if members.height == 0:
        return pl.DataFrame(
            schema={"host": pl.String, "at": pl.Datetime("us"), "members": pl.Int64}
        )
    hosts = pl.col("host").fill_null("-")
    created = members.select(hosts, pl.col("created_at").alias("at"), pl.lit(1).alias("step"))
    released = members.filter(pl.col("released_at").is_not_null()).select(
        hosts, pl.col("released_at").alias("at"), pl.lit(-1).alias("step")
    )
    changes = pl.concat([created, released]).with_columns(pl.col("at").cast(pl.Datetime("us")))
    per_moment = changes.group_by("host", "at").agg(pl.col("step").sum()).sort("host", "at")
    curve = per_moment.with_columns(pl.col("step").cum_sum().over("host").alias("members"))
    ends = (
        curve.group_by("host")
        .agg(pl.col("members").last())
        .with_columns(pl.lit(until).cast(pl.Datetime("us")).alias("at"))
    )
    return pl.concat(
        [curve.select("host", "at", "members"), ends.select("host", "at", "members")]
    ).sort("host", "at")


def plot_pool_hosts(warehouse: Path, out: Path) -> int:
    """Draw the members per host over the recorded history to `out`; return the hosts drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with connect(warehouse, read_only=True) as con:
        members = fetch_frame(con, "SELECT host, created_at, released_at FROM pool_members")
    curve = members_over_time(members, utc_now())
    figure, axes = plt.subplots(figsize=(10, 4))
    hosts = curve.get_column("host").unique(maintain_order=True).to_list()
    for host in hosts:
        line = curve.filter(pl.col("host") == host)
        axes.step(line["at"].to_list(), line["members"].to_list(), where="post", label=host)
    axes.set_ylabel("members held")
    axes.set_xlabel("time (UTC)")
    axes.set_title("prewarm pool: members per host over time")
    if hosts:
        axes.legend(loc="upper left")
    figure.autofmt_xdate()
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return len(hosts)
