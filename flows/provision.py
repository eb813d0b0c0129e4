"""Flow `provision-pools`: plan warm capacity from the latest forecasts and apply it.

plan (pure planner over forecasts, costs, inventory, current pool) -> targets (the plan's
windows the applied pool will serve, the reactive floor and the stabilising hold:
`provisioning.targets`) -> record the plan with its targets -> make the runtime match the
targets -> record the pool. The plan is the only thing that decides which members exist;
`prewarm-cycle` runs the same two tasks on its clock. With `dry_run` only the plan is
written: nothing on the runtime is touched and nobody ever applies it.

The clock is the feed's (`warehouse.feeds.feed_clock`): the wall clock for a live feed,
the replay clock for a trace replayed live, and the data's own clock (one bucket after the
newest usage) when the warehouse follows no feed. The plan's first window is the first
tick at or after the moment the pool is expected to be in place (clock + lead): never a
window that has already begun.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property, partial
from typing import Any

import polars as pl
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from api.composite import client_base
from core.errors import PrewarmError
from core.times import utc_now
from core.vocabulary import TIERS
from flows.artifacts import publish_plan
from flows.clock import clock_rate, expected_lead_seconds, planning_clock
from flows.fleet import fleet_inventory
from flows.locks import warehouse_write
from flows.progress import tracker
from flows.runtime import bound_runtime, open_pool_runtime, open_runtime_named
from flows.settings import Settings
from flows.task_inputs import unwalked
from provisioning.apply import ApplyResult, members_frame, reconcile_once
from provisioning.config_memo import ConfigMemo, inputs_key
from provisioning.costs import CostModel, load_cost_model
from provisioning.cycle_plan import CycleTiming, plan_cycle, planner_clients
from provisioning.inventory import default_inventory, load_inventory
from provisioning.member_size import member_sizes, resized_clients, upcoming
from provisioning.planner import Plan
from provisioning.runtime.base import LABEL_MANAGED, ContainerRuntime
from provisioning.runtime.leases import LeaseBook, lease_book_path
from provisioning.schema import anticipated_from_profile, compose_workload
from provisioning.schema_checks import SchemaLimits, SchemaRejected, limits_from_inventory
from provisioning.schema_model import SchemaError
from provisioning.schema_render import render_container_config
from provisioning.targets import targets_as_desired, targets_hold
from provisioning.toml_file import read_toml
from warehouse.clients import read_clients, read_schema_extensions
from warehouse.feeds import read_feed
from warehouse.inventory import read_inventory, store_inventory
from warehouse.plans import read_applied_sizes, read_recent_sizes, read_recent_targets, write_plan
from warehouse.pools import read_pool, write_pool_state
from warehouse.predictions import read_latest_forecasts
from warehouse.usage import read_need_levels, read_recent_concurrency

log = logging.getLogger(__name__)

# Planner settings a `[planner]` section may override; the window grid is the cycle's.
_CYCLE_OWNED = ("tick_seconds", "windows", "buffer_seconds")
# The planner's base rates: how often each client needed each level over its last week.
BASE_RATE_DAYS = 7
# Composites and rendered configs of this process's plans, reused while their inputs are
# equal: most clients' profiles are the same from one cycle to the next.
_STATIC = ConfigMemo()
_RENDERED = ConfigMemo()


@dataclass
class PlannedPool:
    """A plan, the members it wants now (targets) and every client's container config."""

    plan: Plan
    targets: pl.DataFrame
    configs: dict[str, dict]
    clock: datetime
    span: tuple[datetime, datetime]
    clock_rate: float = 1.0  # clock seconds per wall second (a trace replayed live)

    @cached_property
    def untouchable(self) -> set[str]:
        """Forecast-only clients: planned and recorded, never touched (a filter of the plan,
        computed once: callers test every client against it)."""
        return set(
            self.plan.desired.filter(pl.col("mode") == "forecast-only")
            .get_column("client_id")
            .unique()
            .to_list()
        )


@dataclass
class ProvisionSummary:
    """What one provisioning run planned and did."""

    plan_id: str
    dry_run: bool
    runtime: str | None
    totals: dict[str, Any]
    desired: dict[str, int] = field(default_factory=dict)  # tier -> containers now
    actions: dict[str, int] = field(default_factory=dict)  # action kind -> count
    failures: list[str] = field(default_factory=list)
    unserved: int = 0
    forecast_only: list[str] = field(default_factory=list)
    drained: int = 0


def _costs(settings: Settings) -> CostModel:
    return load_cost_model(settings.costs_path) if settings.costs_path else CostModel()


