"""The soak's yardsticks and its simulated twin: what the live loop should have done.

`prewarm soak` replays a trace live: real cycles on a real runtime, real activations. To
judge it, the same minutes are replayed here with the very decisions the live loop makes
(`provisioning.cycle_plan.plan_cycle`, `provisioning.reconciler.diff`, the activation
order of `provisioning.apply.activate_one`) on an ideal runtime and an ideal clock: every
cycle starts exactly on time, its pool is in place exactly `lead` seconds later, nothing
fails. The live numbers should stay close to these; where they do not, the difference is
the machinery's (timing, failures, lost state), not the policy's.

The ledger (per function and minute, over the replayed minutes):

- `need`: instances the minute's invocations keep busy (the replay's `Trace.need`);
- `warm`: members warm (active or shadow) at the start of the minute;
- `cold`: requests that found no idle warm member (a cold-tier member started for a
  request counts as cold: it is a start, not a warm hit).

Idle memory is max(0, warm - need) x the function's memory, as `prewarm replay` counts it.

`contradicting_actions` counts pairs of controller actions that undo each other within one
scale-down delay: a member created and then released (by its id), or a client's member
released and then one created again for it on the same host. Requests' cold starts are not
controller actions (they create members only because a request arrived), but a member they
created counts when the controller releases it within the delay.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import cast

import numpy as np
import polars as pl

from core.vocabulary import TierName
from provisioning.costs import CostModel
from provisioning.cycle_plan import CyclePlan, CycleTiming, plan_cycle, planner_clients
from provisioning.member_size import member_sizes, resized_clients, upcoming
from provisioning.planner import need_levels
from provisioning.reconciler import LABEL_CONFIG_HASH, Action, diff
from provisioning.runtime.base import LABEL_HOST, Member
from provisioning.schema_checks import limits_from_inventory
from provisioning.targets import targets_as_desired, targets_hold
from simulation.policies import warm_fixed_keepalive
from simulation.trace import Trace

MINUTE = timedelta(minutes=1)
EVENT_SCHEMA: dict[str, pl.DataType] = {
    "at": pl.Datetime("us"),  # on the trace's clock
    "kind": pl.String(),  # create | release | shadow | activate
    "member_id": pl.String(),
    "client_id": pl.String(),
    "host": pl.String(),
    "by": pl.String(),  # controller | request
}
_SIM_HASH = "simulated"

# (clock, usage before the clock) -> (exceedance, concurrency quantiles, profiles), as the
# live cycle's predict step would give them from its registered models.
Predicted = tuple[pl.DataFrame | None, pl.DataFrame | None, pl.DataFrame]
Predictor = Callable[[datetime, pl.DataFrame], Predicted]


@dataclass
class Ledger:
    """Per function (rows, in `client_ids` order) and replayed minute (columns)."""

    client_ids: list[str]
    need: np.ndarray
    warm: np.ndarray
    cold: np.ndarray
    invocations: np.ndarray
    memory_mb: np.ndarray

    @classmethod
    def empty(cls, trace: Trace, first_minute: int, minutes: int) -> Ledger:
        span = slice(first_minute, first_minute + minutes)
        shape = (trace.functions, minutes)
        return cls(
            client_ids=[str(c) for c in trace.client_ids],
            need=trace.need[:, span].copy(),
            warm=np.zeros(shape, np.int64),
            cold=np.zeros(shape, np.int64),
            invocations=trace.invocations[:, span].copy(),
            memory_mb=trace.memory_mb.copy(),
        )

    def idle_mb_minutes(self) -> float:
        return float((np.maximum(self.warm - self.need, 0) * self.memory_mb[:, None]).sum())


def soak_metrics(ledger: Ledger, reference_idle: float) -> dict[str, float]:
    """The soak's yardsticks: invocations, cold starts, per invocation, share of called
    functions never cold, idle MB-minutes and idle over fixed keep-alive 10's."""
    invocations = ledger.invocations.sum(axis=1)
    cold = ledger.cold.sum(axis=1)
    called = invocations > 0
    total = float(invocations.sum())
    idle = ledger.idle_mb_minutes()
    return {
        "invocations": total,
        "cold_starts": float(cold.sum()),
        "cold_start_per_invocation": float(cold.sum()) / total if total else math.nan,
        "zero_cold_share": float(np.mean(cold[called] == 0)) if called.any() else math.nan,
        "idle_mb_minutes": idle,
        "idle_vs_fixed10": idle / reference_idle if reference_idle > 0 else math.nan,
    }


