"""Runtime fixtures: a unique plan id per test, and runtimes whose teardown releases every
member labelled with it (even when the test failed), so no container or process outlives
a test. Docker fixtures skip, saying why, only when no Docker daemon answers a ping."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from provisioning.runtime.base import LABEL_PLAN, ContainerSpec, Tier
from provisioning.runtime.docker_runtime import DockerRuntime
from provisioning.runtime.images import WORKER_IMAGE
from provisioning.runtime.process_runtime import ProcessRuntime
from tests.conftest import TEST_PLAN_PREFIX, remove_test_containers


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


@pytest.fixture
def docker_runtime(
    docker_client: docker.DockerClient, worker_image: str, plan_id: str
) -> Iterator[DockerRuntime]:
    """A DockerRuntime; every container of this test's plan is removed afterwards."""
    yield DockerRuntime(docker_client)
    remove_test_containers(docker_client, {LABEL_PLAN: plan_id})
