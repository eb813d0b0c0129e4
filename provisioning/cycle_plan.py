"""One cycle's planning decision, pure: the plan of the coming windows and its targets.

Shared by the live loop (`flows.provision.make_plan` reads the warehouse, then calls
`plan_cycle`) and the soak's simulator (`simulation.soak`), so the simulator replays
exactly the decisions the live system makes, only with ideal timing.

Timing: the pool a cycle applies is in place `lead` seconds after its clock (the cycle's
expected duration) and serves until the next cycle's pool, one cycle later. So the plan's
first window is the first tick at or after clock + lead (never a window already begun),
the targets cover [first window, first window + cycle), and the look-ahead that holds
members reaches the scale-down delay past the first window, read from a second, more
cautious plan (cold starts priced twice as high): hysteresis between creating and releasing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import polars as pl

from provisioning.costs import CostModel
from provisioning.member_size import headroom_expr
from provisioning.planner import Plan, base_rates, plan_pools, planner_config_from_dict
from provisioning.targets import pool_targets

PLAN_WINDOWS = 12  # at least an hour of 5-minute windows: the planner's look-ahead
# The hold's plan prices a cold start this many times higher than the pool's own plan.
HOLD_PENALTY_FACTOR = 2.0


@dataclass(frozen=True)
class CycleTiming:
    """The clock grid of a cycle: bucket width, cycle interval and scale-down delay (s)."""

    tick_seconds: int
    cycle_seconds: int
    delay_seconds: int
    exceedance_levels: int = 16
    planner: dict[str, Any] = field(default_factory=dict)  # `[planner]` overrides
    # How far ahead profile windows size members and temper the plan: the forecast horizon.
    horizon_seconds: int = 3600

    def first_window(self, clock: datetime, lead_seconds: float) -> datetime:
        """The first tick at or after clock + lead."""
        return ceil_to_tick(clock + timedelta(seconds=lead_seconds), self.tick_seconds)

    def reach(self, clock: datetime, lead_seconds: float) -> tuple[datetime, datetime]:
        """The span whose profile windows the cycle plans for: first window to the horizon."""
        first = self.first_window(clock, lead_seconds)
        return first, first + timedelta(seconds=self.horizon_seconds)

    def hold_since(self, clock: datetime) -> datetime:
        """Plans made after this still hold their members: a plan's pool stays in force
        until the next cycle replaces it (one cycle later), and only then starts the
        scale-down delay of what it wanted."""
        return clock - timedelta(seconds=self.delay_seconds + self.cycle_seconds)

    def floor_since(self, clock: datetime) -> datetime:
        """The oldest bucket the floor and the hold read (`need_now`): one scale-down delay
        and one bucket before the clock."""
        return clock - timedelta(seconds=self.delay_seconds + self.tick_seconds)


@dataclass(frozen=True)
class CyclePlan:
    """A cycle's plan, the members it wants now, and the span they serve."""

    plan: Plan
    targets: pl.DataFrame
    span: tuple[datetime, datetime]


def ceil_to_tick(moment: datetime, tick_seconds: int) -> datetime:
    """The first tick of the UTC grid at or after `moment`."""
    epoch = datetime(1970, 1, 1)
    seconds = (moment - epoch).total_seconds()
    return epoch + timedelta(seconds=math.ceil(seconds / tick_seconds - 1e-9) * tick_seconds)


def need_now(usage: pl.DataFrame, since: datetime, clock: datetime) -> pl.DataFrame:
    """Per client, the need of its newest bucket from `since` (`CycleTiming.floor_since`) to
    the clock (the floor) and the most need within it (the hold): client_id, floor, recent."""
    if usage.height == 0 or "concurrency" not in usage.columns:
        return pl.DataFrame(
            schema={"client_id": pl.String, "floor": pl.Float64, "recent": pl.Float64}
        )
    recent = usage.filter((pl.col("ts") >= since) & (pl.col("ts") < clock)).drop_nulls(
        "concurrency"
    )
    return (
        recent.sort("client_id", "ts")
        .group_by("client_id")
        .agg(
            pl.col("concurrency").last().alias("floor"),
            pl.col("concurrency").max().alias("recent"),
        )
    )


def planner_clients(
    clients: pl.DataFrame, sizes: dict[str, tuple[float, float]], profiles: pl.DataFrame
) -> pl.DataFrame:
    """The planner's client frame: id, tier, mode, one member's cpu and memory (its schema),
    the network and storage I/O one member is predicted to carry, and how sure its profile
    is of the concurrency the planner plans (the windows' `concurrency_confidence`, else their
    confidence; the highest; 1 for a client with no window: forecast idle, nothing to temper).
    `profiles`: the windows the cycle plans for (`member_size.upcoming`).

    A member's network and I/O are the profile's peak p90 of the resource per request in
    flight (over its peak p90 concurrency, at least one), with the headroom the resource's
    own confidence calls for (x1 when sure, up to x1.5), the most any window asks: Mbps, and
    I/O operations a second (the usage counts them per bucket). Without a forecast of them
    they are 0: not constrained, as before. Hosts' `net_mbps` and `io_ops` bound them.
    """
    sureness = pl.col("confidence")
    if "concurrency_confidence" in profiles.columns:
        sureness = pl.coalesce("concurrency_confidence", "confidence")
    confidence = (
        dict(profiles.group_by("client_id").agg(sureness.max()).iter_rows())
        if profiles.height
        else {}
    )
    per_member = _per_member_traffic(clients, profiles)
    return (
        clients.select("client_id", "tier", "mode")
        .with_columns(
            pl.col("client_id")
            .replace_strict({c: cpu for c, (cpu, _) in sizes.items()}, return_dtype=pl.Float64)
            .alias("container_cpu"),
            pl.col("client_id")
            .replace_strict({c: mem for c, (_, mem) in sizes.items()}, return_dtype=pl.Float64)
            .alias("container_memory_mb"),
            pl.col("client_id")
            .replace_strict(confidence, default=1.0, return_dtype=pl.Float64)
            .alias("confidence"),
        )
        .join(per_member, on="client_id", how="left")
        .with_columns(pl.col("container_net_mbps", "container_io_ops").fill_null(0.0))
    )


