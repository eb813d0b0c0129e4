"""The HTTP API end to end, routing: a client's schema `routing` decides which of its warm
members serves `/activate` (weights per host, affinity by the `X-Prewarm-Affinity` key), on
real worker processes placed on two hosts."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.composite import client_composite
from provisioning.reconciler import build_spec
from provisioning.runtime.leases import LeaseBook
from provisioning.runtime.process_runtime import ProcessRuntime
from provisioning.schema_render import render_container_config
from tests.api.conftest import World
from tests.api.helpers import bearer

ACTIVATIONS = 200  # the h1 share's standard error is 0.031: the bounds are 4 of them away
AFFINITY = "X-Prewarm-Affinity"


def _routed_api(
    make_app: Callable[..., FastAPI],
    runtime: ProcessRuntime,
    world: World,
    tmp_path: Path,
    routing: dict[str, Any],
) -> tuple[TestClient, LeaseBook]:
    """An app whose client `a` routes by `routing` (set through the API), rate limits out of
    the way, and its lease book (so a test can end a request's lease)."""
    leases = LeaseBook(tmp_path / "leases.json")
    api = TestClient(
        make_app(runtime, leases=leases, activate_rate=10_000.0, activate_burst=10_000)
    )
    extension = {"name": "routing", "workload": {"routing": routing}}
    added = api.post("/v1/clients/a/schema/extensions", json=extension, headers=bearer(world.key_a))
    assert added.status_code == 201, added.text
    return api, leases


def _active_members(
    runtime: ProcessRuntime, world: World, scope: dict[str, str], *hosts: str
) -> dict[str, str]:
    """One active member of `a` per host given; their hosts by member id."""
    config = render_container_config(client_composite(world.path, "a"))
    members = [
        runtime.create(build_spec("a", "active", host, config, "test-plan", labels=scope))
        for host in hosts
    ]
    return {m.id: host for m, host in zip(members, hosts, strict=True)}


def test_weights_split_activations_between_hosts(
    make_app: Callable[..., FastAPI],
    world: World,
    process_runtime: ProcessRuntime,
    pool_scope: dict[str, str],
    tmp_path: Path,
) -> None:
    host_of = _active_members(process_runtime, world, pool_scope, "h1", "h2")
    api, leases = _routed_api(
        make_app, process_runtime, world, tmp_path, {"weights": {"h1": 3, "h2": 1}}
    )

    hosts: Counter[str] = Counter()
    for _ in range(ACTIVATIONS):
        response = api.post("/v1/clients/a/activate", headers=bearer(world.key_a))
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["tier_before"] == "active"
        hosts[host_of[body["member_id"]]] += 1
        leases.end(body["member_id"])  # the request is done: both members idle again

    assert 0.62 <= hosts["h1"] / ACTIVATIONS <= 0.88, hosts
    assert len(process_runtime.list(pool_scope)) == 2  # nothing cold-started


def test_session_affinity_keeps_a_key_on_its_member_even_while_busy(
    make_app: Callable[..., FastAPI],
    world: World,
    process_runtime: ProcessRuntime,
    pool_scope: dict[str, str],
    tmp_path: Path,
) -> None:
    host_of = _active_members(process_runtime, world, pool_scope, "h1", "h1", "h2")
    api, leases = _routed_api(make_app, process_runtime, world, tmp_path, {"affinity": "session"})

    def served(key: str) -> str:
        headers = {**bearer(world.key_a), AFFINITY: key}
        response = api.post("/v1/clients/a/activate", headers=headers)
        assert response.status_code == 200, response.text
        return str(response.json()["member_id"])

    # No lease is ended: from the second request on, the key's member is busy, and shared.
    sticky = [served("user-1") for _ in range(10)]
    elsewhere = {served(f"user-{i}") for i in range(2, 22)}

    assert len(set(sticky)) == 1 and sticky[0] in host_of
    assert len(elsewhere) > 1  # other keys land on other members
    assert leases.busy() <= set(host_of)
    assert len(process_runtime.list(pool_scope)) == 3  # shared, never cold-started


@pytest.mark.parametrize(
    ("key", "says"),
    [("k" * 129, "at most 128 characters"), ("tab\there", "should match pattern")],
)
def test_a_bad_affinity_key_is_422_naming_the_header(
    client: TestClient, world: World, process_runtime: ProcessRuntime, key: str, says: str
) -> None:
    response = client.post("/v1/clients/a/activate", headers={**bearer(world.key_a), AFFINITY: key})

    assert response.status_code == 422, response.text
    body = response.json()
    assert body["errors"][0]["field"] == f"header.{AFFINITY}" and says in body["detail"]
    assert key not in response.text  # never echoed
    assert process_runtime.list() == []  # nothing started
