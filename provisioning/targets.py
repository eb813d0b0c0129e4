"""Targets: the members a plan wants to exist now, with the reactive floor and stabilisation.

Pure functions from frames to a frame: no I/O, no clock (the caller passes the times).

A cycle applies its plan once; the pool then serves until the next cycle applies. So the
target covers every planned window of the *span* [span_start, span_end) (from when the pool
is in place to when the next one is expected): per client and host, the most members of each
tier any of those windows wants, counted cumulatively from the warmest tier (a window wanting
2 active and another wanting 3 shadow give 2 active + 1 shadow: 3 members, 2 of them running).

Two inputs raise a target and nothing lowers it:

- **floor**, the reactive safety net as an input to planning: at least the need observed in
  the newest bucket stays warm (topped up in `floor_tier`, on the client's home host, while
  the host has room). prewarm is then never worse than a reactive autoscaler that keeps what
  the last bucket used.
- **hold**, scale-down stabilisation as Kubernetes' HPA does it: the members never released
  below, the most that any of these wanted: the span, the windows over the next `delay` of
  a plan made at twice the cold-start penalty (a member even a more cautious plan expects to
  need again soon is not released now: a band of hysteresis between creating and releasing),
  the targets of every plan applied in the last `delay`, and every need observed in the last
  `delay`. A member is therefore released only after it has been unneeded for the whole
  delay, looking back and ahead, and the pool does not flap with noise in the forecast.

Capacity: the floor's extra members are placed only where the host has room after the plan's
own (cpu for active, memory for active and shadow). Held members already exist, so holding
them takes no new room; the hold is cut where held warm members and the plan's own together
would exceed a host's memory, the largest first (the plan's own demand wins).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import polars as pl

from core.vocabulary import TIERS

TARGETS_SCHEMA: dict[str, pl.DataType] = {
    "client_id": pl.String(),
    "host": pl.String(),
    "active": pl.Int64(),
    "shadow": pl.Int64(),
    "cold": pl.Int64(),
    "hold": pl.Int64(),
    "floor_need": pl.Int64(),
    "reason": pl.String(),
}
_KEY = ["client_id", "host"]


def pool_targets(
    desired: pl.DataFrame,
    span_start: datetime,
    span_end: datetime,
    lookahead_end: datetime,
    *,
    floor: pl.DataFrame | None = None,
    recent_need: pl.DataFrame | None = None,
    recent_targets: pl.DataFrame | None = None,
    clients: pl.DataFrame | None = None,
    inventory: pl.DataFrame | None = None,
    current: pl.DataFrame | None = None,
    lookahead: pl.DataFrame | None = None,
    floor_tier: str = "shadow",
) -> pl.DataFrame:
    """Per provisioning client and host: members wanted now by tier, the hold and the floor.

    Args:
        desired: the plan's rows (`planner.Plan.desired`): client_id, window_start, tier,
            count, host, mode.
        span_start, span_end: the windows the applied pool must serve.
        lookahead_end: windows in [span_start, lookahead_end) count towards the hold.
        floor: client_id, need: the need observed in the newest bucket.
        recent_need: client_id, need: the largest need observed in the last delay.
        recent_targets: client_id, host, total: members wanted by plans applied in the
            last delay (their largest total each).
        clients: client_id, container_cpu, container_memory_mb (and mode): sizes for room.
        inventory: host, cpu_cores, memory_mb: the room.
        current: client_id, tier, host (and count): the pool now, for what held members hold.
        lookahead: the rows whose windows over the look-ahead hold members (default:
            `desired`); the cycle passes a plan made at a higher cold-start penalty, so a
            member is released only when even that plan does not expect it to be needed.
        floor_tier: the tier a floor top-up gets (shadow: warm, no cpu held).
    Returns:
        TARGETS_SCHEMA rows, sorted by client and host; hold >= active + shadow + cold.
    """
    if floor_tier not in TIERS:
        raise ValueError(f"floor_tier must be one of {TIERS}, got {floor_tier!r}")
    provisioning = desired.filter(
        (pl.col("mode") == "provision") & pl.col("tier").is_in(TIERS) & (pl.col("count") > 0)
    )
    span = _cumulative_max(provisioning, span_start, span_end)
    held_plan = provisioning
    if lookahead is not None:
        held_plan = lookahead.filter(
            (pl.col("mode") == "provision") & pl.col("tier").is_in(TIERS) & (pl.col("count") > 0)
        )
    ahead = _cumulative_max(held_plan, span_start, lookahead_end).select(
        *_KEY, pl.col("total").alias("ahead")
    )
    forecast_only = set(
        desired.filter(pl.col("mode") == "forecast-only").get_column("client_id").to_list()
    )
    if clients is not None and "mode" in clients.columns:
        forecast_only |= set(
            clients.filter(pl.col("mode") == "forecast-only").get_column("client_id").to_list()
        )
    home = _home_hosts(span, recent_targets, inventory)
    targets = _with_floor(span, floor, home, clients, inventory, floor_tier, forecast_only)
    targets = _with_hold(targets, ahead, recent_need, recent_targets, home, forecast_only)
    targets = _cap_hold(targets, clients, inventory, current)
    return (
        targets.select(list(TARGETS_SCHEMA))
        .cast(pl.Schema(TARGETS_SCHEMA))
        .sort(_KEY, nulls_last=True)
    )


def targets_as_desired(targets: pl.DataFrame) -> pl.DataFrame:
    """Targets as the reconciler's `desired` rows (client_id, tier, count, host)."""
    if targets.height == 0:
        return pl.DataFrame(
            schema={"client_id": pl.String, "tier": pl.String, "count": pl.Int64, "host": pl.String}
        )
    return (
        targets.unpivot(index=_KEY, on=list(TIERS), variable_name="tier", value_name="count")
        .filter(pl.col("count") > 0)
        .select("client_id", "tier", pl.col("count").cast(pl.Int64), "host")
        .sort("client_id", "tier", "host", nulls_last=True)
    )


