"""What the Docker runtime reads off a container: its tier, its address, the member it is.

A member's tier is always derived from the container state (paused -> shadow,
created/exited -> cold, running -> active), never read from its `prewarm.tier` label: Docker
labels are immutable, so that label holds the tier *at creation*.

A member's endpoint is its published port on 127.0.0.1 when it has one (`reach="published"`),
else `http://<bridge ip>:<port>`; a container without either (cold) has none. Every other
port it declares (`prewarm.ports`) is reached the same way, in `Member.ports`.

The member view (`_member_from`) carries the current tier in `Member.tier` and in its
`prewarm.tier` label, the creation tier in `details["created_tier"]`. The Docker errors a
user can act on (image absent, member gone, daemon lost) become prewarm's own exception
types here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from docker.errors import APIError, ImageNotFound, NotFound
from requests.exceptions import ConnectionError as RequestsConnectionError

from provisioning.runtime.base import (
    LABEL_CLIENT,
    LABEL_PLAN,
    LABEL_PORT,
    LABEL_PORTS,
    LABEL_TIER,
    ImageMissing,
    Member,
    MemberNotFound,
    RuntimeUnavailable,
    Tier,
)

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
    ports: dict[int, str]  # declared port -> endpoint


def _container_ports(labels: dict[str, str]) -> list[int]:
    """The declared ports, the probed one first (members older than `prewarm.ports`: one)."""
    listed = labels.get(LABEL_PORTS)
    if listed:
        return [int(port) for port in listed.split(",")]
    return [int(labels.get(LABEL_PORT, "8080"))]


def _endpoints(labels: dict[str, str], published: dict[int, str], ip: str | None) -> dict[int, str]:
    """Declared port -> its published port on 127.0.0.1, else the bridge address."""
    endpoints = {}
    for port in _container_ports(labels):
        if port in published:
            endpoints[port] = f"http://127.0.0.1:{published[port]}"
        elif ip:
            endpoints[port] = f"http://{ip}:{port}"
    return endpoints


def _bridge_ip(networks: dict[str, Any] | None) -> str | None:
    for network in (networks or {}).values():
        if network and network.get("IPAddress"):
            return str(network["IPAddress"])
    return None


def _facts_from_inspect(attrs: dict[str, Any]) -> _Facts:
    labels = attrs["Config"].get("Labels") or {}
    settings = attrs.get("NetworkSettings") or {}
    published = {
        int(key.split("/")[0]): bindings[0]["HostPort"]
        for key, bindings in (settings.get("Ports") or {}).items()
        if key.endswith("/tcp") and bindings
    }
    ports = _endpoints(labels, published, _bridge_ip(settings.get("Networks")))
    return _Facts(
        id=attrs["Id"],
        name=attrs["Name"].lstrip("/"),
        status=attrs["State"]["Status"],
        labels=labels,
        created_at=datetime.fromisoformat(attrs["Created"]),
        endpoint=ports.get(_container_ports(labels)[0]),
        image=attrs["Config"].get("Image", ""),
        ports=ports,
    )


def _facts_from_summary(summary: dict[str, Any]) -> _Facts:
    labels = summary.get("Labels") or {}
    published = {
        int(p["PrivatePort"]): p["PublicPort"]
        for p in summary.get("Ports") or []
        if p.get("PublicPort") and p.get("Type", "tcp") == "tcp"
    }
    ip = _bridge_ip((summary.get("NetworkSettings") or {}).get("Networks"))
    ports = _endpoints(labels, published, ip)
    return _Facts(
        id=summary["Id"],
        name=(summary.get("Names") or ["/"])[0].lstrip("/"),
        status=summary["State"],
        labels=labels,
        created_at=datetime.fromtimestamp(summary["Created"], UTC),
        endpoint=ports.get(_container_ports(labels)[0]),
        image=summary.get("Image", ""),
        ports=ports,
    )


def _member_from(facts: _Facts) -> Member:
    """The member a container is: its tier from its state, its labels with that tier."""
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
        ports=facts.ports if tier != "cold" else {},
        details={
            "name": facts.name,
            "status": facts.status,
            "image": facts.image,
            "created_tier": facts.labels.get(LABEL_TIER),
        },
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