def cycle_timing(settings: Settings) -> CycleTiming:
    """The cycle's clock grid and planner overrides, from settings."""
    return CycleTiming(
        tick_seconds=settings.freq_seconds,
        cycle_seconds=settings.cycle_seconds,
        delay_seconds=settings.scale_down_delay_seconds,
        exceedance_levels=settings.exceedance_levels,
        planner=_planner_overrides(settings),
        horizon_seconds=settings.horizon_steps * settings.freq_seconds,
    )


def _planner_overrides(settings: Settings) -> dict[str, Any]:
    """The `[planner]` section of the costs file (warm tiers, reserve...), if any."""
    if not settings.costs_path:
        return {}
    section = read_toml(settings.costs_path).get("planner", {})  # unreadable: one clear line
    if not isinstance(section, dict):
        raise PrewarmError(f"{settings.costs_path}: [planner] must be a table")
    ignored = sorted(set(section) & set(_CYCLE_OWNED))
    if ignored:
        log.warning("[planner] %s ignored: the cycle sets the window grid", ", ".join(ignored))
    return {k: v for k, v in section.items() if k not in _CYCLE_OWNED}


def _inventory(settings: Settings) -> pl.DataFrame:
    """The configured inventory file, else what is stored, else this machine (then stored)."""
    path = settings.warehouse_path
    if settings.inventory_path:
        inventory = load_inventory(settings.inventory_path)
        with warehouse_write():
            store_inventory(path, inventory, str(settings.inventory_path))
        return inventory
    stored = read_inventory(path)
    if stored.height:
        return stored
    inventory = default_inventory()
    with warehouse_write():
        store_inventory(path, inventory, "default")
    return inventory


def _static_composites(
    clients: pl.DataFrame, extensions: dict[str, list[dict]], limits: SchemaLimits
) -> dict[str, dict]:
    """Each client's composite without the anticipated section (it needs the plan). A client
    whose schema is refused gets none: it is planned no member (any it has are released),
    and every other client is provisioned as usual."""
    composites = {}
    for row in clients.iter_rows(named=True):
        client_id = row["client_id"]
        own, base = extensions.get(client_id, []), client_base(row)
        try:
            composites[client_id] = _STATIC.get(
                client_id,
                (inputs_key(own, base), limits),
                partial(compose_workload, client_id, own, None, base, limits=limits),
            )
        except (SchemaError, SchemaRejected) as error:
            log.warning("client %s gets no members: its schema is refused: %s", client_id, error)
    return composites


def _final_configs(
    composites: dict[str, dict],
    extensions: dict[str, list[dict]],
    profiles: pl.DataFrame,
    targets: pl.DataFrame,
    first_window: datetime,
    limits: SchemaLimits,
    sizes: dict[str, tuple[float, float]],
) -> dict[str, dict]:
    """Render each client's container config, with the anticipated section from its next
    profile window, the pool size its targets hold now and the size its members get."""
    pool_size = dict(
        targets.group_by("client_id")
        .agg((pl.col("active") + pl.col("shadow") + pl.col("cold")).sum())
        .iter_rows()
    )
    next_window = {
        row["client_id"]: row
        for row in profiles.filter(pl.col("window_end") > first_window)
        .sort("window_start")
        .unique("client_id", keep="first")
        .iter_rows(named=True)
    }
    configs = {}
    for client_id, composite in composites.items():
        anticipated = None
        if client_id in next_window:
            anticipated = anticipated_from_profile(
                next_window[client_id], pool_size.get(client_id, 0)
            )
        # Only a size the forecast moved is stated: a member at its declared size keeps
        # the config hash it had before sizing existed.
        size = sizes.get(client_id)
        if size == (composite["cpu"], composite["memory_mb"]):
            size = None
        own = extensions.get(client_id, [])
        configs[client_id] = _RENDERED.get(
            client_id,
            (inputs_key(composite, own, anticipated, size), limits),
            partial(_rendered, client_id, composite, own, anticipated, size, limits),
        )
    return configs


def _rendered(
    client_id: str,
    composite: dict,
    extensions: list[dict],
    anticipated: dict | None,
    size: tuple[float, float] | None,
    limits: SchemaLimits,
) -> dict:
    """The container config of a client's static `composite` with its anticipated section
    and, when the forecast moved it, its size."""
    base = {
        k: v
        for k, v in composite.items()
        if k not in ("client_id", "extensions", "anticipated", "size")
    }
    full = compose_workload(client_id, extensions, anticipated, base, limits=limits)
    if size is not None:
        full = {**full, "size": {"cpu": size[0], "memory_mb": size[1]}}
    return render_container_config(full)


