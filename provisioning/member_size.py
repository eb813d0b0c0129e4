"""How big one member of a client is: its declared size, moved by what its forecast says.

A client's schema declares `cpu` and `memory_mb` per container: the size its members get
while it has no forecast. With a profile, one member is sized to what one instance is
predicted to use in the client's busiest window: the resource's p90 over the p90 of requests
in flight (at least one), times a headroom that grows as the resource's own confidence falls
(x1 at confidence 1, x1.5 at 0), rounded up to a ladder of sizes, and kept within the
schema's `sizing` bounds (by default a quarter to four times the declared size) and the
largest host.

The ladder (1, 1.5, 2, 3, 4, 6, ... times a base) is why a forecast that wobbles from one
run to the next does not resize members every cycle: a member's size changes only when the
need moves past a rung, and every change replaces members (their config hash changes).

Sizes are sticky on top of that (`current`: the size the client's members have now): a
member grows only once the predicted p90 itself outgrows it (its headroom used up), and
shrinks only once the forecast asks for half its size or less, and not while its size is
`settling` (it changed within the scale-down delay: the same stabilisation window as a
release's). A client with no forecast window ahead keeps the size it has (its declared size
only if it has none yet): windows entering and leaving the horizon would otherwise flip it
between its declared and its forecast size every few cycles. A need hovering at a rung's
edge, or a forecast that swings from cycle to cycle, would otherwise replace the client's
members back and forth, each replacement a release and a create (a contradiction, in the
soak's words; 15 % of the pool a cycle at 100 synthetic clients before these rules), and
the extra costs little next to a cold start.

The same function sizes the live loop's members (`flows.provision`) and the soak
simulator's (`simulation.soak`), so the simulation plans what the loop would.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl

# Headroom over the predicted per-instance p90: 1 + HEADROOM x (1 - confidence).
HEADROOM = 0.5
# A resource with no confidence of its own (profiles written before there was one) is
# sized at its p90, as it was then.
UNKNOWN_CONFIDENCE = 1.0
# The default bounds around the declared size.
DEFAULT_SHRINK, DEFAULT_GROW = 0.25, 4.0
# A member shrinks only to a size at most this fraction of its current one.
SHRINK_AT = 0.5
# The ladder's rungs per doubling: 1 and 1.5 times a power of two of the base.
_RUNGS = (1.0, 1.5)
CPU_BASE = 0.125  # cores
MEMORY_BASE_MB = 16.0


@dataclass(frozen=True)
class SizeBounds:
    """The smallest and largest member a client's schema allows."""

    min_cpu: float
    max_cpu: float
    min_memory_mb: float
    max_memory_mb: float

    @classmethod
    def around(
        cls,
        cpu: float,
        memory_mb: float,
        sizing: Mapping[str, Any] | None,
        *,
        max_cpu: float,
        max_memory_mb: float,
    ) -> SizeBounds:
        """The bounds the schema's `sizing` sets (unset: a quarter to four times the
        declared size), never past the largest host."""
        given = dict(sizing or {})

        def bound(key: str, default: float, ceiling: float) -> float:
            value = given.get(key)
            return min(float(value) if value is not None else default, ceiling)

        return cls(
            min_cpu=bound("min_cpu", cpu * DEFAULT_SHRINK, max_cpu),
            max_cpu=bound("max_cpu", cpu * DEFAULT_GROW, max_cpu),
            min_memory_mb=bound("min_memory_mb", memory_mb * DEFAULT_SHRINK, max_memory_mb),
            max_memory_mb=bound("max_memory_mb", memory_mb * DEFAULT_GROW, max_memory_mb),
        )


def ladder_up(value: float, base: float) -> float:
    """The smallest rung (1 or 1.5 times base x 2^k) at or above `value`."""
    if value <= base:
        return base
    power = base * 2.0 ** math.floor(math.log2(value / base))
    # 2 x power is past value by construction, so some rung always fits.
    return next(power * rung for rung in (*_RUNGS, 2.0) if power * rung >= value * (1 - 1e-9))


def headroom(confidence: float | None) -> float:
    """How much over the p90 a member is sized: more the less sure the forecast is."""
    sure = UNKNOWN_CONFIDENCE if confidence is None else min(max(confidence, 0.0), 1.0)
    return 1.0 + HEADROOM * (1.0 - sure)


def headroom_expr(profiles: pl.DataFrame, metric: str) -> pl.Expr:
    """`headroom` of each profile row, from the metric's own confidence column."""
    column = f"{metric}_confidence"
    if column not in profiles.columns:
        return pl.lit(headroom(None))
    sure = pl.col(column).cast(pl.Float64).fill_null(UNKNOWN_CONFIDENCE).clip(0.0, 1.0)
    return 1.0 + HEADROOM * (1.0 - sure)


