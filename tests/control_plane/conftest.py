"""A control plane on shared services, started once per session on this machine.

    PostgreSQL     a throwaway cluster of Debian's `postgresql` (initdb + pg_ctl, as the
                   `postgres` user when run as root: initdb refuses root), on a free port,
                   password auth over TCP; databases `mlflow` and `prefect`
    MLflow         `mlflow server` on the `mlflow` database, artifacts under a shared path
                   (`--artifacts-destination`, served to clients over HTTP)
    Prefect        `prefect server start` on the `prefect` database
    Dask           `dask scheduler` and `dask worker --nworkers 2`: two worker processes

Each is a real process of its own, started like an operator would (docs/SCALING.md), and
stopped, with everything under its root removed, at the end of the session, also when a test
fails. Without Debian's PostgreSQL the tests skip and say why (`.ci/run` installs it).
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from flows import stack
from flows.settings import child_environment

START_TIMEOUT_S = 180.0
ROOT_PREFIX = "prewarm-cp-"
USER = "prewarm"


class ControlPlaneUnavailable(Exception):
    """What this machine lacks to run the shared services (the tests skip with it)."""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def postgres_bindir() -> Path:
    """The newest installed PostgreSQL's binaries (Debian keeps them off PATH)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3])
    )
    if not found:
        raise ControlPlaneUnavailable(
            "no PostgreSQL server here (apt-get install -y postgresql; .ci/run does)"
        )
    return Path(found[-1]).parent


@dataclass
class Postgres:
    """A throwaway PostgreSQL cluster in `root`, listening on 127.0.0.1:`port`."""

    root: Path
    port: int = field(default_factory=_free_port)
    password: str = field(default_factory=lambda: secrets.token_hex(12))

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str, driver: str) -> str:
        return f"postgresql+{driver}://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def _run(self, *command: str) -> None:
        # initdb refuses to run as root: the cluster belongs to `postgres`, as Debian's does.
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        result = subprocess.run(
            [*prefix, *command],
            capture_output=True,
            text=True,
            timeout=120,
            env=child_environment(PGPASSWORD=self.password),
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed: {result.stderr or result.stdout}")

    def start(self, databases: tuple[str, ...]) -> None:
        bindir = postgres_bindir()
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        password_file = self.root / "password"
        password_file.write_text(self.password + "\n")
        if os.geteuid() == 0:
            shutil.chown(password_file, "postgres", "postgres")
        self._run(
            str(bindir / "initdb"),
            *("-D", str(self.data), "-U", USER, f"--pwfile={password_file}"),
            *("--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync"),
        )
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root}"
        self._run(
            str(bindir / "pg_ctl"),
            *("-D", str(self.data), "-l", str(self.root / "postgres.log")),
            *("-o", options, "-w", "-t", "60", "start"),
        )
        for database in databases:
            self._run(
                str(bindir / "createdb"),
                *("-h", "127.0.0.1", "-p", str(self.port), "-U", USER, database),
            )

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run(
                    str(postgres_bindir() / "pg_ctl"),
                    *("-D", str(self.data), "-m", "immediate", "-w", "stop"),
                )


