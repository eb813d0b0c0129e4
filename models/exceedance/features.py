"""The model's inputs: FEATURES at (origin, horizon, level) rows, and the training rows.

Every feature at origin t uses need at or before t only (no look-ahead), so many origins can
be scored in one pass: exceedance rates of level k over trailing windows, recent need, the
client's idle-gap history with its empirical hazard, and the target's calendar position.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from models.exceedance.config import ExceedanceConfig
from models.exceedance.grid import _US_PER_SECOND, _Grid

_US_PER_HOUR = 3_600 * _US_PER_SECOND
_US_PER_DAY = 86_400 * _US_PER_SECOND
_EPOCH_WEEKDAY = 3  # 1970-01-01 was a Thursday (Monday = 0)

FEATURES: tuple[str, ...] = (
    "level",
    "horizon",
    # exceedance of level k: rates over trailing windows, steps since, seasonal lags
    "rate_short",
    "rate_mid",
    "rate_day",
    "rate_all",
    "since_level",
    "lag_mid_level",
    "lag_day_level",
    # activity (level 1) and recent need, whatever the level
    "active_mid",
    "active_all",
    "need_last",
    "need_max_short",
    "need_max_mid",
    "need_mean_mid",
    "need_max_all",
    "need_max_long",
    "level_over_last",
    "level_over_max_mid",
    "level_over_max_long",
    # idle gaps (idle buckets between two active buckets)
    "idle_run",
    "gap_count",
    "gap_mean",
    "gap_last",
    "gap_p05",
    "gap_p50",
    "gap_p90",
    "gap_max",
    "gap_hazard",
    # context
    "history_steps",
    "hour",
    "weekday",
    "container_memory_mb",
)


def _training_rows(
    grid: _Grid, config: ExceedanceConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(origin, horizon, level) rows with a known label, every level, origins every stride.

    When the full product is larger than the budget, a uniform sample of it is drawn
    before labels are looked at, so the class balance is untouched.
    """
    local = np.arange(grid.need.size) - grid.starts[grid.client_of]
    last = grid.lengths[grid.client_of] - 1
    candidates = np.flatnonzero((local % config.origin_stride == 0) & (local < last))
    n_h, n_k = config.horizon_steps, config.max_level
    total = candidates.size * n_h * n_k
    budget = int(config.max_rows / config.negative_keep)
    flat = np.arange(total) if total <= budget else np.unique(rng.integers(0, total, budget))
    origin = candidates[flat // (n_h * n_k)]
    horizon = (flat // n_k) % n_h + 1
    level = flat % n_k + 1
    valid = local[origin] + horizon <= last[origin]
    return origin[valid], horizon[valid], level[valid]


def _features(
    grid: _Grid,
    config: ExceedanceConfig,
    origin: np.ndarray,
    horizon: np.ndarray,
    level: np.ndarray,
    memory: np.ndarray,
) -> np.ndarray:
    """The FEATURES matrix for rows (origin global index, horizon, level), no look-ahead."""
    client = grid.client_of[origin]
    start = grid.starts[client]
    history = (origin - start + 1).astype(np.float64)
    columns: dict[str, np.ndarray] = {
        "level": level.astype(np.float64),
        "horizon": horizon.astype(np.float64),
        "history_steps": history,
        "container_memory_mb": memory[client],
    }
    columns.update(_level_features(grid, config, origin, start, horizon, level))
    columns.update(_need_features(grid, config, origin, start, level))

    # gap statistics depend on the origin only; the hazard on (origin, horizon)
    pairs, pair_of_row = np.unique(
        origin * (config.horizon_steps + 1) + horizon, return_inverse=True
    )
    pair_origin = pairs // (config.horizon_steps + 1)
    pair_horizon = pairs % (config.horizon_steps + 1)
    gaps = _gap_features(grid, config, pair_origin, pair_horizon)
    columns.update({name: values[pair_of_row] for name, values in gaps.items()})
    columns.update(_calendar_features(grid, origin, client, horizon))
    # column-major: filling whole columns is cheap and LightGBM reads either layout
    matrix = np.empty((origin.size, len(FEATURES)), dtype=np.float64, order="F")
    for j, name in enumerate(FEATURES):
        matrix[:, j] = columns[name]
    return matrix


def _window_share(
    cumulative: np.ndarray, origin: np.ndarray, start: np.ndarray, steps: int | None
) -> np.ndarray:
    """Mean of a series over the last `steps` buckets up to the origin (all when None).

    `cumulative` has a leading zero: cumulative[j] is the sum of the first j buckets.
    """
    low = start if steps is None else np.maximum(origin + 1 - steps, start)
    return (cumulative[origin + 1] - cumulative[low]) / (origin + 1 - low)


def _level_features(
    grid: _Grid,
    config: ExceedanceConfig,
    origin: np.ndarray,
    start: np.ndarray,
    horizon: np.ndarray,
    level: np.ndarray,
) -> dict[str, np.ndarray]:
    names: tuple[str, ...] = ("rate_short", "rate_mid", "rate_day", "rate_all", "since_level")
    names += ("lag_mid_level", "lag_day_level")
    out = {name: np.full(origin.size, np.nan) for name in names}
    index = np.arange(grid.need.size)
    # one pass per level over the whole grid (K is small); rows of that level gather from it
    for k in np.unique(level):
        rows = np.flatnonzero(level == k)
        o, s, h = origin[rows], start[rows], horizon[rows]
        hit = grid.need >= k
        cumulative = np.concatenate([[0], np.cumsum(hit, dtype=np.int64)])
        out["rate_short"][rows] = _window_share(cumulative, o, s, config.short_steps)
        out["rate_mid"][rows] = _window_share(cumulative, o, s, config.mid_steps)
        out["rate_day"][rows] = _window_share(cumulative, o, s, config.day_steps)
        out["rate_all"][rows] = _window_share(cumulative, o, s, None)
        last_hit = np.maximum.accumulate(np.where(hit, index, -1))[o]
        out["since_level"][rows] = np.where(last_hit >= s, o - last_hit, np.nan)
        for name, lag in (("lag_mid_level", config.mid_steps), ("lag_day_level", config.day_steps)):
            # the bucket one hour (day) before the target, if it is known at the origin
            source = o + h - lag
            known = (h <= lag) & (source >= s)
            out[name][rows] = np.where(known, hit[np.where(known, source, 0)], np.nan)
    return out


def _need_features(
    grid: _Grid, config: ExceedanceConfig, origin: np.ndarray, start: np.ndarray, level: np.ndarray
) -> dict[str, np.ndarray]:
    need = grid.need
    active = np.concatenate([[0], np.cumsum(need > 0, dtype=np.int64)])
    total = np.concatenate([[0.0], np.cumsum(need)])
    series = pl.DataFrame({"c": grid.client_of, "x": need})
    rolled = series.select(
        short=pl.col("x").rolling_max(config.short_steps, min_samples=1).over("c"),
        mid=pl.col("x").rolling_max(config.mid_steps, min_samples=1).over("c"),
        long=pl.col("x").rolling_max(config.long_steps, min_samples=1).over("c"),
        all=pl.col("x").cum_max().over("c"),
    )
    last = need[origin]
    max_mid = rolled["mid"].to_numpy()[origin]
    max_long = rolled["long"].to_numpy()[origin]
    return {
        "active_mid": _window_share(active, origin, start, config.mid_steps),
        "active_all": _window_share(active, origin, start, None),
        "need_last": last,
        "need_max_short": rolled["short"].to_numpy()[origin],
        "need_max_mid": max_mid,
        "need_mean_mid": _window_share(total, origin, start, config.mid_steps),
        "need_max_all": rolled["all"].to_numpy()[origin],
        "need_max_long": max_long,
        # trees split on one feature at a time: give them the distance to the level directly
        "level_over_last": level - last,
        "level_over_max_mid": level - max_mid,
        "level_over_max_long": level - max_long,
    }


def _gap_features(
    grid: _Grid, config: ExceedanceConfig, origin: np.ndarray, horizon: np.ndarray
) -> dict[str, np.ndarray]:
    """Idle-gap history at each origin: counts, mean, recent percentiles and hazard.

    A gap is the number of idle buckets between two consecutive active buckets (0 when
    they are adjacent). With r idle buckets since the last active one, the next bucket
    active at t+h closes a gap of r + h - 1, so the empirical hazard
    #{recent gaps in [r, r+h-1]} / #{recent gaps >= r} estimates P(activity by t+h); at
    h = 1 it is exactly the chance that the current gap ends now.
    """
    client = grid.client_of[origin]
    start = grid.starts[client]
    active = np.flatnonzero(grid.need > 0)
    if active.size == 0:
        return {name: _no_gaps(origin.size, name) for name in _GAP_FEATURES}
    same_client = grid.client_of[active[1:]] == grid.client_of[active[:-1]]
    gaps = np.full(active.size, np.nan)
    gaps[1:] = np.where(same_client, active[1:] - active[:-1] - 1, np.nan)
    gap_sum = np.concatenate([[0.0], np.cumsum(np.nan_to_num(gaps))])

    last = np.searchsorted(active, origin, side="right") - 1  # last active bucket <= origin
    seen = last >= 0
    seen[seen] = active[last[seen]] >= start[seen]
    first = np.searchsorted(active, start, side="left")  # client's first active bucket
    count = np.where(seen, last - first, 0).astype(np.float64)
    idle_run = np.where(seen, origin - active[np.maximum(last, 0)], np.nan)

    back = last[:, None] - np.arange(config.gap_memory)[None, :]
    usable = seen[:, None] & (back > first[:, None])
    recent = np.where(usable, gaps[np.clip(back, 0, None)], np.nan)
    n_recent = usable.sum(axis=1)
    ordered = np.sort(recent, axis=1)  # NaN sorts last

    def recent_quantile(q: float) -> np.ndarray:
        rank = np.round(q * np.maximum(n_recent - 1, 0)).astype(np.int64)
        return np.where(n_recent > 0, ordered[np.arange(origin.size), rank], np.nan)

    with np.errstate(invalid="ignore"):
        at_least = recent >= idle_run[:, None]
        closing = at_least & (recent <= (idle_run + horizon - 1)[:, None])
    n_at_least = at_least.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        hazard = np.where(n_at_least > 0, closing.sum(axis=1) / n_at_least, np.nan)
        summed = gap_sum[np.maximum(last, 0) + 1] - gap_sum[np.minimum(first, active.size - 1) + 1]
        mean = np.where(count > 0, summed / count, np.nan)
    return {
        "idle_run": idle_run,
        "gap_count": count,
        "gap_mean": mean,
        "gap_last": np.where(count > 0, gaps[np.maximum(last, 0)], np.nan),
        "gap_p05": recent_quantile(0.05),
        "gap_p50": recent_quantile(0.5),
        "gap_p90": recent_quantile(0.9),
        "gap_max": recent_quantile(1.0),
        "gap_hazard": hazard,
    }


_GAP_FEATURES: tuple[str, ...]
_GAP_FEATURES = ("idle_run", "gap_count", "gap_mean", "gap_last", "gap_p05", "gap_p50", "gap_p90")
_GAP_FEATURES += ("gap_max", "gap_hazard")


def _no_gaps(size: int, name: str) -> np.ndarray:
    """Gap features of clients never active: no gaps counted, everything else unknown."""
    return np.zeros(size) if name == "gap_count" else np.full(size, np.nan)


def _calendar_features(
    grid: _Grid, origin: np.ndarray, client: np.ndarray, horizon: np.ndarray
) -> dict[str, np.ndarray]:
    target_us = grid.first_us[client] + (origin - grid.starts[client] + horizon) * grid.freq_us
    return {
        "hour": ((target_us // _US_PER_HOUR) % 24).astype(np.float64),
        "weekday": ((target_us // _US_PER_DAY + _EPOCH_WEEKDAY) % 7).astype(np.float64),
    }