def targets_hold(targets: pl.DataFrame) -> dict[tuple[str, str | None], int]:
    """The hold per (client, host), as the reconciler takes it."""
    return {(c, h): int(n) for c, h, n in targets.select(*_KEY, "hold").iter_rows()}


# --- steps --------------------------------------------------------------------------------


def _cumulative_max(rows: pl.DataFrame, start: datetime, end: datetime) -> pl.DataFrame:
    """Per client and host, the most members of each tier (cumulatively) over [start, end)."""
    inside = rows.filter((pl.col("window_start") >= start) & (pl.col("window_start") < end))
    if inside.height == 0:
        return pl.DataFrame(
            schema={
                "client_id": pl.String,
                "host": pl.String,
                "active": pl.Int64,
                "shadow": pl.Int64,
                "cold": pl.Int64,
                "total": pl.Int64,
            }
        )
    per_window = (
        inside.group_by(*_KEY, "window_start")
        .agg(pl.col("count").filter(pl.col("tier") == t).sum().alias(t) for t in TIERS)
        .with_columns(
            pl.col("active").alias("warm_active"),
            (pl.col("active") + pl.col("shadow")).alias("warm_shadow"),
            (pl.col("active") + pl.col("shadow") + pl.col("cold")).alias("warm_cold"),
        )
    )
    most = per_window.group_by(_KEY).agg(
        pl.col("warm_active").max(), pl.col("warm_shadow").max(), pl.col("warm_cold").max()
    )
    return most.select(
        *_KEY,
        pl.col("warm_active").cast(pl.Int64).alias("active"),
        (pl.col("warm_shadow") - pl.col("warm_active")).cast(pl.Int64).alias("shadow"),
        (pl.col("warm_cold") - pl.col("warm_shadow")).cast(pl.Int64).alias("cold"),
        pl.col("warm_cold").cast(pl.Int64).alias("total"),
    )


def _home_hosts(
    span: pl.DataFrame, recent_targets: pl.DataFrame | None, inventory: pl.DataFrame | None
) -> dict[str, str | None]:
    """Each client's home host: where the span wants most of it, else where it was held,
    else the first host of the inventory (the only one on a single machine)."""
    home: dict[str, str | None] = {}
    if recent_targets is not None:
        home.update(_busiest_host(recent_targets))
    home.update(_busiest_host(span))  # the span's choice wins over where it was held
    fallback = None
    if inventory is not None and inventory.height:
        fallback = str(inventory.sort("host").get_column("host")[0])
    return _DefaultHome(home, fallback)


def _busiest_host(targets: pl.DataFrame) -> dict[str, str | None]:
    """Each client's host holding most of its total (ties: the first host by name)."""
    if targets.height == 0:
        return {}
    return dict(
        targets.sort("total", "host", descending=[True, False], nulls_last=True)
        .unique("client_id", keep="first", maintain_order=True)
        .select(_KEY)
        .iter_rows()
    )


class _DefaultHome(dict):
    """A client -> home host map that answers the fallback host for unknown clients."""

    def __init__(self, known: dict[str, str | None], fallback: str | None) -> None:
        super().__init__(known)
        self.fallback = fallback

    def __missing__(self, client_id: str) -> str | None:
        return self.fallback


