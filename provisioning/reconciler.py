"""Reconciler: the pure diff of the desired pool against the members a runtime lists.

`diff` turns "what should exist now" (`planner.desired_members`) and "what exists" (the
runtime's `list`) into `Action`s (create, shadow, activate, release) that `provisioning.apply`
executes. It does no I/O and reads no clock, so running it on a state that already matches
returns [] (idempotency), and running it again after a crash midway returns exactly the
actions still missing: the runtime's labels are the only memory between runs.

Rules, applied in this order:

1. **Untouchable** clients (forecast-only mode, or a client whose spec could not be rendered)
   are skipped entirely: their members are neither created, changed nor released, and their
   desired rows are ignored.
2. **Orphans**: members of a client absent from `desired` are released
   ('orphan: no plan for client'). A member without a client label is an orphan too.
3. **Config changed**: members whose `prewarm.config-hash` label differs from the hash in the
   client's spec labels are released ('config changed'); their tier is then refilled by the
   matching below (creates say 'replace: config changed', up to the number released).
4. **Matching**, per (client, host) group (a member's host is its `prewarm.host` label, set at
   create; a member cannot move host, so a desired host with no members is filled by
   creates and members on a host no longer planned are released). Per tier, the first
   `count` members (by id) are kept; the rest are surplus and the shortfall is a deficit.
   Deficits take the cheapest transition first:
   - a needed active from a surplus shadow ('promote shadow to active': an unpause), then
     from a surplus cold ('start cold to active');
   - a needed shadow from a surplus active ('demote surplus active to shadow': a pause), then
     from a surplus cold ('warm cold to shadow'): one `shadow` action, as every runtime's
     `shadow` starts a cold member, waits for health, then freezes it;
   - a needed cold is filled by a surplus shadow as it is (no action), then by a surplus
     active paused to shadow: no runtime operation cools a warm member to cold without
     losing it, and releasing it only to create a colder one is churn that undoes the
     member's own creation (the warmer member holds some memory the plan did not budget,
     until the hold lets the client's pool shrink).
   Remaining deficits are created in their tier ('scale up'); remaining surpluses are released
   ('scale down', or 'host no longer planned' when the group has no desired rows).
5. **Hold** (scale-down stabilisation): a group keeps up to `hold` members even when fewer are
   desired; the surplus kept is the warmest (then the newest id). Only what exceeds the
   hold is released.
6. **Busy** members (serving a request: `provisioning.runtime.leases`) are never released,
   paused or replaced: they are matched first, never a transition's source, and a busy
   surplus, orphan or stale member is left as it is (drained) until it is idle. Members
   **recently used** (within the scale-down delay) are not released either, as surplus or
   orphan: the need that used them is not in any plan yet.

The output is sorted by (client, target tier warmest first, member id, host; creates after
member actions), so the same state always gives the same list. For a release, `tier` is the
tier the member had.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import polars as pl

from core.vocabulary import TIERS
from provisioning.runtime.base import LABEL_HOST, ContainerSpec, Member, Tier

log = logging.getLogger(__name__)

ActionKind = Literal["create", "shadow", "activate", "release"]
KINDS: tuple[ActionKind, ...] = ("activate", "release", "shadow", "create")

# Labels the reconciler reads and writes on top of the runtime's own.
LABEL_CONFIG_HASH = "prewarm.config-hash"  # written by schema.render_container_config

REASON_ORPHAN = "orphan: no plan for client"
REASON_CONFIG = "config changed"
REASON_REPLACE = "replace: config changed"
REASON_SCALE_UP = "scale up"
REASON_SCALE_DOWN = "scale down"
REASON_HOST_GONE = "host no longer planned"
REASON_PROMOTE = "promote shadow to active"
REASON_START = "start cold to active"
REASON_DEMOTE = "demote surplus active to shadow"
REASON_WARM = "warm cold to shadow"
REASON_KEEP_WARMER = "keep warmer member for a cold slot"  # no action: nothing to do

# Deficit tier -> the surplus tiers that can fill it, cheapest first, with the reason.
_TRANSITIONS: tuple[tuple[Tier, tuple[tuple[Tier, str], ...]], ...] = (
    ("active", (("shadow", REASON_PROMOTE), ("cold", REASON_START))),
    ("shadow", (("active", REASON_DEMOTE), ("cold", REASON_WARM))),
    ("cold", (("shadow", REASON_KEEP_WARMER), ("active", REASON_DEMOTE))),
)
_KIND_FOR_TIER: dict[Tier, ActionKind] = {"active": "activate", "shadow": "shadow"}
_TIER_RANK = {tier: rank for rank, tier in enumerate(TIERS)}  # active, shadow, cold
_DESIRED_COLUMNS = ("client_id", "tier", "count", "host")

SUMMARY_SCHEMA: dict[str, pl.DataType] = {
    "kind": pl.String(),
    "reason": pl.String(),
    "count": pl.Int64(),
}

_GroupKey = tuple[str, str | None]  # (client_id, host)


@dataclass(frozen=True, kw_only=True)
class Action:
    """One step towards the desired pool.

    `tier` is the target tier (for a release, the tier the member had); `from_tier` the
    member's tier before (None for a create); `spec` is set on creates only.
    """

    kind: ActionKind
    client_id: str
    tier: Tier
    reason: str
    host: str | None = None
    member_id: str | None = None
    spec: ContainerSpec | None = None
    from_tier: Tier | None = None


def diff(
    desired: pl.DataFrame,
    specs: Mapping[str, Mapping[str, Any]],
    members: Iterable[Member],
    untouchable: Iterable[str] = (),
    *,
    plan_id: str,
    labels: Mapping[str, str] | None = None,
    hold: Mapping[tuple[str, str | None], int] | None = None,
    busy: Iterable[str] = (),
    recently_used: Iterable[str] = (),
) -> list[Action]:
    """The actions that turn `members` into `desired` (rules in the module docstring).

    Args:
        desired: client_id, tier (active|shadow|cold), count, host; rows with count 0 are
            ignored and repeated (client, tier, host) rows add up.
        specs: client_id -> `schema.render_container_config` output, for every client in
            `desired` that is not untouchable (ValueError otherwise).
        members: what the runtime lists (with the labels it was created with).
        untouchable: client ids whose pool is left exactly as it is.
        plan_id: the plan new members are created for.
        labels: extra labels for created members (e.g. the scope the caller lists by).
        hold: (client, host) -> members kept even beyond `desired` (stabilisation).
        busy: ids of members serving a request now: never released, paused or replaced.
        recently_used: ids of members used within the delay: never released.
    """
    skip = set(untouchable)
    held = {key: int(n) for key, n in (hold or {}).items() if key[0] not in skip and n > 0}
    busy_ids = set(busy)
    kept_ids = busy_ids | set(recently_used)
    wanted = _wanted_counts(desired, skip)
    _check_specs(wanted, specs)
    planned_clients = {client for client, _ in wanted} | {client for client, _ in held}
    groups: dict[_GroupKey, list[Member]] = defaultdict(list)
    stale: dict[_GroupKey, int] = defaultdict(int)
    actions: list[Action] = []
    for member in sorted(members, key=lambda m: m.id):
        if member.client_id in skip:
            continue
        key = (member.client_id, member.labels.get(LABEL_HOST))
        draining = member.id in busy_ids
        if not member.client_id or member.client_id not in planned_clients:
            if member.id not in kept_ids:
                actions.append(_release(member, REASON_ORPHAN))
        elif member.client_id not in specs:
            # Held but no longer planned: no config to compare with, so it stays as it is.
            groups[key].append(member)
        elif member.labels.get(LABEL_CONFIG_HASH) != _spec_hash(specs[member.client_id]):
            if not draining:
                actions.append(_release(member, REASON_CONFIG))
                stale[key] += 1
        else:
            groups[key].append(member)
    for key in sorted(set(wanted) | set(groups), key=_group_order):
        actions.extend(
            _match_group(
                key,
                wanted.get(key),
                groups.get(key, []),
                specs.get(key[0], {}),
                stale[key],
                plan_id,
                dict(labels or {}),
                held.get(key, 0),
                busy_ids,
                kept_ids,
            )
        )
    return sorted(actions, key=_action_order)


def summarize(actions: Iterable[Action]) -> pl.DataFrame:
    """Counts of actions by kind and reason (kind in execution-phase order), for reports."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for action in actions:
        counts[(action.kind, action.reason)] += 1
    rows = sorted(counts.items(), key=lambda item: (KINDS.index(item[0][0]), item[0][1]))
    return pl.DataFrame(
        {
            "kind": [kind for (kind, _), _ in rows],
            "reason": [reason for (_, reason), _ in rows],
            "count": [count for _, count in rows],
        },
        schema=SUMMARY_SCHEMA,
    )


