"""DockerRuntime: pool members as real Docker containers, tiered by container state.

active = running, shadow = paused (cgroup freezer: memory held, no CPU), cold = created but
never started (or exited). Docker labels are immutable, so the `prewarm.tier` label on a
container is its tier *at creation*; the current tier is always derived from the container
state (paused -> shadow, created/exited -> cold, running -> active) and that is what
`Member.tier`, `Member.labels["prewarm.tier"]` and `list(labels={"prewarm.tier": ...})` use
(`docker_facts.py` reads tiers and addresses off containers).

The host reaches a member over HTTP at its bridge IP (`http://<ip>:<port>`) by default,
on each port it declares (the worker listens on every one in its own network namespace):
measured here it is faster than a published port (no docker-proxy hop, no iptables rules
to add at start: cold create+start p50 ~250 ms vs ~330 ms) and equally reliable on a Linux
host. Where the bridge is not routable from the host (Docker Desktop, rootless Docker),
use `reach="published"`: each port is then published on 127.0.0.1 with a random host port.

Members are isolated from each other and from the host (issue 12) on one members network
without inter-container traffic (`docker_network.py` explains it and what it does not
cover). Every member runs read-only as nobody (65534:65534) with no capabilities,
`no-new-privileges`, a size-bounded `/tmp` and a pids limit, on top of the spec's CPU and
memory limits.
"""

from __future__ import annotations

import logging
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import docker
from docker.constants import DEFAULT_UNIX_SOCKET
from docker.errors import APIError, DockerException, NotFound
from docker.utils import kwargs_from_env

from provisioning.runtime.base import (
    LABEL_MANAGED,
    LABEL_TIER,
    ActivationTimeout,
    ContainerSpec,
    CpuMeter,
    Member,
    PendingRequest,
    PrewarmRuntimeError,
    RuntimeName,
    RuntimeUnavailable,
    matches_labels,
    safe_name_part,
    wait_until_answering,
)
from provisioning.runtime.docker_facts import (
    _DAEMON_DOWN_HINT,
    _Facts,
    _facts_from_inspect,
    _facts_from_summary,
    _is_not_paused,
    _member_from,
    _tier_of,
    _translate_errors,
)
from provisioning.runtime.docker_network import (
    Reach,
    _network_missing,
    drop_network_if_unused,
    ensure_network,
    members_network,
    own_network,
)

log = logging.getLogger(__name__)

# The smallest memory limit a member gets. The daemon refuses less than 6 MB, and the worker
# (a Python interpreter, ~9.5 MB resident once it serves) does not start under ~10 MB: a
# function that needs less (traces hold many of a few MB) still gets a worker that runs.
MEMBER_MIN_MEMORY_MB = 16
MEMBER_USER = "65534:65534"  # nobody: a member never runs as root, whatever its image says
MEMBER_PIDS_LIMIT = 128  # processes and threads per member: a fork bomb stops here
MEMBER_TMPFS = {"/tmp": "size=16m,mode=1777"}  # the only writable path (root is read-only)
# Non-root without capabilities may not bind ports under 1024 unless its network namespace
# says so; the sysctl is namespaced, so this changes nothing outside the member.
_MEMBER_SYSCTLS = {"net.ipv4.ip_unprivileged_port_start": "0"}


@dataclass(frozen=True)
class _Steps:
    """How an activation went; the instants are `time.perf_counter()` readings."""

    resume_ms: float  # duration of the start / unpause call
    resumed_at: float  # when that call returned
    answered_at: float  # when the first health answer arrived

    def timings_ms(self, started: float) -> dict[str, float]:
        return {
            "resume": self.resume_ms,
            "resume_returned": (self.resumed_at - started) * 1000.0,
            "first_answer": (self.answered_at - started) * 1000.0,
        }


def daemon_address() -> str:
    """Where `docker.from_env()` looks for the daemon (DOCKER_HOST, else the local socket)."""
    return str(kwargs_from_env().get("base_url") or DEFAULT_UNIX_SOCKET)


def _connect() -> docker.DockerClient:
    try:
        return docker.from_env()
    except DockerException as error:
        raise RuntimeUnavailable(
            f"no Docker daemon answers at {daemon_address()} ({error}); {_DAEMON_DOWN_HINT}"
        ) from error