def fixed10_idle(trace: Trace, first_minute: int, minutes: int) -> float:
    """Idle MB-minutes of a 10-minute keep-alive over the same minutes (the yardstick)."""
    warm = warm_fixed_keepalive(trace.need, 10)[:, first_minute : first_minute + minutes]
    need = trace.need[:, first_minute : first_minute + minutes]
    return float((np.maximum(warm - need, 0) * trace.memory_mb[:, None]).sum())


def count_contradictions(events: pl.DataFrame, delay: timedelta) -> int:
    """Controller actions undone within `delay` (see the module docstring)."""
    if events.height == 0:
        return 0
    ordered = events.sort("at")
    created_at: dict[str, datetime] = {}
    last_release: dict[tuple[str, str | None], datetime] = {}
    contradictions = 0
    for row in ordered.iter_rows(named=True):
        key = (row["client_id"], row["host"])
        if row["kind"] == "create":
            created_at[row["member_id"]] = row["at"]
            released = last_release.get(key)
            if row["by"] == "controller" and released is not None and row["at"] - released < delay:
                contradictions += 1
        elif row["kind"] == "release" and row["by"] == "controller":
            born = created_at.get(row["member_id"])
            if born is not None and row["at"] - born < delay:
                contradictions += 1
            last_release[key] = row["at"]
    return contradictions


@dataclass(frozen=True)
class SimCycle:
    """One cycle of the simulation: its clock and when its pool is in place (clock + lead)."""

    clock: datetime
    lead_seconds: float


@dataclass
class Simulation:
    """The simulated soak: its ledger, its controller and request events, its plans."""

    ledger: Ledger
    events: pl.DataFrame
    actions: dict[str, int] = field(default_factory=dict)
    cycles: int = 0


def simulate_soak(
    trace: Trace,
    first_minute: int,
    minutes: int,
    cycles: list[SimCycle],
    timing: CycleTiming,
    *,
    clients: pl.DataFrame,
    sizes: dict[str, tuple[float, float]],
    inventory: pl.DataFrame,
    costs: CostModel,
    usage: pl.DataFrame,
    predict: Predictor,
) -> Simulation:
    """Replay minutes [first_minute, first_minute + minutes) of `trace` with the live loop's
    decisions on an ideal runtime and clock (see the module docstring).

    Args:
        clients: client_id, tier, mode of every function (the warehouse's clients rows).
        sizes: client -> (cpu, memory MB) of one member, as the live loop renders them.
        usage: the usage rows the live loop ingests from the trace, every metric its
            models read (a model given only concurrency predicts something else).
        predict: the live loop's prediction from usage before a clock.
    """
    ledger = Ledger.empty(trace, first_minute, minutes)
    index = {cid: i for i, cid in enumerate(ledger.client_ids)}
    pool = _SimPool(sizes)
    history: list[tuple[datetime, pl.DataFrame]] = []
    pending: list[tuple[datetime, CyclePlan]] = []
    queue = sorted(cycles, key=lambda c: c.clock)
    done = 0
    for offset in range(minutes):
        start = trace.ts(first_minute + offset)
        while queue and queue[0].clock <= start:
            cycle = queue.pop(0)
            decided = _plan(
                cycle, timing, clients, sizes, inventory, costs, predict, usage, pool, history
            )
            in_place = cycle.clock + timedelta(seconds=cycle.lead_seconds)
            pending.append((_ceil_minute(in_place, trace.start), decided))
            history.append((cycle.clock, decided.targets))
            done += 1
        for effect, decided in [p for p in pending if p[0] <= start]:
            pool.apply(decided, effect, used_since=effect - timedelta(seconds=timing.delay_seconds))
        pending = [p for p in pending if p[0] > start]
        warm = pool.warm_counts()
        for client_id, i in index.items():
            ledger.warm[i, offset] = warm.get(client_id, 0)
            need = int(ledger.need[i, offset])
            if need:
                ledger.cold[i, offset] = pool.serve(client_id, need, start)
    return Simulation(ledger, pool.events_frame(), pool.action_counts(), done)


