"""The client API on a fleet: `POST /v1/clients/{id}/activate` unpauses a warm member on the
engine of the host it lives on (one over a unix socket, one over TLS) and answers with an
address this machine reaches; the activation is recorded with that host."""

from __future__ import annotations

import time
import uuid

import docker
import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.composite import client_composite
from provisioning.apply import release_all
from provisioning.reconciler import build_spec
from provisioning.runtime.base import probe_once
from provisioning.runtime.fleet import FleetRuntime
from provisioning.schema_render import render_container_config
from tests.api.conftest import POOL_LABEL, build_warehouse
from tests.api.helpers import bearer
from tests.conftest import remove_test_containers
from tests.fleet.conftest import ExtraEngine
from warehouse.db import connect, fetch_frame

pytestmark = pytest.mark.docker


def _state_on(engine: ExtraEngine, member_id: str) -> dict | None:
    """The member's container state on one engine, asked directly (None: not there)."""
    client = engine.client()
    try:
        return client.containers.get(member_id).attrs["State"]
    except docker.errors.NotFound:
        return None
    finally:
        client.close()


def test_the_api_activates_each_member_on_its_hosts_engine(
    extra_engines: list[ExtraEngine], tmp_path
) -> None:
    # node-2 listens on a unix socket, node-3 on tcp://127.0.0.1 with TLS.
    engines = {"node-2": extra_engines[1], "node-3": extra_engines[2]}
    fleet = FleetRuntime({host: e.engine(host) for host, e in engines.items()})
    scope = {POOL_LABEL: f"test-{uuid.uuid4().hex[:10]}"}
    world = build_warehouse(tmp_path / "warehouse.duckdb")
    try:
        config = render_container_config(client_composite(world.path, "a"))
        shadows = {
            host: fleet.create(build_spec("a", "shadow", host, config, "test-plan", scope)).id
            for host in engines
        }
        for host, member_id in shadows.items():
            assert _state_on(engines[host], member_id)["Paused"] is True

        api = TestClient(create_app(world.path, lambda: fleet, scope))
        answers = [api.post("/v1/clients/a/activate", headers=bearer(world.key_a)) for _ in engines]

        # Two warm members, two requests: each claims one (the first is busy, leased).
        assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
        bodies = {r.json()["member_id"]: r.json() for r in answers}
        assert set(bodies) == set(shadows.values())
        for host, member_id in shadows.items():
            state = _state_on(engines[host], member_id)
            assert state["Running"] is True and state["Paused"] is False
            other = next(e for h, e in engines.items() if h != host)
            assert _state_on(other, member_id) is None  # on its host's engine only
            assert bodies[member_id]["tier_before"] == "shadow"
            assert probe_once(bodies[member_id]["endpoint"], timeout_s=2.0)

        deadline = time.monotonic() + 5
        events = []
        while len(events) < 2 and time.monotonic() < deadline:
            with connect(world.path, read_only=True) as con:
                events = fetch_frame(
                    con, "SELECT member_id, host, ok FROM pool_events WHERE action = 'activate'"
                ).rows()
            time.sleep(0.05)
        assert sorted(events) == sorted((m, h, True) for h, m in shadows.items())
    finally:
        release_all(fleet, scope)
        for engine in engines.values():
            client = engine.client()
            remove_test_containers(client, scope)
            client.close()
        fleet.close()
