"""Pick the container runtime: Docker when its daemon answers, else local processes.

`auto` lets a laptop or CI runner without Docker still exercise the whole pool lifecycle;
asking for `docker` explicitly fails loudly instead of silently falling back.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import docker
from docker.errors import DockerException
from requests.exceptions import RequestException

from provisioning.runtime.base import ContainerRuntime
from provisioning.runtime.docker_runtime import DockerRuntime, daemon_address
from provisioning.runtime.process_runtime import ProcessRuntime

log = logging.getLogger(__name__)

RuntimeKind = Literal["auto", "docker", "process"]
PROCESS_STATE_FILE = "process-pool.json"


def docker_available(timeout_s: float = 1.0) -> bool:
    """True when a Docker daemon (as configured by DOCKER_HOST & co.) answers a ping."""
    return docker_unavailable_reason(timeout_s) is None


def docker_unavailable_reason(timeout_s: float = 1.0) -> str | None:
    """Why no Docker daemon answered a ping within `timeout_s`, or None when one did."""
    address = daemon_address()
    try:
        # Constructing the client already asks the daemon for its API version.
        client = docker.from_env(timeout=timeout_s)
    except DockerException as error:
        return f"no Docker daemon answered at {address} within {timeout_s:g} s ({error})"
    try:
        client.ping()
        return None
    except (DockerException, RequestException) as error:
        return f"the Docker daemon at {address} did not answer a ping ({error})"
    finally:
        client.close()


def select_runtime(kind: RuntimeKind, state_dir: Path) -> ContainerRuntime:
    """The runtime for `kind`; process-runtime state lives in `state_dir`/process-pool.json."""
    if kind not in ("auto", "docker", "process"):
        raise ValueError(f"runtime kind must be auto, docker or process, got {kind!r}")
    if kind == "docker":
        return DockerRuntime()
    if kind == "auto":
        reason = docker_unavailable_reason()
        if reason is None:
            log.info("runtime: docker (the daemon answered)")
            return DockerRuntime()
        log.info("runtime: process (%s)", reason)
    return ProcessRuntime(Path(state_dir) / PROCESS_STATE_FILE)
