"""Planner: from demand forecasts to the desired warm pool per client, window, tier and host.

Pure functions from frames to a `Plan`; no I/O, no clock (the caller passes `now`).

**Windows.** The plan covers `windows` fixed ticks of `tick_seconds` on the UTC grid. It
starts at the tick covering `now + buffer`: a container must be provisioned before its
window, and the earliest window we can still warm is the one we reach after the buffer.
The default buffer is the cost model's activation time (a cold start) plus one tick.
Demand rows (`ts`) are mapped to the window covering them; several buckets in one window
(1-minute forecasts, 5-minute ticks) are combined by their maximum, because the pool must
hold the window's peak and P(peak >= k) >= max over buckets of P(need >= k).

**Demand.** Per (client, window) the planner needs P(need >= k), k = 1..K, where need is
the count of instances in use at once (the sources define it as ceil(load)). Given as
`exceedance` rows it is used as is. Given only as concurrency quantiles p10/p50/p90, it is
read off a piecewise-linear CDF through (p10, 0.1), (p50, 0.5), (p90, 0.9), with a lower
tail continuing the p10-p50 density down to p10 - (p50 - p10) / 4 and an exponential upper
tail P(X > x) = 0.1 exp(-(x - p90) / theta), theta = (p90 - p50) / ln 5 (the rate at which
the survival fell from 0.5 to 0.1 between p50 and p90, continued); then
P(need >= k) = P(X > k - 1). When both exist, exceedance wins for its levels and the
quantile tail, capped by exceedance's last level, covers the levels above it.

**Confidence.** P_eff = confidence x P + (1 - confidence) x prior, the prior being a
client's base rate P(need >= k) from history when given, else 0. This is the forecast
mixed with what we would believe without it, weighted by how often such a forecast is
right: a confident forecast is followed, a doubtful one falls back to the base rate, and
with no base rate to a reactive pool (prior 0) rather than to paying idle cost for a
guess. A client-window with no forecast row at all gets the prior alone: no forecast is
not a forecast of zero. Expected costs and the newsvendor rule below apply to P_eff.

**Decision per instance k** (the k-th container of a client in a window, T minutes long,
p = P_eff(need >= k)). Each option's expected cost:

    none    p (C + A)                                  a cold start, and the action it is
    cold    (1 - p) I_cold T   + p (L_cold + A)        + A if warmer than before
    shadow  (1 - p) I_shadow T + p (L_shadow + A)      + A if warmer than before
    active  (1 - p) I_active T                         + A if warmer than before

I = idle cost per minute (`CostModel.idle_per_minute`), C = the client tier's cold-start
penalty, L = activation penalties, A = `scaling_action`. The serving cost of a used
instance is the same whatever we did beforehand, so only idle time ((1 - p) of the window)
is charged. With the active tier alone and A = 0 this is the newsvendor rule: keep k warm
when p C >= (1 - p) I T, i.e. p >= I T / (I T + C), the demand quantile at the critical
ratio. The cheapest option wins (ties go to the colder one).

Instance k "was" in the tier it held in the previous window (or the current pool): the
client's first a instances active, the next s shadow, the next c cold. Warming an instance
(create, start, unpause) costs A; cooling it (pause, stop, release) is free, as each
container that goes up comes down once and the pair is paid on the way up. That hysteresis
keeps pools from flapping between ticks, and keeps the plan monotone: every option's cost
is linear in p with "none" the steepest and warmer options flatter (the cost model checks
unpause <= start <= cold start), so a larger p, or a warmer previous pool, never picks a
colder option. More demand never yields fewer containers, up to capacity.

**Capacity.** Active containers hold cpu (and net/io when both the client and the host give
them), active and shadow hold memory, cold holds only disk (not tracked). Per window:
1. Admission in strict priority order (priority = expected cost saved over "none" x
   confidence) against the pooled capacity of all hosts less `burst_reserve`: active
   instances by cpu/net/io, then active + shadow by memory. An instance cut falls back to
   its best option needing less (active -> shadow/cold/none, shadow -> cold/none).
2. Placement: each client's instances go first to its home host (where most of its pool
   was in the previous window) so pools stay put; the rest go next-fit over hosts sorted
   cheapest first, for a few rounds. What no host can take falls back as above.
3. Cold containers go to the client's home host, else beside its other containers.
Every instance not placed in its preferred tier is listed in `Plan.unserved` with why.

**Forecast-only clients** are planned the same way but packed after every provisioning
client, into what is left, so they never displace real capacity; their rows carry
mode = 'forecast-only' and `desired_members` leaves them out, so the apply step does not
touch them (like AWS predictive scaling's ForecastOnly).
"""

from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

from core.errors import PrewarmError
from provisioning.costs import MIB_PER_GIB, CostModel

log = logging.getLogger(__name__)

TIERS: tuple[str, ...] = ("active", "shadow", "cold")
MODES: tuple[str, ...] = ("provision", "forecast-only")

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
_LN5 = math.log(5.0)
_US = 1_000_000
_EPOCH = datetime(1970, 1, 1)

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


# --- public helpers -----------------------------------------------------------------------


def exceedance_from_quantiles(
    p10: np.ndarray, p50: np.ndarray, p90: np.ndarray, levels: int
) -> np.ndarray:
    """P(need >= k) for k = 1..levels from concurrency quantiles (rows x levels).

    The piecewise-linear CDF with its tails is described in the module docstring; crossed
    quantiles are sorted first, and P(need >= k) = P(X > k - 1) because need = ceil(X).
    """
    q = np.sort(np.column_stack([p10, p50, p90]).astype(np.float64), axis=1)
    lo, mid, hi = q[:, 0:1], q[:, 1:2], q[:, 2:3]
    lower = lo - (mid - lo) / 4.0
    theta = (hi - mid) / _LN5
    t = np.arange(levels, dtype=np.float64)[None, :]  # k - 1
    # Each branch is evaluated everywhere and selected after: the ones not taken may
    # divide by zero or overflow harmlessly.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        segments = [
            np.ones_like(t + lo),
            1.0 - 0.1 * (t - lower) / (lo - lower),
            0.9 - 0.4 * (t - lo) / (mid - lo),
            0.5 - 0.4 * (t - mid) / (hi - mid),
        ]
        tail = np.where(theta > 0, 0.1 * np.exp(-(t - hi) / theta), 0.0)
    survival = np.select([t < lower, t < lo, t < mid, t < hi], segments, default=tail)
    return np.clip(survival, 0.0, 1.0)


def quantile_upper(p50: np.ndarray, p90: np.ndarray, survival: float) -> np.ndarray:
    """The x with P(X > x) = survival (< 0.1) on the exponential upper tail."""
    theta = np.maximum(np.asarray(p90) - np.asarray(p50), 0.0) / _LN5
    return np.asarray(p90) + theta * math.log(0.1 / survival)