# --- helpers ------------------------------------------------------------------------------


def _plan(
    cycle: SimCycle,
    timing: CycleTiming,
    clients: pl.DataFrame,
    sizes: dict[str, tuple[float, float]],
    inventory: pl.DataFrame,
    costs: CostModel,
    predict: Predictor,
    usage: pl.DataFrame,
    pool: _SimPool,
    history: list[tuple[datetime, pl.DataFrame]],
) -> CyclePlan:
    """The live loop's planning step at the cycle's clock, on the simulated pool."""
    known = usage.filter(pl.col("ts") < cycle.clock)
    exceedance, quantiles, profiles = predict(cycle.clock, known)
    since = timing.hold_since(cycle.clock)
    recent = [t for at, t in history if since < at <= cycle.clock and t.height]
    recent_targets = (
        pl.concat(recent)
        .group_by("client_id", "host")
        .agg((pl.col("active") + pl.col("shadow") + pl.col("cold")).max().alias("total"))
        if recent
        else None
    )
    # Members sized from the forecast as the live loop sizes them (declared bounds).
    limits = limits_from_inventory(inventory)
    ahead = upcoming(profiles, *timing.reach(cycle.clock, cycle.lead_seconds))
    sized = member_sizes(
        sizes,
        ahead,
        max_cpu=limits.max_cpu,
        max_memory_mb=limits.max_memory_mb,
        current=pool.member_sizes,
        settling=resized_clients(pool.sizes_since(since)),
    )
    pool.member_sizes = sized
    pool.size_history.append((cycle.clock, sized))
    return plan_cycle(
        planner_clients(clients, sized, ahead),
        inventory,
        cycle.clock,
        cycle.lead_seconds,
        timing,
        levels=need_levels(known, max_level=timing.exceedance_levels),
        usage=known,
        exceedance=exceedance,
        quantiles=quantiles,
        current_pool=pool.current(),
        recent_targets=recent_targets,
        costs=costs,
        plan_id=f"sim-{cycle.clock:%Y%m%dT%H%M}",
    )


def _ceil_minute(moment: datetime, origin: datetime) -> datetime:
    """The first minute boundary (of the trace's grid) at or after `moment`."""
    steps = math.ceil((moment - origin).total_seconds() / 60.0 - 1e-9)
    return origin + steps * MINUTE