class DockerRuntime:
    """ContainerRuntime over a Docker daemon (docker SDK, `docker.from_env()`)."""

    name: RuntimeName = "docker"

    def __init__(
        self,
        client: docker.DockerClient | None = None,
        *,
        reach: Reach = "bridge",
        health_timeout_s: float = 10.0,
        stop_timeout_s: int = 0,
    ) -> None:
        self.client = client or _connect()
        self._api = self.client.api
        self.reach = reach
        self.health_timeout_s = health_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self._cpu = CpuMeter()
        # Addresses of members last seen paused: activating a shadow then needs no inspect
        # round trip before the unpause (a paused container keeps its address).
        self._paused_endpoints: dict[str, str] = {}
        # Members networks this runtime created or found: a create then needs no extra call.
        self._networks: set[str] = set()

    # -- the ContainerRuntime interface ------------------------------------------------

    def create(self, spec: ContainerSpec) -> Member:
        """Create a container in `spec.tier`; cold ones are created but not started."""
        with _translate_errors():
            container_id = self._create_container(spec)
        try:
            with _translate_errors(container_id):
                if spec.tier != "cold":
                    self._start_healthy(container_id)
                if spec.tier == "shadow":
                    self._api.pause(container_id)
                member = self._member(container_id)
        except BaseException:
            # The caller never learns the id of a failed create: leave nothing behind (and
            # let the original error, not a failing cleanup, reach the caller).
            with suppress(PrewarmRuntimeError, DockerException):
                self.release(container_id)
            raise
        log.info(
            "created %s container %s for %s", spec.tier, member.details["name"], spec.client_id
        )
        return member

    def shadow(self, member_id: str) -> Member:
        """Pause a member, starting it first (and waiting for health) if it is cold."""
        with _translate_errors(member_id):
            status = self._inspect(member_id).status
            if _tier_of(status) == "cold":
                self._start_healthy(member_id)
            if status != "paused":
                self._api.pause(member_id)
            return self._member(member_id)

    def activate(self, member_id: str) -> tuple[Member, float]:
        """Unpause (shadow) or start (cold) a member; ms until /health first answers."""
        with _translate_errors(member_id):
            started = time.perf_counter()
            steps = self._unpause_known(member_id) or self._activate_inspected(member_id)
            timings = steps.timings_ms(started)
            member = self._member(member_id)
        elapsed = timings["first_answer"]
        log.info("activated %s in %.1f ms", member_id[:12], elapsed)
        return replace(member, details={**member.details, "timings_ms": timings}), elapsed

    def release(self, member_id: str) -> None:
        """Stop (SIGKILL unless `stop_timeout_s` > 0) and remove; a gone member is fine.

        The members network goes with the last member on it.
        """
        self._paused_endpoints.pop(member_id, None)
        self._cpu.forget(member_id)
        with _translate_errors():
            try:
                network = own_network(self._api.inspect_container(member_id))
                if self.stop_timeout_s > 0:
                    self._api.stop(member_id, timeout=self.stop_timeout_s)
                self._api.remove_container(member_id, force=True, v=True)
            except NotFound:
                return
            except APIError as error:
                # Two releases racing: the loser finds the removal already under way.
                if "already in progress" not in str(error):
                    raise
                return
            if network is not None:
                drop_network_if_unused(self._api, network, self._networks)
        log.info("released %s", member_id[:12])

    def list(self, labels: dict[str, str] | None = None) -> list[Member]:
        """Prewarm-managed containers whose labels (current tier included) match."""
        wanted = dict(labels or {})
        # The tier label holds the creation tier, so filter on it here, not in the daemon.
        daemon_filter = [f"{LABEL_MANAGED}=1"] + [
            f"{key}={value}" for key, value in wanted.items() if key != LABEL_TIER
        ]
        with _translate_errors():
            summaries = self._api.containers(all=True, filters={"label": daemon_filter})
        members = []
        for summary in summaries:
            if summary.get("State") in ("removing", "dead"):
                continue
            facts = _facts_from_summary(summary)
            self._remember(facts)
            members.append(_member_from(facts))
        return [m for m in members if matches_labels(m.labels, wanted)]

    def stats(self, member_id: str) -> dict[str, Any]:
        """One-shot Docker stats: CPU percent (100 = one core) and memory in MiB."""
        with _translate_errors(member_id):
            attrs = self._api.inspect_container(member_id)
            status = attrs["State"]["Status"]
            if status not in ("running", "paused"):
                return {"cpu_percent": 0.0, "memory_mb": 0.0, "tier": _tier_of(status)}
            # Docker 20.10 answers one-shot stats at its next 1 s collection tick.
            sample = self._api.stats(member_id, stream=False, one_shot=True)
        cpu_s = sample["cpu_stats"]["cpu_usage"]["total_usage"] / 1e9
        started_s = datetime.fromisoformat(attrs["State"]["StartedAt"]).timestamp()
        memory = sample.get("memory_stats") or {}
        # Like `docker stats`: page cache that can be reclaimed is not the member's memory.
        detail = memory.get("stats") or {}
        inactive = detail.get("total_inactive_file", detail.get("inactive_file", 0))  # v1, v2
        return {
            "cpu_percent": self._cpu.percent(member_id, cpu_s, time.time(), started_s),
            "memory_mb": max(0, memory.get("usage", 0) - inactive) / 2**20,
            "memory_limit_mb": memory.get("limit", 0) / 2**20,
            "cpu_seconds": cpu_s,
            "tier": _tier_of(status),
        }

    def close(self) -> None:
        """Close the client's connections to the daemon (members are left as they are)."""
        self.client.close()

    # -- container steps --------------------------------------------------------------

    def _create_container(self, spec: ContainerSpec) -> str:
        name = f"prewarm-{safe_name_part(spec.client_id)}-{uuid.uuid4().hex[:8]}"
        network = members_network(self.reach)
        published = self.reach == "published"
        # Images following the $PORT convention (ours does) listen on the spec's port.
        env = {"PORT": str(spec.port), **spec.env}
        host_config = self._api.create_host_config(
            nano_cpus=int(spec.cpu * 1e9),
            mem_limit=f"{max(spec.memory_mb, MEMBER_MIN_MEMORY_MB)}m",
            port_bindings={f"{port}/tcp": ("127.0.0.1", None) for port in spec.ports}
            if published
            else None,
            network_mode=network,
            pids_limit=MEMBER_PIDS_LIMIT,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            read_only=True,
            tmpfs=MEMBER_TMPFS,
            sysctls=_MEMBER_SYSCTLS,
        )
        kwargs = {
            "image": spec.image,
            "name": name,
            "environment": env,
            "labels": spec.member_labels(),
            "ports": spec.ports if published else None,
            "host_config": host_config,
            "user": MEMBER_USER,
            "detach": True,
        }
        ensure_network(self._api, self.reach, self._networks)
        try:
            created = self._api.create_container(**kwargs)
        except NotFound as error:
            # Another prewarm removed the network with its last member since we saw it.
            if not _network_missing(error):
                raise
            ensure_network(self._api, self.reach, self._networks, known=False)
            created = self._api.create_container(**kwargs)
        return str(created["Id"])

    def _start(self, container_id: str) -> None:
        """Start a container, re-creating its network if it was removed since creation.

        A created (cold) member does not hold its network: a release of the last running
        member may remove it. The daemon finds a re-created network by name.
        """
        try:
            self._api.start(container_id)
        except APIError as error:
            if not _network_missing(error):
                raise
            ensure_network(self._api, self.reach, self._networks, known=False)
            self._api.start(container_id)

    def _start_healthy(self, container_id: str) -> _Steps:
        """Start a container and wait until its health endpoint answers."""
        began = time.perf_counter()
        self._start(container_id)
        started = time.perf_counter()
        # The address exists only once started: one inspect, then poll (refusals are fast).
        self._await_health(container_id)
        return _Steps((started - began) * 1000.0, started, time.perf_counter())

    def _unpause(self, member_id: str, endpoint: str) -> _Steps:
        """Unpause with the health request already queued; answered as the member thaws."""
        pending = self._pending(endpoint)
        began = time.perf_counter()
        try:
            self._api.unpause(member_id)
        except BaseException:
            if pending is not None:
                pending.close()
            raise
        resumed = time.perf_counter()
        resume_ms = (resumed - began) * 1000.0
        if pending is not None and pending.answered_ok():
            return _Steps(resume_ms, resumed, time.perf_counter())
        # The address may be stale (restarted behind our back): look it up again.
        self._await_health(member_id)
        return _Steps(resume_ms, resumed, time.perf_counter())

    def _unpause_known(self, member_id: str) -> _Steps | None:
        """Fast path for a member last seen paused: no inspect before the unpause."""
        endpoint = self._paused_endpoints.get(member_id)
        if endpoint is None:
            return None
        try:
            return self._unpause(member_id, endpoint)
        except APIError as error:
            if _is_not_paused(error):
                return None  # changed behind our back: take the general path
            raise

    def _activate_inspected(self, member_id: str) -> _Steps:
        """General path: look the member up, then unpause, start or just probe it."""
        facts = self._inspect(member_id)
        if facts.status == "paused" and facts.endpoint is not None:
            return self._unpause(member_id, facts.endpoint)
        if _tier_of(facts.status) == "cold":
            return self._start_healthy(member_id)
        now = time.perf_counter()
        self._await_health(member_id)
        return _Steps(0.0, now, time.perf_counter())

    def _await_health(self, member_id: str) -> None:
        endpoint = self._inspect(member_id).endpoint
        if endpoint is None:
            raise ActivationTimeout(f"container {member_id[:12]} has no reachable address")
        wait_until_answering(endpoint, self.health_timeout_s)

    def _pending(self, endpoint: str) -> PendingRequest | None:
        # Sent before the unpause: the kernel queues it and the container answers as it
        # thaws, so the answer is already waiting when the API call returns. (Receiving it
        # on a thread would time the answer itself ~2 ms earlier, but starting a thread
        # costs the caller ~1.7 ms on a small VM: activate() would return later.)
        try:
            return PendingRequest(endpoint, self.health_timeout_s)
        except OSError:
            return None

    # -- views ------------------------------------------------------------------------

    def _inspect(self, container_id: str) -> _Facts:
        facts = _facts_from_inspect(self._api.inspect_container(container_id))
        self._remember(facts)
        return facts

    def _remember(self, facts: _Facts) -> None:
        if facts.endpoint is not None and facts.status == "paused":
            self._paused_endpoints[facts.id] = facts.endpoint
        else:
            self._paused_endpoints.pop(facts.id, None)

    def _member(self, container_id: str) -> Member:
        return _member_from(self._inspect(container_id))
