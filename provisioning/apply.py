"""Apply: run the reconciler's actions on a container runtime and report what happened.

`reconcile_once` is the whole loop (list -> diff -> apply); `apply_actions` executes a list
of actions; `activate_one` serves the API's "a request arrived" path.

**Order.** Actions run in phases, each keeping the reconciler's deterministic order:

1. activations (shadow -> active, cold -> active): they serve demand soonest, and they reuse
   capacity the member already holds (a shadow keeps its memory; only CPU is added, which
   runtimes share rather than reserve, so an activation never fails for want of room);
2. releases (orphans, config changed, scale down): free memory before anything new needs it;
3. shadows (pause a surplus active: frees CPU; warm a cold member: needs memory);
4. creates, warmest first (active, shadow, cold): the new memory comes last, after the
   releases made room, and an active create is the next thing demand waits on.

**Parallel, bounded.** Within a phase, up to `parallel` actions run at once (runtime calls
mostly wait: on dockerd, on a worker's first health answer); a phase ends before the next
begins, so the order above holds, and the events keep the execution order. Both runtimes
gain: a process-runtime call locks its own member's record only.

**Failures.** Each action's failure is caught, logged and recorded (`ok` false, `error`
text) and the others continue: a half-applied pool is healed by the next run, because the
reconciler diffs against what the runtime lists, not against what we meant to do.

**Requests.** With a lease book (`provisioning.runtime.leases`), members serving a request
are never released or paused: the diff leaves them alone, and each release or pause first
reserves its member, so a request arriving in between cannot claim it. A member that became
busy after the listing is skipped (drained) and reported in `ApplyResult.drained`.

**Frames.** `pool_events` has one row per action (member_id, client_id, runtime, action,
tier, host, ms, ok, error, at, reason): `ms` is the runtime's activation time (call to first
health answer) for activations and the wall time of the call otherwise. `pool_members` is
the runtime's list after applying (member_id, client_id, plan_id: the plan applied, runtime,
tier, host, endpoint, created_at, observed_at). Times are naive UTC, the warehouse's
convention.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import polars as pl

from core.times import naive_utc
from provisioning.reconciler import Action, diff
from provisioning.routing import route_request
from provisioning.runtime.base import (
    LABEL_CLIENT,
    LABEL_HOST,
    LABEL_MANAGED,
    LABEL_PLAN,
    ContainerRuntime,
    Member,
    MemberNotFound,
    RuntimeUnavailable,
    Tier,
    ms_since,
)
from provisioning.runtime.leases import LeaseBook
from provisioning.schema_model import Routing

log = logging.getLogger(__name__)

POOL_EVENTS_SCHEMA: dict[str, pl.DataType] = {
    "member_id": pl.String(),
    "client_id": pl.String(),
    "runtime": pl.String(),
    "action": pl.String(),  # create | shadow | activate | release
    "tier": pl.String(),  # the target tier (for a release, the tier the member had)
    "host": pl.String(),
    "ms": pl.Float64(),
    "ok": pl.Boolean(),
    "error": pl.String(),
    "at": pl.Datetime("us"),
    "reason": pl.String(),
}
POOL_MEMBERS_SCHEMA: dict[str, pl.DataType] = {
    "member_id": pl.String(),
    "client_id": pl.String(),
    "plan_id": pl.String(),
    "runtime": pl.String(),
    "tier": pl.String(),
    "host": pl.String(),
    "endpoint": pl.String(),
    "created_at": pl.Datetime("us"),
    "observed_at": pl.Datetime("us"),
}

ProgressCallback = Callable[[int, int, dict[str, Any]], None]

_CREATE_PHASE = {"active": 3, "shadow": 4, "cold": 5}
MAX_PARALLEL = 32  # runtime calls in flight at once, at most (a setting picks within it)
_PHASE = {"activate": 0, "release": 1, "shadow": 2}


@dataclass(frozen=True)
class ApplyResult:
    """What one apply did (`pool_events`, in execution order) and the pool it left."""

    actions: list[Action]
    pool_events: pl.DataFrame
    pool_members: pl.DataFrame
    drained: tuple[str, ...] = ()  # members left alone: a request claimed them meanwhile

    @property
    def failed(self) -> int:
        """How many actions failed."""
        return int((~self.pool_events["ok"]).sum())


def execution_order(actions: Iterable[Action]) -> list[Action]:
    """Actions in apply order: activations, releases, shadows, creates (warmest first)."""
    return sorted(actions, key=_phase)


def apply_actions(
    runtime: ContainerRuntime,
    actions: Iterable[Action],
    plan_id: str,
    on_progress: ProgressCallback | None = None,
    *,
    scope: Mapping[str, str] | None = None,
    leases: LeaseBook | None = None,
    parallel: int = 1,
) -> ApplyResult:
    """Execute `actions` in `execution_order`, recording each; then list the pool.

    Up to `parallel` actions of a phase run at once (module doc).
    `on_progress(done, total, event)` is called after every action with its event row.
    `scope` restricts the final listing (as in `reconcile_once`). With `leases`, a release
    or pause of a member a request holds is skipped (drained).
    """
    if not 1 <= parallel <= MAX_PARALLEL:
        raise ValueError(f"parallel {parallel} must be between 1 and {MAX_PARALLEL}")
    ordered = execution_order(actions)
    outcomes: list[dict[str, Any] | None] = []
    done = 0

    def one(action: Action) -> dict[str, Any] | None:
        """The action's event, or None when it was drained (a request holds its member)."""
        if not (_needs_reservation(action) and leases is not None):
            return _run(runtime, action)
        assert action.member_id is not None
        if not leases.reserve(action.member_id):
            log.info("%s of %s skipped: serving a request", action.kind, action.member_id)
            return None
        event = _run(runtime, action)
        if action.kind != "release":
            leases.unreserve(action.member_id)
        return event

    with ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="apply") as pool:
        for _, phase in itertools.groupby(ordered, key=_phase):
            # map keeps the phase's order; the next phase starts once this one is done.
            for outcome in pool.map(one, list(phase)):
                outcomes.append(outcome)
                done += 1
                if on_progress is not None and outcome is not None:
                    on_progress(done, len(ordered), outcome)
    events = [event for event in outcomes if event is not None]
    drained = [
        action.member_id
        for action, event in zip(ordered, outcomes, strict=True)
        if event is None and action.member_id is not None
    ]
    pool_events = pl.DataFrame(events, schema=POOL_EVENTS_SCHEMA)
    members = runtime.list(_selector(scope))
    failed = sum(not event["ok"] for event in events)
    log.info(
        "applied %d action(s) for plan %s on %s: %d failed; pool now %d member(s)",
        len(ordered),
        plan_id,
        runtime.name,
        failed,
        len(members),
    )
    return ApplyResult(ordered, pool_events, members_frame(members, plan_id), tuple(drained))


