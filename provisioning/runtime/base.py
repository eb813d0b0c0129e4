"""The container runtime contract: specs, members, the `ContainerRuntime` protocol, errors.

Every runtime (Docker containers, plain OS processes) speaks this one interface so the
planner and reconciler never know which one provisions the pool. The HTTP probing helpers
live here too because both runtimes define "active" the same way: the member's health
endpoint has answered.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, runtime_checkable
from urllib.parse import urlsplit

from core.errors import PrewarmError
from core.vocabulary import TIERS, TierName

Tier = TierName
RuntimeName = Literal["docker", "process"]

HEALTH_PATH = "/health"
# The handshake with a local member is done by the kernel in well under a millisecond, even
# while the member is frozen. A SYN that goes unanswered was dropped (a frozen server's
# accept queue is full: the worker's holds 128 connections) or the address is stale, and the
# kernel would retry only after a full second; give up quickly and let the caller poll.
CONNECT_TIMEOUT_S = 0.05
# A health answer is a status line, a few headers and a short body; past this much it is
# not one (and a server that never stops sending cannot keep the caller).
MAX_ANSWER_BYTES = 16384

# Labels carried by every prewarm-managed member. `prewarm.tier` on a Docker container is the
# tier at creation (Docker labels are immutable); runtimes report the *current* tier, derived
# from the member's state, in `Member.tier` and `Member.labels`.
LABEL_MANAGED = "prewarm.managed"
LABEL_CLIENT = "prewarm.client"
LABEL_PLAN = "prewarm.plan"
LABEL_TIER = "prewarm.tier"
LABEL_PORT = "prewarm.port"
LABEL_PORTS = "prewarm.ports"  # every declared port, the probed one first: "8080,9090"
# The rendered config's declared ports (`schema_render.py`), read by runtimes that must
# open or publish each of them.
PORTS_ENV = "PREWARM_PORTS"
LABEL_HOST = "prewarm.host"  # the planner's host for this member, set at create


class PrewarmRuntimeError(PrewarmError):
    """Base of every error a runtime raises on purpose."""


class RuntimeUnavailable(PrewarmRuntimeError):
    """The runtime's backend (the Docker daemon) does not answer."""


class ImageMissing(PrewarmRuntimeError):
    """The spec's image is not present locally (no registry is ever contacted)."""


class ImageBuildError(PrewarmRuntimeError):
    """The local worker image could not be built."""


class MemberNotFound(PrewarmRuntimeError, KeyError):
    """No prewarm-managed member has this id (it was released or never existed)."""

    def __str__(self) -> str:
        # KeyError would quote the message; keep it readable.
        return str(self.args[0]) if self.args else ""


class ActivationTimeout(PrewarmRuntimeError):
    """A member's health endpoint did not answer in time."""


@dataclass(frozen=True)
class ContainerSpec:
    """What to provision for one client: size, image, tier, and extra labels."""

    client_id: str
    plan_id: str
    tier: Tier
    image: str
    cpu: float
    memory_mb: int
    env: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    port: int = 8080

    def __post_init__(self) -> None:
        if self.tier not in TIERS:
            raise ValueError(f"tier must be one of {TIERS}, got {self.tier!r}")
        if self.cpu <= 0 or self.memory_mb <= 0:
            raise ValueError("cpu and memory_mb must be positive")

    @property
    def ports(self) -> list[int]:
        """Every port the member serves: `port` (the probed one) first."""
        return declared_ports(self.port, self.env)

    def member_labels(self) -> dict[str, str]:
        """The labels a member built from this spec carries (extras first, ours win)."""
        return {
            **self.labels,
            LABEL_MANAGED: "1",
            LABEL_CLIENT: self.client_id,
            LABEL_PLAN: self.plan_id,
            LABEL_TIER: self.tier,
            LABEL_PORT: str(self.port),
            LABEL_PORTS: ",".join(str(port) for port in self.ports),
        }


@dataclass(frozen=True)
class Member:
    """One provisioned pool member as its runtime sees it now."""

    id: str
    client_id: str
    plan_id: str
    tier: Tier
    runtime: RuntimeName
    endpoint: str | None
    created_at: datetime
    labels: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    # Declared port -> where it is reached (the first is `endpoint`); empty while cold.
    ports: dict[int, str] = field(default_factory=dict)

    @property
    def health_url(self) -> str | None:
        """The health endpoint's URL, or None while the member has no endpoint (cold)."""
        return f"{self.endpoint}{HEALTH_PATH}" if self.endpoint else None


@runtime_checkable
class ContainerRuntime(Protocol):
    """Provision, tier and release pool members; Docker and processes implement it."""

    name: RuntimeName

    def create(self, spec: ContainerSpec) -> Member:
        """Provision a member in `spec.tier` (cold: created; shadow: healthy then paused)."""
        ...

    def shadow(self, member_id: str) -> Member:
        """Bring a member to shadow: running and healthy, then frozen (memory kept)."""
        ...

    def activate(self, member_id: str) -> tuple[Member, float]:
        """Make a member active; return it and ms from the call to its first health answer."""
        ...

    def release(self, member_id: str) -> None:
        """Stop and remove a member; releasing a gone member is not an error."""
        ...

    def list(self, labels: dict[str, str] | None = None) -> list[Member]:
        """Prewarm-managed members whose labels equal every given label."""
        ...

    def stats(self, member_id: str) -> dict[str, Any]:
        """Current usage of one member: at least `cpu_percent` and `memory_mb`."""
        ...


