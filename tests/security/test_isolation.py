"""Docker members are isolated from each other and from the host (issue 12), on real Docker.

Each test provisions real members with `DockerRuntime` and attacks from inside them with
`docker exec` (which runs as the member's user, with its capabilities: none), in Python:
the member's own interpreter is the one tool its image holds (no shell). Every member is
released through the runtime afterwards, so the members network goes with the last.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import docker
import pytest

from provisioning.runtime import docker_network, docker_runtime
from provisioning.runtime.base import LABEL_PLAN, ContainerSpec, Member, Tier, probe_once
from provisioning.runtime.docker_network import members_network, remove_unused_networks
from provisioning.runtime.docker_runtime import MEMBER_PIDS_LIMIT, DockerRuntime
from tests.conftest import TEST_PLAN_PREFIX, remove_test_containers

pytestmark = pytest.mark.docker

SpecMaker = Callable[..., ContainerSpec]


@pytest.fixture
def plan_id() -> str:
    return f"{TEST_PLAN_PREFIX}{uuid.uuid4().hex[:10]}"


@pytest.fixture
def runtime(
    docker_client: docker.DockerClient, worker_image: str, plan_id: str
) -> Iterator[DockerRuntime]:
    """A DockerRuntime whose members of this test's plan are all released afterwards."""
    runtime = DockerRuntime(docker_client)
    yield runtime
    for member in runtime.list({LABEL_PLAN: plan_id}):
        runtime.release(member.id)
    remove_test_containers(docker_client, {LABEL_PLAN: plan_id})
    remove_unused_networks(docker_client)


@pytest.fixture
def private_network(
    monkeypatch: pytest.MonkeyPatch, docker_client: docker.DockerClient
) -> Iterator[str]:
    """A members network of this test's own (same settings, its own name).

    Tests that remove the network or wait for it to go need to be its only user: on a
    daemon shared with another run, that run's members would hold `prewarm-members`.
    """
    name = f"prewarm-members-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(docker_network, "members_network", lambda reach="bridge": name)
    monkeypatch.setattr(docker_runtime, "members_network", lambda reach="bridge": name)
    yield name
    for network in docker_client.api.networks(names=[name]):
        for container in docker_client.api.containers(all=True, filters={"network": name}):
            docker_client.api.remove_container(container["Id"], force=True)
        docker_client.api.remove_network(network["Id"])


@pytest.fixture
def make_spec(plan_id: str, worker_image: str) -> SpecMaker:
    # Client ids unique to the test.
    suffix = plan_id[-6:]

    def make(client: str, tier: Tier = "active") -> ContainerSpec:
        return ContainerSpec(
            client_id=f"sec-{client}-{suffix}",
            plan_id=plan_id,
            tier=tier,
            image=worker_image,
            cpu=0.5,
            memory_mb=64,
        )

    return make


def _exec(
    client: docker.DockerClient, member: Member, script: str, detach: bool = False
) -> tuple[int, str]:
    """Run Python code inside a member, as the member runs (its user, no capabilities)."""
    container = client.containers.get(member.id)
    python = container.attrs["Config"]["Cmd"][0]  # the interpreter the worker runs on
    result = container.exec_run([python, "-I", "-S", "-c", script], detach=detach)
    return result.exit_code, (result.output or b"").decode(errors="replace")


def _ip(member: Member) -> str:
    assert member.endpoint is not None
    return member.endpoint.split("//")[1].split(":")[0]


def _health_over_tcp(target: Member) -> str:
    """A script that GETs the target's /health over TCP (2 s timeout)."""
    return (
        "import socket\n"
        f"peer = socket.create_connection(({_ip(target)!r}, 8080), timeout=2)\n"
        "peer.sendall(b'GET /health HTTP/1.0\\r\\n\\r\\n')\n"
        "print(peer.recv(200).decode())\n"
    )


def _pids(client: docker.DockerClient, member: Member) -> int:
    stats: dict[str, Any] = client.api.stats(member.id, stream=False)
    return int(stats["pids_stats"]["current"])


