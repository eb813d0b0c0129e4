"""DockerRuntime on real containers: tiers as container states, labels, limits, activation,
release, restarts; plus the errors a user meets without a daemon, an image or a Python
to build one from.

Tests marked `docker` skip (saying why) only when no Docker daemon answers a ping.
"""

from __future__ import annotations

import io
import os
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import docker
import pytest
from docker.errors import NotFound

from provisioning.runtime import (
    ImageBuildError,
    ImageMissing,
    MemberNotFound,
    RuntimeUnavailable,
    select_runtime,
)
from provisioning.runtime.base import (
    LABEL_CLIENT,
    LABEL_MANAGED,
    LABEL_PLAN,
    LABEL_TIER,
    ContainerRuntime,
    ContainerSpec,
    probe_once,
)
from provisioning.runtime.docker_runtime import MEMBER_MIN_MEMORY_MB, DockerRuntime
from provisioning.runtime.image_rootfs import worker_rootfs
from provisioning.runtime.images import LABEL_DIGEST, build_image
from provisioning.runtime.process_runtime import ProcessRuntime

SpecMaker = Callable[..., ContainerSpec]


def _attrs(client: docker.DockerClient, member_id: str) -> dict:
    return client.containers.get(member_id).attrs


@pytest.mark.docker
def test_create_puts_each_tier_in_its_container_state_with_labels_and_limits(
    docker_runtime: DockerRuntime, docker_client: docker.DockerClient, make_spec: SpecMaker
) -> None:
    members = {
        tier: docker_runtime.create(make_spec(tier, labels={"team": "x"}, env={"GREETING": "hi"}))
        for tier in ("cold", "shadow", "active")
    }

    for tier, member in members.items():
        attrs = _attrs(docker_client, member.id)
        assert member.tier == tier and member.runtime == "docker"
        assert attrs["State"]["Status"] == {"cold": "created", "shadow": "paused"}.get(
            tier, "running"
        )
        assert attrs["Name"].startswith("/prewarm-acme-")
        labels = attrs["Config"]["Labels"]
        assert labels[LABEL_MANAGED] == "1" and labels[LABEL_CLIENT] == "acme"
        assert labels[LABEL_PLAN] == member.plan_id and labels[LABEL_TIER] == tier
        assert labels["team"] == "x"
        assert attrs["HostConfig"]["NanoCpus"] == 500_000_000
        assert attrs["HostConfig"]["Memory"] == 64 * 2**20
        assert {"GREETING=hi", "PORT=8080"} <= set(attrs["Config"]["Env"])
    assert members["cold"].endpoint is None
    assert probe_once(members["active"].endpoint, 2.0)
    assert isinstance(docker_runtime, ContainerRuntime)


@pytest.mark.docker
def test_paused_container_answers_only_once_activated(
    docker_runtime: DockerRuntime, docker_client: docker.DockerClient, make_spec: SpecMaker
) -> None:
    shadow = docker_runtime.create(make_spec("shadow"))
    assert shadow.endpoint is not None

    assert not probe_once(shadow.endpoint, timeout_s=0.3)  # frozen: connects, never answers

    member, ms = docker_runtime.activate(shadow.id)
    assert ms > 0
    assert member.tier == "active" and member.endpoint == shadow.endpoint
    assert _attrs(docker_client, shadow.id)["State"]["Status"] == "running"
    assert probe_once(member.endpoint, 2.0)
    assert member.details["timings_ms"]["first_answer"] == ms


@pytest.mark.docker
def test_activating_a_created_container_starts_it(
    docker_runtime: DockerRuntime, make_spec: SpecMaker
) -> None:
    cold = docker_runtime.create(make_spec("cold"))

    member, ms = docker_runtime.activate(cold.id)

    assert ms > 0 and member.tier == "active" and probe_once(member.endpoint, 2.0)
    assert member.details["timings_ms"]["resume"] > 0  # the start call


@pytest.mark.docker
def test_shadow_pauses_active_and_cold_members(
    docker_runtime: DockerRuntime, docker_client: docker.DockerClient, make_spec: SpecMaker
) -> None:
    active = docker_runtime.create(make_spec("active"))
    cold = docker_runtime.create(make_spec("cold"))

    for member in (docker_runtime.shadow(active.id), docker_runtime.shadow(cold.id)):
        assert member.tier == "shadow"
        assert _attrs(docker_client, member.id)["State"]["Status"] == "paused"


