"""Applying reconciler actions on real runtimes: worker processes always, Docker when a daemon
answers (tests marked `docker` skip, saying why, otherwise).

Every test uses its own plan id; the runtime fixtures release all members labelled with it
afterwards, even when the test failed, and Docker tests scope the pool by that label so
other prewarm containers on the daemon are never touched.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import docker
import polars as pl
import pytest

from provisioning.apply import (
    POOL_EVENTS_SCHEMA,
    POOL_MEMBERS_SCHEMA,
    activate_one,
    apply_actions,
    execution_order,
    reconcile_once,
)
from provisioning.reconciler import (
    REASON_ORPHAN,
    REASON_PROMOTE,
    Action,
    build_spec,
    diff,
)
from provisioning.runtime.base import (
    LABEL_CLIENT,
    LABEL_MANAGED,
    LABEL_PLAN,
    ContainerSpec,
    Member,
    probe_once,
)
from provisioning.runtime.docker_network import remove_unused_networks
from provisioning.runtime.docker_runtime import DockerRuntime
from provisioning.runtime.leases import LeaseBook
from provisioning.runtime.process_runtime import ProcessRuntime
from provisioning.schema import compose_workload
from provisioning.schema_render import render_container_config
from tests.provisioning.processes import kernel_state

SpecMaker = Callable[..., ContainerSpec]
FROZEN_PROBE_S = 0.2


def _specs(*clients: str, **workload: Any) -> dict[str, dict[str, Any]]:
    """Rendered container configs for small workers (64 MiB, a quarter core)."""
    small = {"name": "small", "workload": {"memory_mb": 64, "cpu": 0.25, **workload}}
    return {c: render_container_config(compose_workload(c, [small])) for c in clients}


def _desired(*rows: tuple[str, str, int, str]) -> pl.DataFrame:
    return pl.DataFrame(
        rows,
        schema={"client_id": pl.String, "tier": pl.String, "count": pl.Int64, "host": pl.String},
        orient="row",
    )


def _tier_counts(members: list[Member]) -> Counter[tuple[str, str]]:
    return Counter((m.client_id, m.tier) for m in members)


DESIRED = _desired(
    ("a", "active", 2, "h1"),
    ("a", "shadow", 1, "h1"),
    ("b", "active", 1, "h1"),
    ("b", "cold", 1, "h1"),
)
WANTED = Counter({("a", "active"): 2, ("a", "shadow"): 1, ("b", "active"): 1, ("b", "cold"): 1})


# --- pure: the execution order ------------------------------------------------------------


def test_execution_order_is_activations_releases_shadows_then_creates_warmest_first() -> None:
    def action(kind: str, tier: str, member_id: str | None) -> Action:
        return Action(kind=kind, client_id="a", tier=tier, reason="r", member_id=member_id)  # type: ignore[arg-type]

    actions = [
        action("create", "cold", None),
        action("release", "active", "m1"),
        action("create", "active", None),
        action("shadow", "shadow", "m2"),
        action("activate", "active", "m3"),
        action("create", "shadow", None),
        action("release", "cold", "m4"),
    ]

    ordered = [(a.kind, a.tier, a.member_id) for a in execution_order(actions)]

    assert ordered == [
        ("activate", "active", "m3"),
        ("release", "active", "m1"),
        ("release", "cold", "m4"),
        ("shadow", "shadow", "m2"),
        ("create", "active", None),
        ("create", "shadow", None),
        ("create", "cold", None),
    ]


# --- real ProcessRuntime ------------------------------------------------------------------


def test_reconcile_creates_the_desired_pool_and_a_second_run_changes_nothing(
    process_runtime: ProcessRuntime, plan_id: str
) -> None:
    specs = _specs("a", "b")

    first = reconcile_once(process_runtime, DESIRED, specs, set(), plan_id)

    members = process_runtime.list({LABEL_MANAGED: "1"})
    assert _tier_counts(members) == WANTED
    assert first.failed == 0 and first.pool_events.height == 5
    assert Counter(first.pool_events["action"]) == {"create": 5}
    assert first.pool_events.schema == pl.Schema(POOL_EVENTS_SCHEMA)
    assert first.pool_events["member_id"].null_count() == 0
    assert set(first.pool_members["member_id"]) == {m.id for m in members}
    assert first.pool_members.schema == pl.Schema(POOL_MEMBERS_SCHEMA)
    assert set(first.pool_members["plan_id"]) == {plan_id}
    assert set(first.pool_members["host"]) == {"h1"}
    for member in members:
        pid = member.details["pid"]
        if member.tier == "active":
            assert probe_once(member.endpoint, FROZEN_PROBE_S), member
        elif member.tier == "shadow":
            assert kernel_state(pid) == "T"
            assert not probe_once(member.endpoint, FROZEN_PROBE_S), "a frozen worker answered"
        else:
            assert pid is None and member.endpoint is None

    second = reconcile_once(process_runtime, DESIRED, specs, set(), plan_id)

    assert second.actions == [] and second.pool_events.height == 0
    assert set(second.pool_members["member_id"]) == {m.id for m in members}


def test_an_orphan_with_our_labels_is_released(
    process_runtime: ProcessRuntime, make_spec: SpecMaker, plan_id: str
) -> None:
    reconcile_once(process_runtime, DESIRED, _specs("a", "b"), set(), plan_id)
    orphan = process_runtime.create(make_spec("shadow", client_id="ghost"))

    result = reconcile_once(process_runtime, DESIRED, _specs("a", "b"), set(), plan_id)

    assert [(a.kind, a.member_id, a.reason) for a in result.actions] == [
        ("release", orphan.id, REASON_ORPHAN)
    ]
    assert result.pool_events["ok"].to_list() == [True]
    assert orphan.id not in {m.id for m in process_runtime.list()}
    assert kernel_state(orphan.details["pid"]) is None
    assert "ghost" not in set(result.pool_members["client_id"])


def test_a_forecast_only_client_keeps_its_members(
    process_runtime: ProcessRuntime, make_spec: SpecMaker, plan_id: str
) -> None:
    kept = process_runtime.create(make_spec("cold", client_id="f"))

    result = reconcile_once(process_runtime, DESIRED, _specs("a", "b"), {"f"}, plan_id)

    assert result.failed == 0 and "f" not in set(result.pool_events["client_id"])
    assert kept.id in set(result.pool_members["member_id"])


def test_a_crash_midway_is_healed_by_the_next_run(
    process_runtime: ProcessRuntime, make_spec: SpecMaker, plan_id: str
) -> None:
    specs = _specs("a", "b")
    # A pool left by an earlier run: a shadow and a cold of `a` to reuse, plus an orphan.
    for tier in ("shadow", "cold"):
        process_runtime.create(build_spec("a", tier, "h1", specs["a"], plan_id))
    process_runtime.create(make_spec("active", client_id="ghost"))
    members = process_runtime.list()
    planned = execution_order(diff(DESIRED, specs, members, plan_id=plan_id))
    assert [a.kind for a in planned] == ["activate", "release", "create", "create", "create"]
    half = len(planned) // 2

    crashed = apply_actions(process_runtime, planned[:half], plan_id)
    healed = reconcile_once(process_runtime, DESIRED, specs, set(), plan_id)

    assert crashed.failed == 0 and healed.failed == 0
    remaining = Counter((a.kind, a.client_id, a.tier) for a in planned[half:])
    assert Counter((a.kind, a.client_id, a.tier) for a in healed.actions) == remaining
    assert _tier_counts(process_runtime.list()) == WANTED
    assert reconcile_once(process_runtime, DESIRED, specs, set(), plan_id).actions == []


def test_a_failed_action_is_recorded_and_the_others_still_run(
    process_runtime: ProcessRuntime, plan_id: str
) -> None:
    config = _specs("a")["a"]
    actions = [
        Action(kind="activate", client_id="a", tier="active", reason="r", member_id="gone"),
        Action(
            kind="create",
            client_id="a",
            tier="active",
            reason="r",
            spec=build_spec("a", "active", "h1", config, plan_id),
        ),
    ]
    progress: list[tuple[int, int, bool]] = []

    result = apply_actions(
        process_runtime,
        actions,
        plan_id,
        lambda done, total, e: progress.append((done, total, e["ok"])),
    )

    assert result.pool_events["ok"].to_list() == [False, True]
    assert "MemberNotFound" in result.pool_events["error"][0]
    assert result.failed == 1 and progress == [(1, 2, False), (2, 2, True)]
    assert _tier_counts(process_runtime.list()) == Counter({("a", "active"): 1})


def test_activate_one_claims_idle_members_warmest_first_each_once(
    process_runtime: ProcessRuntime, plan_id: str, tmp_path: Path
) -> None:
    reconcile_once(process_runtime, DESIRED, _specs("a", "b"), set(), plan_id)
    [shadow] = [m for m in process_runtime.list({LABEL_CLIENT: "a"}) if m.tier == "shadow"]
    leases = LeaseBook(tmp_path / "leases.json")

    claims = [activate_one(process_runtime, "a", leases, 60.0) for _ in range(4)]

    # Two idle running members serve at once (no runtime call), then the shadow is unpaused.
    assert [c[2] if c else None for c in claims] == ["active", "active", "shadow", None]
    assert [c[1] for c in claims[:2] if c] == [0.0, 0.0]
    member, ms, _ = claims[2]  # type: ignore[misc]
    assert member.id == shadow.id and member.tier == "active"
    assert member.endpoint is not None and probe_once(member.endpoint, FROZEN_PROBE_S)
    assert ms > 0  # timed: the speed itself is measured by bench/activation.py
    # Every member is busy now: the fourth request cold-starts. A finished one is idle again.
    assert leases.busy() == {c[0].id for c in claims if c}
    leases.end(member.id)
    again = activate_one(process_runtime, "a", leases, 60.0)
    assert again is not None and again[0].id == member.id and again[2] == "active"
    # `b`'s cold member is started once its active one is taken.
    assert activate_one(process_runtime, "b", leases, 60.0)[2] == "active"  # type: ignore[index]
    cold_started = activate_one(process_runtime, "b", leases, 60.0)
    assert cold_started is not None and cold_started[2] == "cold"
    assert activate_one(process_runtime, "nobody", leases, 60.0) is None


def test_concurrent_requests_never_share_a_member(
    process_runtime: ProcessRuntime, plan_id: str, tmp_path: Path
) -> None:
    desired = _desired(("a", "active", 3, "h1"), ("a", "shadow", 2, "h1"))
    reconcile_once(process_runtime, desired, _specs("a"), set(), plan_id)
    leases = LeaseBook(tmp_path / "leases.json")
    with ThreadPoolExecutor(max_workers=8) as pool:
        claims = list(
            pool.map(lambda _: activate_one(process_runtime, "a", leases, 60.0), range(8))
        )
    served = [c[0].id for c in claims if c is not None]
    assert len(served) == 5 and len(set(served)) == 5
    assert sum(c is None for c in claims) == 3


def test_busy_members_are_drained_never_released_or_paused(
    process_runtime: ProcessRuntime, plan_id: str, tmp_path: Path
) -> None:
    specs = _specs("a")
    reconcile_once(process_runtime, _desired(("a", "active", 2, "h1")), specs, set(), plan_id)
    leases = LeaseBook(tmp_path / "leases.json")
    busy, _, _ = activate_one(process_runtime, "a", leases, 60.0)  # type: ignore[misc]

    # The plan now wants one shadow only: the idle active becomes it; the busy one stays.
    result = reconcile_once(
        process_runtime, _desired(("a", "shadow", 1, "h1")), specs, set(), plan_id, leases=leases
    )
    tiers = {m.id: m.tier for m in process_runtime.list({LABEL_CLIENT: "a"})}
    assert tiers[busy.id] == "active" and sorted(tiers.values()) == ["active", "shadow"]
    assert all(a.member_id != busy.id for a in result.actions)

    # No longer planned at all: still drained while busy, released once its request is done.
    reconcile_once(process_runtime, _desired(), specs, set(), plan_id, leases=leases)
    assert [m.id for m in process_runtime.list({LABEL_CLIENT: "a"})] == [busy.id]
    leases.end(busy.id)
    reconcile_once(process_runtime, _desired(), specs, set(), plan_id, leases=leases)
    assert process_runtime.list({LABEL_CLIENT: "a"}) == []


def test_a_member_claimed_after_the_listing_is_skipped_not_released(
    process_runtime: ProcessRuntime, plan_id: str, tmp_path: Path
) -> None:
    specs = _specs("a")
    reconcile_once(process_runtime, _desired(("a", "active", 1, "h1")), specs, set(), plan_id)
    [member] = process_runtime.list({LABEL_CLIENT: "a"})
    leases = LeaseBook(tmp_path / "leases.json")
    planned = diff(_desired(), specs, process_runtime.list(), plan_id=plan_id)
    leases.lease(member.id, 60.0)  # the request arrives between the diff and the release

    result = apply_actions(process_runtime, planned, plan_id, leases=leases)

    assert result.drained == (member.id,) and result.pool_events.height == 0
    assert [m.id for m in process_runtime.list({LABEL_CLIENT: "a"})] == [member.id]


def test_hold_keeps_surplus_members_until_released_by_a_smaller_hold(
    process_runtime: ProcessRuntime, plan_id: str
) -> None:
    specs = _specs("a")
    reconcile_once(process_runtime, _desired(("a", "shadow", 3, "h1")), specs, set(), plan_id)
    one = _desired(("a", "shadow", 1, "h1"))
    held = reconcile_once(process_runtime, one, specs, set(), plan_id, hold={("a", "h1"): 3})
    assert held.actions == [] and len(process_runtime.list({LABEL_CLIENT: "a"})) == 3
    lower = reconcile_once(process_runtime, one, specs, set(), plan_id, hold={("a", "h1"): 2})
    assert [a.kind for a in lower.actions] == ["release"]
    assert len(process_runtime.list({LABEL_CLIENT: "a"})) == 2


# --- real Docker --------------------------------------------------------------------------

DOCKER_STATE_TIER = {"running": "active", "paused": "shadow", "created": "cold"}


def _docker_pool(client: docker.DockerClient, plan_id: str) -> dict[str, str]:
    """id -> tier of every container with a client label in this test's plan, per Docker."""
    containers = client.containers.list(
        all=True, filters={"label": [LABEL_CLIENT, f"{LABEL_PLAN}={plan_id}"]}
    )
    return {c.id: DOCKER_STATE_TIER[c.status] for c in containers}


