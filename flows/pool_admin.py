"""What `prewarm pools` shows and does: the pool on its runtime, members found elsewhere,
churn, and the operator's explicit moves (release everything, release strays, migrate).

A pool lives on one runtime (`flows.runtime`). Members carrying the pool's label on the
*other* runtime are strays (left by a runtime switch of an older prewarm, or by hand): they
are listed, never silently adopted or killed; the operator releases them or moves the whole
pool there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from core.errors import PrewarmError
from core.times import utc_now
from flows.locks import warehouse_write
from flows.runtime import bound_runtime, open_runtime_named
from flows.settings import Settings
from provisioning.apply import reconcile_once, release_all
from provisioning.runtime.base import LABEL_MANAGED, ContainerRuntime, Member, RuntimeName
from provisioning.runtime.leases import LeaseBook, lease_book_path
from provisioning.runtime.select import PROCESS_STATE_FILE, docker_unavailable_reason
from provisioning.targets import targets_as_desired, targets_hold
from warehouse.db import connect, fetch_frame
from warehouse.plans import read_applied_targets
from warehouse.pools import rebind_pool_runtime, write_pool_state

log = logging.getLogger(__name__)

RUNTIMES: tuple[RuntimeName, ...] = ("docker", "process")


@dataclass
class PoolView:
    """The pool as its runtime reports it, plus strays elsewhere and recent churn."""

    runtime: str | None
    members: list[Member] = field(default_factory=list)
    strays: dict[str, list[Member]] = field(default_factory=dict)
    churn: pl.DataFrame = field(default_factory=pl.DataFrame)


@dataclass
class Migration:
    """What moving a pool did."""

    source: str
    target: str
    created: int
    released: int
    drained: list[str]


def _selector(settings: Settings) -> dict[str, str]:
    return {LABEL_MANAGED: "1", **settings.pool_scope}


def _members_on(name: RuntimeName, settings: Settings) -> list[Member] | None:
    """The pool's members on runtime `name`, or None when that runtime cannot be asked
    (no Docker daemon; no process pool ever made here). Never creates anything."""
    if name == "process":
        if not (settings.data_dir / PROCESS_STATE_FILE).exists():
            return None
    elif docker_unavailable_reason() is not None:
        return None
    from provisioning.runtime.select import select_runtime

    return select_runtime(name, settings.data_dir).list(_selector(settings))


def view_pool(settings: Settings) -> PoolView:
    """The pool on its recorded runtime, strays on the others, churn of the last hours."""
    bound = bound_runtime(settings)
    view = PoolView(runtime=bound)
    if bound is not None:
        view.members = open_runtime_named(bound, settings, image=False).list(_selector(settings))
    for name in RUNTIMES:
        if name == bound:
            continue
        found = _members_on(name, settings)
        if found:
            view.strays[name] = found
    view.churn = read_churn(settings.warehouse_path)
    return view


def read_churn(path: Path, hours: int = 6) -> pl.DataFrame:
    """Members created and released per hour (the `v_churn` view), newest first."""
    if not Path(path).exists():
        return pl.DataFrame()
    with connect(path, read_only=True) as con:
        return fetch_frame(con, "SELECT * FROM v_churn ORDER BY hour DESC LIMIT ?", [hours])


def release_everything(settings: Settings) -> tuple[str, int]:
    """Release every member of the pool on its runtime; (runtime, how many)."""
    bound = bound_runtime(settings)
    if bound is None:
        return "none", 0
    runtime = open_runtime_named(bound, settings)
    return runtime.name, release_all(runtime, settings.pool_scope)


def release_strays(settings: Settings) -> dict[str, int]:
    """Release the pool's members on every runtime but its own; how many per runtime."""
    bound = bound_runtime(settings)
    released: dict[str, int] = {}
    for name in RUNTIMES:
        if name == bound or _members_on(name, settings) is None:
            continue
        from provisioning.runtime.select import select_runtime

        runtime = select_runtime(name, settings.data_dir)
        released[name] = release_all(runtime, settings.pool_scope)
    return released


def migrate_pool(settings: Settings, target: str) -> Migration:
    """Move the pool to `target`: warm the newest applied plan's targets there first, then
    release the old runtime's members (a member serving a request is left to drain)."""
    if target not in RUNTIMES:
        raise PrewarmError(f"Unknown runtime {target!r}: use docker or process.")
    source = bound_runtime(settings)
    if source == target:
        raise PrewarmError(f"Pool {settings.pool!r} already lives on {target}: nothing to move.")
    new_runtime = open_runtime_named(target, settings)  # raises when it does not answer
    with warehouse_write():
        rebind_pool_runtime(
            settings.warehouse_path, settings.pool, target, f"migrated from {source or 'none'}"
        )
    created = 0
    plan_id, targets, specs = read_applied_targets(settings.warehouse_path)
    leases = LeaseBook(lease_book_path(settings.data_dir, settings.pool))
    if plan_id is not None and targets.height:
        result = reconcile_once(
            new_runtime,
            targets_as_desired(targets),
            specs,
            set(targets.get_column("client_id")) - set(specs),
            plan_id,
            scope=settings.pool_scope,
            hold=targets_hold(targets),
            leases=leases,
        )
        _record(settings, new_runtime, result.pool_events, result.pool_members)
        created = int((result.pool_events.get_column("action") == "create").sum())
    released, drained = 0, []
    if source is not None:
        old = open_runtime_named(source, settings)
        busy = leases.busy()
        for member in old.list(_selector(settings)):
            if member.id in busy or not leases.reserve(member.id):
                drained.append(member.id)
                continue
            old.release(member.id)
            released += 1
        _record(settings, old, pl.DataFrame(), _listed(old, settings))
    log.info(
        "pool %s moved %s -> %s: %d created, %d released",
        settings.pool,
        source,
        target,
        created,
        released,
    )
    return Migration(source or "none", target, created, released, drained)


def _listed(runtime: ContainerRuntime, settings: Settings) -> pl.DataFrame:
    from provisioning.apply import members_frame

    return members_frame(runtime.list(_selector(settings)), "migration")


def _record(
    settings: Settings, runtime: ContainerRuntime, events: pl.DataFrame, members: pl.DataFrame
) -> None:
    observed_at = utc_now()
    if events.height:
        events = events.rename({"at": "happened_at"}).with_columns(
            pl.lit(observed_at).cast(pl.Datetime("us")).alias("happened_at"),
            pl.lit("migration").alias("plan_id"),
        )
    with warehouse_write():
        write_pool_state(settings.warehouse_path, runtime.name, events, members, observed_at)