def critical_ratio(idle_cost: float, penalty: float) -> float:
    """The newsvendor threshold: keep an instance warm when P(need >= k) >= this."""
    if idle_cost + penalty <= 0:
        return 0.0
    return idle_cost / (idle_cost + penalty)


def base_rates(usage: pl.DataFrame, max_level: int = 8) -> pl.DataFrame:
    """Per client, the share of history buckets with need >= k (a prior for `plan_pools`).

    usage: client_id, concurrency. Returns client_id, level, p_exceed for k = 1..max_level.
    """
    need = usage.select(
        "client_id",
        pl.col("concurrency").fill_null(0.0).ceil().clip(0, max_level).cast(pl.Int64).alias("n"),
    )
    totals = need.group_by("client_id").len("total")
    counts = need.filter(pl.col("n") > 0).group_by("client_id", "n").len("count")
    levels = pl.DataFrame({"level": np.arange(1, max_level + 1)}, schema={"level": pl.Int64})
    return (
        totals.join(levels, how="cross")
        .join(counts, on="client_id", how="left")
        .group_by("client_id", "level", "total")
        .agg(pl.col("count").filter(pl.col("n") >= pl.col("level")).sum())
        .select(
            "client_id",
            pl.col("level").cast(pl.Int32),
            (pl.col("count").fill_null(0) / pl.col("total")).alias("p_exceed"),
        )
        .sort("client_id", "level")
    )


def desired_members(plan: Plan, at: datetime) -> pl.DataFrame:
    """The containers that should exist at `at`: the window covering at + buffer.

    Provisioning clients only (forecast-only rows are never applied), tiers active, shadow
    and cold; columns client_id, tier, host, count. Raises PlanWindowError when at + buffer
    falls outside the plan: an empty answer would tell the apply step to release everything.
    """
    target = _naive_utc(at) + timedelta(seconds=plan.buffer_seconds)
    step = timedelta(seconds=plan.tick_seconds)
    index = (target - plan.first_window) // step
    if not 0 <= index < plan.windows:
        end = plan.first_window + plan.windows * step
        raise PlanWindowError(
            f"plan {plan.plan_id} covers [{plan.first_window}, {end}); "
            f"at + buffer = {target} is outside it: compute a new plan"
        )
    window_start = plan.first_window + index * step
    return (
        plan.desired.filter(
            (pl.col("window_start") == window_start)
            & (pl.col("mode") == "provision")
            & pl.col("tier").is_in(TIERS)
            & (pl.col("count") > 0)
        )
        .group_by("client_id", "tier", "host")
        .agg(pl.col("count").sum())
        .sort("client_id", "tier", "host")
        .select(list(MEMBERS_SCHEMA))
        .cast(MEMBERS_SCHEMA)
    )


# --- the planner --------------------------------------------------------------------------


def plan_pools(
    clients: pl.DataFrame,
    inventory: pl.DataFrame,
    now: datetime,
    *,
    exceedance: pl.DataFrame | None = None,
    quantiles: pl.DataFrame | None = None,
    current_pool: pl.DataFrame | None = None,
    priors: pl.DataFrame | None = None,
    costs: CostModel | None = None,
    config: PlannerConfig | None = None,
    plan_id: str | None = None,
) -> Plan:
    """Decide the desired pool per client and window (see the module docstring).

    Args:
        clients: client_id, tier, container_cpu, container_memory_mb; optional mode
            ('provision' | 'forecast-only', default provision), confidence (default 1),
            container_net_mbps and container_io_ops (default 0: not constrained).
        inventory: the frame of `provisioning.inventory` (host, cpu_cores, memory_mb, ...).
        now: the planning time (UTC; naive is read as UTC).
        exceedance: client_id, ts, level, p_exceed (P(need >= level), levels 1..K each).
        quantiles: client_id, ts, p10, p50, p90 of concurrency (rows with another `metric`
            are ignored when the column exists).
        current_pool: client_id, tier, host and optionally count (else one row = one member).
        priors: client_id, level, p_exceed: base rates (see `base_rates`).
    """
    costs = costs or CostModel()
    config = config or PlannerConfig()
    now = _naive_utc(now)
    buffer = config.buffer(costs)
    tick = timedelta(seconds=config.tick_seconds)
    first_window = _floor_to_tick(now + timedelta(seconds=buffer), tick)
    plan_id = plan_id or f"plan-{now:%Y%m%dT%H%M%S}"

    table = _client_table(clients, costs, config)
    hosts = _host_table(inventory, costs, config)
    demand = _demand_inputs(exceedance, quantiles, priors, table, first_window, config)
    pool = _pool_state(current_pool, table, hosts)

    records = []
    for w in range(config.windows):
        p = demand.window(w, table.confidence)
        record, pool = _plan_window(w, p, table, hosts, pool, costs, config)
        records.append(record)

    windows = [first_window + i * tick for i in range(config.windows)]
    desired = _desired_frame(records, table, hosts, windows, tick, plan_id, costs.scaling_action)
    unserved = _unserved_frame(records, demand.beyond, table, windows, plan_id, demand.levels)
    totals = _totals(records, table, costs.scaling_action)
    log.info(
        "plan %s: %d clients x %d windows on %d hosts, %d warm instance-windows, "
        "%d unserved or downgraded",
        plan_id,
        table.size,
        config.windows,
        hosts.size,
        int(totals["warm_instance_windows"]),
        int(totals["unserved_instances"] + totals["downgraded_instances"]),
    )
    return Plan(
        plan_id=plan_id,
        created_at=now,
        first_window=first_window,
        tick_seconds=config.tick_seconds,
        windows=config.windows,
        buffer_seconds=buffer,
        desired=desired,
        unserved=unserved,
        totals=totals,
    )


# --- inputs -------------------------------------------------------------------------------


@dataclass
class _ClientTable:
    """Clients as arrays indexed 0..n-1 in client_id order."""

    index: pl.DataFrame  # client_id, _c
    ids: np.ndarray
    modes: np.ndarray
    provision: np.ndarray  # bool
    confidence: np.ndarray
    need: np.ndarray  # (n, 4): cpu, memory_mb, net_mbps, io_ops of one active container
    cold_penalty: np.ndarray
    activation: np.ndarray  # (n, 4) per option: 0, cold, shadow, 0
    idle: np.ndarray  # (n, 4) $ per minute per option at the model's rates: 0, cold, ...
    spread: np.ndarray  # (n,) a stable hash of the client id, to spread new cold pools

    @property
    def size(self) -> int:
        return self.ids.size


