"""DockerRuntime: pool members as real Docker containers, tiered by container state.

active = running, shadow = paused (cgroup freezer: memory held, no CPU), cold = created but
never started (or exited). Docker labels are immutable, so the `prewarm.tier` label on a
container is its tier *at creation*; the current tier is always derived from the container
state (paused -> shadow, created/exited -> cold, running -> active) and that is what
`Member.tier`, `Member.labels["prewarm.tier"]` and `list(labels={"prewarm.tier": ...})` use.

The host reaches a member over HTTP at its bridge IP (`http://<ip>:<port>`) by default:
measured here it is faster than a published port (no docker-proxy hop, no iptables rules
to add at start: cold create+start p50 ~250 ms vs ~330 ms) and equally reliable on a Linux
host. Where the bridge is not routable from the host (Docker Desktop, rootless Docker),
use `reach="published"`: the port is then published on 127.0.0.1 with a random host port.

Members are isolated from each other and from the host (issue 12): every member is on one
bridge network (`prewarm-members`, labelled `prewarm.managed=1`, created on demand, removed
with the last member) with inter-container traffic disabled (`enable_icc=false`): no member
reaches any other, of its client or another's, while the host reaches each at its address.
With bridge reach the network is also `internal` (no route out: the worker needs no
egress); published ports need a non-internal network, so `reach="published"` uses
`prewarm-members-pub`. One network, not one per client: Docker's default address pools
hold about 30 bridge networks, a host holds members of hundreds of clients. Every member
runs read-only as nobody (65534:65534) with no capabilities, `no-new-privileges`, a
size-bounded `/tmp` and a pids limit, on top of the spec's CPU and memory limits.

Not covered by Docker: an internal network still routes to its gateway, the host itself, so
a member can open connections to host services listening on all interfaces (0.0.0.0). The
member bridge is named `pwm-<hash>`; on a shared host, drop what members start there:
`iptables -I INPUT -i pwm-+ -m conntrack --ctstate NEW -j DROP` (the host's own probes and
activations are connections *it* starts, so they keep working).
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Literal

import docker
from docker.constants import DEFAULT_UNIX_SOCKET
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.utils import kwargs_from_env
from requests.exceptions import ConnectionError as RequestsConnectionError

from provisioning.runtime.base import (
    LABEL_CLIENT,
    LABEL_MANAGED,
    LABEL_PLAN,
    LABEL_PORT,
    LABEL_TIER,
    ActivationTimeout,
    ContainerSpec,
    CpuMeter,
    ImageMissing,
    Member,
    MemberNotFound,
    PendingRequest,
    PrewarmRuntimeError,
    RuntimeName,
    RuntimeUnavailable,
    Tier,
    matches_labels,
    safe_name_part,
    wait_until_answering,
)

log = logging.getLogger(__name__)

DOCKER_MIN_MEMORY_MB = 6  # the smallest memory limit the Docker daemon accepts
MEMBER_USER = "65534:65534"  # nobody: a member never runs as root, whatever its image says
MEMBER_PIDS_LIMIT = 128  # processes and threads per member: a fork bomb stops here
MEMBER_TMPFS = {"/tmp": "size=16m,mode=1777"}  # the only writable path (root is read-only)
# Non-root without capabilities may not bind ports under 1024 unless its network namespace
# says so; the sysctl is namespaced, so this changes nothing outside the member.
_MEMBER_SYSCTLS = {"net.ipv4.ip_unprivileged_port_start": "0"}
BRIDGE_PREFIX = "pwm-"

Reach = Literal["bridge", "published"]
_TIER_BY_STATUS: dict[str, Tier] = {"paused": "shadow", "running": "active", "restarting": "active"}
_HTTP_CONFLICT = 409
_DAEMON_DOWN_HINT = (
    "start it (`sudo systemctl start docker`, or `dockerd > /tmp/dockerd.log 2>&1 &` as root) "
    "or use the process runtime instead"
)


@dataclass(frozen=True)
class _Facts:
    """What we need from either `docker inspect` or a `docker ps` summary."""

    id: str
    name: str
    status: str
    labels: dict[str, str]
    created_at: datetime
    endpoint: str | None
    image: str


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


def _container_port(labels: dict[str, str]) -> int:
    return int(labels.get(LABEL_PORT, "8080"))


def _bridge_ip(networks: dict[str, Any] | None) -> str | None:
    for network in (networks or {}).values():
        if network and network.get("IPAddress"):
            return str(network["IPAddress"])
    return None


def _facts_from_inspect(attrs: dict[str, Any]) -> _Facts:
    labels = attrs["Config"].get("Labels") or {}
    port = _container_port(labels)
    settings = attrs.get("NetworkSettings") or {}
    bindings = (settings.get("Ports") or {}).get(f"{port}/tcp") or []
    endpoint: str | None
    if bindings:
        endpoint = f"http://127.0.0.1:{bindings[0]['HostPort']}"
    else:
        ip = _bridge_ip(settings.get("Networks"))
        endpoint = f"http://{ip}:{port}" if ip else None
    return _Facts(
        id=attrs["Id"],
        name=attrs["Name"].lstrip("/"),
        status=attrs["State"]["Status"],
        labels=labels,
        created_at=datetime.fromisoformat(attrs["Created"]),
        endpoint=endpoint,
        image=attrs["Config"].get("Image", ""),
    )


def _facts_from_summary(summary: dict[str, Any]) -> _Facts:
    labels = summary.get("Labels") or {}
    port = _container_port(labels)
    published = [
        p
        for p in summary.get("Ports") or []
        if p.get("PrivatePort") == port and p.get("PublicPort")
    ]
    if published:
        endpoint: str | None = f"http://127.0.0.1:{published[0]['PublicPort']}"
    else:
        ip = _bridge_ip((summary.get("NetworkSettings") or {}).get("Networks"))
        endpoint = f"http://{ip}:{port}" if ip else None
    return _Facts(
        id=summary["Id"],
        name=(summary.get("Names") or ["/"])[0].lstrip("/"),
        status=summary["State"],
        labels=labels,
        created_at=datetime.fromtimestamp(summary["Created"], UTC),
        endpoint=endpoint,
        image=summary.get("Image", ""),
    )


def _is_not_paused(error: APIError) -> bool:
    # Newer daemons answer 409 Conflict; 20.10 answers 500 with this message.
    return error.status_code == _HTTP_CONFLICT or "is not paused" in str(error.explanation)


def _tier_of(status: str) -> Tier:
    return _TIER_BY_STATUS.get(status, "cold")


@contextmanager
def _translate_errors(member_id: str | None = None) -> Iterator[None]:
    """Turn the Docker errors a user can act on into prewarm's own exception types."""
    try:
        yield
    except ImageNotFound as error:
        raise ImageMissing(
            f"{error.explanation or error}: images are never pulled; build the worker image "
            "with `prewarm images build` (provisioning.runtime.images.build_image)"
        ) from error
    except NotFound as error:
        if member_id is None:
            raise
        raise MemberNotFound(f"no Docker member {member_id!r} (released?)") from error
    except RequestsConnectionError as error:
        raise RuntimeUnavailable(
            f"lost the Docker daemon ({error}); {_DAEMON_DOWN_HINT}"
        ) from error