def test_no_member_reaches_another_and_the_host_reaches_every_one(
    runtime: DockerRuntime, docker_client: docker.DockerClient, make_spec: SpecMaker
) -> None:
    a1, a2 = runtime.create(make_spec("a")), runtime.create(make_spec("a"))
    b1 = runtime.create(make_spec("b"))

    # The control: the host (what activates and serves them) reaches each member.
    for member in (a1, a2, b1):
        assert probe_once(member.endpoint or "", 2.0), member.id
    # Not another client's member, and not even one of its own client (none needs to).
    for source, target in ((a1, b1), (b1, a1), (b1, a2), (a1, a2)):
        code, out = _exec(docker_client, source, _health_over_tcp(target))
        assert code != 0 and "200 OK" not in out, (source.client_id, target.client_id, out)

    modes = {
        docker_client.containers.get(m.id).attrs["HostConfig"]["NetworkMode"] for m in (a1, a2, b1)
    }
    # One network for every client: Docker's default pools hold only ~30 bridge networks.
    assert modes == {members_network()}
    attrs = docker_client.api.inspect_network(members_network())
    assert attrs["Internal"] is True  # no egress: the worker needs none
    assert attrs["Options"]["com.docker.network.bridge.enable_icc"] == "false"
    assert attrs["Labels"]["prewarm.managed"] == "1"


def test_members_of_more_clients_than_docker_has_address_pools(
    runtime: DockerRuntime, docker_client: docker.DockerClient, make_spec: SpecMaker
) -> None:
    """40 clients, one member each: more than the ~30 networks Docker's pools allow."""
    members = [runtime.create(make_spec(f"c{i}", "cold")) for i in range(40)]
    assert len({m.client_id for m in members}) == 40
    assert len(runtime.list({LABEL_PLAN: members[0].labels[LABEL_PLAN]})) == 40


def test_a_fork_bomb_is_capped_by_the_pids_limit_and_hurts_no_one_else(
    runtime: DockerRuntime, docker_client: docker.DockerClient, make_spec: SpecMaker
) -> None:
    bomber, neighbour = runtime.create(make_spec("bomb")), runtime.create(make_spec("quiet"))
    # Every process forks for ever, and keeps trying when the kernel refuses.
    bomb = "\n".join(
        [
            "import os, time",
            "while True:",
            "    try: os.fork()",
            "    except OSError: time.sleep(0.01)",
        ]
    )
    _exec(docker_client, bomber, bomb, detach=True)

    peak = 0
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        peak = max(peak, _pids(docker_client, bomber))
        if peak >= MEMBER_PIDS_LIMIT:
            break
    # It did fill its quota (so the cap, not a lazy bomb, is what stopped it) and, while it
    # keeps forking, never gets past it ...
    assert MEMBER_PIDS_LIMIT * 0.9 <= peak <= MEMBER_PIDS_LIMIT
    assert all(_pids(docker_client, bomber) <= MEMBER_PIDS_LIMIT for _ in range(3))
    # ... while the host forks as usual and the other client's member still answers.
    assert subprocess.run(["true"], check=False).returncode == 0
    assert probe_once(neighbour.endpoint or "", 2.0)

    runtime.release(bomber.id)
    assert bomber.id not in {m.id for m in runtime.list()}


def test_a_member_cannot_write_its_root_but_has_a_bounded_tmp(
    runtime: DockerRuntime, docker_client: docker.DockerClient, make_spec: SpecMaker
) -> None:
    member = runtime.create(make_spec("fs"))

    code, out = _exec(docker_client, member, "open('/pwned', 'w')")
    assert code != 0 and "Read-only file system" in out
    code, out = _exec(docker_client, member, "open('/opt/prewarm/worker/serve.py', 'a')")
    assert code != 0  # nor change the code it runs
    write = "open('/tmp/note', 'w').write('hello')\nprint(open('/tmp/note').read())"
    code, out = _exec(docker_client, member, write)
    assert (code, out.strip()) == (0, "hello")
    fill = "\n".join(
        ["with open('/tmp/big', 'wb') as big:", "    for _ in range(64): big.write(bytes(2**20))"]
    )
    code, out = _exec(docker_client, member, fill)
    assert code != 0 and "No space left" in out  # 16 MiB of tmpfs, not the host's disk


