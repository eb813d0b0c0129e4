"""The members network of the Docker runtime: named, created on demand, dropped when unused.

Members are isolated from each other and from the host (issue 12): every member is on one
bridge network (`prewarm-members`, labelled `prewarm.managed=1`, created on demand, removed
with the last member) with inter-container traffic disabled (`enable_icc=false`): no member
reaches any other, of its client or another's, while the host reaches each at its address.
With bridge reach the network is also `internal` (no route out: the worker needs no
egress); published ports need a non-internal network, so `reach="published"` uses
`prewarm-members-pub`. One network, not one per client: Docker's default address pools
hold about 30 bridge networks, a host holds members of hundreds of clients.

Not covered by Docker: an internal network still routes to its gateway, the host itself, so
a member can open connections to host services listening on all interfaces (0.0.0.0). The
member bridge is named `pwm-<hash>`; on a shared host, drop what members start there:
`iptables -I INPUT -i pwm-+ -m conntrack --ctstate NEW -j DROP` (the host's own probes and
activations are connections *it* starts, so they keep working).
"""

from __future__ import annotations

import hashlib
import logging
from contextlib import suppress
from typing import Any, Literal

import docker
from docker.errors import APIError, NotFound

from provisioning.runtime.base import LABEL_MANAGED
from provisioning.runtime.docker_facts import _HTTP_CONFLICT

# Logs as the Docker runtime, the name its network records have always carried.
log = logging.getLogger("provisioning.runtime.docker_runtime")

BRIDGE_PREFIX = "pwm-"

Reach = Literal["bridge", "published"]


def members_network(reach: Reach = "bridge") -> str:
    """The network every member is on (`-pub` for published reach: it needs egress)."""
    return "prewarm-members" + ("-pub" if reach == "published" else "")


DEFAULT_ROOT_DIR = "/var/lib/docker"


def bridge_name(network: str, root_dir: str = DEFAULT_ROOT_DIR) -> str:
    """The host interface of a members network: `pwm-` and a hash (Linux allows 15 chars).

    One prefix for every member bridge lets the operator firewall them with one rule (see
    the module docstring). Engines sharing one machine (a fleet of daemons side by side)
    share its interfaces: a second engine naming the same bridge would take it over, so the
    hash includes the engine's data root unless it is the default one.
    """
    key = network if root_dir == DEFAULT_ROOT_DIR else f"{network}@{root_dir}"
    return f"{BRIDGE_PREFIX}{hashlib.sha256(key.encode()).hexdigest()[:11]}"


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


def ensure_network(api: docker.APIClient, reach: Reach, seen: set[str], known: bool = True) -> None:
    """Create the members network unless this runtime already saw it (idempotent).

    `seen` holds the members networks the runtime created or found: a create then needs no
    extra call.
    """
    name = members_network(reach)
    if known and name in seen:
        return
    try:
        # check_duplicate: two prewarms creating it at once get one network, not two.
        api.create_network(
            name,
            driver="bridge",
            internal=reach == "bridge",
            labels={LABEL_MANAGED: "1"},
            check_duplicate=True,
            options={
                "com.docker.network.bridge.name": bridge_name(
                    name, str(api.info().get("DockerRootDir") or DEFAULT_ROOT_DIR)
                ),
                # No member reaches another; the host still reaches every member.
                "com.docker.network.bridge.enable_icc": "false",
            },
        )
        log.info("created network %s", name)
    except APIError as error:
        # Another create won the race (this prewarm's parallel apply, or another prewarm):
        # dockerd says 409, or 403 for the bridge interface it has just given the winner.
        lost_race = error.status_code == _HTTP_CONFLICT or "already exists" in str(error)
        if not lost_race and not any(n.get("Name") == name for n in api.networks(names=[name])):
            raise
    seen.add(name)


def own_network(attrs: dict[str, Any]) -> str | None:
    """The members network a container was created on, if it is one of ours."""
    mode = attrs["HostConfig"].get("NetworkMode")
    if mode not in {members_network("bridge"), members_network("published")}:
        return None  # an older member on the default bridge: that network is not ours
    return str(mode)


def drop_network_if_unused(api: docker.APIClient, name: str, seen: set[str]) -> None:
    """Remove the members network once no container (created ones too) is on it."""
    seen.discard(name)
    if api.containers(all=True, filters={"network": name}):
        return
    try:
        api.remove_network(name)
        log.info("removed network %s: no member left on it", name)
    except APIError as error:
        # Gone already, or a member started on it since we looked: it stays, and its
        # last release removes it.
        log.debug("kept network %s: %s", name, error.explanation or error)