# --- helpers ------------------------------------------------------------------------------


def _wanted_counts(desired: pl.DataFrame, skip: set[str]) -> dict[_GroupKey, dict[Tier, int]]:
    """Desired counts per (client, host) and tier, untouchable clients left out."""
    missing = [column for column in _DESIRED_COLUMNS if column not in desired.columns]
    if missing:
        raise ValueError(f"desired is missing column(s) {missing}; needs {_DESIRED_COLUMNS}")
    bad_tiers = set(desired["tier"].drop_nulls().unique().to_list()) - set(TIERS)
    if bad_tiers or desired["tier"].null_count():
        raise ValueError(f"desired tiers must be one of {TIERS}, got {sorted(bad_tiers)}")
    if desired.filter(pl.col("count") < 0).height:
        raise ValueError("desired counts must be >= 0")
    ignored = sorted(set(desired["client_id"].to_list()) & skip)
    if ignored:
        log.info("leaving untouchable clients as they are: %s", ", ".join(ignored))
    wanted: dict[_GroupKey, dict[Tier, int]] = {}
    for row in desired.filter(pl.col("count") > 0).iter_rows(named=True):
        if row["client_id"] in skip:
            continue
        counts = wanted.setdefault((row["client_id"], row["host"]), dict.fromkeys(TIERS, 0))
        counts[row["tier"]] += int(row["count"])
    return wanted


