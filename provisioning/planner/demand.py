"""Demand: P(need >= k) per client and window from exceedance rows, quantiles and priors.

The public helpers `exceedance_from_quantiles`, `quantile_upper`, `need_levels` and
`base_rates`, and the dense per-window demand (`_Demand`) the planner reads, built by
`_demand_inputs` from the forecast frames (see the package docstring for the quantile CDF
and the confidence blend).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import cast

import numpy as np
import polars as pl

from core.times import naive_utc_expr
from provisioning.planner.config import PlannerConfig
from provisioning.planner.tables import _ClientTable, _few, _require

_LN5 = math.log(5.0)
_US = 1_000_000


def exceedance_from_quantiles(
    p10: np.ndarray, p50: np.ndarray, p90: np.ndarray, levels: int
) -> np.ndarray:
    """P(need >= k) for k = 1..levels from concurrency quantiles (rows x levels).

    The piecewise-linear CDF with its tails is described in the package docstring; crossed
    quantiles are sorted first, and P(need >= k) = P(X > k - 1) because need = ceil(X).
    """
    q = np.sort(np.column_stack([p10, p50, p90]).astype(np.float64), axis=1)
    lo, mid, hi = q[:, 0:1], q[:, 1:2], q[:, 2:3]
    lower = lo - (mid - lo) / 4.0
    theta = (hi - mid) / _LN5
    t = np.arange(levels, dtype=np.float64)[None, :]  # k - 1
    # Each branch is evaluated everywhere and selected after: the ones not taken may
    # divide by zero or overflow harmlessly.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        segments = [
            np.ones_like(t + lo),
            1.0 - 0.1 * (t - lower) / (lo - lower),
            0.9 - 0.4 * (t - lo) / (mid - lo),
            0.5 - 0.4 * (t - mid) / (hi - mid),
        ]
        tail = np.where(theta > 0, 0.1 * np.exp(-(t - hi) / theta), 0.0)
    survival = np.select([t < lower, t < lo, t < mid, t < hi], segments, default=tail)
    return np.clip(survival, 0.0, 1.0)


def quantile_upper(p50: np.ndarray, p90: np.ndarray, survival: float) -> np.ndarray:
    """The x with P(X > x) = survival (< 0.1) on the exponential upper tail."""
    theta = np.maximum(np.asarray(p90) - np.asarray(p50), 0.0) / _LN5
    return np.asarray(p90) + theta * math.log(0.1 / survival)


def need_levels(usage: pl.DataFrame, max_level: int = 8) -> pl.DataFrame:
    """Per client, how many history buckets needed each level of instances: client_id,
    n (ceil of the concurrency, missing as 0, clipped to 0..max_level), buckets.

    What `base_rates` is computed from; `warehouse.usage.read_need_levels` counts the same
    in the warehouse, so the planner never holds the rows themselves (at 10,000 clients,
    7 days of them were 20 M rows and ~1 GB while a cycle planned)."""
    return (
        usage.select(
            "client_id",
            pl.col("concurrency")
            .fill_null(0.0)
            .ceil()
            .clip(0, max_level)
            .cast(pl.Int64)
            .alias("n"),
        )
        .group_by("client_id", "n")
        .len("buckets")
    )


def base_rates(levels: pl.DataFrame, max_level: int = 8) -> pl.DataFrame:
    """Per client, the share of history buckets with need >= k (a prior for `plan_pools`).

    levels: client_id, n, buckets (`need_levels`). Returns client_id, level, p_exceed for
    k = 1..max_level.
    """
    totals = levels.group_by("client_id").agg(pl.col("buckets").sum().alias("total"))
    counts = levels.filter(pl.col("n") > 0).rename({"buckets": "count"})
    steps = pl.DataFrame({"level": np.arange(1, max_level + 1)}, schema={"level": pl.Int64})
    return (
        totals.join(steps, how="cross")
        .join(counts, on="client_id", how="left")
        .group_by("client_id", "level", "total")
        .agg(pl.col("count").filter(pl.col("n") >= pl.col("level")).sum())
        .select(
            "client_id",
            pl.col("level").cast(pl.Int32),
            (pl.col("count").fill_null(0) / pl.col("total")).alias("p_exceed"),
        )
        .sort("client_id", "level")
    )


@dataclass
class _Demand:
    """Dense demand per window: exceedance levels and quantile parameters, plus priors."""

    levels: int
    exceedance: np.ndarray | None  # (W, n, Ke)
    has_exceedance: np.ndarray | None  # (W, n)
    quantiles: np.ndarray | None  # (W, n, 3)
    has_quantiles: np.ndarray | None  # (W, n)
    prior: np.ndarray  # (n, K)
    beyond: pl.DataFrame  # _w, _c, instances: quantile demand above max_level

    def window(self, w: int, confidence: np.ndarray) -> np.ndarray:
        """P_eff(need >= k) for every client in window w, shape (n, K)."""
        n, k = self.prior.shape
        p = np.zeros((n, k))
        survival = None
        if self.quantiles is not None and self.has_quantiles is not None:
            rows = self.has_quantiles[w]
            q = self.quantiles[w, rows]
            survival = exceedance_from_quantiles(q[:, 0], q[:, 1], q[:, 2], k)
            p[rows] = survival
        if self.exceedance is not None and self.has_exceedance is not None:
            ke = min(self.exceedance.shape[2], k)
            forecast = np.zeros((n, k))
            forecast[:, :ke] = self.exceedance[w, :, :ke]
            # (survival is only set when has_quantiles is: the check is for the type checker)
            if survival is not None and self.has_quantiles is not None and ke < k:
                # Above the classifier's last level, the quantile tail capped by that level.
                rows = self.has_quantiles[w]
                forecast[rows, ke:] = np.minimum(forecast[rows, ke - 1 : ke], survival[:, ke:])
            p = np.where(self.has_exceedance[w][:, None], forecast, p)
        p = np.minimum.accumulate(np.clip(p, 0.0, 1.0), axis=1)
        blended = confidence[:, None] * p + (1.0 - confidence[:, None]) * self.prior
        # No forecast at all is not a forecast of zero: the base rate is all we know.
        forecasted = np.zeros(n, dtype=bool)
        for present in (self.has_exceedance, self.has_quantiles):
            if present is not None:
                forecasted |= present[w]
        return np.where(forecasted[:, None], blended, self.prior)


def _demand_inputs(
    exceedance: pl.DataFrame | None,
    quantiles: pl.DataFrame | None,
    priors: pl.DataFrame | None,
    table: _ClientTable,
    first_window: datetime,
    config: PlannerConfig,
) -> _Demand:
    """Scatter the demand frames into dense arrays per (window, client[, level])."""
    n, windows = table.size, config.windows
    tick_us = config.tick_seconds * _US
    e_rows = q_rows = p_rows = None
    if exceedance is not None:
        e_rows = _in_windows(exceedance, table, first_window, tick_us, windows, "exceedance")
        e_rows = e_rows.filter(pl.col("level").is_between(1, config.max_level))
    if quantiles is not None:
        frame = quantiles
        if "metric" in frame.columns:
            frame = frame.filter(pl.col("metric") == "concurrency")
        q_rows = _in_windows(frame, table, first_window, tick_us, windows, "quantiles")
    if priors is not None:
        p_rows = (
            priors.select(pl.col("client_id").cast(pl.String), "level", "p_exceed")
            .join(table.index, on="client_id", how="inner")
            .filter(pl.col("level").is_between(1, config.max_level))
        )

    demand = _Demand(1, None, None, None, None, np.zeros((n, 1)), _no_beyond())
    wanted = [1]
    if e_rows is not None:
        # "level" is an integer column (polars types Series.max as any Python literal).
        ke = max(1, int(cast("int | None", e_rows["level"].max()) or 1))
        w, c, k = (e_rows[col].to_numpy() for col in ("_w", "_c", "level"))
        demand.exceedance = np.zeros((windows, n, ke))
        # Several buckets in one window: the pool must hold the window's peak.
        np.maximum.at(demand.exceedance, (w, c, k - 1), e_rows["p_exceed"].to_numpy())
        demand.has_exceedance = np.zeros((windows, n), dtype=bool)
        demand.has_exceedance[w, c] = True
        wanted.append(ke)
    if q_rows is not None:
        w, c = q_rows["_w"].to_numpy(), q_rows["_c"].to_numpy()
        dense = np.full((windows, n, 3), -np.inf)
        np.maximum.at(dense, (w, c), q_rows.select("p10", "p50", "p90").to_numpy())
        demand.has_quantiles = np.zeros((windows, n), dtype=bool)
        demand.has_quantiles[w, c] = True
        demand.quantiles = np.where(demand.has_quantiles[..., None], dense, 0.0)
        if w.size:
            # Levels up to where P(need >= k) drops below 0.1%: the rest rounds to nothing.
            q = demand.quantiles[demand.has_quantiles]
            upper = quantile_upper(q[:, 1], q[:, 2], 0.001)
            wanted.append(int(math.ceil(max(float(upper.max()), 0.0))))
    if p_rows is not None and p_rows.height:
        wanted.append(int(cast(int, p_rows["level"].max())))
    demand.levels = levels = max(1, min(config.max_level, max(wanted)))
    demand.prior = np.zeros((n, levels))
    if demand.quantiles is not None:
        demand.beyond = _beyond(demand, levels)
    if p_rows is not None and p_rows.height:
        k = np.minimum(p_rows["level"].to_numpy(), levels)
        demand.prior[p_rows["_c"].to_numpy(), k - 1] = (
            p_rows["p_exceed"].cast(pl.Float64).to_numpy()
        )
        demand.prior = np.minimum.accumulate(np.clip(demand.prior, 0.0, 1.0), axis=1)
    return demand


def _in_windows(
    frame: pl.DataFrame,
    table: _ClientTable,
    first_window: datetime,
    tick_us: int,
    windows: int,
    what: str,
) -> pl.DataFrame:
    """Rows of a demand frame with their window (_w) and client (_c) indexes, in the plan."""
    time_column = "ts" if "ts" in frame.columns else "window_start"
    _require(frame, ("client_id", time_column, *_DEMAND_COLUMNS[what]), what)
    ts = naive_utc_expr(frame, time_column)
    offset = (ts - pl.lit(first_window)).dt.total_microseconds()
    # The client list is sorted, so an Enum over it maps each id to its index in one pass.
    client = pl.col("client_id").cast(pl.String).cast(pl.Enum(table.ids.tolist()), strict=False)
    rows = frame.with_columns(
        client.to_physical().cast(pl.Int64).alias("_c"), (offset // tick_us).alias("_w")
    )
    unknown = rows.filter(pl.col("_c").is_null())
    if unknown.height:
        ids = unknown["client_id"].cast(pl.String).unique().sort()
        raise ValueError(f"{what}: demand for client(s) not in clients: {_few(ids)}")
    return rows.filter(pl.col("_w").is_between(0, windows - 1))


_DEMAND_COLUMNS = {"exceedance": ("level", "p_exceed"), "quantiles": ("p10", "p50", "p90")}


def _beyond(demand: _Demand, levels: int) -> pl.DataFrame:
    """Quantile-only client-windows whose p99 needs more instances than the planner covers."""
    assert demand.quantiles is not None and demand.has_quantiles is not None
    mask = demand.has_quantiles.copy()
    if demand.has_exceedance is not None:
        mask &= ~demand.has_exceedance
    w, c = np.nonzero(mask)
    q = demand.quantiles[w, c]
    extra = np.ceil(quantile_upper(q[:, 1], q[:, 2], 0.01)).astype(np.int64) - levels
    over = extra > 0
    return pl.DataFrame(
        {"_w": w[over], "_c": c[over], "instances": extra[over]},
        schema={"_w": pl.Int64, "_c": pl.Int64, "instances": pl.Int64},
    )


def _no_beyond() -> pl.DataFrame:
    return pl.DataFrame(schema={"_w": pl.Int64, "_c": pl.Int64, "instances": pl.Int64})
