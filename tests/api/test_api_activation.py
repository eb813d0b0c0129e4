"""The HTTP API end to end, activation: warm members claimed and cold starts that answer
HTTP, on real runtimes (process, and Docker when a daemon answers), and the activation
failures (no runtime, an unavailable one, a failed cold start, conflicting extensions)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import docker
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from provisioning.runtime.base import (
    ActivationTimeout,
    ContainerRuntime,
    ContainerSpec,
    Member,
    RuntimeUnavailable,
    probe_once,
)
from provisioning.runtime.docker_runtime import DockerRuntime
from provisioning.runtime.process_runtime import ProcessRuntime
from tests.api.conftest import POOL_LABEL, World
from tests.api.helpers import bearer, shadow_member, wait_for_rows
from warehouse.db import connect, fetch_frame

# --- activation ---------------------------------------------------------------------------


def _answers(endpoint: str) -> bool:
    return probe_once(endpoint, timeout_s=2.0)


def _activation_rows(path: Path) -> tuple[list[dict], list[dict]]:
    with connect(path, read_only=True) as con:
        events = fetch_frame(con, "SELECT * FROM pool_events ORDER BY happened_at").to_dicts()
        members = fetch_frame(con, "SELECT * FROM pool_members ORDER BY created_at").to_dicts()
    return events, members


def test_activation_claims_the_shadow_then_cold_starts(
    client: TestClient,
    world: World,
    process_runtime: ProcessRuntime,
    pool_scope: dict[str, str],
) -> None:
    shadow_id = shadow_member(process_runtime, world.path, pool_scope)

    warm = client.post("/v1/clients/a/activate", headers=bearer(world.key_a))

    assert warm.status_code == 200, warm.text
    body = warm.json()
    assert body["member_id"] == shadow_id and body["tier_before"] == "shadow"
    assert body["activation_ms"] > 0 and _answers(body["endpoint"])

    cold = client.post("/v1/clients/a/activate", headers=bearer(world.key_a))

    assert cold.status_code == 409, cold.text
    fallback = cold.json()
    assert fallback["fallback"] == "cold-start" and "No warm member" in fallback["detail"]
    assert fallback["member_id"] != shadow_id and _answers(fallback["endpoint"])
    assert fallback["activation_ms"] > 0
    members = {m.id: m for m in process_runtime.list(pool_scope)}
    assert {m.tier for m in members.values()} == {"active"} and len(members) == 2
    # The cold-started member carries the pool scope (the reconciler sees it) and the
    # client's rendered config.
    started = members[fallback["member_id"]]
    assert started.labels[POOL_LABEL] == pool_scope[POOL_LABEL]
    assert started.details["cpu"] == 0.25 and started.details["memory_mb"] == 64

    assert wait_for_rows(world.path, "pool_events", 2) == 2
    events, rows = _activation_rows(world.path)
    assert [(e["member_id"], e["action"], e["ok"], e["reason"]) for e in events] == [
        (shadow_id, "activate", True, "request: from shadow"),
        (fallback["member_id"], "activate", True, "request: cold start (no warm member)"),
    ]
    assert [e["ms"] for e in events] == [body["activation_ms"], fallback["activation_ms"]]
    by_id = {row["member_id"]: row for row in rows}
    assert by_id[shadow_id]["tier"] == "active" and by_id[shadow_id]["activations"] == 1
    assert by_id[shadow_id]["last_activation_ms"] == body["activation_ms"]
    assert by_id[shadow_id]["host"] == "h1"
    assert by_id[fallback["member_id"]]["plan_id"] == "api-cold-start"
    assert by_id[fallback["member_id"]]["endpoint"] == fallback["endpoint"]


def test_activation_without_a_runtime_is_503(
    make_app: Callable[..., FastAPI], world: World
) -> None:
    client = TestClient(make_app(runtime=None))

    response = client.post("/v1/clients/a/activate", headers=bearer(world.key_a))

    assert response.status_code == 503
    assert "No container runtime is configured" in response.json()["detail"]


def test_an_unavailable_runtime_is_503_and_retried(world: World, pool_scope: dict) -> None:
    calls = []

    def factory() -> ContainerRuntime:
        calls.append(1)
        raise RuntimeUnavailable("no Docker daemon answers at unix:///var/run/docker.sock")

    client = TestClient(create_app(world.path, factory, pool_scope))
    first = client.post("/v1/clients/a/activate", headers=bearer(world.key_a))
    second = client.post("/v1/clients/a/activate", headers=bearer(world.key_a))

    assert (first.status_code, second.status_code) == (503, 503)
    assert first.headers["Retry-After"] == "5"
    assert "docker.sock" not in first.text  # internals stay in the log
    assert len(calls) == 2


class _NoStartingRuntime(ProcessRuntime):
    """A process runtime whose new members never answer (a broken image, say)."""

    def create(self, spec: ContainerSpec) -> Member:
        raise ActivationTimeout("http://127.0.0.1:1/health did not answer within 10.0 s")


def test_a_failed_cold_start_is_503_and_recorded(
    make_app: Callable[..., FastAPI], world: World, tmp_path: Path
) -> None:
    client = TestClient(make_app(_NoStartingRuntime(tmp_path / "pool.json")))

    response = client.post("/v1/clients/a/activate", headers=bearer(world.key_a))

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert "127.0.0.1" not in response.text
    assert wait_for_rows(world.path, "pool_events", 1) == 1
    events, members = _activation_rows(world.path)
    assert [(e["action"], e["ok"], e["reason"]) for e in events] == [
        ("activate", False, "request: failed")
    ]
    assert "ActivationTimeout" in events[0]["error"] and members == []


def test_conflicting_extensions_are_409_on_schema_and_503_on_activate(
    client: TestClient, world: World, process_runtime: ProcessRuntime
) -> None:
    with connect(world.path) as con:
        for name, ttl in (("short", 60), ("long", 3600)):
            document = {"name": name, "workload": {"cache": {"ttl_seconds": ttl}}}
            con.execute(
                "INSERT INTO client_schema_extensions VALUES ('b', ?, 0, ?::JSON, now())",
                [name, json.dumps(document)],
            )

    schema = client.get("/v1/clients/b/schema", headers=bearer(world.key_b))
    activation = client.post("/v1/clients/b/activate", headers=bearer(world.key_b))

    assert schema.status_code == 409
    assert "cache.ttl_seconds" in schema.json()["detail"] and "'long'" in schema.json()["detail"]
    assert activation.status_code == 503
    assert process_runtime.list() == []


@pytest.mark.docker
def test_activation_on_docker_leaves_the_container_running(
    make_app: Callable[..., FastAPI],
    world: World,
    docker_runtime: DockerRuntime,
    docker_client: docker.DockerClient,
    pool_scope: dict[str, str],
) -> None:
    client = TestClient(make_app(docker_runtime))
    shadow_id = shadow_member(docker_runtime, world.path, pool_scope)
    assert docker_client.containers.get(shadow_id).status == "paused"

    warm = client.post("/v1/clients/a/activate", headers=bearer(world.key_a))
    cold = client.post("/v1/clients/a/activate", headers=bearer(world.key_a))

    assert warm.status_code == 200, warm.text
    assert warm.json()["member_id"] == shadow_id and warm.json()["tier_before"] == "shadow"
    assert cold.status_code == 409, cold.text
    for body in (warm.json(), cold.json()):
        container = docker_client.containers.get(body["member_id"])
        assert container.status == "running"
        assert container.attrs["State"]["Paused"] is False
        assert container.labels[POOL_LABEL] == pool_scope[POOL_LABEL]
        assert _answers(body["endpoint"])
    assert wait_for_rows(world.path, "pool_events", 2) == 2
    assert not math.isnan(warm.json()["activation_ms"])