def reconcile_once(
    runtime: ContainerRuntime,
    desired: pl.DataFrame,
    specs: Mapping[str, Mapping[str, Any]],
    untouchable: Iterable[str],
    plan_id: str,
    *,
    scope: Mapping[str, str] | None = None,
    on_progress: ProgressCallback | None = None,
    hold: Mapping[tuple[str, str | None], int] | None = None,
    leases: LeaseBook | None = None,
    keep_used_seconds: float = 0.0,
    parallel: int = 1,
) -> ApplyResult:
    """List the pool, diff it against `desired` (with `hold`, the busy members of `leases`
    and the members used in the last `keep_used_seconds`), apply the actions.

    `scope`: extra labels selecting the members this pool owns (default: every
    prewarm-managed member the runtime lists); created members carry them too, so the next
    run sees them. Scoping by `prewarm.plan` works only with that same `plan_id`.
    """
    scope = dict(scope or {})
    if scope.get(LABEL_PLAN, plan_id) != plan_id:
        raise ValueError(
            f"scope {LABEL_PLAN}={scope[LABEL_PLAN]} differs from plan_id {plan_id}: "
            "members created now would never be listed again"
        )
    members = runtime.list(_selector(scope))
    extra_labels = {key: value for key, value in scope.items() if key != LABEL_PLAN}
    busy = leases.busy() if leases is not None else set()
    used = leases.used_within(keep_used_seconds) if leases and keep_used_seconds else set()
    actions = diff(
        desired,
        specs,
        members,
        untouchable,
        plan_id=plan_id,
        labels=extra_labels,
        hold=hold,
        busy=busy,
        recently_used=used,
    )
    return apply_actions(
        runtime, actions, plan_id, on_progress, scope=scope, leases=leases, parallel=parallel
    )


