"""The planner's settings, vocabulary and output schemas.

`PlannerConfig` (and its TOML reader), the `Plan` a run returns, `PlanWindowError`, the
column schemas of `Plan.desired`, `Plan.unserved` and `desired_members`, and the integer
codes the array code uses for options (none/cold/shadow/active), resource dimensions and
unserved reasons.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any

import polars as pl

from core.errors import PrewarmError
from core.vocabulary import TIERS
from provisioning.costs import CostModel

# Options ordered by warmth; argmin ties go to the colder (cheaper to hold) option.
_NONE, _COLD, _SHADOW, _ACTIVE = 0, 1, 2, 3
OPTIONS: tuple[str, ...] = ("none", "cold", "shadow", "active")
_CPU, _MEMORY, _NET, _IO = 0, 1, 2, 3
_REASON_FRAGMENTED = 4
_REASON_TOO_LARGE = 5
_REASONS: tuple[str, ...] = (
    "cpu capacity short",
    "memory capacity short",
    "network capacity short",
    "io capacity short",
    "no host has room left (fragmented)",
    "container larger than any host",
)
_EPS = 1e-9

DESIRED_SCHEMA: dict[str, pl.DataType] = {
    "plan_id": pl.String(),
    "client_id": pl.String(),
    "window_start": pl.Datetime("us"),
    "window_end": pl.Datetime("us"),
    "tier": pl.String(),  # active | shadow | cold | none (demand left to cold starts)
    "count": pl.Int64(),
    "host": pl.String(),
    "mode": pl.String(),
    "expected_cost": pl.Float64(),
    "expected_cold_starts": pl.Float64(),
    "priority": pl.Float64(),
}
UNSERVED_SCHEMA: dict[str, pl.DataType] = {
    "plan_id": pl.String(),
    "client_id": pl.String(),
    "window_start": pl.Datetime("us"),
    "tier": pl.String(),  # the tier the instances should have had
    "placed_as": pl.String(),  # what they got instead: shadow | cold | none
    "instances": pl.Int64(),
    "mode": pl.String(),
    "reason": pl.String(),
}
MEMBERS_SCHEMA: dict[str, pl.DataType] = {
    "client_id": pl.String(),
    "tier": pl.String(),
    "host": pl.String(),
    "count": pl.Int64(),
}


class PlanWindowError(PrewarmError, ValueError):
    """A time outside the plan's windows was asked for: the plan is stale or early."""


@dataclass(frozen=True)
class PlannerConfig:
    """How to plan: the window grid, the buffer, the level cap, reserve and defaults."""

    tick_seconds: int = 300
    windows: int = 12
    buffer_seconds: float | None = None  # None: costs.cold_start_seconds + tick_seconds
    max_level: int = 64  # instances per client and window the planner considers
    burst_reserve: float = 0.0  # share of every host's capacity never planned
    warm_tiers: tuple[str, ...] = TIERS  # the tiers the planner may use
    default_container_cpu: float = 0.5  # for clients with no container size
    default_container_memory_mb: float = 512.0
    placement_rounds: int = 3  # next-fit passes over the hosts before falling back

    def __post_init__(self) -> None:
        if self.tick_seconds < 1 or self.windows < 1 or self.max_level < 1:
            raise ValueError("tick_seconds, windows and max_level must be >= 1")
        if not 0.0 <= self.burst_reserve < 1.0:
            raise ValueError(f"burst_reserve must be in [0, 1), got {self.burst_reserve}")
        unknown = set(self.warm_tiers) - set(TIERS)
        if unknown:
            raise ValueError(f"warm_tiers: unknown tier(s) {sorted(unknown)}; known: {TIERS}")
        if self.buffer_seconds is not None and self.buffer_seconds < 0:
            raise ValueError(f"buffer_seconds must be >= 0, got {self.buffer_seconds}")
        if self.default_container_cpu <= 0 or self.default_container_memory_mb <= 0:
            raise ValueError("default container cpu and memory must be > 0")
        if self.placement_rounds < 1:
            raise ValueError("placement_rounds must be >= 1")

    def buffer(self, costs: CostModel) -> float:
        """Seconds to provision ahead: as configured, else activation time + one tick."""
        if self.buffer_seconds is not None:
            return float(self.buffer_seconds)
        return costs.cold_start_seconds + self.tick_seconds


def planner_config_from_dict(values: dict[str, Any], where: str = "planner") -> PlannerConfig:
    """Build a PlannerConfig from a TOML `[planner]` section; unknown keys are errors."""
    known = {f.name for f in fields(PlannerConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {sorted(known)}")
    kwargs = dict(values)
    if "warm_tiers" in kwargs:
        kwargs["warm_tiers"] = tuple(kwargs["warm_tiers"])
    return PlannerConfig(**kwargs)


@dataclass(frozen=True)
class Plan:
    """A computed plan: the desired pool per window, what went unserved, and totals.

    `desired` has one row per (client, window, tier, host) with count > 0, plus one row per
    (client, window) with tier 'none' (count 0, host null) carrying the expected cold
    starts of the demand left unwarmed, so that expected_cost and expected_cold_starts
    both sum over the frame. Rows are sorted by window, client_id, tier in warmth order
    (none, cold, shadow, active), then host in placement order.

    `totals` over provisioning clients: expected_cost, expected_cold_starts,
    reactive_cost and reactive_cold_starts (a purely reactive policy: every needed instance
    a cold start, no idle), savings (reactive - expected), warm_instance_windows,
    downgraded_instances (placed colder than wanted), unserved_instances (wanted warm,
    got none); over forecast-only clients: forecast_only_expected_cost and
    forecast_only_reactive_cost.
    """

    plan_id: str
    created_at: datetime
    first_window: datetime
    tick_seconds: int
    windows: int
    buffer_seconds: float
    desired: pl.DataFrame
    unserved: pl.DataFrame
    totals: dict[str, float]

    @property
    def window_starts(self) -> list[datetime]:
        step = timedelta(seconds=self.tick_seconds)
        return [self.first_window + i * step for i in range(self.windows)]