def _with_floor(
    span: pl.DataFrame,
    floor: pl.DataFrame | None,
    home: dict[str, str | None],
    clients: pl.DataFrame | None,
    inventory: pl.DataFrame | None,
    floor_tier: str,
    skip: set[str],
) -> pl.DataFrame:
    """The span's counts, topped up to the need just observed where there is room."""
    targets = span.drop("total").with_columns(
        pl.lit(0, dtype=pl.Int64).alias("floor_need"), pl.lit(None, dtype=pl.String).alias("reason")
    )
    if floor is None or floor.height == 0:
        return targets
    need = {
        cid: int(math.ceil(n))
        for cid, n in floor.select("client_id", pl.col("need").fill_null(0.0)).iter_rows()
        if cid not in skip and n > 0
    }
    if not need:
        return targets
    rows = {(r["client_id"], r["host"]): r for r in targets.iter_rows(named=True)}
    room = _Room(clients, inventory, rows.values())
    # Summed once, not per client over every row (quadratic in the clients): a client's
    # rows change only while it is topped up below.
    warm: dict[str, int] = defaultdict(int)
    for (c, _), r in rows.items():
        warm[c] += r["active"] + r["shadow"]
    for client_id in sorted(need):
        host = home[client_id]
        missing = need[client_id] - warm[client_id]
        row = rows.setdefault(
            (client_id, host),
            {
                "client_id": client_id,
                "host": host,
                "active": 0,
                "shadow": 0,
                "cold": 0,
                "floor_need": 0,
                "reason": None,
            },
        )
        row["floor_need"] = need[client_id]
        if missing <= 0:
            continue
        added = room.take(client_id, host, floor_tier, missing)
        # A cold member of the plan is started for the floor before anything new is made.
        from_cold = min(row["cold"], added) if floor_tier != "cold" else 0
        row["cold"] -= from_cold
        row[floor_tier] += added
        short = missing - added
        row["reason"] = f"floor: need {need[client_id]} just observed" + (
            f" ({short} without room)" if short else ""
        )
    frame = pl.DataFrame(
        list(rows.values()),
        schema={k: v for k, v in TARGETS_SCHEMA.items() if k != "hold"},
        orient="row",
    )
    return frame


def _with_hold(
    targets: pl.DataFrame,
    ahead: pl.DataFrame,
    recent_need: pl.DataFrame | None,
    recent_targets: pl.DataFrame | None,
    home: dict[str, str | None],
    skip: set[str],
) -> pl.DataFrame:
    """Add the hold: the most members any recent or coming moment wanted."""
    parts = [
        targets.select(*_KEY, (pl.col("active") + pl.col("shadow") + pl.col("cold")).alias("n")),
        ahead.select(*_KEY, pl.col("ahead").alias("n")),
    ]
    if recent_targets is not None and recent_targets.height:
        parts.append(recent_targets.select(*_KEY, pl.col("total").cast(pl.Int64).alias("n")))
    if recent_need is not None and recent_need.height:
        needs = [
            (cid, home[cid], int(math.ceil(n)))
            for cid, n in recent_need.select("client_id", pl.col("need").fill_null(0.0)).iter_rows()
            if n > 0
        ]
        if needs:
            parts.append(
                pl.DataFrame(
                    needs,
                    schema={"client_id": pl.String, "host": pl.String, "n": pl.Int64},
                    orient="row",
                )
            )
    held = (
        pl.concat([p.cast({"n": pl.Int64}) for p in parts], how="vertical_relaxed")
        .filter(~pl.col("client_id").is_in(list(skip)))
        .group_by(_KEY)
        .agg(pl.col("n").max().alias("hold"))
    )
    merged = held.join(targets, on=_KEY, how="full", coalesce=True, nulls_equal=True)
    return merged.with_columns(
        pl.col("active", "shadow", "cold", "floor_need").fill_null(0),
    ).with_columns(
        pl.max_horizontal(
            pl.col("hold").fill_null(0), pl.col("active") + pl.col("shadow") + pl.col("cold")
        ).alias("hold"),
        pl.when(
            pl.col("reason").is_null()
            & (pl.col("hold") > 0)
            & (pl.col("active") + pl.col("shadow") + pl.col("cold") == 0)
        )
        .then(pl.lit("hold: wanted within the scale-down delay"))
        .otherwise(pl.col("reason"))
        .alias("reason"),
    )


