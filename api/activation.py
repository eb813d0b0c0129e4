"""Serve "a request arrived": claim a warm member, else start one cold (the fallback).

Kept apart from the HTTP layer so the decision (warm or cold, which tier it came from, how
long the request waited) is plain code over a `ContainerRuntime`. Which warm member serves,
when a client has several, is the client's routing section (`provisioning.routing`).

**Bounded cold starts.** With a `ColdStartCap` (what the API passes), a client never holds
more than `limit` members (the members its applied plan gives it plus a burst allowance):
the cold start runs under the client's lock, re-lists the client's members, takes one that
became idle meanwhile, and creates a new one only below the limit. Concurrent cold starts
of one client therefore coalesce: the second waits for the first (at most `wait_s`), then
finds the members as they are now. Past the limit the request is refused
(`ActivationRefused`), with how long until a lease ends; nothing is created. A request
never claims, without the lock, from a listing taken while a cold start held it: the member
that cold start created is not leased until just before it lets go.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from provisioning.apply import activate_one, route_candidates
from provisioning.reconciler import build_spec
from provisioning.runtime.base import (
    LABEL_CLIENT,
    LABEL_MANAGED,
    LABEL_PLAN,
    ContainerRuntime,
    LoopActivation,
    Member,
    Tier,
    ms_since,
)
from provisioning.runtime.leases import LeaseBook
from provisioning.schema_model import Routing

log = logging.getLogger(__name__)

# Plan id of members the API creates itself: no plan asked for them, the request did.
COLD_START_PLAN = "api-cold-start"

# Loads what a cold start needs: the client's rendered container config, and the host the
# latest plan placed the client on (None when unplanned).
ColdStartInputs = Callable[[], tuple[Mapping[str, Any], str | None]]


class ActivationRefused(Exception):
    """No member for this request: the client is at its limit, or its cold start is busy."""

    def __init__(self, reason: str, detail: str, retry_after_s: float) -> None:
        super().__init__(detail)
        self.reason = reason  # short, for `pool_events.reason`
        self.detail = detail  # for the client
        self.retry_after_s = retry_after_s


@dataclass
class ColdStartCap:
    """At most `limit` members for the client; its cold starts one at a time (`lock`)."""

    limit: int
    wait_s: float  # how long a cold start waits for the client's previous one
    lock: threading.Lock = field(default_factory=threading.Lock)


class ClientLocks:
    """One lock per client id, made on first use (bounded by the clients with a key)."""

    def __init__(self) -> None:
        self._locks: dict[str, threading.Lock] = {}
        self._mutex = threading.Lock()

    def of(self, client_id: str) -> threading.Lock:
        with self._mutex:
            return self._locks.setdefault(client_id, threading.Lock())


@dataclass(frozen=True)
class ActivationOutcome:
    """The member now serving, how long the request waited, and how it got there."""

    member: Member
    ms: float
    cold_start: bool
    tier_before: Tier | None  # active, shadow or cold for a warm claim; None for a cold start

    @property
    def reason(self) -> str:
        """Why, in the words `pool_events.reason` keeps."""
        if self.cold_start:
            return "request: cold start (no warm member)"
        return f"request: from {self.tier_before or 'unknown tier'}"


def activate_or_cold_start(
    runtime: ContainerRuntime,
    client_id: str,
    scope: Mapping[str, str],
    cold_start_inputs: ColdStartInputs,
    leases: LeaseBook,
    lease_seconds: float,
    members: list[Member] | None = None,
    *,
    cap: ColdStartCap | None = None,
    read_routing: Callable[[], Routing] | None = None,
    affinity_key: str | None = None,
) -> ActivationOutcome:
    """Claim the client's warmest idle member; with none, create an active one, timed.

    The member is leased to the request for `lease_seconds` either way (busy: never released
    or handed to another request meanwhile, unless routing affinity shares it). `members`:
    the client's members as listed moments ago, when the caller lists once for many
    requests. With `cap`, cold starts are bounded (see the module doc) and
    `ActivationRefused` says when one is not allowed. `read_routing` and `affinity_key`:
    which warm member serves, when there is a choice (`provisioning.apply.activate_one`).
    Raises the runtime's errors (PrewarmRuntimeError and subclasses) as they come.
    """
    request = _Request(runtime, client_id, scope, leases, lease_seconds, read_routing, affinity_key)
    if cap is None:
        claimed = _claim(request, members)
        return claimed if claimed is not None else _cold_start(request, cold_start_inputs)
    if members is None:
        members = runtime.list(_client_members(scope, client_id))
    # Checked after the listing: a member it holds that a cold start of this client created
    # may not be leased yet while that cold start holds the lock. Claimed here, it would
    # serve two requests; the path below waits for the lock and lists again.
    claimed = None if cap.lock.locked() else _claim(request, members)
    if claimed is not None:
        return claimed
    if not cap.lock.acquire(timeout=cap.wait_s):
        raise ActivationRefused(
            "refused (cold start busy)",
            "Another request of this client is starting a member; try again shortly.",
            1.0,
        )
    try:
        # Listed again: the cold start this one waited for (or the reconciler) changed them.
        current = runtime.list(_client_members(scope, client_id))
        claimed = _claim(request, current)
        if claimed is not None:
            return claimed
        if len(current) >= cap.limit:
            wait = leases.seconds_left(m.id for m in current)
            raise ActivationRefused(
                f"refused (at capacity: {len(current)} of {cap.limit} members)",
                f"This client already holds {len(current)} member(s), its limit; all are "
                "serving requests. Try again when one is free (see Retry-After).",
                wait if wait is not None else lease_seconds,
            )
        return _cold_start(request, cold_start_inputs)
    finally:
        cap.lock.release()


@functools.cache
def _has_loop_path(runtime_type: type) -> bool:
    """Whether a runtime class serves `LoopActivation`; once per class (an isinstance check
    against the protocol looks its members up every time: ~2 % of the API's CPU)."""
    return issubclass(runtime_type, LoopActivation)


async def claim_warm_on_loop(
    runtime: ContainerRuntime,
    client_id: str,
    scope: Mapping[str, str],
    leases: LeaseBook,
    lease_seconds: float,
    *,
    cap: ColdStartCap,
    read_routing: Callable[[], Routing] | None = None,
    affinity_key: str | None = None,
) -> ActivationOutcome | None:
    """The usual request served on the event loop, with no worker thread: the client's
    first candidate (its routing's choice) is an active member (no runtime call), or a
    shadow its runtime resumes on the loop (`LoopActivation`: the process runtime).

    None, with no lease left taken, for everything else: a runtime without a loop path
    (Docker), no idle member, a cold or busy member, a cold start of this client under way.
    `activate_or_cold_start` then serves the request in a thread, as it always did. The
    listing and the lease are a few small files read and written at once; the one wait, the
    member's health answer, is awaited."""
    if not _has_loop_path(type(runtime)):
        return None
    on_loop = cast(LoopActivation, runtime)
    members = on_loop.list_on_loop(_client_members(scope, client_id))
    if cap.lock.locked():  # after the listing, for the reason `activate_or_cold_start` says
        return None
    candidates = route_candidates(
        runtime,
        client_id,
        leases,
        lease_seconds,
        members=members,
        read_routing=read_routing,
        affinity_key=affinity_key,
    )
    taken = candidates.take()
    if taken is None:
        return None
    member, joined = taken
    if member.tier == "active":
        log.info("claimed active %s for %s", member.id, client_id)
        return ActivationOutcome(member, 0.0, cold_start=False, tier_before="active")
    activated = None
    if member.tier == "shadow":
        try:
            activated = await on_loop.activate_on_loop(member.id)
        except BaseException:
            candidates.give_back(member.id, joined)
            raise
    if activated is None:
        candidates.give_back(member.id, joined)
        return None
    return ActivationOutcome(activated[0], activated[1], cold_start=False, tier_before="shadow")


def _client_members(scope: Mapping[str, str], client_id: str) -> dict[str, str]:
    """The labels that select one client's managed members in the pool `scope` names."""
    return {LABEL_MANAGED: "1", **scope, LABEL_CLIENT: client_id}


@dataclass(frozen=True)
class _Request:
    """One client's activation request: where it runs, how its member is leased and chosen."""

    runtime: ContainerRuntime
    client_id: str
    scope: Mapping[str, str]
    leases: LeaseBook
    lease_seconds: float
    read_routing: Callable[[], Routing] | None
    affinity_key: str | None


def _claim(request: _Request, members: list[Member] | None) -> ActivationOutcome | None:
    claimed = activate_one(
        request.runtime,
        request.client_id,
        request.leases,
        request.lease_seconds,
        scope=request.scope,
        members=members,
        read_routing=request.read_routing,
        affinity_key=request.affinity_key,
    )
    if claimed is None:
        return None
    member, ms, before = claimed
    return ActivationOutcome(member, ms, cold_start=False, tier_before=before)


def _cold_start(request: _Request, cold_start_inputs: ColdStartInputs) -> ActivationOutcome:
    config, host = cold_start_inputs()
    # A scope naming a plan lists only that plan's members: the new one must carry it too.
    client_id, scope = request.client_id, request.scope
    plan_id = scope.get(LABEL_PLAN, COLD_START_PLAN)
    spec = build_spec(client_id, "active", host, config, plan_id, labels=scope)
    started = time.perf_counter()
    member = request.runtime.create(spec)
    ms = ms_since(started)
    request.leases.lease(member.id, request.lease_seconds)
    log.info("cold-started %s for %s in %.1f ms", member.id, client_id, ms)
    return ActivationOutcome(member, ms, cold_start=True, tier_before=None)