def _client_table(clients: pl.DataFrame, costs: CostModel, config: PlannerConfig) -> _ClientTable:
    _require(clients, ("client_id",), "clients")
    frame = clients.select(
        pl.col("client_id").cast(pl.String),
        _column(clients, "tier", pl.String, None),
        _column(clients, "container_cpu", pl.Float64, config.default_container_cpu),
        _column(clients, "container_memory_mb", pl.Float64, config.default_container_memory_mb),
        _column(clients, "container_net_mbps", pl.Float64, 0.0),
        _column(clients, "container_io_ops", pl.Float64, 0.0),
        _column(clients, "mode", pl.String, "provision"),
        _column(clients, "confidence", pl.Float64, 1.0),
    ).sort("client_id")
    _check_clients(frame)
    n = frame.height
    tier = frame["tier"]
    penalties = dict(costs.cold_start_penalty)
    cold_penalty = (
        tier.replace_strict(
            penalties, default=costs.default_cold_start_penalty, return_dtype=pl.Float64
        )
        .fill_null(costs.default_cold_start_penalty)
        .to_numpy()
    )
    cpu = frame["container_cpu"].to_numpy()
    memory = frame["container_memory_mb"].to_numpy()
    activation = np.zeros((n, 4))
    activation[:, _COLD] = cold_penalty * costs.start_seconds / costs.cold_start_seconds
    activation[:, _SHADOW] = cold_penalty * costs.unpause_seconds / costs.cold_start_seconds
    idle = np.zeros((n, 4))
    for option, name in ((_COLD, "cold"), (_SHADOW, "shadow"), (_ACTIVE, "active")):
        idle[:, option] = costs.idle_per_minute(name, cpu, memory)
    need = np.column_stack(
        [cpu, memory, frame["container_net_mbps"].to_numpy(), frame["container_io_ops"].to_numpy()]
    )
    modes = frame["mode"].to_numpy()
    return _ClientTable(
        index=frame.select("client_id")
        .with_row_index("_c")
        .with_columns(pl.col("_c").cast(pl.Int64)),
        ids=frame["client_id"].to_numpy(),
        modes=modes,
        provision=modes == "provision",
        confidence=frame["confidence"].to_numpy(),
        need=need,
        cold_penalty=cold_penalty,
        activation=activation,
        idle=idle,
        spread=np.array([zlib.crc32(c.encode()) for c in frame["client_id"]], dtype=np.int64),
    )


def _column(frame: pl.DataFrame, name: str, dtype: type[pl.DataType], default: Any) -> pl.Expr:
    """An optional column cast to dtype, nulls (or the whole column if absent) as default."""
    if name not in frame.columns:
        return pl.lit(default, dtype=dtype).alias(name)
    column = pl.col(name).cast(dtype)
    return column if default is None else column.fill_null(default)


def _require(frame: pl.DataFrame, columns: tuple[str, ...], what: str) -> None:
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {', '.join(missing)}")


def _check_clients(frame: pl.DataFrame) -> None:
    duplicated = frame.filter(pl.col("client_id").is_duplicated())["client_id"].unique().sort()
    if duplicated.len():
        raise ValueError(f"clients: duplicate client_id {_few(duplicated)}")
    bad_mode = frame.filter(~pl.col("mode").is_in(MODES))
    if bad_mode.height:
        row = bad_mode.row(0, named=True)
        raise ValueError(
            f"clients: client {row['client_id']!r} has mode {row['mode']!r};"
            f" expected one of {MODES}"
        )
    bad_conf = frame.filter(~pl.col("confidence").is_between(0.0, 1.0))
    if bad_conf.height:
        row = bad_conf.row(0, named=True)
        raise ValueError(
            f"clients: client {row['client_id']!r} has confidence {row['confidence']}; "
            "expected a number in [0, 1]"
        )
    for column in ("container_cpu", "container_memory_mb"):
        bad = frame.filter(pl.col(column) <= 0)
        if bad.height:
            row = bad.row(0, named=True)
            raise ValueError(
                f"clients: client {row['client_id']!r} has {column} {row[column]}; expected > 0"
            )
    for column in ("container_net_mbps", "container_io_ops"):
        bad = frame.filter(pl.col(column) < 0)
        if bad.height:
            row = bad.row(0, named=True)
            raise ValueError(
                f"clients: client {row['client_id']!r} has {column} {row[column]}; expected >= 0"
            )


@dataclass
class _HostTable:
    """Hosts in placement order (cheapest cpu first), with plannable capacity."""

    names: np.ndarray
    capacity: np.ndarray  # (H, 4) after the burst reserve; inf where not tracked
    core_minute: np.ndarray
    memory_gib_minute: np.ndarray

    @property
    def size(self) -> int:
        return self.names.size


def _host_table(inventory: pl.DataFrame, costs: CostModel, config: PlannerConfig) -> _HostTable:
    _require(inventory, ("host", "cpu_cores", "memory_mb"), "inventory")
    if inventory.height == 0:
        raise ValueError("inventory has no hosts")
    frame = inventory.select(
        pl.col("host").cast(pl.String),
        _column(inventory, "cpu_cores", pl.Float64, None),
        _column(inventory, "memory_mb", pl.Float64, None),
        _column(inventory, "net_mbps", pl.Float64, float("inf")),
        _column(inventory, "io_ops", pl.Float64, float("inf")),
        _column(inventory, "cost_core_minute", pl.Float64, costs.core_minute),
        _column(inventory, "cost_memory_gib_minute", pl.Float64, costs.memory_gib_minute),
    ).sort("cost_core_minute", "cost_memory_gib_minute", "host")
    duplicated = frame.filter(pl.col("host").is_duplicated())["host"].unique().sort()
    if duplicated.len():
        raise ValueError(f"inventory: duplicate host {_few(duplicated)}")
    keep = 1.0 - config.burst_reserve
    capacity = (
        frame.select("cpu_cores", "memory_mb", "net_mbps", "io_ops").to_numpy().astype(np.float64)
        * keep
    )
    return _HostTable(
        names=frame["host"].to_numpy(),
        capacity=capacity,
        core_minute=frame["cost_core_minute"].to_numpy(),
        memory_gib_minute=frame["cost_memory_gib_minute"].to_numpy(),
    )