@pytest.mark.docker
def test_list_matches_labels_and_derives_the_tier_from_the_container_state(
    docker_runtime: DockerRuntime,
    docker_client: docker.DockerClient,
    make_spec: SpecMaker,
    plan_id: str,
) -> None:
    a = docker_runtime.create(make_spec("shadow", client_id="a", labels={"team": "x"}))
    b = docker_runtime.create(make_spec("cold", client_id="b"))
    docker_runtime.activate(a.id)

    assert {m.id for m in docker_runtime.list({LABEL_PLAN: plan_id})} == {a.id, b.id}
    assert [m.id for m in docker_runtime.list({LABEL_PLAN: plan_id, "team": "x"})] == [a.id]
    assert [m.id for m in docker_runtime.list({LABEL_PLAN: plan_id, LABEL_TIER: "active"})] == [
        a.id
    ]
    assert docker_runtime.list({LABEL_PLAN: plan_id, LABEL_TIER: "shadow"}) == []
    # The immutable Docker label still says how it was created.
    assert _attrs(docker_client, a.id)["Config"]["Labels"][LABEL_TIER] == "shadow"


@pytest.mark.docker
def test_release_removes_the_container_and_is_idempotent(
    docker_runtime: DockerRuntime,
    docker_client: docker.DockerClient,
    make_spec: SpecMaker,
    plan_id: str,
) -> None:
    members = [docker_runtime.create(make_spec(tier)) for tier in ("active", "shadow", "cold")]

    for member in members:
        docker_runtime.release(member.id)
    docker_runtime.release(members[0].id)

    for member in members:
        with pytest.raises(NotFound):
            docker_client.containers.get(member.id)
    assert docker_runtime.list({LABEL_PLAN: plan_id}) == []


@pytest.mark.docker
def test_a_new_runtime_finds_and_activates_existing_members(
    docker_runtime: DockerRuntime,
    docker_client: docker.DockerClient,
    make_spec: SpecMaker,
    plan_id: str,
) -> None:
    shadow = docker_runtime.create(make_spec("shadow"))
    restarted = DockerRuntime(docker_client)  # no cached addresses: the inspect path

    [found] = restarted.list({LABEL_PLAN: plan_id})
    member, ms = restarted.activate(shadow.id)

    assert (found.id, found.tier, found.endpoint) == (shadow.id, "shadow", shadow.endpoint)
    assert ms > 0 and member.tier == "active" and probe_once(member.endpoint, 2.0)


@pytest.mark.docker
def test_published_ports_reach_members_through_localhost(
    docker_client: docker.DockerClient, worker_image: str, make_spec: SpecMaker, plan_id: str
) -> None:
    runtime = DockerRuntime(docker_client, reach="published")
    try:
        shadow = runtime.create(make_spec("shadow"))
        member, ms = runtime.activate(shadow.id)

        assert shadow.endpoint is not None and shadow.endpoint.startswith("http://127.0.0.1:")
        assert ms > 0 and probe_once(member.endpoint, 2.0)
    finally:
        for member in runtime.list({LABEL_PLAN: plan_id}):
            runtime.release(member.id)


@pytest.mark.docker
def test_stats_report_cpu_and_memory_within_the_limit(
    docker_runtime: DockerRuntime, make_spec: SpecMaker
) -> None:
    active = docker_runtime.create(make_spec("active"))
    cold = docker_runtime.create(make_spec("cold"))

    stats = docker_runtime.stats(active.id)

    assert 0 < stats["memory_mb"] < 64 and stats["memory_limit_mb"] == 64
    assert stats["cpu_percent"] >= 0 and stats["tier"] == "active"
    assert docker_runtime.stats(cold.id)["memory_mb"] == 0.0


@pytest.mark.docker
def test_a_missing_image_says_how_to_build_it_and_leaves_nothing(
    docker_runtime: DockerRuntime, make_spec: SpecMaker, plan_id: str
) -> None:
    with pytest.raises(ImageMissing, match="prewarm images build"):
        docker_runtime.create(make_spec("active", image="prewarm/absent:latest"))
    assert docker_runtime.list({LABEL_PLAN: plan_id}) == []