def _current_pool(settings: Settings) -> pl.DataFrame | None:
    """Members per client, tier and host as the pool's runtime lists them now (members
    requests created since the last apply included: the plan keeps what exists cheaper than
    it warms anew); what the warehouse last recorded when the runtime cannot be asked."""
    bound = bound_runtime(settings)
    members = None
    if bound is not None:
        try:
            listed = open_runtime_named(bound, settings, image=False).list(
                {LABEL_MANAGED: "1", **settings.pool_scope}
            )
            members = members_frame(listed, "current")
        except PrewarmError as error:  # the apply step will say so loudly
            log.warning("planning from the recorded pool: the runtime did not answer (%s)", error)
    if members is None:
        members = read_pool(settings.warehouse_path)
    members = members.filter(pl.col("tier").is_in(["active", "shadow", "cold"]))
    if members.height == 0:
        return None
    return members.group_by("client_id", "tier", "host").len("count")


@task(cache_policy=NONE)
def make_plan(
    settings: Settings,
    clock: datetime,
    lead_seconds: float,
    plan_id: str | None = None,
    clock_rate: float = 1.0,
) -> PlannedPool:
    """Plan pools for every client from the latest forecasts, then the targets of the span
    from clock + lead to one cycle later (see `provisioning.targets`)."""
    path = settings.warehouse_path
    clients = read_clients(path)
    if clients.height == 0:
        raise PrewarmError("No clients to provision for. Run `prewarm ingest` first.")
    quantiles, exceedance, profiles = read_latest_forecasts(path)
    quantiles = quantiles.filter(pl.col("metric") == "concurrency")
    extensions, unreadable = read_schema_extensions(path)
    for client_id, why in unreadable.items():
        log.warning("client %s gets no members: %s", client_id, why)
    clients = clients.filter(~pl.col("client_id").is_in(list(unreadable)))
    inventory = _inventory(settings)
    limits = limits_from_inventory(inventory, settings.allowed_image_list)
    usable = fleet_inventory(settings, inventory)
    if usable.height == 0:
        raise PrewarmError(
            "No host can take members this cycle (see `prewarm inventory`): every engine is "
            "down or has no capacity left after its reserve. Nothing was changed."
        )
    composites = _static_composites(clients, extensions, limits)
    # Only clients with a composite are planned: the others' members are released.
    planned = pl.col("client_id").is_in(list(composites))
    clients, quantiles, profiles = (f.filter(planned) for f in (clients, quantiles, profiles))
    timing = cycle_timing(settings)
    ahead = upcoming(profiles, *timing.reach(clock, lead_seconds))
    # Plans by when they were applied (wall clock, the delay scaled to it): a change of
    # clock between plans (the demo's, then a live feed's) holds too.
    held_since = utc_now() - (clock - timing.hold_since(clock)) / clock_rate
    sizes = member_sizes(
        {client_id: (c["cpu"], c["memory_mb"]) for client_id, c in composites.items()},
        ahead,
        max_cpu=limits.max_cpu,
        max_memory_mb=limits.max_memory_mb,
        sizing={client_id: c.get("sizing") for client_id, c in composites.items()},
        current=read_applied_sizes(path),
        settling=resized_clients(read_recent_sizes(path, held_since)),
    )
    sized = planner_clients(clients, sizes, ahead)
    current = _current_pool(settings)
    recent = read_recent_targets(path, held_since)
    try:
        decided = plan_cycle(
            sized,
            usable,
            clock,
            lead_seconds,
            timing,
            levels=read_need_levels(path, BASE_RATE_DAYS, timing.exceedance_levels).filter(planned),
            usage=read_recent_concurrency(path, BASE_RATE_DAYS, timing.floor_since(clock)).filter(
                planned
            ),
            exceedance=exceedance.filter(planned),
            quantiles=quantiles,
            current_pool=current.filter(planned) if current is not None else None,
            recent_targets=recent.filter(planned),
            costs=_costs(settings),
            plan_id=plan_id,
        )
    except ValueError as error:  # a bad [planner] override: the message names the key
        where = f"{settings.costs_path}: [planner]" if settings.costs_path else "planning"
        raise PrewarmError(f"{where}: {error}") from None
    targets, first_window = decided.targets, decided.span[0]
    configs = _final_configs(composites, extensions, profiles, targets, first_window, limits, sizes)
    return PlannedPool(decided.plan, targets, configs, clock, decided.span, clock_rate)


@task(cache_policy=NONE)
def apply_targets(settings: Settings, planned: PlannedPool) -> tuple[str, ApplyResult]:
    """Make the pool's runtime match the targets (busy members drain) and record the pool."""
    runtime = open_pool_runtime(settings)
    result = apply_on(runtime, settings, planned)
    return runtime.name, result


