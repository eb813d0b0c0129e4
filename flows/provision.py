"""Flow `provision-pools`: plan warm capacity from the latest forecasts and apply it.

plan (pure planner over forecasts, costs, inventory, current pool) -> record the plan ->
reconcile the runtime's members with the plan's current window -> record the pool. With
`dry_run` only the plan is written: nothing on the runtime is touched.

The planning clock is the data's: one bucket after the latest forecast origin (live data
ends at about now; a replayed trace plans at its own time).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import polars as pl
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from api.composite import client_base
from flows.artifacts import publish_plan
from flows.locks import warehouse_write
from flows.settings import Settings
from provisioning.apply import reconcile_once
from provisioning.costs import CostModel, load_cost_model
from provisioning.inventory import default_inventory, load_inventory
from provisioning.planner import Plan, PlannerConfig, base_rates, desired_members, plan_pools
from provisioning.runtime.base import ContainerRuntime
from provisioning.runtime.images import build_image
from provisioning.runtime.select import select_runtime
from provisioning.schema import anticipated_from_profile, compose_workload, render_container_config
from warehouse.db import utc_now
from warehouse.errors import PrewarmError
from warehouse.pools import (
    read_inventory,
    read_latest_forecasts,
    read_pool,
    read_schema_extensions,
    store_inventory,
    write_plan,
    write_pool_state,
)
from warehouse.reads import read_clients, read_recent_usage

log = logging.getLogger(__name__)


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


def _costs(settings: Settings) -> CostModel:
    return load_cost_model(settings.costs_path) if settings.costs_path else CostModel()


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


def _static_composites(clients: pl.DataFrame, extensions: dict[str, list[dict]]) -> dict[str, dict]:
    """Each client's composite without the anticipated section (it needs the plan)."""
    return {
        row["client_id"]: compose_workload(
            row["client_id"], extensions.get(row["client_id"], []), None, client_base(row)
        )
        for row in clients.iter_rows(named=True)
    }


