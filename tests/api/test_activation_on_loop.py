"""The warm claim on the event loop (`api.activation.claim_warm_on_loop`), on a real
process runtime and lease book: what it serves, what it hands to the thread path with no
lease left taken, and that the HTTP answer is the same either way."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import api.activation_route
from api.activation import ActivationOutcome, ColdStartCap, claim_warm_on_loop
from api.composite import client_composite
from provisioning.reconciler import build_spec
from provisioning.runtime.base import (
    LABEL_CLIENT,
    LABEL_MANAGED,
    ActivationTimeout,
    ContainerRuntime,
    Member,
)
from provisioning.runtime.leases import LeaseBook
from provisioning.runtime.process_runtime import ProcessRuntime
from provisioning.schema_render import render_container_config
from tests.api.conftest import World
from tests.api.helpers import bearer, shadow_member

LEASE_S = 30.0


def _claim(
    runtime: ContainerRuntime,
    scope: dict[str, str],
    leases: LeaseBook,
    cap: ColdStartCap | None = None,
) -> ActivationOutcome | None:
    cap = cap or ColdStartCap(limit=4, wait_s=1.0)
    return asyncio.run(claim_warm_on_loop(runtime, "a", scope, leases, LEASE_S, cap=cap))


@pytest.fixture
def leases(tmp_path: Path) -> LeaseBook:
    return LeaseBook(tmp_path / "leases.json")


def _tiers(runtime: ProcessRuntime, scope: dict[str, str]) -> dict[str, str]:
    return {m.id: m.tier for m in runtime.list({LABEL_MANAGED: "1", **scope, LABEL_CLIENT: "a"})}


def test_a_shadow_is_claimed_and_resumed_then_the_active_member_is_busy(
    world: World, process_runtime: ProcessRuntime, pool_scope: dict[str, str], leases: LeaseBook
) -> None:
    member_id = shadow_member(process_runtime, world.path, pool_scope)

    outcome = _claim(process_runtime, pool_scope, leases)

    assert outcome is not None
    assert (outcome.member.id, outcome.member.tier) == (member_id, "active")
    assert (outcome.cold_start, outcome.tier_before) == (False, "shadow") and outcome.ms > 0
    assert leases.busy() == {member_id}
    # Leased to that request: the next one finds no idle member and takes the thread path.
    assert _claim(process_runtime, pool_scope, leases) is None
    assert leases.busy() == {member_id}
    # Once the lease ends, the member is an idle active one: claimed with no runtime call.
    leases.end(member_id)
    again = _claim(process_runtime, pool_scope, leases)
    assert again is not None and (again.tier_before, again.ms) == ("active", 0.0)


def test_a_busy_member_lock_or_cold_start_is_left_to_the_thread_with_no_lease_taken(
    world: World, process_runtime: ProcessRuntime, pool_scope: dict[str, str], leases: LeaseBook
) -> None:
    member_id = shadow_member(process_runtime, world.path, pool_scope)

    with process_runtime.records.locked(member_id):
        assert _claim(process_runtime, pool_scope, leases) is None
    assert leases.busy() == set()

    cap = ColdStartCap(limit=4, wait_s=1.0)
    with cap.lock:  # a cold start of this client is under way
        assert _claim(process_runtime, pool_scope, leases, cap) is None
    assert leases.busy() == set()
    assert _tiers(process_runtime, pool_scope) == {member_id: "shadow"}


def test_a_cold_member_or_none_is_left_to_the_thread(
    world: World, process_runtime: ProcessRuntime, pool_scope: dict[str, str], leases: LeaseBook
) -> None:
    assert _claim(process_runtime, pool_scope, leases) is None
    config = render_container_config(client_composite(world.path, "a"))
    cold = process_runtime.create(build_spec("a", "cold", "h1", config, "test-plan", pool_scope))

    assert _claim(process_runtime, pool_scope, leases) is None
    assert leases.busy() == set()
    assert _tiers(process_runtime, pool_scope) == {cold.id: "cold"}


def test_a_runtime_without_a_loop_path_is_left_to_the_thread(
    pool_scope: dict[str, str], leases: LeaseBook
) -> None:
    class ThreadOnly:  # what DockerRuntime offers: the ContainerRuntime calls only
        name = "docker"

        def list(self, labels: dict[str, str] | None = None) -> list[Member]:
            raise AssertionError("the loop path must not call a blocking runtime")

    assert _claim(ThreadOnly(), pool_scope, leases) is None  # type: ignore[arg-type]


def test_a_failed_resume_gives_the_lease_back_and_raises(
    world: World, tmp_path: Path, pool_scope: dict[str, str], leases: LeaseBook
) -> None:
    runtime = ProcessRuntime(tmp_path / "slow.json", grace_s=0.5, health_timeout_s=0.3)
    member_id = shadow_member(runtime, world.path, pool_scope)
    with runtime.records.locked(member_id):  # its endpoint now names a silent listener
        record = runtime.records.read(member_id)
        assert record is not None
        listener = _silent_listener()
        record.endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
        runtime.records.write(record)

    with listener, pytest.raises(ActivationTimeout):
        _claim(runtime, pool_scope, leases)

    assert leases.busy() == set()
    assert _tiers(runtime, pool_scope) == {member_id: "cold"}
    runtime.release(member_id)


def test_the_answer_is_the_same_served_on_the_loop_or_in_a_thread(
    world: World,
    make_app: Any,
    process_runtime: ProcessRuntime,
    pool_scope: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threaded = threading.Event()
    original = api.activation_route.activate_or_cold_start
    turns_free_in_thread: list[int] = []

    def spy(*args: Any, **kwargs: Any) -> ActivationOutcome:
        turns_free_in_thread.append(app.state.prewarm.turns.free)
        threaded.set()  # before the activation waits for the member's lock
        return original(*args, **kwargs)

    monkeypatch.setattr(api.activation_route, "activate_or_cold_start", spy)
    app: FastAPI = make_app(process_runtime)
    member_id = shadow_member(process_runtime, world.path, pool_scope)
    leases: LeaseBook = app.state.prewarm.leases
    result: dict[str, Any] = {}

    with TestClient(app) as client:
        on_loop = client.post("/v1/clients/a/activate", headers=bearer(world.key_a))
        assert not threaded.is_set()
        process_runtime.shadow(member_id)
        leases.end(member_id)
        caller = threading.Thread(
            target=lambda: result.update(
                answer=client.post("/v1/clients/a/activate", headers=bearer(world.key_a))
            )
        )
        with process_runtime.records.locked(member_id):
            # Held here (as by a freeze): the loop declines, the thread path waits for it.
            caller.start()
            assert threaded.wait(10)
        caller.join(10)
        in_thread = result["answer"]

    # The thread path gave its turn on the loop back before it ran (`api.turns`), and no
    # request kept one.
    turns = app.state.prewarm.turns
    assert turns_free_in_thread == [turns.slots]
    assert (turns.free, turns.waiting) == (turns.slots, 0)
    for answer in (on_loop, in_thread):
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert (body["member_id"], body["tier_before"]) == (member_id, "shadow")
        assert body["activation_ms"] > 0


def _silent_listener() -> socket.socket:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    return listener
