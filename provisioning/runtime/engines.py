"""The Docker Engines of a fleet: one per inventory host, how to reach it, what it has.

A host's `engine` (inventory) is `unix:///path.sock`, `tcp://host:port` (with TLS when the
inventory names CA, certificate and key) or `ssh://user@host`; a host without one uses this
machine's engine (`DOCKER_HOST` or the default socket). Probing asks an engine `docker info`
(NCPU, MemTotal) within a short timeout: an engine that does not answer is down for the
cycle, and the planner places nothing on it. The capacity planned on a host is the lower of
the file's and the engine's, less the file's reserve: the file may lower what an engine
offers, never raise it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import docker
import polars as pl
from docker.constants import MINIMUM_DOCKER_API_VERSION
from docker.errors import DockerException
from docker.tls import TLSConfig
from requests.exceptions import RequestException

from core.times import utc_now

MIB = 1024 * 1024
PROBE_TIMEOUT_S = 3.0  # an engine slower than this to say `info` is down for the cycle


@dataclass(frozen=True)
class Engine:
    """Where a host's members live: its engine's address (None: this machine's) and TLS."""

    host: str
    address: str | None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    @property
    def label(self) -> str:
        """The address for messages (the local engine says so)."""
        return self.address or "the local engine"


@dataclass(frozen=True)
class HostProbe:
    """One engine's answer: healthy with its capacity, or down with the reason."""

    host: str
    healthy: bool
    cpu_cores: float | None
    memory_mb: float | None
    error: str | None
    checked_at: datetime


HOST_STATUS_SCHEMA: dict[str, pl.DataType] = {
    "host": pl.String(),
    "healthy": pl.Boolean(),
    "engine_cpu_cores": pl.Float64(),
    "engine_memory_mb": pl.Float64(),
    "cpu_cores": pl.Float64(),
    "memory_mb": pl.Float64(),
    "error": pl.String(),
    "checked_at": pl.Datetime("us"),
}


def engines_of(inventory: pl.DataFrame) -> dict[str, Engine]:
    """Each inventory host's engine (hosts without the engine columns: the local one)."""
    engines = {}
    for row in inventory.iter_rows(named=True):
        engines[row["host"]] = Engine(
            row["host"],
            row.get("engine"),
            row.get("tls_ca"),
            row.get("tls_cert"),
            row.get("tls_key"),
        )
    return engines


def has_remote_engines(inventory: pl.DataFrame) -> bool:
    """Whether any host names an engine of its own (else the pool is one local engine)."""
    return "engine" in inventory.columns and inventory.get_column("engine").is_not_null().any()


def engine_client(engine: Engine, timeout_s: float = 60.0) -> docker.DockerClient:
    """A Docker client for `engine` (raises DockerException when it cannot be made)."""
    if engine.address is None:
        return docker.from_env(timeout=int(timeout_s))
    if engine.tls_ca and engine.tls_cert and engine.tls_key:
        return _tls_client(engine, timeout_s)
    return docker.DockerClient(
        base_url=engine.address,
        timeout=int(timeout_s),
        use_ssh_client=engine.address.startswith("ssh://"),
    )


def _tls_client(engine: Engine, timeout_s: float) -> docker.DockerClient:
    """A client that verifies the engine against the inventory's CA, and only that CA.

    requests lets `REQUESTS_CA_BUNDLE`/`CURL_CA_BUNDLE` override a session's CA on every
    request unless the session ignores the environment, which can only be set once the
    client exists, after docker-py's first request (the API version). So the version is
    asked by a client that ignores the environment, and the real client is built at it.
    """
    assert engine.address and engine.tls_ca and engine.tls_cert and engine.tls_key
    tls = TLSConfig((engine.tls_cert, engine.tls_key), ca_cert=engine.tls_ca, verify=True)

    def client_at(version: str) -> docker.DockerClient:
        client = docker.DockerClient(
            base_url=engine.address, tls=tls, timeout=int(timeout_s), version=version
        )
        client.api.trust_env = False
        return client

    bootstrap = client_at(MINIMUM_DOCKER_API_VERSION)
    try:
        version = str(bootstrap.version()["ApiVersion"])
    finally:
        bootstrap.close()
    return client_at(version)


def probe(engine: Engine, timeout_s: float = PROBE_TIMEOUT_S) -> HostProbe:
    """Ask the engine for its CPUs and memory; a failure of any kind is `healthy=False`."""
    checked_at = utc_now()
    try:
        client = engine_client(engine, timeout_s)
        try:
            info = client.info()
        finally:
            client.close()
    except (DockerException, RequestException, OSError) as error:
        reason = f"{engine.label} did not answer: {type(error).__name__}: {error}"
        return HostProbe(engine.host, False, None, None, reason[:500], checked_at)
    cpus, memory = info.get("NCPU"), info.get("MemTotal")
    if not cpus or not memory:
        reason = f"{engine.label} reported no NCPU/MemTotal"
        return HostProbe(engine.host, False, None, None, reason, checked_at)
    return HostProbe(engine.host, True, float(cpus), float(memory) / MIB, None, checked_at)


def host_status(inventory: pl.DataFrame, probes: dict[str, HostProbe]) -> pl.DataFrame:
    """Per host: healthy, what its engine reports, and the capacity the planner may use
    (min(file, engine) - reserve, never below zero). A host without a probe keeps the
    file's capacity less its reserve (the process runtime has no engines to ask)."""
    rows = []
    for row in inventory.iter_rows(named=True):
        found = probes.get(row["host"])
        reserve_cpu = row.get("reserve_cpu_cores") or 0.0
        reserve_memory = row.get("reserve_memory_mb") or 0.0
        cpu, memory = row["cpu_cores"], row["memory_mb"]
        if found is not None and found.healthy:
            cpu = min(cpu, found.cpu_cores or cpu)
            memory = min(memory, found.memory_mb or memory)
        healthy = found is None or found.healthy
        rows.append(
            {
                "host": row["host"],
                "healthy": healthy,
                "engine_cpu_cores": found.cpu_cores if found else None,
                "engine_memory_mb": found.memory_mb if found else None,
                "cpu_cores": max(0.0, cpu - reserve_cpu) if healthy else None,
                "memory_mb": max(0.0, memory - reserve_memory) if healthy else None,
                "error": found.error if found else None,
                "checked_at": found.checked_at if found else utc_now(),
            }
        )
    return pl.DataFrame(rows, schema=HOST_STATUS_SCHEMA, orient="row")


def plannable(inventory: pl.DataFrame, status: pl.DataFrame) -> pl.DataFrame:
    """The inventory the planner may use: healthy hosts with at least some capacity left,
    their cpu and memory replaced by what `status` allows."""
    usable = status.filter(
        pl.col("healthy") & (pl.col("cpu_cores") > 0) & (pl.col("memory_mb") > 0)
    ).select("host", "cpu_cores", "memory_mb")
    return (
        inventory.drop("cpu_cores", "memory_mb")
        .join(usable, on="host", how="inner", maintain_order="left")
        .select(inventory.columns)
    )