@pytest.mark.docker
def test_docker_pool_converges_is_idempotent_and_drops_orphans(
    docker_runtime: DockerRuntime,
    docker_client: docker.DockerClient,
    make_spec: SpecMaker,
    plan_id: str,
) -> None:
    scope = {LABEL_PLAN: plan_id}  # the daemon is shared: touch only this test's containers
    specs = _specs("a", "b")
    desired = _desired(("a", "active", 2, "h1"), ("a", "shadow", 1, "h1"), ("b", "cold", 1, "h1"))
    # Two shadows of `a` already there: the one with the lower id stays, the other is promoted.
    kept, spare = sorted(
        (docker_runtime.create(build_spec("a", "shadow", "h1", specs["a"], plan_id)) for _ in "xy"),
        key=lambda m: m.id,
    )
    orphan = docker_runtime.create(make_spec("cold", client_id="ghost"))

    first = reconcile_once(docker_runtime, desired, specs, set(), plan_id, scope=scope)

    assert first.failed == 0
    assert [(a.kind, a.member_id, a.reason) for a in first.actions if a.member_id] == [
        ("activate", spare.id, REASON_PROMOTE),
        ("release", orphan.id, REASON_ORPHAN),
    ]
    assert Counter((a.kind, a.tier) for a in first.actions if a.kind == "create") == {
        ("create", "active"): 1,
        ("create", "cold"): 1,
    }
    seen = _docker_pool(docker_client, plan_id)
    frame = dict(zip(first.pool_members["member_id"], first.pool_members["tier"], strict=True))
    assert seen == frame
    assert Counter(seen.values()) == {"active": 2, "shadow": 1, "cold": 1}
    assert seen[kept.id] == "shadow" and seen[spare.id] == "active"
    assert orphan.id not in seen
    assert set(first.pool_members["runtime"]) == {"docker"}

    second = reconcile_once(docker_runtime, desired, specs, set(), plan_id, scope=scope)

    assert second.actions == []
    assert _docker_pool(docker_client, plan_id) == seen