def _cap_hold(
    targets: pl.DataFrame,
    clients: pl.DataFrame | None,
    inventory: pl.DataFrame | None,
    current: pl.DataFrame | None,
) -> pl.DataFrame:
    """Cut holds where held warm members and the plan's own would overfill a host's memory.

    A held extra member holds memory only when it is warm (active or shadow) now: the
    reconciler keeps the warmest surplus, so the warm extras are those beyond the target's
    own warm count. To let a warm one go, the hold must also drop the colder extras the
    reconciler would keep before it.
    """
    if clients is None or inventory is None or targets.height == 0:
        return targets
    memory = _sizes(clients)[1]
    warm_now = _warm_counts(current)
    capacity = dict(inventory.select("host", "memory_mb").iter_rows())
    rows = targets.to_dicts()
    for host, room in capacity.items():
        on_host = [r for r in rows if r["host"] == host]
        used = sum((r["active"] + r["shadow"]) * memory.get(r["client_id"], 0.0) for r in on_host)
        extras = []
        for r in on_host:
            extra = r["hold"] - r["active"] - r["shadow"] - r["cold"]
            warm = min(
                extra, max(0, warm_now.get((r["client_id"], host), 0) - r["active"] - r["shadow"])
            )
            if warm > 0:
                extras.append((r, extra, warm))
        over = used + sum(w * memory.get(r["client_id"], 0.0) for r, _, w in extras) - float(room)
        for r, extra, warm in sorted(extras, key=lambda e: (-e[2], e[0]["client_id"])):
            if over <= 0:
                break
            size = memory.get(r["client_id"], 0.0) or 1.0
            dropped = min(warm, math.ceil(over / size))
            cut = (extra - warm) + dropped  # the colder extras go first
            r["hold"] -= cut
            over -= dropped * size
            r["reason"] = (r["reason"] or "hold") + f" (hold cut by {cut}: host {host} full)"
    return pl.DataFrame(rows, schema=targets.schema)


def _warm_counts(current: pl.DataFrame | None) -> dict[tuple[str, str | None], int]:
    """Warm (active or shadow) members per client and host in the current pool."""
    if current is None or current.height == 0:
        return {}
    counts = (
        current if "count" in current.columns else current.with_columns(pl.lit(1).alias("count"))
    )
    warm = (
        counts.filter(pl.col("tier").is_in(["active", "shadow"]))
        .group_by(_KEY)
        .agg(pl.col("count").sum())
    )
    return {(c, h): int(n) for c, h, n in warm.iter_rows()}


class _Room:
    """Free cpu and memory per host after the plan's own members, for floor top-ups."""

    def __init__(
        self,
        clients: pl.DataFrame | None,
        inventory: pl.DataFrame | None,
        rows: Iterable[dict[str, Any]],
    ) -> None:
        self.cpu_size, self.memory_size = _sizes(clients)
        self.bounded = inventory is not None and inventory.height > 0
        self.free_cpu: dict[str | None, float] = {}
        self.free_memory: dict[str | None, float] = {}
        if self.bounded:
            assert inventory is not None
            for host, cpu, memory in inventory.select("host", "cpu_cores", "memory_mb").iter_rows():
                self.free_cpu[host] = float(cpu)
                self.free_memory[host] = float(memory)
            for r in rows:
                self._use(r["client_id"], r["host"], "active", r["active"])
                self._use(r["client_id"], r["host"], "shadow", r["shadow"])

    def take(self, client_id: str, host: str | None, tier: str, wanted: int) -> int:
        """How many of `wanted` members of `tier` fit on `host` (and claim their room)."""
        if not self.bounded:
            return wanted
        cpu = self.cpu_size.get(client_id, 0.0) if tier == "active" else 0.0
        memory = self.memory_size.get(client_id, 0.0) if tier != "cold" else 0.0
        fits = wanted
        if cpu > 0:
            fits = min(fits, int(self.free_cpu.get(host, 0.0) // cpu))
        if memory > 0:
            fits = min(fits, int(self.free_memory.get(host, 0.0) // memory))
        fits = max(fits, 0)
        self._use(client_id, host, tier, fits)
        return fits

    def _use(self, client_id: str, host: str | None, tier: str, n: int) -> None:
        if n <= 0 or host not in self.free_memory:
            return
        if tier == "active":
            self.free_cpu[host] -= n * self.cpu_size.get(client_id, 0.0)
        if tier in ("active", "shadow"):
            self.free_memory[host] -= n * self.memory_size.get(client_id, 0.0)


def _sizes(clients: pl.DataFrame | None) -> tuple[dict[str, float], dict[str, float]]:
    """(cpu, memory) of one member per client, from the planner's client frame."""
    if clients is None or clients.height == 0:
        return {}, {}
    cpu = dict(clients.select("client_id", pl.col("container_cpu").fill_null(0.5)).iter_rows())
    memory = dict(
        clients.select("client_id", pl.col("container_memory_mb").fill_null(512.0)).iter_rows()
    )
    return cpu, memory
