"""One window's decision: candidate instances, the cost of every option, the choice.

`_plan_window` prices every live (client, level) instance under each option (the cost
model of the package docstring), keeps the cheapest, hands the warm ones to packing, and
records the outcome (`_WindowRecord`, with each placed instance's cost at its host's
prices from `_placed_costs`) and the pool it leaves for the next window.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from provisioning.costs import MIB_PER_GIB, CostModel
from provisioning.planner.config import (
    _ACTIVE,
    _COLD,
    _CPU,
    _EPS,
    _MEMORY,
    _NONE,
    _SHADOW,
    OPTIONS,
    PlannerConfig,
)
from provisioning.planner.packing import _Items, _pack, _Placement
from provisioning.planner.state import _home_hosts, _PoolState
from provisioning.planner.tables import _ClientTable, _HostTable


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
