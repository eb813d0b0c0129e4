"""API fixtures: a small real warehouse (clients a and b, a profile and an extension for a,
a key each), apps over it, and runtimes whose members are released afterwards.

Every runtime fixture scopes its pool by a unique label (`prewarm.pool: test-<uuid>`), so
the finalizers release exactly what the test created, even when it failed, and nothing
else on the machine (or the Docker daemon) is touched.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import docker
import polars as pl
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import create_app
from provisioning.apply import release_all
from provisioning.runtime.base import ContainerRuntime
from provisioning.runtime.docker_runtime import DockerRuntime
from provisioning.runtime.process_runtime import ProcessRuntime
from warehouse.api_keys import issue_key
from warehouse.db import connect
from warehouse.predictions import record_latest_runs

POOL_LABEL = "prewarm.pool"
# Latest prediction run of `a`: two windows, the earlier one drives `anticipated`.
GENERATED_AT = datetime(2024, 5, 1, 12, 0)
EARLIER_RUN = GENERATED_AT - timedelta(hours=1)
WINDOW_1 = (datetime(2024, 5, 1, 13, 0), datetime(2024, 5, 1, 14, 30))
WINDOW_2 = (datetime(2024, 5, 1, 18, 0), datetime(2024, 5, 1, 19, 0))
BIG_CACHE = {"name": "big-cache", "precedence": 10, "workload": {"cache": {"ttl_seconds": 600}}}


@dataclass(frozen=True)
class World:
    """The test warehouse and the keys issued in it."""

    path: Path
    key_a: str
    key_b: str


RESOURCE_CONFIDENCE = {
    "requests": 0.7,
    "concurrency": 0.75,
    "cpu_cores": 0.6,
    "memory_mb": 0.9,
    "net_mbps": None,
    "io_ops": 0.4,
}


def _profile_row(generated_at: datetime, window: tuple[datetime, datetime], scale: float) -> list:
    start, end = window
    return [
        "a",
        generated_at,
        generated_at,
        start,
        end,
        (end - start).total_seconds() / 60,
        100 * scale,
        150 * scale,  # requests p50, p90
        2.0 * scale,
        3.4 * scale,  # concurrency
        0.5 * scale,
        0.8 * scale,  # cpu_cores
        256 * scale,
        300 * scale,  # memory_mb
        None,
        None,  # net_mbps: not forecast
        10 * scale,
        20 * scale,  # io_ops
        0.9,
        0.75,
        "lightgbm-quantile",
        "7",
        *RESOURCE_CONFIDENCE.values(),  # requests .. io_ops (net_mbps: none, not forecast)
    ]


def build_warehouse(path: Path) -> World:
    """Clients a (sized, one extension, two profile runs) and b (bare), a key each."""
    with connect(path) as con:
        con.execute(
            "INSERT INTO clients (client_id, tier, region, service, container_cpu,"
            " container_memory_mb, freq_seconds, source) VALUES"
            " ('a', 'premium', 'eu', 'api', 0.25, 64, 300, 'test'),"
            " ('b', 'free', 'us', 'batch', NULL, NULL, 300, 'test')"
        )
        rows = [
            _profile_row(EARLIER_RUN, WINDOW_1, 10.0),  # superseded: must not be served
            _profile_row(GENERATED_AT, WINDOW_2, 2.0),
            _profile_row(GENERATED_AT, WINDOW_1, 1.0),
        ]
        con.executemany(f"INSERT INTO profiles VALUES ({', '.join('?' * 28)})", rows)
        runs = pl.DataFrame(
            {"client_id": [r[0] for r in rows], "generated_at": [r[1] for r in rows]}
        )
        record_latest_runs(con, [runs])
        con.execute(
            "INSERT INTO client_schema_extensions VALUES ('a', ?, 10, ?::JSON, ?)",
            [BIG_CACHE["name"], json.dumps(BIG_CACHE), GENERATED_AT],
        )
    return World(path, issue_key(path, "a", False), issue_key(path, "b", False))


@pytest.fixture(scope="session")
def template_world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """Built once (migrations and key hashing take a while); tests get copies."""
    return build_warehouse(tmp_path_factory.mktemp("template") / "warehouse.duckdb")


@pytest.fixture
def world(template_world: World, tmp_path: Path) -> World:
    """A private copy of the test warehouse (same keys), free to change."""
    path = tmp_path / "warehouse.duckdb"
    shutil.copyfile(template_world.path, path)
    return replace(template_world, path=path)


@pytest.fixture
def pool_scope() -> dict[str, str]:
    """A pool label no other test (or real pool) shares."""
    return {POOL_LABEL: f"test-{uuid.uuid4().hex[:10]}"}


@pytest.fixture
def process_runtime(tmp_path: Path, pool_scope: dict[str, str]) -> Iterator[ProcessRuntime]:
    """A ProcessRuntime on a fresh state file; every member in the pool is released after."""
    state = tmp_path / "process-pool.json"
    runtime = ProcessRuntime(state, grace_s=0.5)
    yield runtime
    release_all(ProcessRuntime(state, grace_s=0.5), pool_scope)


@pytest.fixture
def make_app(world: World, pool_scope: dict[str, str]) -> Callable[..., FastAPI]:
    """`make_app(runtime=..., **create_app_kwargs)` over the test warehouse."""

    def make(runtime: ContainerRuntime | None = None, **kwargs: Any) -> FastAPI:
        factory = (lambda: runtime) if runtime is not None else None
        return create_app(world.path, factory, pool_scope, **kwargs)

    return make


@pytest.fixture
def client(make_app: Callable[..., FastAPI], process_runtime: ProcessRuntime) -> TestClient:
    """A client of the app with a process runtime (nothing is spawned until activation)."""
    return TestClient(make_app(process_runtime))


@pytest.fixture
def docker_runtime(
    docker_client: docker.DockerClient, worker_image: str, pool_scope: dict[str, str]
) -> Iterator[DockerRuntime]:
    """A DockerRuntime with the worker image built; this test's containers removed after."""
    runtime = DockerRuntime(docker_client)
    yield runtime
    release_all(runtime, pool_scope)
    label = f"{POOL_LABEL}={pool_scope[POOL_LABEL]}"
    for container in docker_client.containers.list(all=True, filters={"label": [label]}):
        with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
            container.remove(force=True)