def apply_on(runtime: ContainerRuntime, settings: Settings, planned: PlannedPool) -> ApplyResult:
    """Reconcile `runtime` with the targets of `planned` and record what it did (stray
    workers no record owns, left by a killed run, are stopped first)."""
    sweep = getattr(runtime, "sweep_strays", None)
    if callable(sweep) and (swept := sweep()):
        log.warning("stopped %d stray workers no record owned: %s", len(swept), swept)
    specs = {cid: cfg for cid, cfg in planned.configs.items() if cid not in planned.untouchable}
    bar = tracker("Applying pool changes")
    result = reconcile_once(
        runtime,
        targets_as_desired(planned.targets),
        specs,
        planned.untouchable,
        planned.plan.plan_id,
        scope=settings.pool_scope,
        hold=targets_hold(planned.targets),
        leases=LeaseBook(lease_book_path(settings.data_dir, settings.pool)),
        # The lease book keeps wall time; the delay is on the plan's clock.
        keep_used_seconds=settings.scale_down_delay_seconds / planned.clock_rate,
        parallel=settings.apply_parallel,
        on_progress=(lambda done, total, _event: bar(done, total)) if bar else None,
    )
    observed_at = utc_now()
    events = result.pool_events
    if "at" in events.columns:
        events = events.rename({"at": "happened_at"})
    events = events.with_columns(
        pl.lit(planned.plan.plan_id).alias("plan_id"),
        pl.lit(observed_at).cast(pl.Datetime("us")).alias("happened_at"),
    )
    with warehouse_write():
        write_pool_state(
            settings.warehouse_path, runtime.name, events, result.pool_members, observed_at
        )
    return result


def action_counts(events: pl.DataFrame) -> dict[str, int]:
    """Runtime actions by what they did: create, release, pause, unpause, start."""
    counts = dict.fromkeys(("create", "release", "pause", "unpause", "start"), 0)
    for row in events.filter(pl.col("ok")).iter_rows(named=True):
        kind = row["action"]
        if kind == "shadow":
            counts["pause"] += 1
        elif kind == "activate":
            counts["unpause" if row.get("reason") != "start cold to active" else "start"] += 1
        elif kind in counts:
            counts[kind] += 1
    return counts


def record_plan(
    settings: Settings, planned: PlannedPool, dry_run: bool, cycle_id: str | None = None
) -> int:
    """Write the plan and its targets; return its sequence number."""
    with warehouse_write():
        return write_plan(
            settings.warehouse_path,
            planned.plan,
            dry_run,
            planned.configs,
            planned.targets,
            cycle_id=cycle_id,
        )


@flow(name="provision-pools")
def provision_pools(dry_run: bool = False, at: datetime | None = None) -> ProvisionSummary:
    """Plan warm pools for every client and, unless dry_run, make the runtime match.

    `at` pins the planning clock (the demo plans for the hour it holds back)."""
    settings = Settings()
    logger = get_run_logger()
    clock = at or planning_clock(settings)
    # Unique per run: the planner's default id comes from the data clock, which repeats.
    feed = read_feed(settings.warehouse_path)
    planned = make_plan(
        settings,
        clock,
        expected_lead_seconds(settings, feed),
        plan_id=f"plan-{utc_now():%Y%m%dT%H%M%S%f}",
        clock_rate=clock_rate(feed),
    )
    plan = planned.plan
    record_plan(settings, planned, dry_run)
    summary = ProvisionSummary(
        plan_id=plan.plan_id,
        dry_run=dry_run,
        runtime=None,
        totals=plan.totals,
        desired={
            t: int(planned.targets.get_column(t).sum()) for t in TIERS if planned.targets.height
        },
        unserved=int(plan.unserved.get_column("instances").sum()) if plan.unserved.height else 0,
        forecast_only=sorted(planned.untouchable),
    )
    if dry_run:
        logger.info("dry run: plan %s recorded, runtime untouched", plan.plan_id)
        publish_plan(summary, plan.desired)
        return summary
    runtime_name, result = apply_targets(settings, unwalked(planned))
    summary.runtime = runtime_name
    summary.drained = len(result.drained)
    events = result.pool_events
    if events.height:
        summary.actions = dict(events.group_by("action").len().iter_rows())
        failed = events.filter(~pl.col("ok"))
        summary.failures = [
            f"{r['action']} {r['client_id']}: {r['error']}" for r in failed.iter_rows(named=True)
        ]
    logger.info(
        "plan %s applied on %s: %s", plan.plan_id, runtime_name, summary.actions or "no changes"
    )
    publish_plan(summary, plan.desired)
    return summary
