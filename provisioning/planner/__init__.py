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

**Modules.** `config` (PlannerConfig, Plan, schemas, option codes), `demand` (P(need >= k)
from the forecast frames), `tables` (clients and hosts as arrays), `state` (the pool
between windows), `decision` (one window's choice per instance), `packing` (admission and
placement on hosts) and `frames` (the output frames and `desired_members`); `plan_pools`,
here, runs them window by window.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import polars as pl

from core.times import floor_to, naive_utc
from provisioning.costs import CostModel
from provisioning.planner.config import (
    DESIRED_SCHEMA,
    MEMBERS_SCHEMA,
    OPTIONS,
    UNSERVED_SCHEMA,
    Plan,
    PlannerConfig,
    PlanWindowError,
    planner_config_from_dict,
)
from provisioning.planner.decision import _plan_window
from provisioning.planner.demand import (
    _demand_inputs,
    base_rates,
    exceedance_from_quantiles,
    need_levels,
    quantile_upper,
)
from provisioning.planner.frames import _desired_frame, _totals, _unserved_frame, desired_members
from provisioning.planner.state import _pool_state
from provisioning.planner.tables import _client_table, _host_table

__all__ = [
    "DESIRED_SCHEMA",
    "MEMBERS_SCHEMA",
    "OPTIONS",
    "UNSERVED_SCHEMA",
    "Plan",
    "PlanWindowError",
    "PlannerConfig",
    "base_rates",
    "desired_members",
    "exceedance_from_quantiles",
    "need_levels",
    "plan_pools",
    "planner_config_from_dict",
    "quantile_upper",
]

log = logging.getLogger(__name__)


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
    now = naive_utc(now)
    buffer = config.buffer(costs)
    tick = timedelta(seconds=config.tick_seconds)
    first_window = floor_to(now + timedelta(seconds=buffer), tick)
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
