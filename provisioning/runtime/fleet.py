"""FleetRuntime: one pool over the Docker Engines of many hosts, as one ContainerRuntime.

The design is Apache OpenWhisk's: every host runs a Docker Engine that keeps its own paused
warm containers, and a central scheduler decides what goes where. Here the planner is that
scheduler (it picks a host per member, the reconciler writes it into the `prewarm.host`
label of the create) and this runtime only carries each call to the right engine. There is
no agent of our own on the hosts: an engine is reached by its own API (`unix://`, `tcp://`
with TLS, `ssh://`), as named in the inventory (`engines.py`).

- One `DockerRuntime` per distinct engine address, made on first use: hosts sharing an
  address (every host without an `engine` shares the local one) share a runtime. A host the
  map does not know, or no host at all, is the local engine's.
- `create` goes to the engine of the spec's host, after making sure (once per engine) that
  the worker image is there: it is built on that engine, as on the local one, by `docker
  import` (there is no registry to pull from).
- `list` is the union over the engines. An engine that does not answer is skipped and its
  hosts are in `down` (host -> reason), with one warning when an engine goes down and one
  line when it answers again; only when no engine answers does `list` raise. Members on an
  engine that comes back are listed again: their labels are their only record.
- The other calls go by member id to the engine that holds it (learnt from `create` and
  `list`; an unknown id is looked up by listing every engine).

A call to a down engine raises `RuntimeUnavailable` naming the host and the engine. Engines
are asked one after the other: listing N engines costs the sum of their answers (a few ms
each here); an engine that hangs rather than refuses costs up to `timeout_s`.
"""

from __future__ import annotations

import builtins
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import replace
from typing import Any

import docker
from docker.errors import APIError, DockerException
from requests.exceptions import RequestException

from provisioning.runtime.base import (
    LABEL_HOST,
    ContainerSpec,
    Member,
    MemberNotFound,
    RuntimeName,
    RuntimeUnavailable,
)
from provisioning.runtime.docker_network import Reach
from provisioning.runtime.docker_runtime import DockerRuntime
from provisioning.runtime.engines import Engine, engine_client
from provisioning.runtime.images import WORKER_IMAGE, build_image

log = logging.getLogger(__name__)

LOCAL_HOST = "local"  # the host named in messages about the local engine when none is
Connect = Callable[[Engine, float], docker.DockerClient]
_Key = str | None  # an engine's address; None: this machine's engine


def _default_connect(engine: Engine, timeout_s: float) -> docker.DockerClient:
    return engine_client(engine, timeout_s)