class _SimPool:
    """An ideal runtime: members in memory, every action instant and successful."""

    def __init__(self, sizes: dict[str, tuple[float, float]]) -> None:
        self.members: dict[str, Member] = {}
        self.last_used: dict[str, datetime] = {}  # member -> end of the minute it served
        self.sizes = sizes
        # What the last plan sized members at (the live loop reads its last applied plan's).
        self.member_sizes: dict[str, tuple[float, float]] = {}
        # Every plan's sizes by its clock: what tells a size still settling (as the live
        # loop reads them from its applied plans).
        self.size_history: list[tuple[datetime, dict[str, tuple[float, float]]]] = []
        self.events: list[dict] = []
        self._ids = itertools.count()
        self._epoch = datetime(1970, 1, 1)

    def sizes_since(self, since: datetime) -> list[dict[str, tuple[float, float]]]:
        """The sizes of the plan in force at `since` (none: {}) and of every plan after it,
        as `warehouse.plans.read_recent_sizes` reads the live loop's."""
        before = [sizes for at, sizes in self.size_history if at <= since][-1:] or [{}]
        return before + [sizes for at, sizes in self.size_history if at > since]

    def specs(self) -> dict[str, dict]:
        return {
            cid: {
                "image": "simulated",
                "cpu": cpu,
                "memory_mb": mem,
                "labels": {LABEL_CONFIG_HASH: _SIM_HASH},
            }
            for cid, (cpu, mem) in self.sizes.items()
        }

    def current(self) -> pl.DataFrame | None:
        if not self.members:
            return None
        rows = [(m.client_id, m.tier, m.labels.get(LABEL_HOST)) for m in self.members.values()]
        frame = pl.DataFrame(rows, schema=["client_id", "tier", "host"], orient="row")
        return frame.group_by("client_id", "tier", "host").len("count")

    def apply(self, decided: CyclePlan, at: datetime, used_since: datetime) -> None:
        """Make the pool match the plan's targets, as the live apply step does (members
        used since `used_since` are kept, as the lease book keeps them live)."""
        recently = {m for m, last in self.last_used.items() if last >= used_since}
        actions = diff(
            targets_as_desired(decided.targets),
            self.specs(),
            list(self.members.values()),
            plan_id=decided.plan.plan_id,
            hold=targets_hold(decided.targets),
            recently_used=recently,
        )
        for action in actions:
            self._run(action, at)

    def warm_counts(self) -> dict[str, int]:
        counts: dict[str, int] = defaultdict(int)
        for member in self.members.values():
            if member.tier in ("active", "shadow"):
                counts[member.client_id] += 1
        return counts

    def serve(self, client_id: str, need: int, at: datetime) -> int:
        """Serve `need` requests as `activate_one` would; return how many were cold."""
        order = {"active": 0, "shadow": 1, "cold": 2}
        idle = sorted(
            (m for m in self.members.values() if m.client_id == client_id),
            key=lambda m: (order[m.tier], m.id),
        )
        cold = 0
        done = at + MINUTE  # the minute's requests end with it
        for member in idle[:need]:
            if member.tier == "cold":
                cold += 1
            if member.tier != "active":
                self._set_tier(member, "active")
                self._event(at, "activate", member, "request")
            self.last_used[member.id] = done
        for _ in range(need - min(need, len(idle))):
            host = next(
                (m.labels.get(LABEL_HOST) for m in idle), None
            )  # beside its others, as the API's cold start
            member = self._new(client_id, "active", host, at)
            self._event(at, "create", member, "request")
            self.last_used[member.id] = done
            cold += 1
        return cold

    def events_frame(self) -> pl.DataFrame:
        return pl.DataFrame(self.events, schema=EVENT_SCHEMA)

    def action_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(("create", "release", "pause", "unpause", "start"), 0)
        for event in self.events:
            if event["by"] != "controller":
                continue
            kind = event["kind"]
            counts[{"shadow": "pause", "activate": "unpause"}.get(kind, kind)] += 1
        return counts

    def _run(self, action: Action, at: datetime) -> None:
        if action.kind == "create":
            created = self._new(action.client_id, action.tier, action.host, at)
            self._event(at, "create", created, "controller")
            return
        member = self.members.get(action.member_id or "")
        if member is None:
            return
        if action.kind == "release":
            del self.members[member.id]
        else:
            self._set_tier(member, action.tier)
        self._event(at, action.kind, member, "controller")

    def _new(self, client_id: str, tier: str, host: str | None, at: datetime) -> Member:
        member_id = f"sim-{next(self._ids):06d}"
        labels = {LABEL_CONFIG_HASH: _SIM_HASH}
        if host is not None:
            labels[LABEL_HOST] = host
        member = Member(
            id=member_id,
            client_id=client_id,
            plan_id="simulated",
            tier=cast(TierName, tier),
            runtime="process",
            endpoint=None,
            created_at=at,
            labels=labels,
        )
        self.members[member_id] = member
        return member

    def _set_tier(self, member: Member, tier: str) -> None:
        from dataclasses import replace

        self.members[member.id] = replace(member, tier=cast(TierName, tier))

    def _event(self, at: datetime, kind: str, member: Member, by: str) -> None:
        self.events.append(
            {
                "at": at,
                "kind": kind,
                "member_id": member.id,
                "client_id": member.client_id,
                "host": member.labels.get(LABEL_HOST),
                "by": by,
            }
        )
