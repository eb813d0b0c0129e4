"""The plan's output frames: desired pool rows, unserved rows, totals, desired members."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

from core.times import naive_utc
from core.vocabulary import TIERS
from provisioning.planner.config import (
    _EPS,
    _NONE,
    _REASONS,
    DESIRED_SCHEMA,
    MEMBERS_SCHEMA,
    OPTIONS,
    UNSERVED_SCHEMA,
    Plan,
    PlanWindowError,
)
from provisioning.planner.decision import _WindowRecord
from provisioning.planner.tables import _ClientTable, _HostTable


def desired_members(plan: Plan, at: datetime) -> pl.DataFrame:
    """The containers that should exist at `at`: the window covering at + buffer.

    Provisioning clients only (forecast-only rows are never applied), tiers active, shadow
    and cold; columns client_id, tier, host, count. Raises PlanWindowError when at + buffer
    falls outside the plan: an empty answer would tell the apply step to release everything.
    """
    target = naive_utc(at) + timedelta(seconds=plan.buffer_seconds)
    step = timedelta(seconds=plan.tick_seconds)
    index = (target - plan.first_window) // step
    if not 0 <= index < plan.windows:
        end = plan.first_window + plan.windows * step
        raise PlanWindowError(
            f"plan {plan.plan_id} covers [{plan.first_window}, {end}); "
            f"at + buffer = {target} is outside it: compute a new plan"
        )
    window_start = plan.first_window + index * step
    return (
        plan.desired.filter(
            (pl.col("window_start") == window_start)
            & (pl.col("mode") == "provision")
            & pl.col("tier").is_in(TIERS)
            & (pl.col("count") > 0)
        )
        .group_by("client_id", "tier", "host")
        .agg(pl.col("count").sum())
        .sort("client_id", "tier", "host")
        .select(list(MEMBERS_SCHEMA))
        .cast(pl.Schema(MEMBERS_SCHEMA))
    )


def _desired_frame(
    records: list[_WindowRecord],
    table: _ClientTable,
    hosts: _HostTable,
    windows: list[datetime],
    tick: timedelta,
    plan_id: str,
    action: float,
) -> pl.DataFrame:
    """Items aggregated per (window, client, tier, host), plus the 'none' rows.

    Sorted by window, client_id, tier in warmth order (none, cold, shadow, active), then
    hosts in placement order (cheapest first).
    """
    parts = [_row_arrays(record, table, action) for record in records]
    rows = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    n_hosts = hosts.size + 1  # host code -1 ('none' rows) shifts to 0
    key = ((rows["w"] * table.size + rows["c"]) * 4 + rows["o"]) * n_hosts + rows["h"] + 1
    _, first, group = np.unique(key, return_index=True, return_inverse=True)
    groups = first.size
    priority = np.full(groups, -np.inf)
    np.maximum.at(priority, group, rows["priority"])
    w, c, o, h = (rows[name][first] for name in ("w", "c", "o", "h"))
    starts = pl.Series(windows, dtype=pl.Datetime("us"))
    return pl.DataFrame(
        {
            "plan_id": pl.repeat(plan_id, groups, eager=True, dtype=pl.String),
            "client_id": pl.Series(table.ids, dtype=pl.String).gather(c),
            "window_start": starts.gather(w),
            "window_end": starts.gather(w) + tick,
            "tier": pl.Series(OPTIONS, dtype=pl.String).gather(o),
            "count": np.bincount(group, weights=rows["count"], minlength=groups).astype(np.int64),
            "host": pl.Series([*hosts.names, None], dtype=pl.String).gather(
                np.where(h < 0, hosts.size, h)
            ),
            "mode": pl.Series(table.modes, dtype=pl.String).gather(c),
            "expected_cost": np.bincount(group, weights=rows["cost"], minlength=groups),
            "expected_cold_starts": np.bincount(group, weights=rows["cold"], minlength=groups),
            "priority": priority,
        },
        schema=DESIRED_SCHEMA,
    )


def _row_arrays(record: _WindowRecord, table: _ClientTable, action: float) -> dict[str, Any]:
    """One window's warm items and 'none' rows (demand left to cold starts) as arrays."""
    warm = record.option != _NONE
    m = int(warm.sum())
    none = np.flatnonzero(record.cold_p > _EPS)
    cold = record.cold_p[none]
    return {
        "w": np.full(m + none.size, record.window, dtype=np.int64),
        "c": np.concatenate([record.client[warm], none]).astype(np.int64),
        "o": np.concatenate([record.option[warm], np.full(none.size, _NONE)]).astype(np.int64),
        "h": np.concatenate([record.host[warm], np.full(none.size, -1)]).astype(np.int64),
        "count": np.concatenate([np.ones(m), np.zeros(none.size)]),
        "cost": np.concatenate([record.cost[warm], cold * (table.cold_penalty[none] + action)]),
        "cold": np.concatenate([np.zeros(m), cold]),
        "priority": np.concatenate([record.priority[warm], np.zeros(none.size)]),
    }


