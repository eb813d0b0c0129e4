"""The reconciler's pure diff on hand-made desired frames and literal members."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import polars as pl
import pytest

from provisioning.reconciler import (
    LABEL_CONFIG_HASH,
    LABEL_HOST,
    REASON_CONFIG,
    REASON_DEMOTE,
    REASON_HOST_GONE,
    REASON_ORPHAN,
    REASON_PROMOTE,
    REASON_REPLACE,
    REASON_SCALE_DOWN,
    REASON_SCALE_UP,
    REASON_START,
    REASON_WARM,
    Action,
    build_spec,
    diff,
    summarize,
)
from provisioning.runtime.base import (
    LABEL_CLIENT,
    LABEL_MANAGED,
    LABEL_PLAN,
    LABEL_TIER,
    ContainerSpec,
    Member,
    Tier,
)

PLAN = "plan-2"
SPECS: dict[str, dict[str, Any]] = {
    client: {
        "image": "prewarm/worker:latest",
        "cpu": 0.5,
        "memory_mb": 64,
        "env": {"PREWARM_CLIENT_ID": client},
        "labels": {LABEL_CONFIG_HASH: f"hash-{client}", "prewarm.extensions": ""},
        "port": 8080,
    }
    for client in ("a", "b", "f")
}


def _desired(*rows: tuple[str, str, int, str | None]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={"client_id": pl.String, "tier": pl.String, "count": pl.Int64, "host": pl.String},
        orient="row",
    )


def _member(
    member_id: str,
    client: str,
    tier: Tier,
    host: str | None = "h1",
    config_hash: str | None = None,
) -> Member:
    labels = {
        LABEL_MANAGED: "1",
        LABEL_CLIENT: client,
        LABEL_PLAN: "plan-1",
        LABEL_TIER: tier,
        LABEL_CONFIG_HASH: config_hash or f"hash-{client}",
    }
    if host is not None:
        labels[LABEL_HOST] = host
    return Member(
        id=member_id,
        client_id=client,
        plan_id="plan-1",
        tier=tier,
        runtime="process",
        endpoint=None if tier == "cold" else f"http://127.0.0.1:1{member_id[-1]}",
        created_at=datetime(2025, 1, 1, tzinfo=UTC),
        labels=labels,
    )


def _create(client: str, tier: Tier, host: str, reason: str = REASON_SCALE_UP) -> Action:
    return Action(
        kind="create",
        client_id=client,
        tier=tier,
        reason=reason,
        host=host,
        spec=build_spec(client, tier, host, SPECS[client], PLAN),
    )


def _on_member(kind: str, member: Member, tier: Tier, reason: str) -> Action:
    return Action(
        kind=kind,  # type: ignore[arg-type]
        client_id=member.client_id,
        tier=tier,
        reason=reason,
        host=member.labels.get(LABEL_HOST),
        member_id=member.id,
        from_tier=member.tier,
    )


def _release(member: Member, reason: str) -> Action:
    return _on_member("release", member, member.tier, reason)


def test_fresh_pool_creates_two_active_and_one_shadow_with_full_specs() -> None:
    actions = diff(
        _desired(("a", "active", 2, "h1"), ("a", "shadow", 1, "h1")), SPECS, [], plan_id=PLAN
    )

    assert actions == [
        _create("a", "active", "h1"),
        _create("a", "active", "h1"),
        _create("a", "shadow", "h1"),
    ]
    spec = actions[2].spec
    assert spec == ContainerSpec(
        client_id="a",
        plan_id=PLAN,
        tier="shadow",
        image="prewarm/worker:latest",
        cpu=0.5,
        memory_mb=64,
        env={"PREWARM_CLIENT_ID": "a"},
        labels={LABEL_CONFIG_HASH: "hash-a", "prewarm.extensions": "", LABEL_HOST: "h1"},
        port=8080,
    )


def test_matching_state_gives_no_actions() -> None:
    desired = _desired(("a", "active", 2, "h1"), ("a", "shadow", 1, "h1"), ("b", "cold", 1, "h2"))
    members = [
        _member("m1", "a", "active"),
        _member("m2", "a", "active"),
        _member("m3", "a", "shadow"),
        _member("m4", "b", "cold", host="h2"),
    ]

    assert diff(desired, SPECS, members, plan_id=PLAN) == []


def test_members_of_unplanned_clients_are_released_as_orphans() -> None:
    ghost = _member("m9", "ghost", "shadow", config_hash="whatever")
    nameless = _member("m8", "", "active")
    kept = _member("m1", "a", "active")

    actions = diff(_desired(("a", "active", 1, "h1")), SPECS, [kept, ghost, nameless], plan_id=PLAN)

    assert actions == [_release(nameless, REASON_ORPHAN), _release(ghost, REASON_ORPHAN)]


def test_changed_config_hash_releases_and_replaces_the_member() -> None:
    old = _member("m1", "a", "active", config_hash="hash-old")
    current = _member("m2", "a", "active")

    actions = diff(_desired(("a", "active", 2, "h1")), SPECS, [old, current], plan_id=PLAN)

    assert actions == [_release(old, REASON_CONFIG), _create("a", "active", "h1", REASON_REPLACE)]


def test_scale_down_releases_the_surplus_by_member_id() -> None:
    members = [_member(f"m{i}", "a", "active") for i in (3, 1, 2)]

    actions = diff(_desired(("a", "active", 1, "h1")), SPECS, members, plan_id=PLAN)

    assert [(a.kind, a.member_id, a.reason) for a in actions] == [
        ("release", "m2", REASON_SCALE_DOWN),
        ("release", "m3", REASON_SCALE_DOWN),
    ]


def test_a_surplus_shadow_is_promoted_instead_of_creating_an_active() -> None:
    active, shadow = _member("m1", "a", "active"), _member("m2", "a", "shadow")

    actions = diff(_desired(("a", "active", 2, "h1")), SPECS, [active, shadow], plan_id=PLAN)

    assert actions == [_on_member("activate", shadow, "active", REASON_PROMOTE)]


@pytest.mark.parametrize(
    ("have", "want", "kind", "reason"),
    [
        ("cold", "active", "activate", REASON_START),
        ("active", "shadow", "shadow", REASON_DEMOTE),
        ("cold", "shadow", "shadow", REASON_WARM),
    ],
)
def test_the_other_cheap_transitions(have: Tier, want: Tier, kind: str, reason: str) -> None:
    member = _member("m1", "a", have)

    actions = diff(_desired(("a", want, 1, "h1")), SPECS, [member], plan_id=PLAN)

    assert actions == [_on_member(kind, member, want, reason)]


def test_a_needed_active_prefers_a_shadow_over_a_cold_member() -> None:
    cold, shadow = _member("m1", "a", "cold"), _member("m2", "a", "shadow")

    actions = diff(_desired(("a", "active", 1, "h1")), SPECS, [cold, shadow], plan_id=PLAN)

    assert actions == [
        _on_member("activate", shadow, "active", REASON_PROMOTE),
        _release(cold, REASON_SCALE_DOWN),
    ]


def test_a_cold_slot_keeps_a_warmer_member_instead_of_replacing_it() -> None:
    """Releasing a member only to create a colder one undoes its creation: a surplus shadow
    fills the cold slot as it is, a running one is paused for it; a missing one is created."""
    shadow, active = _member("m1", "a", "shadow"), _member("m2", "b", "active")

    actions = diff(
        _desired(("a", "cold", 2, "h1"), ("b", "cold", 1, "h1")),
        SPECS,
        [shadow, active],
        plan_id=PLAN,
    )

    assert [(x.kind, x.client_id, x.member_id, x.tier) for x in actions] == [
        ("create", "a", None, "cold"),
        ("shadow", "b", "m2", "shadow"),
    ]


def test_members_on_a_host_no_longer_planned_are_replaced_on_the_new_host() -> None:
    moved = _member("m1", "a", "active", host="h1")

    actions = diff(_desired(("a", "active", 1, "h2")), SPECS, [moved], plan_id=PLAN)

    assert actions == [_release(moved, REASON_HOST_GONE), _create("a", "active", "h2")]


def test_forecast_only_clients_are_neither_created_changed_nor_released() -> None:
    desired = _desired(("a", "active", 1, "h1"), ("f", "active", 3, "h1"))
    members = [
        _member("m1", "a", "active"),
        _member("m2", "f", "cold", config_hash="stale"),
        _member("m3", "f", "shadow", host="h9"),
    ]
    specs = {"a": SPECS["a"]}  # no spec needed for an untouchable client

    assert diff(desired, specs, members, {"f"}, plan_id=PLAN) == []
    # Without the plan row, an untouchable client's members are still not orphans.
    assert diff(_desired(("a", "active", 1, "h1")), specs, members, {"f"}, plan_id=PLAN) == []


def test_same_state_in_any_input_order_gives_the_same_sorted_actions() -> None:
    rows = [
        ("b", "active", 1, "h1"),
        ("a", "shadow", 2, "h1"),
        ("a", "active", 1, "h1"),
        ("b", "cold", 1, "h2"),
    ]
    members = [
        _member("m5", "b", "shadow"),
        _member("m4", "a", "active"),
        _member("m3", "a", "active"),
        _member("m2", "ghost", "cold"),
        _member("m1", "a", "cold", config_hash="old"),
    ]
    expected = diff(_desired(*rows), SPECS, members, plan_id=PLAN)

    shuffler = random.Random(7)
    for _ in range(5):
        shuffler.shuffle(rows)
        shuffler.shuffle(members)
        assert diff(_desired(*rows), SPECS, members, plan_id=PLAN) == expected
    assert [(a.client_id, a.kind, a.tier, a.member_id) for a in expected] == [
        ("a", "shadow", "shadow", "m4"),  # m3 (lower id) stays the one active
        ("a", "create", "shadow", None),
        ("a", "release", "cold", "m1"),
        ("b", "activate", "active", "m5"),
        ("b", "create", "cold", None),
        ("ghost", "release", "cold", "m2"),
    ]


def test_extra_labels_go_on_created_members_and_spec_gaps_are_errors() -> None:
    [action] = diff(
        _desired(("a", "active", 1, None)), SPECS, [], plan_id=PLAN, labels={"pool": "x"}
    )
    assert action.spec is not None and action.spec.labels["pool"] == "x"
    assert LABEL_HOST not in action.spec.labels  # no host planned: none claimed

    with pytest.raises(ValueError, match=r"no container config for planned client\(s\) \['b'\]"):
        diff(_desired(("b", "active", 1, "h1")), {"a": SPECS["a"]}, [], plan_id=PLAN)
    with pytest.raises(ValueError, match="tiers must be one of"):
        diff(_desired(("a", "warm", 1, "h1")), SPECS, [], plan_id=PLAN)


def test_zero_and_repeated_rows_add_up() -> None:
    desired = _desired(("a", "active", 1, "h1"), ("a", "active", 1, "h1"), ("a", "shadow", 0, "h1"))

    actions = diff(desired, SPECS, [_member("m1", "a", "shadow")], plan_id=PLAN)

    assert [(a.kind, a.tier, a.reason) for a in actions] == [
        ("activate", "active", REASON_PROMOTE),
        ("create", "active", REASON_SCALE_UP),
    ]


def test_summarize_counts_by_kind_and_reason() -> None:
    members = [_member("m1", "ghost", "active"), _member("m2", "a", "active", config_hash="old")]
    actions = diff(_desired(("a", "active", 2, "h1")), SPECS, members, plan_id=PLAN)

    summary = summarize(actions)

    assert summary.to_dicts() == [
        {"kind": "release", "reason": REASON_CONFIG, "count": 1},
        {"kind": "release", "reason": REASON_ORPHAN, "count": 1},
        {"kind": "create", "reason": REASON_REPLACE, "count": 1},
        {"kind": "create", "reason": REASON_SCALE_UP, "count": 1},
    ]
    assert summarize([]).height == 0 and summarize([]).columns == ["kind", "reason", "count"]


def test_recently_used_members_are_kept_but_busy_ones_alone_stay_untouched():
    """A member used within the delay is not released (surplus or orphan); it may still be
    paused. A busy one is not even paused."""
    used = _member("m-used1", "a", "active")
    idle = _member("m-idle2", "a", "active")
    orphan = _member("m-orphan3", "gone", "shadow")
    desired = _desired(("a", "shadow", 1, "h1"))
    actions = diff(
        desired,
        SPECS,
        [used, idle, orphan],
        plan_id=PLAN,
        recently_used={"m-used1", "m-orphan3"},
    )
    kinds = {(a.kind, a.member_id) for a in actions}
    assert ("release", "m-orphan3") not in kinds and ("release", "m-used1") not in kinds
    # the plan wants one shadow: one active is paused, the recently used one is kept
    assert sum(k == "shadow" for k, _ in kinds) == 1 and not any(k == "release" for k, _ in kinds)