def _check_specs(
    wanted: dict[_GroupKey, dict[Tier, int]], specs: Mapping[str, Mapping[str, Any]]
) -> None:
    missing = sorted({client for client, _ in wanted} - set(specs))
    if missing:
        raise ValueError(
            f"no container config for planned client(s) {missing}: render one with "
            "schema.render_container_config, or pass them as untouchable to leave them alone"
        )


def _spec_hash(config: Mapping[str, Any]) -> str | None:
    return (config.get("labels") or {}).get(LABEL_CONFIG_HASH)


def _match_group(
    key: _GroupKey,
    want: dict[Tier, int] | None,
    members: list[Member],
    config: Mapping[str, Any],
    stale: int,
    plan_id: str,
    labels: dict[str, str],
    hold: int,
    busy: set[str],
    kept: set[str],
) -> list[Action]:
    """Actions for one (client, host): cheapest transitions, then creates, then releases
    beyond the hold; busy members are kept as they are, recently used ones are kept."""
    client_id, host = key
    counts = want or dict.fromkeys(TIERS, 0)
    by_tier: dict[Tier, list[Member]] = {tier: [] for tier in TIERS}
    # Busy members first, so they fill the wanted slots and an idle one is the surplus.
    for member in sorted(members, key=lambda m: (m.id not in busy, m.id)):
        by_tier[member.tier].append(member)
    surplus = {tier: by_tier[tier][counts[tier] :] for tier in TIERS}
    deficit = {tier: max(counts[tier] - len(by_tier[tier]), 0) for tier in TIERS}

    actions: list[Action] = []
    for target, sources in _TRANSITIONS:
        for source, reason in sources:
            idle = [m for m in surplus[source] if m.id not in busy]
            while deficit[target] and idle:
                member = idle.pop(0)
                surplus[source].remove(member)
                if reason != REASON_KEEP_WARMER:
                    # A cold slot takes a paused member as it is, a running one paused.
                    actions.append(_transition(member, _filled_as(target), host, reason))
                deficit[target] -= 1
    replacements = stale
    for tier in TIERS:
        for _ in range(deficit[tier]):
            reason = REASON_REPLACE if replacements > 0 else REASON_SCALE_UP
            replacements -= 1
            actions.append(_create(client_id, tier, host, config, plan_id, labels, reason))
    left = [m for tier in TIERS for m in surplus[tier]]
    # The hold keeps the warmest surplus; a busy one always stays (it drains), and so does
    # one used within the delay.
    kept_room = max(hold - sum(counts.values()), 0)
    release_reason = REASON_SCALE_DOWN if want is not None else REASON_HOST_GONE
    for member in sorted(left, key=lambda m: (m.id not in kept, _TIER_RANK[m.tier], _newest(m))):
        if member.id in kept or kept_room > 0:
            kept_room -= 1
        else:
            actions.append(_release(member, release_reason))
    return actions