def members_network(reach: Reach = "bridge") -> str:
    """The network every member is on (`-pub` for published reach: it needs egress)."""
    return "prewarm-members" + ("-pub" if reach == "published" else "")


def bridge_name(network: str) -> str:
    """The host interface of a members network: `pwm-` and a hash (Linux allows 15 chars).

    One prefix for every member bridge lets the operator firewall them with one rule (see
    the module docstring).
    """
    return f"{BRIDGE_PREFIX}{hashlib.sha256(network.encode()).hexdigest()[:11]}"


def _network_missing(error: APIError) -> bool:
    return "network" in str(error.explanation or error) and "not found" in str(
        error.explanation or error
    )


def remove_unused_networks(client: docker.DockerClient) -> list[str]:
    """Remove every prewarm-managed network no container is on; return their names.

    `DockerRuntime.release` drops the members network with its last member; this sweeps the
    ones left when members were removed some other way (`docker rm -f`, a test's cleanup).
    """
    removed = []
    for network in client.api.networks(filters={"label": f"{LABEL_MANAGED}=1"}):
        name = network["Name"]
        if client.api.containers(all=True, filters={"network": name}):
            continue
        with suppress(NotFound, APIError):  # gone, or a member arrived since we looked
            client.api.remove_network(network["Id"])
            removed.append(name)
    return removed


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
                network = self._own_network(self._api.inspect_container(member_id))
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
                self._drop_network_if_unused(network)
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
            members.append(self._member_from(facts))
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
        port_key = f"{spec.port}/tcp"
        network = members_network(self.reach)
        # Images following the $PORT convention (ours does) listen on the spec's port.
        env = {"PORT": str(spec.port), **spec.env}
        host_config = self._api.create_host_config(
            nano_cpus=int(spec.cpu * 1e9),
            # The daemon refuses a limit under its minimum: a tiny function gets the minimum.
            mem_limit=f"{max(spec.memory_mb, DOCKER_MIN_MEMORY_MB)}m",
            port_bindings={port_key: ("127.0.0.1", None)} if self.reach == "published" else None,
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
            "ports": [spec.port] if self.reach == "published" else None,
            "host_config": host_config,
            "user": MEMBER_USER,
            "detach": True,
        }
        self._ensure_network()
        try:
            created = self._api.create_container(**kwargs)
        except NotFound as error:
            # Another prewarm removed the network with its last member since we saw it.
            if not _network_missing(error):
                raise
            self._ensure_network(known=False)
            created = self._api.create_container(**kwargs)
        return str(created["Id"])

    def _ensure_network(self, known: bool = True) -> None:
        """Create the members network unless this runtime already saw it (idempotent)."""
        name = members_network(self.reach)
        if known and name in self._networks:
            return
        try:
            # check_duplicate: two prewarms creating it at once get one network, not two.
            self._api.create_network(
                name,
                driver="bridge",
                internal=self.reach == "bridge",
                labels={LABEL_MANAGED: "1"},
                check_duplicate=True,
                options={
                    "com.docker.network.bridge.name": bridge_name(name),
                    # No member reaches another; the host still reaches every member.
                    "com.docker.network.bridge.enable_icc": "false",
                },
            )
            log.info("created network %s", name)
        except APIError as error:
            if error.status_code != _HTTP_CONFLICT and "already exists" not in str(error):
                raise
        self._networks.add(name)

    @staticmethod
    def _own_network(attrs: dict[str, Any]) -> str | None:
        """The members network a container was created on, if it is one of ours."""
        mode = attrs["HostConfig"].get("NetworkMode")
        if mode not in {members_network("bridge"), members_network("published")}:
            return None  # an older member on the default bridge: that network is not ours
        return str(mode)

    def _drop_network_if_unused(self, name: str) -> None:
        """Remove the members network once no container (created ones too) is on it."""
        self._networks.discard(name)
        if self._api.containers(all=True, filters={"network": name}):
            return
        try:
            self._api.remove_network(name)
            log.info("removed network %s: no member left on it", name)
        except APIError as error:
            # Gone already, or a member started on it since we looked: it stays, and its
            # last release removes it.
            log.debug("kept network %s: %s", name, error.explanation or error)

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
            self._ensure_network(known=False)
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
        return self._member_from(self._inspect(container_id))

    def _member_from(self, facts: _Facts) -> Member:
        tier = _tier_of(facts.status)
        return Member(
            id=facts.id,
            client_id=facts.labels.get(LABEL_CLIENT, ""),
            plan_id=facts.labels.get(LABEL_PLAN, ""),
            tier=tier,
            runtime="docker",
            endpoint=facts.endpoint if tier != "cold" else None,
            created_at=facts.created_at,
            labels={**facts.labels, LABEL_TIER: tier},
            details={
                "name": facts.name,
                "status": facts.status,
                "image": facts.image,
                "created_tier": facts.labels.get(LABEL_TIER),
            },
        )
