"""Shared fixtures: an isolated data directory per test, one Prefect harness per session, and
one Docker client and worker image per session (skipping, saying why, only when no Docker
daemon answers a ping)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest

from provisioning.runtime.base import LABEL_MANAGED, LABEL_PLAN
from provisioning.runtime.docker_network import remove_unused_networks
from provisioning.runtime.images import WORKER_IMAGE, build_image
from provisioning.runtime.select import docker_unavailable_reason

FIXTURES = Path(__file__).parent / "fixtures"
TEST_PLAN_PREFIX = "test-"  # plan ids of test pools: cleanup never touches any other pool


@pytest.fixture(scope="session")
def prefect_harness() -> Iterator[None]:
    """A throwaway Prefect API for the whole session (starting one costs ~20 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """A Docker client, or a skip that says why no daemon could be used."""
    reason = docker_unavailable_reason(timeout_s=2.0)
    if reason is not None:
        pytest.skip(f"needs a Docker daemon: {reason}")
    client = docker.from_env()
    yield client
    remove_test_containers(client, {LABEL_MANAGED: "1"})  # belt and braces for the session
    client.close()


@pytest.fixture(scope="session")
def worker_image(docker_client: docker.DockerClient) -> str:
    """The locally built worker image (this machine's Python and the worker package)."""
    build_image(WORKER_IMAGE, client=docker_client)
    return WORKER_IMAGE


def remove_test_containers(client: docker.DockerClient, labels: dict[str, str]) -> None:
    """Force-remove test containers matching `labels` (plan ids starting with `test-`)."""
    wanted = [f"{key}={value}" for key, value in labels.items()]
    for container in client.containers.list(all=True, filters={"label": wanted}):
        if container.labels.get(LABEL_PLAN, "").startswith(TEST_PLAN_PREFIX):
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                container.remove(force=True)
    # Removed behind the runtime's back: the client networks it would have dropped stay.
    remove_unused_networks(client)


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every PREWARM_ path at a fresh temporary directory."""
    data = tmp_path / "data"
    monkeypatch.setenv("PREWARM_DATA_DIR", str(data))
    monkeypatch.setenv("PREWARM_MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("PREWARM_MLFLOW_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    return data


@pytest.fixture
def warehouse_path(data_dir: Path) -> Path:
    return data_dir / "warehouse.duckdb"


@pytest.fixture
def run_cli(
    prefect_harness: None,
    data_dir: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., tuple[int, str, str]]:
    """Run `prewarm ARGS...` in-process; return (exit code, stdout, stderr)."""
    from prefect.logging.configuration import setup_logging

    from flows.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["prewarm", *args])
        monkeypatch.setenv("COLUMNS", "200")
        code = 0
        # Prefect's console handler keeps the stream it was built with; rebuild it on this
        # test's captured stderr so run logs land in what the test reads.
        setup_logging(incremental=False)
        capsys.readouterr()
        try:
            main()
        except SystemExit as stop:
            code = int(stop.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run