@dataclass
class _Demand:
    """Dense demand per window: exceedance levels and quantile parameters, plus priors."""

    levels: int
    exceedance: np.ndarray | None  # (W, n, Ke)
    has_exceedance: np.ndarray | None  # (W, n)
    quantiles: np.ndarray | None  # (W, n, 3)
    has_quantiles: np.ndarray | None  # (W, n)
    prior: np.ndarray  # (n, K)
    beyond: pl.DataFrame  # _w, _c, instances: quantile demand above max_level

    def window(self, w: int, confidence: np.ndarray) -> np.ndarray:
        """P_eff(need >= k) for every client in window w, shape (n, K)."""
        n, k = self.prior.shape
        p = np.zeros((n, k))
        survival = None
        if self.quantiles is not None and self.has_quantiles is not None:
            rows = self.has_quantiles[w]
            q = self.quantiles[w, rows]
            survival = exceedance_from_quantiles(q[:, 0], q[:, 1], q[:, 2], k)
            p[rows] = survival
        if self.exceedance is not None and self.has_exceedance is not None:
            ke = min(self.exceedance.shape[2], k)
            forecast = np.zeros((n, k))
            forecast[:, :ke] = self.exceedance[w, :, :ke]
            if survival is not None and ke < k:
                # Above the classifier's last level, the quantile tail capped by that level.
                rows = self.has_quantiles[w]
                forecast[rows, ke:] = np.minimum(forecast[rows, ke - 1 : ke], survival[:, ke:])
            p = np.where(self.has_exceedance[w][:, None], forecast, p)
        p = np.minimum.accumulate(np.clip(p, 0.0, 1.0), axis=1)
        blended = confidence[:, None] * p + (1.0 - confidence[:, None]) * self.prior
        # No forecast at all is not a forecast of zero: the base rate is all we know.
        forecast = np.zeros(n, dtype=bool)
        for present in (self.has_exceedance, self.has_quantiles):
            if present is not None:
                forecast |= present[w]
        return np.where(forecast[:, None], blended, self.prior)


def _demand_inputs(
    exceedance: pl.DataFrame | None,
    quantiles: pl.DataFrame | None,
    priors: pl.DataFrame | None,
    table: _ClientTable,
    first_window: datetime,
    config: PlannerConfig,
) -> _Demand:
    """Scatter the demand frames into dense arrays per (window, client[, level])."""
    n, windows = table.size, config.windows
    tick_us = config.tick_seconds * _US
    e_rows = q_rows = p_rows = None
    if exceedance is not None:
        e_rows = _in_windows(exceedance, table, first_window, tick_us, windows, "exceedance")
        e_rows = e_rows.filter(pl.col("level").is_between(1, config.max_level))
    if quantiles is not None:
        frame = quantiles
        if "metric" in frame.columns:
            frame = frame.filter(pl.col("metric") == "concurrency")
        q_rows = _in_windows(frame, table, first_window, tick_us, windows, "quantiles")
    if priors is not None:
        p_rows = (
            priors.select(pl.col("client_id").cast(pl.String), "level", "p_exceed")
            .join(table.index, on="client_id", how="inner")
            .filter(pl.col("level").is_between(1, config.max_level))
        )

    demand = _Demand(1, None, None, None, None, np.zeros((n, 1)), _no_beyond())
    wanted = [1]
    if e_rows is not None:
        ke = max(1, int(e_rows["level"].max() or 1))
        w, c, k = (e_rows[col].to_numpy() for col in ("_w", "_c", "level"))
        demand.exceedance = np.zeros((windows, n, ke))
        # Several buckets in one window: the pool must hold the window's peak.
        np.maximum.at(demand.exceedance, (w, c, k - 1), e_rows["p_exceed"].to_numpy())
        demand.has_exceedance = np.zeros((windows, n), dtype=bool)
        demand.has_exceedance[w, c] = True
        wanted.append(ke)
    if q_rows is not None:
        w, c = q_rows["_w"].to_numpy(), q_rows["_c"].to_numpy()
        dense = np.full((windows, n, 3), -np.inf)
        np.maximum.at(dense, (w, c), q_rows.select("p10", "p50", "p90").to_numpy())
        demand.has_quantiles = np.zeros((windows, n), dtype=bool)
        demand.has_quantiles[w, c] = True
        demand.quantiles = np.where(demand.has_quantiles[..., None], dense, 0.0)
        if w.size:
            # Levels up to where P(need >= k) drops below 0.1%: the rest rounds to nothing.
            q = demand.quantiles[demand.has_quantiles]
            upper = quantile_upper(q[:, 1], q[:, 2], 0.001)
            wanted.append(int(math.ceil(max(float(upper.max()), 0.0))))
    if p_rows is not None and p_rows.height:
        wanted.append(int(p_rows["level"].max()))
    demand.levels = levels = max(1, min(config.max_level, max(wanted)))
    demand.prior = np.zeros((n, levels))
    if demand.quantiles is not None:
        demand.beyond = _beyond(demand, levels)
    if p_rows is not None and p_rows.height:
        k = np.minimum(p_rows["level"].to_numpy(), levels)
        demand.prior[p_rows["_c"].to_numpy(), k - 1] = (
            p_rows["p_exceed"].cast(pl.Float64).to_numpy()
        )
        demand.prior = np.minimum.accumulate(np.clip(demand.prior, 0.0, 1.0), axis=1)
    return demand


