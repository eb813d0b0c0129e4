"""Activations served by the API: one `pool_events` row each, and the member's running count.

`write_pool_state` records what a reconcile did; an activation for an incoming request
happens between reconciles, so it is recorded here, one request at a time: an 'activate'
event with the time the request waited, and an upsert of the member (now active) that adds
one to its `activations` and sets `last_activation_ms`. A cold-start fallback is recorded
the same way (its member is new), with the reason saying so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from warehouse.db import connect, naive_utc, transaction, utc_now

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Activation:
    """One activation attempt; `member_id` is None when no member could be had."""

    client_id: str
    runtime: str
    ms: float
    reason: str  # e.g. 'request: from shadow', 'request: cold start (no warm member)'
    member_id: str | None = None
    plan_id: str | None = None
    host: str | None = None
    endpoint: str | None = None
    created_at: datetime | None = None
    ok: bool = True
    error: str | None = None


def record_activation(
    path: Path,
    activation: Activation,
    *,
    happened_at: datetime | None = None,
    wait_s: float | None = None,
) -> None:
    """Append the 'activate' event; for a successful one, upsert its member as active."""
    at = naive_utc(happened_at) if happened_at is not None else utc_now()
    a = activation
    with connect(path, wait_s=wait_s) as con, transaction(con):
        con.execute(
            "INSERT INTO pool_events (member_id, client_id, plan_id, runtime, action, tier,"
            " host, ms, ok, error, reason, happened_at)"
            " VALUES (?, ?, ?, ?, 'activate', 'active', ?, ?, ?, ?, ?, ?)",
            [a.member_id, a.client_id, a.plan_id, a.runtime, a.host, a.ms, a.ok, a.error,
             a.reason, at],
        )  # fmt: skip
        if a.ok and a.member_id is not None:
            con.execute(
                """
                INSERT INTO pool_members (member_id, client_id, plan_id, runtime, tier, host,
                                          endpoint, created_at, activations,
                                          last_activation_ms, observed_at)
                VALUES (?, ?, ?, ?, 'active', ?, ?, ?, 1, ?, ?)
                ON CONFLICT (member_id) DO UPDATE SET
                    tier = 'active',
                    endpoint = excluded.endpoint,
                    host = coalesce(excluded.host, pool_members.host),
                    released_at = NULL,
                    activations = pool_members.activations + 1,
                    last_activation_ms = excluded.last_activation_ms,
                    observed_at = excluded.observed_at
                """,
                [a.member_id, a.client_id, a.plan_id, a.runtime, a.host, a.endpoint,
                 naive_utc(a.created_at) if a.created_at else None, a.ms, at],
            )  # fmt: skip
    log.debug("recorded activation of %s for %s (%.1f ms)", a.member_id, a.client_id, a.ms)