@runtime_checkable
class LoopActivation(Protocol):
    """A runtime that can serve the usual warm activation on an asyncio event loop without
    ever blocking it (the process runtime); anything it cannot do so, it declines, and the
    caller makes the `ContainerRuntime` call in a thread."""

    def list_on_loop(self, labels: dict[str, str]) -> list[Member]:
        """`list` that waits for nothing: a member needing a call's lock to be caught up
        with its process is reported as a listing does while a call holds that lock."""
        ...

    async def activate_on_loop(self, member_id: str) -> tuple[Member, float] | None:
        """`activate` of a shadow, its health answer awaited on the loop; None, with
        nothing done, when that is not possible without waiting."""
        ...


def utc_now() -> datetime:
    """Timezone-aware now in UTC."""
    return datetime.now(UTC)


def matches_labels(member_labels: dict[str, str], wanted: dict[str, str] | None) -> bool:
    """True when every wanted label is present with an equal value."""
    return all(member_labels.get(key) == value for key, value in (wanted or {}).items())


def declared_ports(port: int, env: Mapping[str, str]) -> list[int]:
    """`port` first, then the other ports the member's rendered config declares."""
    listed = (text.strip() for text in env.get(PORTS_ENV, "").split(","))
    others = [int(text) for text in listed if text.isdigit()]
    return [port, *(other for other in others if other != port)]


def safe_name_part(text: str, max_len: int = 40) -> str:
    """Squash free text into characters Docker accepts in names (`[a-zA-Z0-9_.-]`)."""
    cleaned = re.sub(r"[^a-zA-Z0-9_.-]+", "-", text).strip("-.") or "client"
    return cleaned[:max_len]


def _split_endpoint(endpoint: str) -> tuple[str, int]:
    parts = urlsplit(endpoint)
    if parts.hostname is None or parts.port is None:
        raise ValueError(f"endpoint needs a host and a port: {endpoint!r}")
    return parts.hostname, parts.port


class PendingRequest:
    """A health request sent *before* resuming a frozen member, answered once it thaws.

    The kernel completes the TCP handshake and buffers the request while the server process
    is frozen, so sending first takes connect + send off the critical path of activation:
    the answer comes as soon as the server runs again. Spoken on a bare socket, not with
    `http.client`, whose response parsing (the `email` package) cost the caller ~0.2 ms of
    CPU an activation, holding the GIL that the API's other requests wait for.
    """

    def __init__(
        self,
        endpoint: str,
        timeout_s: float,
        path: str = HEALTH_PATH,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        host, port = _split_endpoint(endpoint)
        self._sock = socket.create_connection((host, port), min(connect_timeout_s, timeout_s))
        try:
            self._sock.settimeout(timeout_s)
            self._sock.sendall(health_request(host, port, path))
        except BaseException:
            self._sock.close()
            raise

    def answered_ok(self) -> bool:
        """Wait for the answer; True on HTTP 200, False on any error or other status."""
        try:
            return _answer_status(self._sock) == 200
        except OSError:
            return False
        finally:
            self._sock.close()

    def close(self) -> None:
        """Drop the request unanswered (the resume failed)."""
        self._sock.close()


def health_request(host: str, port: int, path: str = HEALTH_PATH) -> bytes:
    """The bytes of a GET that asks the server to close the connection once it answered."""
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"  # IPv6 bracketed
    return f"GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n".encode()


def _answer_status(sock: socket.socket) -> int | None:
    """The status code of the HTTP answer on `sock` (None: not one), read to its end: the
    request asked the server to close once it answered, so it never meets a closed socket."""
    answer = bytearray()
    while len(answer) <= MAX_ANSWER_BYTES and (chunk := sock.recv(MAX_ANSWER_BYTES)):
        answer += chunk
    return answer_status(bytes(answer))


def answer_status(answer: bytes) -> int | None:
    """The status code an HTTP answer starts with; None when it is not one."""
    status_line = answer.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/"):
        return None
    return int(status_line[1]) if status_line[1].isdigit() else None


def probe_once(endpoint: str, timeout_s: float, path: str = HEALTH_PATH) -> bool:
    """One GET of the health endpoint; True on HTTP 200 within the timeout."""
    try:
        return PendingRequest(endpoint, timeout_s, path).answered_ok()
    except OSError:
        return False


def wait_until_answering(
    endpoint: str,
    timeout_s: float = 10.0,
    poll_s: float = 0.002,
    path: str = HEALTH_PATH,
) -> None:
    """Poll the health endpoint until it answers 200; raise ActivationTimeout otherwise.

    Refused connections come back in microseconds, so a short poll interval costs little
    and keeps the measured activation close to the moment the server starts listening.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ActivationTimeout(
                f"{endpoint}{path} did not answer within {timeout_s:.1f} s; check the "
                "member's logs (docker logs <id>, or the process runtime's log file)"
            )
        if probe_once(endpoint, min(1.0, remaining), path):
            return
        time.sleep(poll_s)


def ms_since(started: float) -> float:
    """Milliseconds elapsed since a `time.perf_counter()` reading."""
    return (time.perf_counter() - started) * 1000.0


class CpuMeter:
    """Turns cumulative CPU seconds into a percentage of one core.

    Both Docker's one-shot stats and /proc give cumulative CPU time only. The percentage is
    over the interval since this meter's previous reading of the same member, or over the
    member's lifetime (since it started) on the first reading.
    """

    def __init__(self) -> None:
        self._last: dict[str, tuple[float, float]] = {}

    def percent(self, key: str, cpu_s: float, now_s: float, started_s: float) -> float:
        """CPU percent (100 = one full core) for `key` given cumulative CPU seconds."""
        prev_cpu, prev_now = self._last.get(key, (0.0, started_s))
        self._last[key] = (cpu_s, now_s)
        wall = now_s - prev_now
        if wall <= 0:
            return 0.0
        return max(0.0, (cpu_s - prev_cpu) / wall * 100.0)

    def forget(self, key: str) -> None:
        """Drop a released member's previous reading."""
        self._last.pop(key, None)