@dataclass
class ControlPlane:
    """The running shared services and the settings that point prewarm at them."""

    root: Path
    postgres: Postgres
    prefect_api_url: str
    mlflow_url: str
    artifacts: Path
    dask_address: str

    def environment(self) -> dict[str, str]:
        """PREWARM_* settings of a prewarm using these services (services=external)."""
        return {
            "PREWARM_SERVICES": "external",
            "PREWARM_PREFECT_API_URL": self.prefect_api_url,
            "PREWARM_MLFLOW_TRACKING_URI": self.mlflow_url,
            "PREWARM_DASK_ADDRESS": self.dask_address,
        }


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def _services(root: Path, postgres: Postgres) -> tuple[list[stack.Service], ControlPlane]:
    """The MLflow, Prefect and Dask processes to start, and where they will answer."""
    logs = root / "logs"
    logs.mkdir()
    artifacts = root / "shared-artifacts"
    mlflow_port, prefect_port, dask_port = _free_port(), _free_port(), _free_port()
    # Nothing of the caller's Prefect or prewarm settings leaks into the servers.
    base = {
        k: v for k, v in child_environment().items() if not k.startswith(("PREFECT_", "PREWARM_"))
    }
    prefect_api = f"http://127.0.0.1:{prefect_port}/api"
    dask_address = f"tcp://127.0.0.1:{dask_port}"
    mlflow_url = f"http://127.0.0.1:{mlflow_port}"
    services = [
        stack.Service(
            "mlflow",
            [
                *(_bin("mlflow"), "server"),
                *("--backend-store-uri", postgres.url("mlflow", "psycopg")),
                *("--artifacts-destination", str(artifacts)),
                # One worker: with more, uvicorn hands each a pre-bound socket and loses
                # TCP_NODELAY (uvicorn#3149), so every kept-alive request waits ~40 ms.
                *("--host", "127.0.0.1", "--port", str(mlflow_port), "--workers", "1"),
            ],
            f"{mlflow_url}/health",
            logs / "mlflow.log",
            {**base, "MLFLOW_DISABLE_TELEMETRY": "true"},
        ),
        stack.Service(
            "prefect",
            [
                *(_bin("prefect"), "server", "start"),
                *("--host", "127.0.0.1", "--port", str(prefect_port)),
            ],
            f"{prefect_api}/health",
            logs / "prefect.log",
            {
                **base,
                "PREFECT_HOME": str(root / "prefect-home"),
                "PREFECT_API_DATABASE_CONNECTION_URL": postgres.url("prefect", "asyncpg"),
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_UI_API_URL": prefect_api,
            },
        ),
        stack.Service(
            "dask-scheduler",
            [
                *(_bin("dask"), "scheduler", "--no-dashboard"),
                *("--host", "127.0.0.1", "--port", str(dask_port)),
            ],
            "",
            logs / "dask-scheduler.log",
            base,
        ),
        stack.Service(
            "dask-workers",
            [
                *(_bin("dask"), "worker", dask_address, "--no-dashboard"),
                *("--nworkers", "2", "--nthreads", "1", "--local-directory", str(root / "dask")),
            ],
            "",
            logs / "dask-workers.log",
            # Training tasks report their runs to the shared Prefect server.
            {**base, "PREFECT_API_URL": prefect_api, "MLFLOW_DISABLE_TELEMETRY": "true"},
        ),
    ]
    plane = ControlPlane(root, postgres, prefect_api, mlflow_url, artifacts, dask_address)
    return services, plane


def _wait_for_dask_workers(address: str, workers: int, timeout_s: float) -> None:
    from distributed import Client

    with Client(address, timeout=timeout_s) as client:
        client.wait_for_workers(workers, timeout=timeout_s)


@contextlib.contextmanager
def started_control_plane() -> Iterator[ControlPlane]:
    """PostgreSQL, MLflow and Prefect on it, a Dask scheduler with two workers; all gone after."""
    postgres_bindir()  # the one thing this machine may lack: say so before starting anything
    sweep_abandoned()
    root = Path(tempfile.mkdtemp(prefix=ROOT_PREFIX))
    root.chmod(0o711)  # the `postgres` user reaches its cluster below it
    (root / "owner").write_text(str(os.getpid()))
    postgres = Postgres(root / "postgres")
    postgres.root.mkdir()
    services: list[stack.Service] = []
    try:
        postgres.start(databases=("mlflow", "prefect"))
        services, plane = _services(root, postgres)
        for service in services:  # started together: the servers migrate their databases
            stack.start(service)
            assert service.process is not None
            with (root / "groups").open("a") as groups:  # for sweep_abandoned
                groups.write(f"{service.process.pid}\n")
        for service in services:
            if service.health_url:
                problem = stack.wait_healthy(service, START_TIMEOUT_S)
                if problem:
                    raise RuntimeError(f"{problem}:\n{service.log_path.read_text()[-3000:]}")
        _wait_for_dask_workers(plane.dask_address, 2, START_TIMEOUT_S)
        yield plane
    finally:
        for service in reversed(services):
            stack.stop(service)
        postgres.stop()
        shutil.rmtree(root, ignore_errors=True)


def sweep_abandoned() -> None:
    """Stop what a session killed outright (SIGKILL: no `finally` ran) left running: every
    root whose owner process is gone loses its process groups, its cluster and its files."""
    for root in Path(tempfile.gettempdir()).glob(f"{ROOT_PREFIX}*"):
        try:
            owner = int((root / "owner").read_text())
        except (OSError, ValueError):
            continue
        if _alive(owner):
            continue
        groups = root / "groups"
        for pid in groups.read_text().split() if groups.exists() else []:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(pid), signal.SIGKILL)
        Postgres(root / "postgres").stop()
        shutil.rmtree(root, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    try:
        with started_control_plane() as plane:
            yield plane
    except ControlPlaneUnavailable as reason:
        pytest.skip(f"needs Debian's PostgreSQL: {reason}")