def _final_configs(
    composites: dict[str, dict],
    extensions: dict[str, list[dict]],
    profiles: pl.DataFrame,
    plan: Plan,
) -> dict[str, dict]:
    """Render each client's container config, with the anticipated section from its next
    profile window and the plan's pool size for the first window."""
    first = plan.desired.filter(
        (pl.col("window_start") == plan.first_window) & (pl.col("tier") != "none")
    )
    pool_size = dict(first.group_by("client_id").agg(pl.col("count").sum()).iter_rows())
    next_window = {
        row["client_id"]: row
        for row in profiles.filter(pl.col("window_end") > plan.first_window)
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
        base = {
            k: v
            for k, v in composite.items()
            if k not in ("client_id", "extensions", "anticipated")
        }
        full = compose_workload(client_id, extensions.get(client_id, []), anticipated, base)
        configs[client_id] = render_container_config(full)
    return configs


@task(cache_policy=NONE)
def make_plan(settings: Settings, plan_id: str | None = None) -> tuple[Plan, dict[str, dict]]:
    """Plan pools for every client from the latest forecasts, costs, inventory and pool."""
    path = settings.warehouse_path
    clients = read_clients(path)
    if clients.height == 0:
        raise PrewarmError("No clients to provision for. Run `prewarm ingest` first.")
    quantiles, exceedance, profiles = read_latest_forecasts(path)
    quantiles = quantiles.filter(pl.col("metric") == "concurrency")
    if quantiles.height:
        origin = quantiles.get_column("origin").max()
        freq = int(clients.get_column("freq_seconds").min())
        now = origin + timedelta(seconds=freq)
    else:
        now = utc_now()
    extensions = read_schema_extensions(path)
    composites = _static_composites(clients, extensions)
    sized = clients.select("client_id", "tier", "mode").with_columns(
        pl.col("client_id")
        .replace_strict({c: v["cpu"] for c, v in composites.items()})
        .alias("container_cpu"),
        pl.col("client_id")
        .replace_strict({c: v["memory_mb"] for c, v in composites.items()})
        .alias("container_memory_mb"),
        # A client with no profile window is forecast idle: nothing to temper, so the
        # forecast is taken as it is (confidence 1).
        pl.col("client_id")
        .replace_strict(
            dict(profiles.group_by("client_id").agg(pl.col("confidence").max()).iter_rows()),
            default=1.0,
            return_dtype=pl.Float64,
        )
        .alias("confidence"),
    )
    pool = read_pool(path)
    current = (
        pool.filter(pl.col("tier").is_in(["active", "shadow", "cold"]))
        .group_by("client_id", "tier", "host")
        .len("count")
        if pool.height
        else None
    )
    config = PlannerConfig(tick_seconds=settings.freq_seconds)
    usage = read_recent_usage(path, 7)
    priors = (
        base_rates(usage.select("client_id", "concurrency"), max_level=settings.exceedance_levels)
        if "concurrency" in usage.columns
        else None
    )
    plan = plan_pools(
        sized,
        _inventory(settings),
        now,
        exceedance=exceedance if exceedance.height else None,
        quantiles=quantiles if quantiles.height else None,
        current_pool=current,
        priors=priors,
        costs=_costs(settings),
        config=config,
        plan_id=plan_id,
    )
    return plan, _final_configs(composites, extensions, profiles, plan)


def open_runtime(settings: Settings) -> ContainerRuntime:
    """The configured runtime with its image ready; `auto` falls back to processes when
    Docker is there but the worker image cannot be built."""
    runtime = select_runtime(settings.runtime, settings.data_dir)
    if runtime.name == "docker":
        try:
            build_image()
        except Exception as error:
            if settings.runtime == "docker":
                raise PrewarmError(
                    f"The Docker worker image could not be built: {error}"
                ) from error
            log.warning("Docker worker image unavailable (%s); using processes instead", error)
            runtime = select_runtime("process", settings.data_dir)
    return runtime


@task(cache_policy=NONE)
def apply_plan(
    settings: Settings, plan: Plan, configs: dict[str, dict], untouchable: set[str]
) -> Any:
    """Reconcile the runtime with the plan's current window and record the pool."""
    runtime = open_runtime(settings)
    desired = desired_members(plan, plan.created_at)
    result = reconcile_once(
        runtime, desired, configs, untouchable, plan.plan_id, scope=settings.pool_scope
    )
    observed_at = utc_now()
    events = result.pool_events
    if "at" in events.columns:
        events = events.rename({"at": "happened_at"})
    events = events.with_columns(
        pl.lit(plan.plan_id).alias("plan_id"),
        pl.lit(observed_at).cast(pl.Datetime("us")).alias("happened_at"),
    )
    with warehouse_write():
        write_pool_state(
            settings.warehouse_path, runtime.name, events, result.pool_members, observed_at
        )
    return runtime.name, result


@flow(name="provision-pools")
def provision_pools(dry_run: bool = False) -> ProvisionSummary:
    """Plan warm pools for every client and, unless dry_run, make the runtime match."""
    settings = Settings()
    logger = get_run_logger()
    # Unique per run: the planner's default id comes from the data clock, which repeats.
    plan, configs = make_plan(settings, plan_id=f"plan-{utc_now():%Y%m%dT%H%M%S%f}")
    with warehouse_write():
        write_plan(settings.warehouse_path, plan, dry_run, configs)
    forecast_only = sorted(
        plan.desired.filter(pl.col("mode") == "forecast-only")
        .get_column("client_id")
        .unique()
        .to_list()
    )
    now_rows = plan.desired.filter(
        (pl.col("window_start") == plan.first_window)
        & (pl.col("mode") == "provision")
        & (pl.col("tier") != "none")
    )
    summary = ProvisionSummary(
        plan_id=plan.plan_id,
        dry_run=dry_run,
        runtime=None,
        totals=plan.totals,
        desired=dict(now_rows.group_by("tier").agg(pl.col("count").sum()).iter_rows()),
        unserved=int(plan.unserved.get_column("instances").sum()) if plan.unserved.height else 0,
        forecast_only=forecast_only,
    )
    if dry_run:
        logger.info("dry run: plan %s recorded, runtime untouched", plan.plan_id)
        publish_plan(summary, plan.desired)
        return summary
    runtime_name, result = apply_plan(settings, plan, configs, set(forecast_only))
    summary.runtime = runtime_name
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