def _filled_as(target: Tier) -> Tier:
    """The tier a member takes to fill a slot of `target`: cold slots hold shadows."""
    return "shadow" if target == "cold" else target


def _newest(member: Member) -> tuple[float, str]:
    """Sort key putting the newest member first (ties by id)."""
    return (-member.created_at.timestamp(), member.id)


def _transition(member: Member, target: Tier, host: str | None, reason: str) -> Action:
    return Action(
        kind=_KIND_FOR_TIER[target],
        client_id=member.client_id,
        tier=target,
        reason=reason,
        host=host,
        member_id=member.id,
        from_tier=member.tier,
    )


def _release(member: Member, reason: str) -> Action:
    return Action(
        kind="release",
        client_id=member.client_id,
        tier=member.tier,
        reason=reason,
        host=member.labels.get(LABEL_HOST),
        member_id=member.id,
        from_tier=member.tier,
    )


def _create(
    client_id: str,
    tier: Tier,
    host: str | None,
    config: Mapping[str, Any],
    plan_id: str,
    labels: dict[str, str],
    reason: str,
) -> Action:
    return Action(
        kind="create",
        client_id=client_id,
        tier=tier,
        reason=reason,
        host=host,
        spec=build_spec(client_id, tier, host, config, plan_id, labels),
    )


def build_spec(
    client_id: str,
    tier: Tier,
    host: str | None,
    config: Mapping[str, Any],
    plan_id: str,
    labels: Mapping[str, str] | None = None,
) -> ContainerSpec:
    """The ContainerSpec for one new member from a rendered container config."""
    member_labels = {**(config.get("labels") or {}), **(labels or {})}
    if host is not None:
        member_labels[LABEL_HOST] = host
    return ContainerSpec(
        client_id=client_id,
        plan_id=plan_id,
        tier=tier,
        image=config["image"],
        cpu=float(config["cpu"]),
        memory_mb=int(config["memory_mb"]),
        env=dict(config.get("env") or {}),
        labels=member_labels,
        port=int(config.get("port", 8080)),
    )


def _group_order(key: _GroupKey) -> tuple[str, str]:
    return key[0], key[1] or ""


def _action_order(action: Action) -> tuple[str, int, bool, str, str]:
    return (
        action.client_id,
        _TIER_RANK[action.tier],
        action.member_id is None,
        action.member_id or "",
        action.host or "",
    )