def _unserved_frame(
    records: list[_WindowRecord],
    beyond: pl.DataFrame,
    table: _ClientTable,
    windows: list[datetime],
    plan_id: str,
    levels: int,
) -> pl.DataFrame:
    parts = []
    for record in records:
        hit = record.reason >= 0
        parts.append(
            pl.DataFrame(
                {
                    "_w": np.full(int(hit.sum()), record.window, dtype=np.int64),
                    "_c": record.client[hit].astype(np.int64),
                    "_wanted": record.wanted[hit].astype(np.int64),
                    "_o": record.option[hit].astype(np.int64),
                    "_r": record.reason[hit].astype(np.int64),
                }
            )
        )
    capacity = (
        pl.concat(parts)
        .group_by("_w", "_c", "_wanted", "_o", "_r")
        .agg(pl.len().cast(pl.Int64).alias("instances"))
        .with_columns(
            _decode("_wanted", OPTIONS).alias("tier"),
            _decode("_o", OPTIONS).alias("placed_as"),
            _decode("_r", _REASONS).alias("reason"),
        )
        .select("_w", "_c", "tier", "placed_as", "instances", "reason")
    )
    truncated = beyond.select(
        "_w",
        "_c",
        pl.lit("any").alias("tier"),
        pl.lit("none").alias("placed_as"),
        "instances",
        pl.format(
            "demand above max_level: p99 needs {} instances, the plan covers {}",
            pl.col("instances") + levels,
            pl.lit(levels),
        ).alias("reason"),
    )
    frame = pl.concat([capacity, truncated], how="vertical_relaxed")
    starts = pl.Series("window_start", windows, dtype=pl.Datetime("us"))
    ids = pl.Series("client_id", table.ids, dtype=pl.String)
    modes = pl.Series("mode", table.modes, dtype=pl.String)
    return (
        frame.with_columns(
            pl.lit(plan_id).alias("plan_id"),
            ids.gather(frame["_c"]).alias("client_id"),
            starts.gather(frame["_w"]).alias("window_start"),
            modes.gather(frame["_c"]).alias("mode"),
        )
        .select(list(UNSERVED_SCHEMA))
        .cast(pl.Schema(UNSERVED_SCHEMA))
        .sort("window_start", "client_id", "tier", "placed_as", "reason")
    )


def _totals(records: list[_WindowRecord], table: _ClientTable, action: float) -> dict[str, float]:
    """Expected cost and cold starts of the plan against a purely reactive policy."""
    sums = {
        mode: dict.fromkeys(("cost", "cold", "reactive", "reactive_cold"), 0.0)
        for mode in (True, False)
    }
    counts = {"warm": 0, "downgraded": 0, "unserved": 0}
    penalty = table.cold_penalty + action
    for record in records:
        item_mode = table.provision[record.client]
        for provision in (True, False):
            clients = table.provision == provision
            mine = item_mode == provision
            total = sums[provision]
            total["cost"] += float(
                record.cost[mine].sum() + (record.cold_p * penalty)[clients].sum()
            )
            total["cold"] += float(record.cold_p[clients].sum())
            total["reactive"] += float((record.demand_p * penalty)[clients].sum())
            total["reactive_cold"] += float(record.demand_p[clients].sum())
        provisioned = item_mode & (record.option != _NONE)
        counts["warm"] += int(provisioned.sum())
        hit = item_mode & (record.reason >= 0)
        counts["unserved"] += int((hit & (record.option == _NONE)).sum())
        counts["downgraded"] += int((hit & (record.option != _NONE)).sum())
    mine, other = sums[True], sums[False]
    return {
        "expected_cost": mine["cost"],
        "expected_cold_starts": mine["cold"],
        "reactive_cost": mine["reactive"],
        "reactive_cold_starts": mine["reactive_cold"],
        "savings": mine["reactive"] - mine["cost"],
        "warm_instance_windows": float(counts["warm"]),
        "downgraded_instances": float(counts["downgraded"]),
        "unserved_instances": float(counts["unserved"]),
        "forecast_only_expected_cost": other["cost"],
        "forecast_only_reactive_cost": other["reactive"],
    }


def _decode(column: str, names: tuple[str, ...]) -> pl.Expr:
    """Integer codes -> their names."""
    return pl.col(column).replace_strict(dict(enumerate(names)), return_dtype=pl.String)