def test_a_member_runs_as_nobody_without_capabilities_or_new_privileges(
    runtime: DockerRuntime, docker_client: docker.DockerClient, make_spec: SpecMaker
) -> None:
    member = runtime.create(make_spec("caps"))

    code, out = _exec(docker_client, member, "import os\nprint(os.getuid(), os.getgid())")
    assert (code, out.split()) == (0, ["65534", "65534"])
    code, out = _exec(docker_client, member, "print(open('/proc/self/status').read())")
    status = dict(line.split(":\t", 1) for line in out.splitlines() if ":\t" in line)
    assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0
    assert status["NoNewPrivs"].strip() == "1"
    # The worker itself (pid 1), not only what exec starts, runs so.
    code, out = _exec(docker_client, member, "print(open('/proc/1/status').read())")
    assert "65534" in out and "0000000000000000" in out
    host_config = docker_client.containers.get(member.id).attrs["HostConfig"]
    assert host_config["ReadonlyRootfs"] is True
    assert host_config["PidsLimit"] == MEMBER_PIDS_LIMIT
    assert host_config["CapDrop"] == ["ALL"]
    assert host_config["SecurityOpt"] == ["no-new-privileges"]
    assert host_config["NanoCpus"] == 500_000_000 and host_config["Memory"] == 64 * 2**20


def test_activation_still_works_and_the_network_goes_with_the_last_member(
    runtime: DockerRuntime,
    docker_client: docker.DockerClient,
    make_spec: SpecMaker,
    private_network: str,
) -> None:
    shadow = runtime.create(make_spec("warm", "shadow"))
    cold = runtime.create(make_spec("warm", "cold"))
    network = private_network
    assert shadow.endpoint is not None and not probe_once(shadow.endpoint, 0.3)  # frozen

    active, elapsed_ms = runtime.activate(shadow.id)
    assert active.tier == "active" and 0 < elapsed_ms < 10_000
    assert probe_once(active.endpoint or "", 2.0)
    started, _ = runtime.activate(cold.id)
    assert started.tier == "active" and probe_once(started.endpoint or "", 2.0)

    runtime.release(shadow.id)
    assert docker_client.api.networks(names=[network])  # one member is still on it
    runtime.release(cold.id)
    assert not docker_client.api.networks(names=[network])  # gone with the last member
    runtime.release(cold.id)  # releasing again is still fine


def test_a_cold_member_starts_even_when_its_network_was_removed_meanwhile(
    runtime: DockerRuntime,
    docker_client: docker.DockerClient,
    make_spec: SpecMaker,
    private_network: str,
) -> None:
    # A created container does not hold its network: another prewarm releasing the last
    # running member removes it. Activation re-creates it.
    cold = runtime.create(make_spec("late", "cold"))
    docker_client.api.remove_network(private_network)

    member, _ = runtime.activate(cold.id)

    assert member.tier == "active" and probe_once(member.endpoint or "", 2.0)
    attrs = docker_client.api.inspect_network(private_network)
    assert attrs["Internal"] is True


def test_a_runtime_creates_on_a_network_another_prewarm_removed_since(
    runtime: DockerRuntime,
    docker_client: docker.DockerClient,
    make_spec: SpecMaker,
    private_network: str,
) -> None:
    first = runtime.create(make_spec("churn"))
    DockerRuntime(docker_client).release(first.id)  # another prewarm: the network goes too
    assert not docker_client.api.networks(names=[private_network])

    second = runtime.create(make_spec("churn"))  # this runtime still thinks it exists

    assert probe_once(second.endpoint or "", 2.0)
    assert docker_client.api.inspect_network(private_network)["Internal"]
