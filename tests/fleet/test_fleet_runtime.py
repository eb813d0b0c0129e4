"""FleetRuntime on real engines: three extra dockerds on this machine (two unix sockets, one
TLS over tcp://127.0.0.1) as three hosts. Members land on their host's engine and nowhere
else, answer from here once activated, are listed with their host; an engine stopped is
skipped and named, a create on it refused, and its members are listed again on its return."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from provisioning.runtime.base import (
    LABEL_HOST,
    LABEL_MANAGED,
    LABEL_PLAN,
    ContainerRuntime,
    ContainerSpec,
    Member,
    MemberNotFound,
    RuntimeUnavailable,
    Tier,
    probe_once,
)
from provisioning.runtime.engines import Engine, engine_client, probe
from provisioning.runtime.fleet import FleetRuntime
from provisioning.runtime.images import WORKER_IMAGE
from tests.conftest import remove_test_containers
from tests.fleet.conftest import ExtraEngine

pytestmark = pytest.mark.docker

PLAN = "test-fleet"
HOSTS = ("node-1", "node-2", "node-3")


def _spec(host: str, tier: Tier = "shadow", client: str = "fleet-client") -> ContainerSpec:
    return ContainerSpec(client, PLAN, tier, WORKER_IMAGE, 0.1, 32, labels={LABEL_HOST: host})


def _engines(extra: list[ExtraEngine]) -> dict[str, Engine]:
    return {host: e.engine(host) for host, e in zip(HOSTS, extra, strict=True)}


def _ids_on(engine: ExtraEngine) -> set[str]:
    client = engine.client()
    try:
        found = client.api.containers(all=True, filters={"label": [f"{LABEL_PLAN}={PLAN}"]})
        return {c["Id"] for c in found}
    finally:
        client.close()


@pytest.fixture(scope="module")
def fleet(extra_engines: list[ExtraEngine]) -> Iterator[FleetRuntime]:
    runtime = FleetRuntime(_engines(extra_engines))
    yield runtime
    for engine in extra_engines:  # whatever a failed test left behind
        client = engine.client()
        remove_test_containers(client, {LABEL_MANAGED: "1"})
        client.close()
    runtime.close()


@pytest.fixture(scope="module")
def placed(fleet: FleetRuntime) -> dict[str, Member]:
    """One shadow member per host (created healthy, then paused, on its host's engine)."""
    return {host: fleet.create(_spec(host)) for host in HOSTS}


def test_a_fleet_is_a_container_runtime() -> None:
    runtime: ContainerRuntime = FleetRuntime({})
    assert isinstance(runtime, ContainerRuntime) and runtime.name == "docker"


def test_members_live_on_their_hosts_engine_only(
    extra_engines: list[ExtraEngine], placed: dict[str, Member]
) -> None:
    for host, engine in zip(HOSTS, extra_engines, strict=True):
        member = placed[host]
        assert member.tier == "shadow"
        assert member.labels[LABEL_HOST] == host and member.details["host"] == host
        assert member.details["engine"] == engine.address
        others = [e for e in extra_engines if e is not engine]
        assert member.id in _ids_on(engine)
        assert all(member.id not in _ids_on(other) for other in others)
        # Reached on that engine's members network (its own address pool).
        assert member.endpoint is not None and f"//{engine.pool}." in member.endpoint


def test_an_activated_member_answers_from_here_on_every_engine(
    fleet: FleetRuntime, placed: dict[str, Member]
) -> None:
    for host in HOSTS:
        member, elapsed = fleet.activate(placed[host].id)
        assert member.tier == "active" and elapsed > 0
        assert member.endpoint is not None and probe_once(member.endpoint, 2.0)
        assert fleet.stats(member.id)["tier"] == "active"
        assert fleet.shadow(member.id).tier == "shadow"


def test_list_is_the_union_with_each_members_host(
    fleet: FleetRuntime, placed: dict[str, Member]
) -> None:
    listed = {m.id: m for m in fleet.list({LABEL_PLAN: PLAN})}
    assert set(listed) == {m.id for m in placed.values()}
    for host, member in placed.items():
        assert listed[member.id].details["host"] == host == listed[member.id].labels[LABEL_HOST]
    assert fleet.down == {}


def test_calls_by_id_find_the_engine_without_memory(
    extra_engines: list[ExtraEngine], placed: dict[str, Member]
) -> None:
    fresh = FleetRuntime(_engines(extra_engines))
    try:
        cold = fresh.create(_spec("node-3", "cold", "fleet-other"))
        other = FleetRuntime(_engines(extra_engines))
        try:
            assert other.stats(placed["node-2"].id)["tier"] == "shadow"
            other.release(cold.id)  # looked up by listing, then removed from node-3's engine
            other.release(cold.id)  # gone: not an error
            with pytest.raises(MemberNotFound):
                other.activate(cold.id)
        finally:
            other.close()
        assert cold.id not in _ids_on(extra_engines[2])
    finally:
        fresh.close()


def test_an_engine_down_is_skipped_named_and_adopted_on_return(
    extra_engines: list[ExtraEngine],
    fleet: FleetRuntime,
    placed: dict[str, Member],
    caplog: pytest.LogCaptureFixture,
) -> None:
    stopped = extra_engines[1]
    stopped.stop()
    try:
        with caplog.at_level(logging.WARNING, logger="provisioning.runtime.fleet"):
            listed = {m.id for m in fleet.list({LABEL_PLAN: PLAN})}
            fleet.list({LABEL_PLAN: PLAN})  # still down: no second warning
        assert listed == {placed["node-1"].id, placed["node-3"].id}
        assert set(fleet.down) == {"node-2"} and stopped.address in fleet.down["node-2"]
        warnings = [r.getMessage() for r in caplog.records if "engine down" in r.getMessage()]
        assert len(warnings) == 1 and "node-2" in warnings[0]
        with pytest.raises(RuntimeUnavailable, match="node-2") as refused:
            fleet.create(_spec("node-2"))
        assert stopped.address in str(refused.value)
        with pytest.raises(RuntimeUnavailable, match="node-2"):
            fleet.activate(placed["node-2"].id)
        # A runtime that never saw the member cannot tell it is gone: it may be on node-2.
        fresh = FleetRuntime(_engines(extra_engines))
        with pytest.raises(RuntimeUnavailable, match="down: host node-2"):
            fresh.activate(placed["node-2"].id)
        fresh.close()
    finally:
        stopped.start()
    # Back: its member is still there (stopped with its engine: cold now) and listed again.
    back = {m.id: m for m in fleet.list({LABEL_PLAN: PLAN})}
    assert set(back) == {m.id for m in placed.values()}
    assert back[placed["node-2"].id].details["host"] == "node-2"
    assert fleet.down == {}
    member, _ = fleet.activate(placed["node-2"].id)
    assert member.endpoint is not None and probe_once(member.endpoint, 2.0)


def test_only_every_engine_down_fails_a_list(extra_engines: list[ExtraEngine]) -> None:
    gone = {"a": Engine("a", "unix:///nonexistent/a.sock"), "b": Engine("b", "unix:///no/b")}
    runtime = FleetRuntime(gone, timeout_s=2.0)
    with pytest.raises(RuntimeUnavailable, match="no engine of the fleet answers"):
        runtime.list()
    assert set(runtime.down) == {"a", "b"}
    mixed = FleetRuntime({**gone, "node-1": extra_engines[0].engine("node-1")})
    try:
        assert all(m.details["host"] == "node-1" for m in mixed.list({LABEL_PLAN: PLAN}))
        assert set(mixed.down) == {"a", "b"}
    finally:
        mixed.close()


def test_a_tls_engine_is_reached_and_probed_with_the_inventorys_ca(
    extra_engines: list[ExtraEngine],
) -> None:
    engine = extra_engines[2].engine("node-3")
    client = engine_client(engine, timeout_s=5.0)
    try:
        assert client.ping()
    finally:
        client.close()
    found = probe(engine)
    assert found.healthy and found.cpu_cores is not None and found.cpu_cores >= 1