@pytest.mark.docker
def test_unknown_members_raise_member_not_found(docker_runtime: DockerRuntime) -> None:
    for operation in (docker_runtime.activate, docker_runtime.shadow, docker_runtime.stats):
        with pytest.raises(MemberNotFound):
            operation("0" * 64)
    docker_runtime.release("0" * 64)  # releasing a gone member is fine


@pytest.mark.docker
def test_build_image_is_idempotent_and_serves_health(
    docker_client: docker.DockerClient, worker_image: str
) -> None:
    image = docker_client.images.get(worker_image)

    assert build_image(worker_image, client=docker_client) == image.id
    assert image.labels[LABEL_DIGEST]
    assert image.attrs["Config"]["User"] == "65534:65534"
    # This machine's interpreter, cut down to what the worker imports (no shell in it).
    interpreter = str(Path(sys.executable).resolve())
    assert image.attrs["Config"]["Cmd"][:4] == [interpreter, "-I", "-S", "/opt/prewarm/worker"]
    assert image.attrs["Size"] < 24 * 2**20


def test_the_rootfs_is_deterministic_and_holds_only_what_the_worker_needs() -> None:
    build = worker_rootfs.__wrapped__  # past the per-process cache: build it twice
    first, second = build(Path(sys.executable)), build(Path(sys.executable))

    assert first.tar == second.tar and first.command == second.command
    with tarfile.open(fileobj=io.BytesIO(first.tar)) as archive:
        names = set(archive.getnames())
    stdlib = Path(os.__file__).parent.relative_to("/")
    assert {f"{stdlib}/sqlite3/__init__.py", f"{stdlib}/http/server.py"} <= names
    assert "opt/prewarm/worker/__main__.py" in names
    assert not any(name.endswith(("/ssl.py", "/lzma.py", "busybox")) for name in names)
    assert not any("site-packages" in name for name in names)


def test_build_image_explains_a_missing_interpreter(tmp_path: Path) -> None:
    with pytest.raises(ImageBuildError, match="no Python interpreter"):
        worker_rootfs(tmp_path / "python3")


@pytest.mark.docker
def test_auto_selects_docker_when_the_daemon_answers(
    docker_client: docker.DockerClient, tmp_path: Path
) -> None:
    for kind in ("auto", "docker"):
        runtime = select_runtime(kind, tmp_path)  # type: ignore[arg-type]
        assert isinstance(runtime, DockerRuntime)
        runtime.close()


# -- without a daemon: these run everywhere -------------------------------------------


@pytest.fixture
def no_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point DOCKER_HOST at a socket nobody listens on."""
    host = f"unix://{tmp_path / 'absent.sock'}"
    monkeypatch.setenv("DOCKER_HOST", host)
    return host


def test_auto_falls_back_to_processes_and_docker_says_what_to_do(
    no_daemon: str, tmp_path: Path
) -> None:
    assert isinstance(select_runtime("auto", tmp_path), ProcessRuntime)
    with pytest.raises(RuntimeUnavailable, match="start it"):
        select_runtime("docker", tmp_path)


def test_a_daemon_lost_mid_flight_raises_runtime_unavailable(no_daemon: str) -> None:
    runtime = DockerRuntime(docker.DockerClient(base_url=no_daemon, version="1.41"))

    with pytest.raises(RuntimeUnavailable, match="process runtime"):
        runtime.list()
    runtime.close()


@pytest.mark.docker
def test_a_function_smaller_than_the_workers_minimum_gets_the_minimum(
    docker_runtime: DockerRuntime, docker_client: docker.DockerClient, make_spec: SpecMaker
) -> None:
    """Traces hold functions of a few MB; the worker's interpreter needs ~10 MB to start."""
    member = docker_runtime.create(make_spec("active", memory_mb=2))
    attrs = _attrs(docker_client, member.id)
    assert attrs["HostConfig"]["Memory"] == MEMBER_MIN_MEMORY_MB * 2**20
    assert probe_once(member.endpoint, 2.0)
