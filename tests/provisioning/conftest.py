"""Runtime fixtures: a unique plan id per test, and runtimes whose teardown releases every
member labelled with it (even when the test failed), so no container or process outlives
a test. Docker fixtures skip, saying why, only when no Docker daemon answers a ping."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from provisioning.runtime.base import LABEL_MANAGED, LABEL_PLAN, ContainerSpec, Tier
from provisioning.runtime.docker_runtime import DockerRuntime
from provisioning.runtime.images import WORKER_IMAGE, build_image
from provisioning.runtime.process_runtime import ProcessRuntime
from provisioning.runtime.select import docker_unavailable_reason

TEST_PLAN_PREFIX = "test-"


@pytest.fixture
def plan_id() -> str:
    """A plan id no other test (or a real pool) shares: cleanup is scoped by it."""
    return f"{TEST_PLAN_PREFIX}{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_spec(plan_id: str) -> Callable[..., ContainerSpec]:
    """Build a small spec in this test's plan: `make_spec("shadow", client_id="b")`."""

    def make(tier: Tier = "active", **overrides: Any) -> ContainerSpec:
        fields: dict[str, Any] = {
            "client_id": "acme",
            "plan_id": plan_id,
            "tier": tier,
            "image": WORKER_IMAGE,
            "cpu": 0.5,
            "memory_mb": 64,
        }
        return ContainerSpec(**{**fields, **overrides})

    return make


@pytest.fixture
def process_state(tmp_path: Path) -> Path:
    return tmp_path / "data" / "process-pool.json"


@pytest.fixture
def process_runtime(process_state: Path, plan_id: str) -> Iterator[ProcessRuntime]:
    """A ProcessRuntime on a fresh state file; its plan's workers are released afterwards."""
    runtime = ProcessRuntime(process_state, grace_s=0.5)
    yield runtime
    # A fresh instance, like a restarted prewarm: it finds whatever the test left behind.
    cleaner = ProcessRuntime(process_state, grace_s=0.5)
    for member in cleaner.list({LABEL_PLAN: plan_id}):
        cleaner.release(member.id)


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """A Docker client, or a skip that says why no daemon could be used."""
    reason = docker_unavailable_reason(timeout_s=2.0)
    if reason is not None:
        pytest.skip(f"needs a Docker daemon: {reason}")
    client = docker.from_env()
    yield client
    _remove_test_containers(client, {LABEL_MANAGED: "1"})  # belt and braces for the session
    client.close()


@pytest.fixture(scope="session")
def worker_image(docker_client: docker.DockerClient) -> str:
    """The locally built busybox worker image (fails, not skips, without busybox-static)."""
    build_image(WORKER_IMAGE, client=docker_client)
    return WORKER_IMAGE


@pytest.fixture
def docker_runtime(
    docker_client: docker.DockerClient, worker_image: str, plan_id: str
) -> Iterator[DockerRuntime]:
    """A DockerRuntime; every container of this test's plan is removed afterwards."""
    yield DockerRuntime(docker_client)
    _remove_test_containers(docker_client, {LABEL_PLAN: plan_id})


def _remove_test_containers(client: docker.DockerClient, labels: dict[str, str]) -> None:
    """Force-remove test containers matching `labels` (plan ids starting with `test-`)."""
    wanted = [f"{key}={value}" for key, value in labels.items()]
    for container in client.containers.list(all=True, filters={"label": wanted}):
        if container.labels.get(LABEL_PLAN, "").startswith(TEST_PLAN_PREFIX):
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                container.remove(force=True)