def _in_windows(
    frame: pl.DataFrame,
    table: _ClientTable,
    first_window: datetime,
    tick_us: int,
    windows: int,
    what: str,
) -> pl.DataFrame:
    """Rows of a demand frame with their window (_w) and client (_c) indexes, in the plan."""
    time_column = "ts" if "ts" in frame.columns else "window_start"
    _require(frame, ("client_id", time_column, *_DEMAND_COLUMNS[what]), what)
    ts = _naive_utc_expr(frame, time_column)
    offset = (ts - pl.lit(first_window)).dt.total_microseconds()
    # The client list is sorted, so an Enum over it maps each id to its index in one pass.
    client = pl.col("client_id").cast(pl.String).cast(pl.Enum(table.ids.tolist()), strict=False)
    rows = frame.with_columns(
        client.to_physical().cast(pl.Int64).alias("_c"), (offset // tick_us).alias("_w")
    )
    unknown = rows.filter(pl.col("_c").is_null())
    if unknown.height:
        ids = unknown["client_id"].cast(pl.String).unique().sort()
        raise ValueError(f"{what}: demand for client(s) not in clients: {_few(ids)}")
    return rows.filter(pl.col("_w").is_between(0, windows - 1))


_DEMAND_COLUMNS = {"exceedance": ("level", "p_exceed"), "quantiles": ("p10", "p50", "p90")}


def _beyond(demand: _Demand, levels: int) -> pl.DataFrame:
    """Quantile-only client-windows whose p99 needs more instances than the planner covers."""
    assert demand.quantiles is not None and demand.has_quantiles is not None
    mask = demand.has_quantiles.copy()
    if demand.has_exceedance is not None:
        mask &= ~demand.has_exceedance
    w, c = np.nonzero(mask)
    q = demand.quantiles[w, c]
    extra = np.ceil(quantile_upper(q[:, 1], q[:, 2], 0.01)).astype(np.int64) - levels
    over = extra > 0
    return pl.DataFrame(
        {"_w": w[over], "_c": c[over], "instances": extra[over]},
        schema={"_w": pl.Int64, "_c": pl.Int64, "instances": pl.Int64},
    )


def _no_beyond() -> pl.DataFrame:
    return pl.DataFrame(schema={"_w": pl.Int64, "_c": pl.Int64, "instances": pl.Int64})


@dataclass
class _PoolState:
    """What each client holds at the end of the previous window."""

    counts: np.ndarray  # (n, 4) instances per option (column _NONE unused)
    home: np.ndarray  # (n,) host index holding most of the client's pool, -1 if none

    def previous_options(self, client: np.ndarray, level: np.ndarray) -> np.ndarray:
        """Instance `level`'s previous option: the first `active` were active, then shadow, cold."""
        counts = self.counts[client]
        active = counts[:, _ACTIVE]
        shadow = active + counts[:, _SHADOW]
        cold = shadow + counts[:, _COLD]
        return np.select(
            [level <= active, level <= shadow, level <= cold], [_ACTIVE, _SHADOW, _COLD], _NONE
        )

    def totals(self) -> np.ndarray:
        """Containers per client in any warm tier."""
        return self.counts[:, _COLD:].sum(axis=1)


def _pool_state(
    current_pool: pl.DataFrame | None, table: _ClientTable, hosts: _HostTable
) -> _PoolState:
    n = table.size
    counts = np.zeros((n, 4), dtype=np.int64)
    home = np.full(n, -1, dtype=np.int64)
    if current_pool is None or current_pool.height == 0:
        return _PoolState(counts, home)
    count = pl.col("count").cast(pl.Int64) if "count" in current_pool.columns else pl.lit(1)
    host_index = pl.DataFrame(
        {"host": hosts.names, "_h": np.arange(hosts.size)},
        schema={"host": pl.String, "_h": pl.Int64},
    )
    rows = (
        current_pool.select(
            pl.col("client_id").cast(pl.String),
            pl.col("tier").cast(pl.String),
            pl.col("host").cast(pl.String),
            count.alias("count"),
        )
        .filter(pl.col("tier").is_in(TIERS))
        .join(table.index, on="client_id", how="inner")  # clients no longer planned: released
        .join(host_index, on="host", how="left")
        .with_columns(
            pl.col("tier")
            .replace_strict({"cold": _COLD, "shadow": _SHADOW, "active": _ACTIVE})
            .alias("_o")
        )
    )
    np.add.at(counts, (rows["_c"].to_numpy(), rows["_o"].to_numpy()), rows["count"].to_numpy())
    on_hosts = rows.filter(pl.col("_h").is_not_null())
    if on_hosts.height:
        home = _home_hosts(
            on_hosts["_c"].to_numpy(),
            on_hosts["_h"].to_numpy(),
            on_hosts["count"].to_numpy(),
            n,
            hosts.size,
            home,
        )
    return _PoolState(counts, home)


def _home_hosts(
    client: np.ndarray,
    host: np.ndarray,
    weight: np.ndarray,
    n: int,
    n_hosts: int,
    previous: np.ndarray,
) -> np.ndarray:
    """Per client the host with the most of its containers (ties: earliest host)."""
    per_host = np.bincount(client * n_hosts + host, weights=weight, minlength=n * n_hosts)
    per_host = per_host.reshape(n, n_hosts)
    has_any = per_host.sum(axis=1) > 0
    return np.where(has_any, per_host.argmax(axis=1), previous)


# --- one window ---------------------------------------------------------------------------


@dataclass
class _WindowRecord:
    """Every instance the planner considered warm in one window, and the demand totals."""

    window: int
    client: np.ndarray  # per item
    option: np.ndarray  # final option
    wanted: np.ndarray  # preferred option
    host: np.ndarray  # -1 for none
    reason: np.ndarray  # -1 when placed as wanted
    cost: np.ndarray  # expected cost at the host's prices (none items: their cold starts)
    priority: np.ndarray
    p: np.ndarray
    demand_p: np.ndarray  # (n,) sum over levels of P_eff: expected instances needed
    cold_p: np.ndarray  # (n,) expected cold starts: P_eff summed over unwarmed levels


@dataclass
class _Items:
    """Candidate warm instances of one window: client, P_eff and the cost of every option."""

    client: np.ndarray
    p: np.ndarray
    cost: np.ndarray  # (4, m)
    wanted: np.ndarray
    previous: np.ndarray

    def priority(self, idx: np.ndarray, option: np.ndarray, confidence: np.ndarray) -> np.ndarray:
        """Expected cost saved over leaving the instance to a cold start, x confidence."""
        saved = self.cost[_NONE, idx] - self.cost[option, idx]
        return saved * confidence[self.client[idx]]

    def fallback(self, idx: np.ndarray, below: int) -> np.ndarray:
        """The cheapest option colder than `below` (_ACTIVE: none/cold/shadow)."""
        return np.argmin(self.cost[:below, idx], axis=0)


@dataclass
class _Placement:
    """The mutable outcome of packing one window: option, host and reason per item."""

    option: np.ndarray
    host: np.ndarray
    reason: np.ndarray
    capacity: np.ndarray  # (H, 4) left on every host

    def fall_back(self, idx: np.ndarray, items: _Items, below: int, why: np.ndarray | int) -> None:
        """Move items to their best colder option, keeping the first reason recorded."""
        if not idx.size:
            return
        self.option[idx] = items.fallback(idx, below)
        self.reason[idx] = np.where(self.reason[idx] < 0, why, self.reason[idx])


def _plan_window(
    w: int,
    p: np.ndarray,
    table: _ClientTable,
    hosts: _HostTable,
    pool: _PoolState,
    costs: CostModel,
    config: PlannerConfig,
) -> tuple[_WindowRecord, _PoolState]:
    client, level = _candidates(p, pool, table, costs, config)
    p_item = p[client, level - 1]
    previous = pool.previous_options(client, level)
    option_costs = _option_costs(p_item, client, previous, table, costs, config)
    choice = np.argmin(option_costs, axis=0)
    keep = choice != _NONE
    client = client[keep]
    items = _Items(
        client=client,
        p=p_item[keep],
        cost=option_costs[:, keep],
        wanted=choice[keep],
        previous=previous[keep],
    )
    placement = _Placement(
        option=items.wanted.copy(),
        host=np.full(client.size, -1, dtype=np.int64),
        reason=np.full(client.size, -1, dtype=np.int64),
        capacity=hosts.capacity.copy(),
    )
    # Provisioning clients first; forecast-only ones only get what is left.
    for provision in (True, False):
        subset = np.flatnonzero(table.provision[client] == provision)
        if subset.size:
            _pack(subset, items, placement, hosts, table, pool.home, config.placement_rounds)

    option, host = placement.option, placement.host
    n = table.size
    warm = option != _NONE
    demand_p = p.sum(axis=1)
    warm_p = np.bincount(client[warm], weights=items.p[warm], minlength=n)
    record = _WindowRecord(
        window=w,
        client=client,
        option=option,
        wanted=items.wanted,
        host=host,
        reason=placement.reason,
        cost=_placed_costs(items, option, host, table, hosts, costs, config),
        priority=items.priority(np.arange(client.size), option, table.confidence),
        p=items.p,
        demand_p=demand_p,
        cold_p=_cold_starts(demand_p, warm_p),
    )
    counts = np.zeros((n, 4), dtype=np.int64)
    np.add.at(counts, (client, option), 1)
    placed = host >= 0
    home = _home_hosts(
        client[placed], host[placed], np.ones(int(placed.sum())), n, hosts.size, pool.home
    )
    return record, _PoolState(counts, home)


def _cold_starts(demand_p: np.ndarray, warm_p: np.ndarray) -> np.ndarray:
    """Expected cold starts per client; round-off dust (<= 1e-9) is none, so 'none' rows
    and totals agree."""
    cold = demand_p - warm_p
    return np.where(cold > _EPS, cold, 0.0)


def _candidates(
    p: np.ndarray, pool: _PoolState, table: _ClientTable, costs: CostModel, config: PlannerConfig
) -> tuple[np.ndarray, np.ndarray]:
    """(client, level) pairs where some warm option might beat "none"; level is 1-based.

    Every warm option costs at least (1 - p) x the cheapest idle price x T, plus one action
    when the instance did not exist before; where p (C + A) is no more than that, "none"
    wins for sure. Skipping those keeps the option arithmetic on the few live levels.
    """
    enabled = [o for o, name in ((_COLD, "cold"), (_SHADOW, "shadow"), (_ACTIVE, "active"))]
    enabled = [o for o in enabled if OPTIONS[o] in config.warm_tiers]
    if not enabled:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    minutes = config.tick_seconds / 60.0
    cheapest_idle = table.idle[:, enabled].min(axis=1) * minutes
    levels = np.arange(1, p.shape[1] + 1)[None, :]
    new = levels > pool.totals()[:, None]
    floor = (1.0 - p) * cheapest_idle[:, None] + costs.scaling_action * new
    live = p * (table.cold_penalty + costs.scaling_action)[:, None] > floor
    client, level = np.nonzero(live)
    return client, level + 1


def _option_costs(
    p: np.ndarray,
    client: np.ndarray,
    previous: np.ndarray,
    table: _ClientTable,
    costs: CostModel,
    config: PlannerConfig,
) -> np.ndarray:
    """Expected cost of every option for every candidate instance: shape (4, m)."""
    minutes = config.tick_seconds / 60.0
    action = costs.scaling_action
    idle_share = 1.0 - p
    result = np.empty((4, p.size))
    result[_NONE] = p * (table.cold_penalty[client] + action)
    for option, name in ((_COLD, "cold"), (_SHADOW, "shadow"), (_ACTIVE, "active")):
        if name not in config.warm_tiers:
            result[option] = np.inf
            continue
        # A request finding a shadow or cold container waits, and activating it is an action.
        on_demand = table.activation[client, option] + (0.0 if option == _ACTIVE else action)
        result[option] = (
            idle_share * table.idle[client, option] * minutes
            + p * on_demand
            + action * (option > previous)
        )
    return result


def _needs(option: np.ndarray, client: np.ndarray, table: _ClientTable) -> np.ndarray:
    """Capacity one instance holds in its option: active all four, shadow memory, cold none."""
    need = table.need[client].copy()
    not_active = option != _ACTIVE
    need[not_active, _CPU] = 0.0
    need[not_active, _NET] = 0.0
    need[not_active, _IO] = 0.0
    need[not_active & (option != _SHADOW), _MEMORY] = 0.0
    return need


def _pack(
    subset: np.ndarray,
    items: _Items,
    placement: _Placement,
    hosts: _HostTable,
    table: _ClientTable,
    home: np.ndarray,
    rounds: int,
) -> None:
    """Admit, place and (when nothing fits) demote the items of `subset`, in place."""
    option = placement.option
    _demote_too_large(subset, items, placement, table, hosts.capacity)
    _admit(subset, items, placement, table)
    _place(subset[option[subset] >= _SHADOW], items, placement, table, home, rounds)
    # What no host took (fragmentation) falls back a tier: active may still fit as shadow.
    stuck = subset[(option[subset] == _ACTIVE) & (placement.host[subset] < 0)]
    placement.fall_back(stuck, items, _ACTIVE, _REASON_FRAGMENTED)
    _place(stuck[option[stuck] == _SHADOW], items, placement, table, home, rounds)
    stuck = subset[(option[subset] == _SHADOW) & (placement.host[subset] < 0)]
    placement.fall_back(stuck, items, _SHADOW, _REASON_FRAGMENTED)
    _place_cold(subset[option[subset] == _COLD], items, placement, table, home)


def _demote_too_large(
    subset: np.ndarray,
    items: _Items,
    placement: _Placement,
    table: _ClientTable,
    capacity: np.ndarray,
) -> None:
    """Instances no single host could hold in their tier, even empty, fall back at once."""
    largest = capacity.max(axis=0)
    for stage in (_ACTIVE, _SHADOW):
        chosen = subset[placement.option[subset] == stage]
        need = _needs(placement.option[chosen], items.client[chosen], table)
        too_large = chosen[(need > largest + _EPS).any(axis=1)]
        placement.fall_back(too_large, items, stage, _REASON_TOO_LARGE)


def _admit(subset: np.ndarray, items: _Items, placement: _Placement, table: _ClientTable) -> None:
    """Strict priority admission against the pooled capacity left on all hosts.

    Active instances are admitted by cpu/net/io, then active and shadow ones by memory; an
    instance cut at a stage takes its best option that does not need that stage's resources.
    """
    pooled = placement.capacity.sum(axis=0)
    option = placement.option
    for stage, dims in ((_ACTIVE, [_CPU, _NET, _IO]), (_SHADOW, [_MEMORY])):
        chosen = subset[option[subset] >= stage]
        if not chosen.size:
            continue
        priority = items.priority(chosen, option[chosen], table.confidence)
        order = chosen[np.argsort(-priority, kind="stable")]
        need = _needs(option[order], items.client[order], table)[:, dims]
        over = np.cumsum(need, axis=0) > pooled[dims] + _EPS
        cut = over.any(axis=1)
        if cut.any():
            why = np.asarray(dims)[np.argmax(over[cut], axis=1)]
            placement.fall_back(order[cut], items, stage, why)


def _place(
    chosen: np.ndarray,
    items: _Items,
    placement: _Placement,
    table: _ClientTable,
    home: np.ndarray,
    rounds: int,
) -> None:
    """Home hosts first (pools stay put), then next-fit by priority over cheap-first hosts."""
    if not chosen.size:
        return
    capacity, host = placement.capacity, placement.host
    priority = items.priority(chosen, placement.option[chosen], table.confidence)
    order = chosen[np.argsort(-priority, kind="stable")]
    need = _needs(placement.option[order], items.client[order], table)
    homes = home[items.client[order]]
    at_home = np.flatnonzero(homes >= 0)
    if at_home.size:
        by_home = at_home[np.argsort(homes[at_home], kind="stable")]  # priority order inside
        placed = by_home[_fit_segments(need[by_home], homes[by_home], capacity)]
        host[order[placed]] = homes[placed]
        np.subtract.at(capacity, homes[placed], need[placed])
    rest = np.flatnonzero(host[order] < 0)
    for _ in range(rounds):
        if not rest.size:
            break
        assigned, blocked = _next_fit(need[rest], capacity)
        host[order[rest]] = assigned
        # The item that stopped the run at the last host goes to the back of the queue, so
        # the (smaller) items behind it get the leftovers first.
        rest = np.concatenate([rest[(assigned < 0) & ~blocked], rest[blocked]])


def _fit_segments(need: np.ndarray, segment_host: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """Within each host's run of items, the prefix whose running total fits that host."""
    positions = np.arange(need.shape[0])
    starts = np.r_[True, segment_host[1:] != segment_host[:-1]]
    start_of = np.maximum.accumulate(np.where(starts, positions, 0))
    running = np.cumsum(need, axis=0)
    within = running - (running[start_of] - need[start_of])
    fits = (within <= capacity[segment_host] + _EPS).all(axis=1)
    failures = np.cumsum(~fits)
    failures_before = failures[start_of] - (~fits[start_of])
    return failures == failures_before


def _next_fit(need: np.ndarray, capacity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Items (in order) to hosts (in order): each host takes the longest run that fits.

    Returns the host per item (-1: none) and a mask of the item at the head of what is left
    when the hosts ran out (the one that did not fit the last host tried).
    """
    m = need.shape[0]
    assigned = np.full(m, -1, dtype=np.int64)
    blocked = np.zeros(m, dtype=bool)
    running = np.vstack([np.zeros((1, need.shape[1])), np.cumsum(need, axis=0)])
    start = 0
    for h in range(capacity.shape[0]):
        if start >= m:
            break
        limit = running[start] + capacity[h] + _EPS
        end = min(
            int(np.searchsorted(running[:, d], limit[d], side="right")) - 1
            for d in range(need.shape[1])
        )
        if end > start:
            assigned[start:end] = h
            capacity[h] -= running[end] - running[start]
            start = end
    if start < m:
        blocked[start] = True
    return assigned, blocked


def _place_cold(
    chosen: np.ndarray, items: _Items, placement: _Placement, table: _ClientTable, home: np.ndarray
) -> None:
    """Cold containers hold no tracked capacity: home host, else beside the client's others."""
    if not chosen.size:
        return
    host = placement.host
    client = items.client[chosen]
    live = np.flatnonzero(host >= 0)[::-1]  # reversed: the first placed item wins
    beside = np.full(table.size, -1, dtype=np.int64)
    beside[items.client[live]] = host[live]
    target = np.where(home[client] >= 0, home[client], beside[client])
    # No pool anywhere yet: spread new clients over the hosts instead of piling on one,
    # by a hash of the id so a client's spot does not depend on who else is planned.
    spread = table.spread[client] % placement.capacity.shape[0]
    host[chosen] = np.where(target >= 0, target, spread)


def _placed_costs(
    items: _Items,
    option: np.ndarray,
    host: np.ndarray,
    table: _ClientTable,
    hosts: _HostTable,
    costs: CostModel,
    config: PlannerConfig,
) -> np.ndarray:
    """Expected cost of each warm item at its host's prices (0 for items left to none)."""
    h = np.maximum(host, 0)
    cpu = table.need[items.client, _CPU]
    memory_gib = table.need[items.client, _MEMORY] / MIB_PER_GIB
    memory_cost = memory_gib * hosts.memory_gib_minute[h]
    disk = costs.disk_minute()
    per_minute = np.select(
        [option == _ACTIVE, option == _SHADOW, option == _COLD],
        [
            cpu * hosts.core_minute[h] + memory_cost + disk,
            memory_cost + disk,
            np.full_like(cpu, disk),
        ],
        0.0,
    )
    action = costs.scaling_action
    on_demand = table.activation[items.client, option] + np.where(option == _ACTIVE, 0.0, action)
    cost = (
        (1.0 - items.p) * per_minute * (config.tick_seconds / 60.0)
        + items.p * on_demand
        + action * (option > items.previous)
    )
    return np.where(option == _NONE, 0.0, cost)


# --- outputs ------------------------------------------------------------------------------


def _desired_frame(
    records: list[_WindowRecord],
    table: _ClientTable,
    hosts: _HostTable,
    windows: list[datetime],
    tick: timedelta,
    plan_id: str,
    action: float,
) -> pl.DataFrame:
    """Items aggregated per (window, client, tier, host), plus the 'none' rows.

    Sorted by window, client_id, tier in warmth order (none, cold, shadow, active), then
    hosts in placement order (cheapest first).
    """
    parts = [_row_arrays(record, table, action) for record in records]
    rows = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    n_hosts = hosts.size + 1  # host code -1 ('none' rows) shifts to 0
    key = ((rows["w"] * table.size + rows["c"]) * 4 + rows["o"]) * n_hosts + rows["h"] + 1
    _, first, group = np.unique(key, return_index=True, return_inverse=True)
    groups = first.size
    priority = np.full(groups, -np.inf)
    np.maximum.at(priority, group, rows["priority"])
    w, c, o, h = (rows[name][first] for name in ("w", "c", "o", "h"))
    starts = pl.Series(windows, dtype=pl.Datetime("us"))
    return pl.DataFrame(
        {
            "plan_id": pl.repeat(plan_id, groups, eager=True, dtype=pl.String),
            "client_id": pl.Series(table.ids, dtype=pl.String).gather(c),
            "window_start": starts.gather(w),
            "window_end": starts.gather(w) + tick,
            "tier": pl.Series(OPTIONS, dtype=pl.String).gather(o),
            "count": np.bincount(group, weights=rows["count"], minlength=groups).astype(np.int64),
            "host": pl.Series([*hosts.names, None], dtype=pl.String).gather(
                np.where(h < 0, hosts.size, h)
            ),
            "mode": pl.Series(table.modes, dtype=pl.String).gather(c),
            "expected_cost": np.bincount(group, weights=rows["cost"], minlength=groups),
            "expected_cold_starts": np.bincount(group, weights=rows["cold"], minlength=groups),
            "priority": priority,
        },
        schema=DESIRED_SCHEMA,
    )


def _row_arrays(record: _WindowRecord, table: _ClientTable, action: float) -> dict[str, Any]:
    """One window's warm items and 'none' rows (demand left to cold starts) as arrays."""
    warm = record.option != _NONE
    m = int(warm.sum())
    none = np.flatnonzero(record.cold_p > _EPS)
    cold = record.cold_p[none]
    return {
        "w": np.full(m + none.size, record.window, dtype=np.int64),
        "c": np.concatenate([record.client[warm], none]).astype(np.int64),
        "o": np.concatenate([record.option[warm], np.full(none.size, _NONE)]).astype(np.int64),
        "h": np.concatenate([record.host[warm], np.full(none.size, -1)]).astype(np.int64),
        "count": np.concatenate([np.ones(m), np.zeros(none.size)]),
        "cost": np.concatenate([record.cost[warm], cold * (table.cold_penalty[none] + action)]),
        "cold": np.concatenate([np.zeros(m), cold]),
        "priority": np.concatenate([record.priority[warm], np.zeros(none.size)]),
    }


def _unserved_frame(
    records: list[_WindowRecord],
    beyond: pl.DataFrame,
    table: _ClientTable,
    windows: list[datetime],
    plan_id: str,
    levels: int,
) -> pl.DataFrame:
    parts = []
    for record in records:
        hit = record.reason >= 0
        parts.append(
            pl.DataFrame(
                {
                    "_w": np.full(int(hit.sum()), record.window, dtype=np.int64),
                    "_c": record.client[hit].astype(np.int64),
                    "_wanted": record.wanted[hit].astype(np.int64),
                    "_o": record.option[hit].astype(np.int64),
                    "_r": record.reason[hit].astype(np.int64),
                }
            )
        )
    capacity = (
        pl.concat(parts)
        .group_by("_w", "_c", "_wanted", "_o", "_r")
        .agg(pl.len().cast(pl.Int64).alias("instances"))
        .with_columns(
            _decode("_wanted", OPTIONS).alias("tier"),
            _decode("_o", OPTIONS).alias("placed_as"),
            _decode("_r", _REASONS).alias("reason"),
        )
        .select("_w", "_c", "tier", "placed_as", "instances", "reason")
    )
    truncated = beyond.select(
        "_w",
        "_c",
        pl.lit("any").alias("tier"),
        pl.lit("none").alias("placed_as"),
        "instances",
        pl.format(
            "demand above max_level: p99 needs {} instances, the plan covers {}",
            pl.col("instances") + levels,
            pl.lit(levels),
        ).alias("reason"),
    )
    frame = pl.concat([capacity, truncated], how="vertical_relaxed")
    starts = pl.Series("window_start", windows, dtype=pl.Datetime("us"))
    ids = pl.Series("client_id", table.ids, dtype=pl.String)
    modes = pl.Series("mode", table.modes, dtype=pl.String)
    return (
        frame.with_columns(
            pl.lit(plan_id).alias("plan_id"),
            ids.gather(frame["_c"]).alias("client_id"),
            starts.gather(frame["_w"]).alias("window_start"),
            modes.gather(frame["_c"]).alias("mode"),
        )
        .select(list(UNSERVED_SCHEMA))
        .cast(UNSERVED_SCHEMA)
        .sort("window_start", "client_id", "tier", "placed_as", "reason")
    )


def _totals(records: list[_WindowRecord], table: _ClientTable, action: float) -> dict[str, float]:
    """Expected cost and cold starts of the plan against a purely reactive policy."""
    sums = {
        mode: dict.fromkeys(("cost", "cold", "reactive", "reactive_cold"), 0.0)
        for mode in (True, False)
    }
    counts = {"warm": 0, "downgraded": 0, "unserved": 0}
    penalty = table.cold_penalty + action
    for record in records:
        item_mode = table.provision[record.client]
        for provision in (True, False):
            clients = table.provision == provision
            mine = item_mode == provision
            total = sums[provision]
            total["cost"] += float(
                record.cost[mine].sum() + (record.cold_p * penalty)[clients].sum()
            )
            total["cold"] += float(record.cold_p[clients].sum())
            total["reactive"] += float((record.demand_p * penalty)[clients].sum())
            total["reactive_cold"] += float(record.demand_p[clients].sum())
        provisioned = item_mode & (record.option != _NONE)
        counts["warm"] += int(provisioned.sum())
        hit = item_mode & (record.reason >= 0)
        counts["unserved"] += int((hit & (record.option == _NONE)).sum())
        counts["downgraded"] += int((hit & (record.option != _NONE)).sum())
    mine, other = sums[True], sums[False]
    return {
        "expected_cost": mine["cost"],
        "expected_cold_starts": mine["cold"],
        "reactive_cost": mine["reactive"],
        "reactive_cold_starts": mine["reactive_cold"],
        "savings": mine["reactive"] - mine["cost"],
        "warm_instance_windows": float(counts["warm"]),
        "downgraded_instances": float(counts["downgraded"]),
        "unserved_instances": float(counts["unserved"]),
        "forecast_only_expected_cost": other["cost"],
        "forecast_only_reactive_cost": other["reactive"],
    }


# --- small helpers ------------------------------------------------------------------------


def _naive_utc(moment: datetime) -> datetime:
    """UTC without tzinfo, the warehouse's convention (naive input is already UTC)."""
    if moment.tzinfo is not None:
        return moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def _naive_utc_expr(frame: pl.DataFrame, column: str) -> pl.Expr:
    dtype = frame.schema[column]
    expr = pl.col(column)
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
        expr = expr.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
    return expr.cast(pl.Datetime("us"))


def _floor_to_tick(moment: datetime, tick: timedelta) -> datetime:
    return _EPOCH + ((moment - _EPOCH) // tick) * tick


def _decode(column: str, names: tuple[str, ...]) -> pl.Expr:
    """Integer codes -> their names."""
    return pl.col(column).replace_strict(dict(enumerate(names)), return_dtype=pl.String)


def _few(values: pl.Series, limit: int = 5) -> str:
    shown = ", ".join(repr(v) for v in values.head(limit).to_list())
    more = values.len() - limit
    return shown + (f" and {more} more" if more > 0 else "")