def activate_one(
    runtime: ContainerRuntime,
    client_id: str,
    leases: LeaseBook,
    lease_seconds: float,
    *,
    scope: Mapping[str, str] | None = None,
    members: Iterable[Member] | None = None,
    read_routing: Callable[[], Routing] | None = None,
    affinity_key: str | None = None,
    rng: random.Random | None = None,
) -> tuple[Member, float, Tier] | None:
    """Claim an idle member for a request that just arrived; return it, ms and its tier before.

    Idle means no other request holds its lease. The warmest is claimed first: an idle
    active member serves at once (0 ms, no runtime call), a shadow is unpaused
    (milliseconds), a cold one started. The claim is a lease in `leases` for `lease_seconds`,
    taken atomically, so two concurrent requests never get the same member, and the apply
    step never releases or pauses it meanwhile. None when the client has no idle member: the
    caller takes the cold-start fallback. A member gone between the listing and the
    activation is given back and the next one tried. `members`: the client's members as
    listed moments ago (a caller serving many requests at once lists once); by default the
    runtime is asked now.

    `read_routing`: the client's routing section (`provisioning.routing`: weights per host
    among the idle members of the warmest tier; with `affinity_key`, member or host
    affinity, where a request may share its member with others), asked only when the client
    has two members or more, as only then is there a choice. Without it, ties go by member
    id. `rng`: the weighted pick's randomness (tests seed one).
    """
    candidates = route_candidates(
        runtime,
        client_id,
        leases,
        lease_seconds,
        scope=scope,
        members=members,
        read_routing=read_routing,
        affinity_key=affinity_key,
        rng=rng,
    )
    while (taken := candidates.take()) is not None:
        member, joined = taken
        if member.tier == "active":
            how = "joined busy" if joined else "claimed idle"
            log.info("%s active %s for %s", how, member.id, client_id)
            return member, 0.0, "active"
        try:
            activated, ms = runtime.activate(member.id)
        except MemberNotFound:
            leases.end(member.id)
            log.info("member %s vanished before activation; trying the next", member.id)
            continue
        except RuntimeUnavailable as error:  # its host's engine went away since the listing
            candidates.give_back(member.id, joined)
            log.warning("member %s is unreachable (%s); trying the next", member.id, error)
            continue
        except BaseException:
            candidates.give_back(member.id, joined)
            raise
        log.info("activated %s %s for %s in %.1f ms", member.tier, member.id, client_id, ms)
        return activated, ms, member.tier
    log.info("no idle member for %s: the caller cold-starts", client_id)
    return None


class Candidates:
    """One request's members in the order its route tries them, leased one at a time."""

    def __init__(
        self, members: list[Member], shared: bool, leases: LeaseBook, lease_seconds: float
    ) -> None:
        self._by_id = {m.id: m for m in members}
        self._remaining = [m.id for m in members]
        self._shared = shared
        self._leases = leases
        self._lease_seconds = lease_seconds

    def take(self) -> tuple[Member, bool] | None:
        """The next candidate idle now (with `shared`: not being released or paused), its
        lease taken, and whether another request held it (joined); None when none is left."""
        if not self._remaining:
            return None
        member_id, joined = _take(self._leases, self._remaining, self._lease_seconds, self._shared)
        if member_id is None:
            self._remaining = []
            return None
        self._remaining = self._remaining[self._remaining.index(member_id) + 1 :]
        return self._by_id[member_id], joined

    def give_back(self, member_id: str, joined: bool) -> None:
        """End the lease `take` gave; a joined one is the other request's to end."""
        if not joined:
            self._leases.end(member_id)