@pytest.mark.docker
def test_docker_crash_midway_is_healed(
    docker_runtime: DockerRuntime, docker_client: docker.DockerClient, plan_id: str
) -> None:
    scope = {LABEL_PLAN: plan_id}
    specs = _specs("a")
    desired = _desired(("a", "active", 2, "h1"), ("a", "shadow", 1, "h1"))
    planned = execution_order(
        diff(desired, specs, docker_runtime.list({LABEL_MANAGED: "1", **scope}), plan_id=plan_id)
    )

    apply_actions(docker_runtime, planned[:1], plan_id, scope=scope)
    healed = reconcile_once(docker_runtime, desired, specs, set(), plan_id, scope=scope)

    assert len(planned) == 3 and len(healed.actions) == 2 and healed.failed == 0
    assert Counter(_docker_pool(docker_client, plan_id).values()) == {"active": 2, "shadow": 1}
    assert set(healed.pool_members["host"]) == {"h1"}
    assert reconcile_once(docker_runtime, desired, specs, set(), plan_id, scope=scope).actions == []


@pytest.mark.docker
def test_docker_parallel_creates_share_the_members_network_they_race_to_make(
    docker_runtime: DockerRuntime, docker_client: docker.DockerClient, plan_id: str
) -> None:
    # No members network yet (unless another member holds it): four creates at once each
    # try to make it; dockerd gives it to one and refuses the others, which must carry on.
    remove_unused_networks(docker_client)
    scope = {LABEL_PLAN: plan_id}
    specs = _specs("a", "b")
    desired = _desired(("a", "shadow", 2, "h1"), ("b", "shadow", 2, "h1"))

    result = reconcile_once(docker_runtime, desired, specs, set(), plan_id, scope=scope, parallel=4)

    assert result.failed == 0, result.pool_events.filter(~pl.col("ok"))["error"].to_list()
    assert Counter(_docker_pool(docker_client, plan_id).values()) == {"shadow": 4}