def _per_member_traffic(clients: pl.DataFrame, profiles: pl.DataFrame) -> pl.DataFrame:
    """client_id, container_net_mbps, container_io_ops (a second) of one member, at peak."""
    schema = {
        "client_id": pl.String,
        "container_net_mbps": pl.Float64,
        "container_io_ops": pl.Float64,
    }
    needed = {"net_mbps_p90", "io_ops_p90", "concurrency_p90"}
    if profiles.height == 0 or not needed <= set(profiles.columns):
        return pl.DataFrame(schema=schema)
    freq = (
        clients.select("client_id", pl.col("freq_seconds").cast(pl.Float64))
        if "freq_seconds" in clients.columns
        else clients.select("client_id", pl.lit(300.0).alias("freq_seconds"))
    )
    in_flight = pl.max_horizontal(pl.col("concurrency_p90").fill_null(0.0), pl.lit(1.0))
    return (
        profiles.join(freq, on="client_id", how="left")
        .group_by("client_id")
        .agg(
            (pl.col("net_mbps_p90") / in_flight * headroom_expr(profiles, "net_mbps"))
            .max()
            .alias("container_net_mbps"),
            (
                pl.col("io_ops_p90")
                / pl.col("freq_seconds").fill_null(300.0)
                / in_flight
                * headroom_expr(profiles, "io_ops")
            )
            .max()
            .alias("container_io_ops"),
        )
        .select(pl.col("client_id").cast(pl.String), "container_net_mbps", "container_io_ops")
    )


def plan_cycle(
    clients: pl.DataFrame,
    inventory: pl.DataFrame,
    clock: datetime,
    lead_seconds: float,
    timing: CycleTiming,
    *,
    levels: pl.DataFrame,
    usage: pl.DataFrame,
    exceedance: pl.DataFrame | None,
    quantiles: pl.DataFrame | None,
    current_pool: pl.DataFrame | None,
    recent_targets: pl.DataFrame | None,
    costs: CostModel,
    plan_id: str | None = None,
) -> CyclePlan:
    """Plan the windows from clock + lead and the targets the pool must hold until the next
    cycle (`provisioning.targets`: the reactive floor and the scale-down hold).

    Args:
        clients: the planner's client frame (client_id, tier, mode, container sizes, confidence).
        levels: the buckets of history at each level of need (`need_levels`: client_id, n,
            buckets): the base rates.
        usage: the newest usage (client_id, ts, concurrency), at least the last delay
            before the clock: the floor and the hold.
        recent_targets: client_id, host, total of the plans applied in the last delay.
    Raises ValueError for a bad `[planner]` override (the message names the key).
    """
    tick = timing.tick_seconds
    first_window = timing.first_window(clock, lead_seconds)
    span_end = first_window + timedelta(seconds=max(timing.cycle_seconds, tick))
    lookahead_end = max(span_end, first_window + timedelta(seconds=timing.delay_seconds))
    windows = max(PLAN_WINDOWS, math.ceil((lookahead_end - first_window).total_seconds() / tick))
    config = planner_config_from_dict(
        {
            **timing.planner,
            "tick_seconds": tick,
            "windows": windows,
            # The planner's first window is the tick covering clock + buffer: this buffer
            # makes it exactly first_window.
            "buffer_seconds": (first_window - clock).total_seconds(),
        }
    )
    priors = base_rates(levels, max_level=timing.exceedance_levels) if levels.height else None

    def plan_at(prices: CostModel) -> Plan:
        return plan_pools(
            clients,
            inventory,
            clock,
            exceedance=exceedance if exceedance is not None and exceedance.height else None,
            quantiles=quantiles if quantiles is not None and quantiles.height else None,
            current_pool=current_pool,
            priors=priors,
            costs=prices,
            config=config,
            plan_id=plan_id,
        )

    plan = plan_at(costs)
    # What a more cautious plan keeps over the look-ahead holds members: releasing takes
    # a clearer "not needed" than creating takes "needed" (hysteresis against flapping).
    cautious = plan_at(_with_penalty_factor(costs, HOLD_PENALTY_FACTOR))
    need = need_now(usage, timing.floor_since(clock), clock)
    targets = pool_targets(
        plan.desired,
        first_window,
        span_end,
        lookahead_end,
        floor=need.select("client_id", pl.col("floor").alias("need")),
        recent_need=need.select("client_id", pl.col("recent").alias("need")),
        recent_targets=recent_targets,
        clients=clients,
        inventory=inventory,
        current=current_pool,
        lookahead=cautious.desired,
        floor_tier="shadow" if "shadow" in config.warm_tiers else config.warm_tiers[0],
    )
    return CyclePlan(plan, targets, (first_window, span_end))


def _with_penalty_factor(costs: CostModel, factor: float) -> CostModel:
    """The cost model with every cold-start penalty multiplied by `factor`."""
    return replace(
        costs,
        cold_start_penalty={tier: v * factor for tier, v in costs.cold_start_penalty.items()},
        default_cold_start_penalty=costs.default_cold_start_penalty * factor,
    )
