"""Activations served by the API: one `pool_events` row each, and the member's running count.

`write_pool_state` records what a reconcile did; an activation for an incoming request
happens between reconciles, so it is recorded here: an 'activate' event with the time the
request waited, and an upsert of the member (now active) that adds one to its `activations`
and sets `last_activation_ms`. A cold-start fallback is recorded the same way (its member is
new), with the reason saying so. A refused or failed request is an event too (`ok` false,
no member, the reason saying why), so every request that reached activation leaves a row.

`record_activations` writes a batch in one transaction: the API queues outcomes and writes
them together (`api/recorder.py`, through `write_activations` on its own connection), so a
flood of requests costs a few warehouse writes, not one each. `read_activation_terms`
(`fetch_activation_terms` on an open connection) is what the API checks before activating:
the client's mode and how many members the newest applied plan gives it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb
import polars as pl

from core.times import naive_utc, utc_now
from warehouse.db import connect, fetch_one, insert_frame, transaction
from warehouse.plans import LATEST_APPLIED_PLAN

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class Activation:
    """One activation attempt; `member_id` is None when no member could be had."""

    client_id: str
    runtime: str
    ms: float
    reason: str  # e.g. 'request: from shadow', 'request: refused (at capacity ...)'
    member_id: str | None = None
    plan_id: str | None = None
    host: str | None = None
    endpoint: str | None = None
    created_at: datetime | None = None
    ok: bool = True
    error: str | None = None


@dataclass(frozen=True)
class ActivationTerms:
    """What bounds a client's activations: its mode and the members its plan gives it."""

    mode: str  # provision | forecast-only (core.vocabulary.MODES)
    planned_members: int  # active + shadow + cold over the newest applied plan's targets


def record_activation(
    path: Path,
    activation: Activation,
    *,
    happened_at: datetime | None = None,
    wait_s: float | None = None,
) -> None:
    """Append the 'activate' event; for a successful one, upsert its member as active."""
    record_activations(path, [(activation, happened_at or utc_now())], wait_s=wait_s)


def record_activations(
    path: Path,
    batch: Sequence[tuple[Activation, datetime]],
    *,
    wait_s: float | None = None,
) -> None:
    """Record (activation, when it happened) pairs in one transaction, in order."""
    if not batch:
        return
    with connect(path, wait_s=wait_s) as con:
        write_activations(con, batch)


def write_activations(
    con: duckdb.DuckDBPyConnection, batch: Sequence[tuple[Activation, datetime]]
) -> None:
    """`record_activations` on an open read-write connection (one transaction).

    Two statements whatever the batch's size: every event in one insert, and one upsert of
    each member served, as if its activations had been upserted one by one in order (a
    statement per outcome wrote ~170 outcomes a second: less than the API serves, so its
    queue only grew under a steady load)."""
    if not batch:
        return
    events = _events_frame(batch)
    served = _served_members(events)
    with transaction(con):
        insert_frame(con, "pool_events", events, columns=_EVENT_COLUMNS)
        if served.height:
            con.register("served_members", served.to_arrow())
            con.execute(
                """
                INSERT INTO pool_members (member_id, client_id, plan_id, runtime, tier, host,
                                          endpoint, created_at, activations,
                                          last_activation_ms, observed_at)
                SELECT member_id, client_id, plan_id, runtime, 'active', host, endpoint,
                       created_at, activations, last_activation_ms, observed_at
                FROM served_members
                ON CONFLICT (member_id) DO UPDATE SET
                    tier = 'active',
                    endpoint = excluded.endpoint,
                    host = coalesce(excluded.host, pool_members.host),
                    released_at = NULL,
                    activations = pool_members.activations + excluded.activations,
                    last_activation_ms = excluded.last_activation_ms,
                    observed_at = excluded.observed_at
                """
            )
            con.unregister("served_members")
    log.debug("recorded %d activation(s)", len(batch))


_EVENT_SCHEMA: dict[str, pl.DataType] = {
    "member_id": pl.String(),
    "client_id": pl.String(),
    "plan_id": pl.String(),
    "runtime": pl.String(),
    "action": pl.String(),
    "tier": pl.String(),
    "host": pl.String(),
    "endpoint": pl.String(),  # the member's, for its upsert; not a pool_events column
    "created_at": pl.Datetime("us"),  # the same
    "ms": pl.Float64(),
    "ok": pl.Boolean(),
    "error": pl.String(),
    "reason": pl.String(),
    "happened_at": pl.Datetime("us"),
}
_EVENT_COLUMNS = [c for c in _EVENT_SCHEMA if c not in ("endpoint", "created_at")]


def _events_frame(batch: Sequence[tuple[Activation, datetime]]) -> pl.DataFrame:
    """One row per outcome, in order: what `pool_events` keeps, and the member's fields."""
    rows = [
        (
            a.member_id,
            a.client_id,
            a.plan_id,
            a.runtime,
            "activate",
            "active",
            a.host,
            a.endpoint,
            naive_utc(a.created_at) if a.created_at else None,
            a.ms,
            a.ok,
            a.error,
            a.reason,
            naive_utc(at),
        )
        for a, at in batch
    ]
    return pl.DataFrame(rows, schema=_EVENT_SCHEMA, orient="row")


def _served_members(events: pl.DataFrame) -> pl.DataFrame:
    """Each member a successful activation served, once: what upserting its activations one
    by one in order would leave (its first outcome inserts it, each next one updates it).

    A new member keeps its first outcome's client, plan, runtime and creation time; the last
    outcome sets its endpoint, time and activation ms; its host is the last one known."""
    return (
        events.filter(pl.col("ok") & pl.col("member_id").is_not_null())
        .group_by("member_id", maintain_order=True)
        .agg(
            pl.col("client_id", "plan_id", "runtime", "created_at").first(),
            pl.col("host").drop_nulls().last(),
            pl.col("endpoint").last(),
            pl.len().cast(pl.Int32).alias("activations"),
            pl.col("ms").last().alias("last_activation_ms"),
            pl.col("happened_at").last().alias("observed_at"),
        )
    )


def read_activation_terms(
    path: Path, client_id: str, *, wait_s: float | None = None
) -> ActivationTerms:
    """The client's mode (provision when unknown) and its members in the newest applied plan."""
    with connect(path, read_only=True, wait_s=wait_s) as con:
        return fetch_activation_terms(con, client_id)


def fetch_activation_terms(con: duckdb.DuckDBPyConnection, client_id: str) -> ActivationTerms:
    """`read_activation_terms` on an open connection."""
    row = fetch_one(
        con,
        f"""
        SELECT (SELECT coalesce(max(mode), 'provision') FROM clients WHERE client_id = ?),
               (SELECT coalesce(sum(active + shadow + cold), 0) FROM plan_targets
                WHERE plan_id = ({LATEST_APPLIED_PLAN}) AND client_id = ?)
        """,
        [client_id, client_id],
    )
    assert row is not None  # scalar subqueries: always one row
    return ActivationTerms(mode=str(row[0]), planned_members=int(row[1]))