def route_candidates(
    runtime: ContainerRuntime,
    client_id: str,
    leases: LeaseBook,
    lease_seconds: float,
    *,
    scope: Mapping[str, str] | None = None,
    members: Iterable[Member] | None = None,
    read_routing: Callable[[], Routing] | None = None,
    affinity_key: str | None = None,
    rng: random.Random | None = None,
) -> Candidates:
    """The client's members as its routing orders them for one request (`activate_one`)."""
    if members is None:
        members = runtime.list({**_selector(scope), LABEL_CLIENT: client_id})
    listed = [m for m in members if m.client_id == client_id]
    routing = read_routing() if read_routing is not None and len(listed) > 1 else Routing()
    route = route_request(listed, routing, client_id, affinity_key, rng)
    return Candidates(list(route.members), route.shared, leases, lease_seconds)


def members_frame(members: Iterable[Member], plan_id: str) -> pl.DataFrame:
    """Members as `pool_members` rows observed now under `plan_id`."""
    observed_at = naive_utc(datetime.now(UTC))
    rows = [
        {
            "member_id": m.id,
            "client_id": m.client_id,
            "plan_id": plan_id,
            "runtime": m.runtime,
            "tier": m.tier,
            "host": m.labels.get(LABEL_HOST),
            "endpoint": m.endpoint,
            "created_at": naive_utc(m.created_at),
            "observed_at": observed_at,
        }
        for m in sorted(members, key=lambda m: (m.client_id, m.id))
    ]
    return pl.DataFrame(rows, schema=POOL_MEMBERS_SCHEMA)


# --- helpers ------------------------------------------------------------------------------


def _take(
    leases: LeaseBook, candidates: list[str], seconds: float, shared: bool
) -> tuple[str | None, bool]:
    """The first idle candidate, claimed; with `shared`, the first not reserved, busy or not
    (its lease joined). The member (None: none) and whether another request held it."""
    if shared:
        taken = leases.share(candidates, seconds)
        return taken if taken is not None else (None, False)
    return leases.claim(candidates, seconds), False


def _phase(action: Action) -> int:
    if action.kind == "create":
        return _CREATE_PHASE[action.tier]
    return _PHASE[action.kind]


def _needs_reservation(action: Action) -> bool:
    """A release, or a pause of a running member: what a request must not be caught in."""
    return action.kind == "release" or (action.kind == "shadow" and action.from_tier == "active")


def _selector(scope: Mapping[str, str] | None) -> dict[str, str]:
    return {LABEL_MANAGED: "1", **(scope or {})}


def _run(runtime: ContainerRuntime, action: Action) -> dict[str, Any]:
    """Execute one action; its event row, with the error instead of raising it."""
    at = naive_utc(datetime.now(UTC))
    started = time.perf_counter()
    member_id = action.member_id
    ms: float | None = None
    error: str | None = None
    try:
        member_id, ms = _execute(runtime, action)
    except Exception as failure:  # recorded; the next reconcile retries what is missing
        error = f"{type(failure).__name__}: {failure}"
        log.warning(
            "%s %s for %s (%s) failed: %s",
            action.kind,
            member_id or action.tier,
            action.client_id,
            action.reason,
            error,
        )
    return {
        "member_id": member_id,
        "client_id": action.client_id,
        "runtime": runtime.name,
        "action": action.kind,
        "tier": action.tier,
        "host": action.host,
        "ms": ms if ms is not None else ms_since(started),
        "ok": error is None,
        "error": error,
        "at": at,
        "reason": action.reason,
    }


def _execute(runtime: ContainerRuntime, action: Action) -> tuple[str | None, float | None]:
    """Run one action; the member's id and the runtime's ms when it reports one."""
    if action.kind == "create":
        if action.spec is None:
            raise ValueError("a create action needs a spec")
        return runtime.create(action.spec).id, None
    if action.member_id is None:
        raise ValueError(f"a {action.kind} action needs a member id")
    if action.kind == "activate":
        _, ms = runtime.activate(action.member_id)
        return action.member_id, ms
    if action.kind == "shadow":
        runtime.shadow(action.member_id)
    elif action.kind == "release":
        runtime.release(action.member_id)
    else:
        raise ValueError(f"unknown action kind {action.kind!r}")
    return action.member_id, None


def release_all(runtime: ContainerRuntime, scope: Mapping[str, str] | None = None) -> int:
    """Release every member prewarm manages (within `scope`); return how many."""
    members = runtime.list(_selector(scope))
    for member in members:
        runtime.release(member.id)
    return len(members)
