"""Packing one window's warm instances onto hosts: admission, placement, fallbacks.

Strict-priority admission against pooled capacity, then home-host-first and next-fit
placement over hosts cheapest first; whatever does not fit falls back to a colder option
with the reason recorded. `_Items` are the candidates, `_Placement` the mutable outcome.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from provisioning.planner.config import (
    _ACTIVE,
    _COLD,
    _CPU,
    _EPS,
    _IO,
    _MEMORY,
    _NET,
    _NONE,
    _REASON_FRAGMENTED,
    _REASON_TOO_LARGE,
    _SHADOW,
)
from provisioning.planner.tables import _ClientTable, _HostTable


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
