"""Routing: which of a client's members a request tries first (weights per host, affinity),
on literal members, and on a real process runtime through `activate_one`."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from provisioning.apply import activate_one
from provisioning.reconciler import build_spec
from provisioning.routing import route_request
from provisioning.runtime.base import LABEL_HOST, Member, Tier
from provisioning.runtime.leases import LeaseBook
from provisioning.runtime.process_runtime import ProcessRuntime
from provisioning.schema import compose_workload
from provisioning.schema_model import Routing
from provisioning.schema_render import render_container_config

KEYS = [f"user-{i}" for i in range(600)]


def _member(member_id: str, host: str | None, tier: Tier = "active") -> Member:
    return Member(
        id=member_id,
        client_id="c",
        plan_id="p",
        tier=tier,
        runtime="process",
        endpoint=None,
        created_at=datetime(2024, 5, 1, tzinfo=UTC),
        labels={LABEL_HOST: host} if host is not None else {},
    )


def _first(members: list[Member], routing: Routing, key: str | None = None, seed: int = 0) -> str:
    return route_request(members, routing, "c", key, random.Random(seed)).members[0].id


def _host_of(members: list[Member], member_id: str) -> str | None:
    return next(m.labels.get(LABEL_HOST) for m in members if m.id == member_id)


# --- weights ------------------------------------------------------------------------------


def test_weights_split_picks_in_proportion_to_the_hosts_weights() -> None:
    members = [_member("m1", "a"), _member("m2", "b")]
    routing = Routing(weights={"a": 3, "b": 1})
    rng = random.Random(7)

    picks = Counter(
        route_request(members, routing, "c", None, rng).members[0].id for _ in range(400)
    )

    assert 0.70 <= picks["m1"] / 400 <= 0.80, picks


def test_weights_pick_within_the_warmest_tier_only() -> None:
    # The shadow's host weighs more, but an idle active member serves before any shadow.
    members = [_member("m1", "a", "shadow"), _member("m2", "b", "active")]
    routing = Routing(weights={"a": 100, "b": 1})

    orders = {
        tuple(m.id for m in route_request(members, routing, "c", None, random.Random(s)).members)
        for s in range(50)
    }

    assert orders == {("m2", "m1")}


def test_hosts_not_named_come_after_the_named_ones_in_the_usual_order() -> None:
    members = [_member("m3", "c"), _member("m1", "a"), _member("m4", None), _member("m2", "d")]
    routing = Routing(weights={"a": 1, "b": 5})  # b holds no member; c, d, none not named

    orders = {
        tuple(m.id for m in route_request(members, routing, "c", None, random.Random(s)).members)
        for s in range(20)
    }

    # a's member first; the others still follow (a busy m1 never refuses the request).
    assert orders == {("m1", "m2", "m3", "m4")}


def test_no_usable_weights_keep_the_usual_order() -> None:
    members = [
        _member("m3", "b", "shadow"),
        _member("m2", "a", "active"),
        _member("m1", "b", "cold"),
        _member("m0", "a", "shadow"),
    ]
    usual = ("m2", "m0", "m3", "m1")  # warmest tier first, then member id
    for weights in ({}, {"a": 0.0, "b": 0.0}, {"stable": 0.9, "canary": 0.1}):
        rng = random.Random(1)
        state = rng.getstate()

        route = route_request(members, Routing(weights=weights), "c", None, rng)

        assert tuple(m.id for m in route.members) == usual and not route.shared
        assert rng.getstate() == state  # nothing drawn: deterministic


# --- affinity -----------------------------------------------------------------------------


def test_session_affinity_keeps_a_key_on_one_member_whatever_the_listing_order() -> None:
    members = [_member(f"m{i}", "a" if i % 2 else "b") for i in range(4)]
    routing = Routing(affinity="session")

    route = route_request(members, routing, "c", "user-1", random.Random(0))
    again = [_first(list(reversed(members)), routing, "user-1", seed) for seed in range(10)]

    assert route.shared and again == [route.members[0].id] * 10
    spread = Counter(_first(members, routing, key) for key in KEYS)
    assert set(spread) == {m.id for m in members}  # different keys land elsewhere
    assert min(spread.values()) > len(KEYS) / 4 * 0.7  # roughly even


def test_removing_a_member_moves_only_the_keys_it_held() -> None:
    members = [_member(f"m{i}", "a") for i in range(5)]
    routing = Routing(affinity="session")
    before = {key: _first(members, routing, key) for key in KEYS}

    fewer = [m for m in members if m.id != "m2"]
    after = {key: _first(fewer, routing, key) for key in KEYS}

    moved = {key for key in KEYS if before[key] != after[key]}
    assert moved == {key for key in KEYS if before[key] == "m2"} and moved
    # And a new member takes keys only for itself.
    more = [*members, _member("m9", "b")]
    grown = {key: _first(more, routing, key) for key in KEYS}
    assert {grown[key] for key in KEYS if grown[key] != before[key]} == {"m9"}


def test_session_keys_spread_over_hosts_by_weight() -> None:
    members = [_member("m1", "a"), _member("m2", "a"), _member("m3", "b"), _member("m4", "b")]
    routing = Routing(weights={"a": 3, "b": 1}, affinity="session")

    hosts = Counter(_host_of(members, _first(members, routing, key)) for key in KEYS)

    assert 0.70 <= hosts["a"] / len(KEYS) <= 0.80, hosts


def test_client_affinity_sends_every_request_to_one_member() -> None:
    members = [_member(f"m{i}", "a") for i in range(4)]
    routing = Routing(affinity="client")

    firsts = {_first(members, routing, key) for key in [None, *KEYS[:20]]}

    assert len(firsts) == 1
    assert route_request(members, routing, "c", None).shared


def test_host_affinity_picks_a_host_then_its_members_in_the_usual_order() -> None:
    members = [
        _member("a-cold", "a", "cold"),
        _member("a-shadow", "a", "shadow"),
        _member("b-active", "b", "active"),
        _member("b-shadow", "b", "shadow"),
    ]
    routing = Routing(affinity="host")

    orders = Counter(
        tuple(m.id for m in route_request(members, routing, "c", key).members) for key in KEYS
    )

    # Each key: its host's members (warmest first), then the other host's; both hosts used.
    assert set(orders) == {
        ("a-shadow", "a-cold", "b-active", "b-shadow"),
        ("b-active", "b-shadow", "a-shadow", "a-cold"),
    }
    assert not route_request(members, routing, "c", "k").shared
    assert _first(members, routing, "user-3") == _first(list(reversed(members)), routing, "user-3")


def test_without_a_key_or_with_affinity_none_the_weights_decide() -> None:
    members = [_member("m1", "a"), _member("m2", "b")]
    for routing, key in (
        (Routing(weights={"a": 3, "b": 1}, affinity="session"), None),
        (Routing(weights={"a": 3, "b": 1}, affinity="host"), None),
        (Routing(weights={"a": 3, "b": 1}), "user-1"),
    ):
        firsts = Counter(_first(members, routing, key, seed) for seed in range(400))

        assert 0.70 <= firsts["m1"] / 400 <= 0.80, (routing, firsts)
        assert not route_request(members, routing, "c", key).shared


# --- through activate_one, on worker processes --------------------------------------------


def test_activate_one_shares_the_keys_member_and_reads_routing_only_with_a_choice(
    process_runtime: ProcessRuntime, plan_id: str, tmp_path: Path
) -> None:
    small = {"name": "small", "workload": {"memory_mb": 64, "cpu": 0.25}}
    config = render_container_config(compose_workload("c", [small]))
    first = process_runtime.create(build_spec("c", "active", "h1", config, plan_id))
    leases = LeaseBook(tmp_path / "leases.json")
    reads: list[int] = []

    def session() -> Routing:
        reads.append(1)
        return Routing(affinity="session")

    def activate(key: str) -> tuple[Member, float, Tier] | None:
        return activate_one(
            process_runtime, "c", leases, 60.0, read_routing=session, affinity_key=key
        )

    only = activate("user-1")
    assert only is not None and only[0].id == first.id and reads == []  # no choice: not read

    second = process_runtime.create(build_spec("c", "shadow", "h2", config, plan_id))
    both = [first, second]
    key_of = {
        member.id: next(
            k for k in KEYS if _first(both, Routing(affinity="session"), k) == member.id
        )
        for member in both
    }

    # The first member is busy, and its key's request joins it (no runtime call).
    joined = activate(key_of[first.id])
    # The second's key: the shadow is unpaused, then shared by the key's next request.
    woken, shared = activate(key_of[second.id]), activate(key_of[second.id])

    assert joined is not None and (joined[0].id, joined[1], joined[2]) == (first.id, 0.0, "active")
    assert woken is not None and (woken[0].id, woken[2]) == (second.id, "shadow")
    assert shared is not None and (shared[0].id, shared[2]) == (second.id, "active")
    assert len(reads) == 3 and leases.busy() == {first.id, second.id}
    assert activate_one(process_runtime, "c", leases, 60.0) is None  # no idle member left
    # A member being released is not shared: the key's next member serves.
    leases.end(first.id)
    assert leases.reserve(first.id)
    moved = activate(key_of[first.id])
    assert moved is not None and moved[0].id == second.id
