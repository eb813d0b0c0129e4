"""Serve "a request arrived": claim a warm member, else start one cold (the fallback).

Kept apart from the HTTP layer so the decision (warm or cold, which tier it came from, how
long the request waited) is plain code over a `ContainerRuntime`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from provisioning.apply import activate_one
from provisioning.reconciler import build_spec
from provisioning.runtime.base import (
    LABEL_PLAN,
    ContainerRuntime,
    Member,
    Tier,
    ms_since,
)
from provisioning.runtime.leases import LeaseBook

log = logging.getLogger(__name__)

# Plan id of members the API creates itself: no plan asked for them, the request did.
COLD_START_PLAN = "api-cold-start"

# Loads what a cold start needs: the client's rendered container config, and the host the
# latest plan placed the client on (None when unplanned).
ColdStartInputs = Callable[[], tuple[Mapping[str, Any], str | None]]


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
) -> ActivationOutcome:
    """Claim the client's warmest idle member; with none, create an active one, timed.

    The member is leased to the request for `lease_seconds` either way (busy: never released
    or handed to another request meanwhile). `members`: the client's members as listed
    moments ago, when the caller lists once for many requests. Raises the runtime's errors
    (PrewarmRuntimeError and subclasses) as they come.
    """
    claimed = activate_one(runtime, client_id, leases, lease_seconds, scope=scope, members=members)
    if claimed is not None:
        member, ms, before = claimed
        return ActivationOutcome(member, ms, cold_start=False, tier_before=before)
    config, host = cold_start_inputs()
    # A scope naming a plan lists only that plan's members: the new one must carry it too.
    plan_id = scope.get(LABEL_PLAN, COLD_START_PLAN)
    spec = build_spec(client_id, "active", host, config, plan_id, labels=scope)
    started = time.perf_counter()
    member = runtime.create(spec)
    ms = ms_since(started)
    leases.lease(member.id, lease_seconds)
    log.info("cold-started %s for %s in %.1f ms", member.id, client_id, ms)
    return ActivationOutcome(member, ms, cold_start=True, tier_before=None)