def per_instance_peaks(profiles: pl.DataFrame) -> pl.DataFrame:
    """client_id, cpu, cpu_confidence, memory_mb, memory_confidence: the most one instance is
    predicted to use in any window (p90 over p90 in flight, at least one) and the confidence
    of that resource in the window where it peaks. Empty without the columns."""
    schema = {
        "client_id": pl.String,
        "cpu": pl.Float64,
        "cpu_confidence": pl.Float64,
        "memory_mb": pl.Float64,
        "memory_confidence": pl.Float64,
    }
    if profiles.height == 0 or "concurrency_p90" not in profiles.columns:
        return pl.DataFrame(schema=schema)

    def column(name: str) -> pl.Expr:
        """The column, or nulls for a resource the profile has no forecast of."""
        present = name in profiles.columns
        return (pl.col(name) if present else pl.lit(None)).cast(pl.Float64)

    in_flight = pl.max_horizontal(pl.col("concurrency_p90").fill_null(0.0), pl.lit(1.0))
    per = profiles.select(
        pl.col("client_id").cast(pl.String),
        (column("cpu_cores_p90") / in_flight).alias("cpu"),
        column("cpu_cores_confidence").alias("cpu_confidence"),
        (column("memory_mb_p90") / in_flight).alias("memory_mb"),
        column("memory_mb_confidence").alias("memory_confidence"),
    )
    return per.group_by("client_id").agg(
        pl.col("cpu").max(),
        pl.col("cpu_confidence").sort_by("cpu", descending=True, nulls_last=True).first(),
        pl.col("memory_mb").max(),
        pl.col("memory_confidence").sort_by("memory_mb", descending=True, nulls_last=True).first(),
    )


def upcoming(
    profiles: pl.DataFrame, first_window: datetime, until: datetime | None = None
) -> pl.DataFrame:
    """The profile windows that end after `first_window` and (with `until`) start before
    it: those the members are sized for (the busiest of them, so a member keeps its size
    through the quieter ones instead of being replaced at each). The cycle reads them up to
    the forecast horizon: a window later in the day is for people and the anticipated
    section, and sizing members now for it would hold them bigger all day."""
    if "window_end" not in profiles.columns:
        return profiles
    ahead = profiles.filter(pl.col("window_end") > first_window)
    return ahead if until is None else ahead.filter(pl.col("window_start") < until)


def member_sizes(
    declared: Mapping[str, tuple[float, float]],
    profiles: pl.DataFrame,
    *,
    max_cpu: float,
    max_memory_mb: float,
    sizing: Mapping[str, Mapping[str, Any] | None] | None = None,
    current: Mapping[str, tuple[float, float]] | None = None,
    settling: Collection[str] = (),
) -> dict[str, tuple[float, float]]:
    """Each client's member size (cpu, memory MB): its declared size, moved by the forecast
    of each resource it has one for (module doc) within the bounds of its schema's `sizing`
    (`from_forecast: false` keeps the declared size), sticky around `current` (module doc):
    a client whose forecast has no window ahead keeps its size, and one in `settling`
    (resized within the scale-down delay: `resized_clients`) does not shrink."""
    peaks = {row["client_id"]: row for row in per_instance_peaks(profiles).iter_rows(named=True)}
    sized = {}
    for client_id, (cpu, memory) in declared.items():
        given = (sizing or {}).get(client_id) or {}
        if given.get("from_forecast") is False:
            sized[client_id] = (cpu, memory)
            continue
        limit = SizeBounds.around(cpu, memory, given, max_cpu=max_cpu, max_memory_mb=max_memory_mb)
        peak = peaks.get(client_id, {})
        now_cpu, now_memory = (current or {}).get(client_id, (None, None))
        may_shrink = client_id not in settling
        sized[client_id] = (
            _within(
                _resource(
                    cpu, peak.get("cpu"), peak.get("cpu_confidence"), now_cpu, CPU_BASE, may_shrink
                ),
                limit.min_cpu,
                limit.max_cpu,
            ),
            _within(
                _resource(
                    memory,
                    peak.get("memory_mb"),
                    peak.get("memory_confidence"),
                    now_memory,
                    MEMORY_BASE_MB,
                    may_shrink,
                ),
                limit.min_memory_mb,
                limit.max_memory_mb,
            ),
        )
    return sized


def resized_clients(sizes_by_plan: Sequence[Mapping[str, tuple[float, float]]]) -> set[str]:
    """Clients whose member size is still settling, given each plan's sizes (client ->
    size) in order from the one in force when the scale-down delay began: those sized
    differently since, or sized for the first time since."""
    if not sizes_by_plan:
        return set()
    first, *later = sizes_by_plan
    return {
        client_id
        for sizes in later
        for client_id, size in sizes.items()
        if first.get(client_id) != size
    }


def _resource(
    declared: float,
    need: float | None,
    confidence: float | None,
    now: float | None,
    base: float,
    may_shrink: bool,
) -> float:
    """One resource's size: the need with its headroom on the ladder, sticky around `now`;
    without a forecast of it, the size it has (the declared one if none yet)."""
    if need is None or need <= 0:
        return declared if now is None else now
    return _sticky(ladder_up(need * headroom(confidence), base), need, now, may_shrink)


def _sticky(wanted: float, need: float, now: float | None, may_shrink: bool) -> float:
    """The size `now` while it still holds the predicted `need` and either `wanted` is more
    than SHRINK_AT of it or it may not shrink yet; else `wanted` (the need with its
    headroom, on the ladder)."""
    if now is None or need > now or (may_shrink and wanted <= now * SHRINK_AT):
        return wanted
    return now


def _within(value: float, low: float, high: float) -> float:
    return min(max(value, low), max(high, low))