class FleetRuntime:
    """ContainerRuntime over one Docker Engine per host (see the module docstring)."""

    name: RuntimeName = "docker"

    def __init__(
        self,
        engines: Mapping[str, Engine],
        *,
        connect: Connect = _default_connect,
        timeout_s: float = 30.0,
        reach: Reach = "bridge",
        health_timeout_s: float = 10.0,
        stop_timeout_s: int = 0,
    ) -> None:
        self.engines = dict(engines)
        self.down: dict[str, str] = {}  # host -> why its engine did not answer
        self._connect = connect
        self._timeout_s = timeout_s
        self._options: dict[str, Any] = {
            "reach": reach,
            "health_timeout_s": health_timeout_s,
            "stop_timeout_s": stop_timeout_s,
        }
        self._runtimes: dict[_Key, DockerRuntime] = {}
        self._imaged: set[_Key] = set()  # engines where the worker image is known present
        self._engines_down: dict[_Key, str] = {}
        self._where: dict[str, tuple[Engine, str | None]] = {}  # member id -> engine, host
        self._lock = threading.Lock()

    # -- the ContainerRuntime interface ------------------------------------------------

    def create(self, spec: ContainerSpec) -> Member:
        """Create the member on the engine of its host (`prewarm.host`; none: local)."""
        host = spec.labels.get(LABEL_HOST)
        engine = self.engine_of(host)
        with self._answering(engine, host):
            runtime = self._runtime(engine)
            self._ensure_image(engine, runtime, spec.image)
            member = runtime.create(spec)
        self._where[member.id] = (engine, host)
        return self._placed(member, engine)

    def shadow(self, member_id: str) -> Member:
        """Pause the member on its engine (starting it first if cold)."""
        engine, host = self._locate(member_id)
        with self._answering(engine, host), self._forgetting(member_id):
            return self._placed(self._runtime(engine).shadow(member_id), engine)

    def activate(self, member_id: str) -> tuple[Member, float]:
        """Unpause or start the member on its engine; ms until its /health answered."""
        engine, host = self._locate(member_id)
        with self._answering(engine, host), self._forgetting(member_id):
            member, elapsed = self._runtime(engine).activate(member_id)
        return self._placed(member, engine), elapsed

    def release(self, member_id: str) -> None:
        """Remove the member from its engine; a member no engine holds is gone already
        (while an engine is down, an unknown member may be there: RuntimeUnavailable)."""
        try:
            engine, host = self._locate(member_id)
        except MemberNotFound:
            return
        with self._answering(engine, host):
            self._runtime(engine).release(member_id)
        self._where.pop(member_id, None)

    def list(self, labels: dict[str, str] | None = None) -> builtins.list[Member]:
        """Members of every engine that answers; raises only when none does."""
        members: builtins.list[Member] = []
        failures = []
        engines = self._distinct_engines()
        for engine in engines:
            try:
                with self._answering(engine, None):
                    found = self._runtime(engine).list(labels)
            except RuntimeUnavailable as error:
                failures.append(str(error))
                continue
            for member in found:
                self._where[member.id] = (engine, member.labels.get(LABEL_HOST))
                members.append(self._placed(member, engine))
        if engines and len(failures) == len(engines):
            raise RuntimeUnavailable("no engine of the fleet answers: " + "; ".join(failures))
        return members

    def stats(self, member_id: str) -> dict[str, Any]:
        """Current usage of the member, asked of its engine."""
        engine, host = self._locate(member_id)
        with self._answering(engine, host), self._forgetting(member_id):
            return self._runtime(engine).stats(member_id)

    def close(self) -> None:
        """Close every engine's client (members are left as they are)."""
        with self._lock:
            runtimes, self._runtimes = list(self._runtimes.values()), {}
        for runtime in runtimes:
            with suppress(Exception):
                runtime.close()

    # -- engines -----------------------------------------------------------------------

    def engine_of(self, host: str | None) -> Engine:
        """The engine of `host`; an unknown host or none is this machine's engine."""
        found = self.engines.get(host) if host is not None else None
        return found or Engine(host or LOCAL_HOST, None)

    def hosts_of(self, engine: Engine) -> builtins.list[str]:
        """The inventory hosts on `engine`'s address (the engine's own host if none)."""
        hosts = [h for h, e in self.engines.items() if e.address == engine.address]
        return hosts or [engine.host]

    def _distinct_engines(self) -> builtins.list[Engine]:
        """One engine per address: the inventory's, plus the local one once used."""
        by_key: dict[_Key, Engine] = {}
        for engine in self.engines.values():
            by_key.setdefault(engine.address, engine)
        if None in self._runtimes and None not in by_key:
            by_key[None] = self.engine_of(None)
        return list(by_key.values())

    def _runtime(self, engine: Engine) -> DockerRuntime:
        with self._lock:
            runtime = self._runtimes.get(engine.address)
            if runtime is None:
                client = self._connect(engine, self._timeout_s)
                runtime = DockerRuntime(client, **self._options)
                self._runtimes[engine.address] = runtime
            return runtime

    def _ensure_image(self, engine: Engine, runtime: DockerRuntime, image: str) -> None:
        """Build the worker image on this engine before its first create (once)."""
        if image != WORKER_IMAGE or engine.address in self._imaged:
            return
        with self._lock:
            if engine.address not in self._imaged:
                build_image(image, client=runtime.client)
                self._imaged.add(engine.address)

    def _drop(self, engine: Engine) -> None:
        """Forget a failed engine's client: the next call connects afresh."""
        with self._lock:
            runtime = self._runtimes.pop(engine.address, None)
            self._imaged.discard(engine.address)
        if runtime is not None:
            with suppress(Exception):
                runtime.close()

    @contextmanager
    def _answering(self, engine: Engine, host: str | None) -> Iterator[None]:
        """Track the engine's health around a call; a lost engine is RuntimeUnavailable."""
        try:
            yield
        except APIError:
            self._mark_up(engine)  # the engine answered, with an error of the call's own
            raise
        except (RuntimeUnavailable, RequestException, DockerException, OSError) as error:
            reason = f"{engine.label} does not answer ({type(error).__name__}: {error})"
            self._mark_down(engine, reason[:500])
            self._drop(engine)
            who = host or ", ".join(self.hosts_of(engine))
            raise RuntimeUnavailable(f"host {who}: engine {reason}") from error
        self._mark_up(engine)

    @contextmanager
    def _forgetting(self, member_id: str) -> Iterator[None]:
        try:
            yield
        except MemberNotFound:
            self._where.pop(member_id, None)
            raise

    def _mark_down(self, engine: Engine, reason: str) -> None:
        if engine.address not in self._engines_down:
            hosts = ", ".join(self.hosts_of(engine))
            log.warning("engine down: %s (host %s): %s", engine.label, hosts, reason)
        self._engines_down[engine.address] = reason
        for host in self.hosts_of(engine):
            self.down[host] = reason

    def _mark_up(self, engine: Engine) -> None:
        if self._engines_down.pop(engine.address, None) is None:
            return
        hosts = self.hosts_of(engine)
        log.warning("engine back: %s (host %s) answers again", engine.label, ", ".join(hosts))
        for host in hosts:
            self.down.pop(host, None)

    # -- members -----------------------------------------------------------------------

    def _locate(self, member_id: str) -> tuple[Engine, str | None]:
        """The engine (and host) holding a member: remembered, else found by listing."""
        if member_id not in self._where:
            self.list()
        found = self._where.get(member_id)
        if found is not None:
            return found
        if self.down:  # it may be on an engine that does not answer: not known to be gone
            raise RuntimeUnavailable(
                f"member {member_id!r} is on no engine that answers; down: "
                + ", ".join(f"host {host}" for host in sorted(self.down))
            )
        raise MemberNotFound(f"no Docker member {member_id!r} on any engine")

    def _placed(self, member: Member, engine: Engine) -> Member:
        """The member with its host (label, else the engine's) and engine in `details`."""
        hosts = self.hosts_of(engine)
        host = member.labels.get(LABEL_HOST) or (hosts[0] if len(hosts) == 1 else None)
        details = {**member.details, "host": host, "engine": engine.label}
        return replace(member, details=details)
