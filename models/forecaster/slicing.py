"""Time slices of a history (train | calibration | holdout) and the (origin, horizon) pairs
sampled from them: random pairs for training, every horizon at a stride for evaluation (by
origin for the horizon, by target for a profile's reach)."""

from __future__ import annotations

import numpy as np
import polars as pl

from models.forecaster.config import ForecastConfig


def _slice_lengths(n_steps: int, config: ForecastConfig) -> tuple[int, int, int]:
    """(train, calibration, holdout) lengths in steps of a history of `n_steps`."""
    floor = _min_slice_steps(config)

    def length(days: float) -> int:
        wanted = min(days * config.steps_per_day, config.slice_fraction * n_steps)
        return max(floor, round(wanted))

    holdout, calibration = length(config.holdout_days), length(config.calibration_days)
    train = n_steps - holdout - calibration
    if train < _min_train_steps(config):
        raise ValueError(
            f"history of {n_steps} buckets is too short for a {config.horizon_steps}-step"
            f" horizon: need at least {min_fit_steps(config)} (use the global fallback)"
        )
    return train, calibration, holdout


def _min_slice_steps(config: ForecastConfig) -> int:
    """A slice must hold every horizon step at least a few dozen times."""
    return config.horizon_steps + max(config.horizon_steps, 36)


def _min_train_steps(config: ForecastConfig) -> int:
    # Two horizons, and half a day of buckets or 120 of them, whichever is fewer: a
    # 1-minute series (a serverless trace) is usable after two hours, not twelve.
    return max(2 * config.horizon_steps, min(config.steps_per_day // 2, 120))


def min_fit_steps(config: ForecastConfig) -> int:
    """The fewest buckets a client's own model can be fitted (and evaluated) on."""
    return 2 * _min_slice_steps(config) + _min_train_steps(config)


def _sample_pairs(
    bounds: pl.DataFrame,
    lo: int | None,
    hi: int | None,
    n_per_client: int,
    config: ForecastConfig,
    part: str,
    steps: tuple[int, ...] | None = None,
) -> pl.DataFrame:
    """Random (origin, horizon) pairs per client with lo <= origin and origin + h <= hi, h
    one of `steps` (1..horizon_steps when None).

    `bounds` has client_id and optionally per-client lo/hi columns (used where lo/hi None).
    """
    frame = _with_bounds(bounds, lo, hi)
    rng = np.random.default_rng(config.seed)
    n_clients = frame.height
    if steps is None:
        horizon = rng.integers(1, config.horizon_steps + 1, size=(n_clients, n_per_client))
    else:
        horizon = np.asarray(steps)[rng.integers(0, len(steps), size=(n_clients, n_per_client))]
    u = rng.random(size=(n_clients, n_per_client))
    lows = frame.get_column("lo").to_numpy()[:, None]
    highs = frame.get_column("hi").to_numpy()[:, None] - horizon  # last valid origin
    origin = lows + np.floor(u * (highs - lows + 1)).astype(np.int64)
    keep = highs >= lows
    ids = np.repeat(frame.get_column("client_id").to_numpy(), n_per_client).reshape(keep.shape)
    return pl.DataFrame(
        {
            "client_id": ids[keep].astype(str),
            "step": origin[keep].astype(np.int64),
            "horizon": horizon[keep].astype(np.int32),
            "part": [part] * int(keep.sum()),
        },
        schema={"client_id": pl.String, "step": pl.Int64, "horizon": pl.Int32, "part": pl.String},
    ).unique(subset=["client_id", "step", "horizon"], maintain_order=True)


def _eval_pairs(
    bounds: pl.DataFrame, lo: int | None, hi: int | None, config: ForecastConfig, part: str
) -> pl.DataFrame:
    """Every horizon from origins at a stride keeping about `max_eval_rows` rows per client."""
    frame = _with_bounds(bounds, lo, hi)
    horizons = pl.DataFrame({"horizon": np.arange(1, config.horizon_steps + 1, dtype=np.int32)})
    n_origins = (pl.col("hi") - pl.col("lo")).clip(lower_bound=0)
    stride = (n_origins * config.horizon_steps / config.max_eval_rows).ceil().clip(1).cast(pl.Int64)
    return (
        frame.filter(pl.col("hi") > pl.col("lo"))
        .select("client_id", "hi", pl.int_ranges("lo", "hi", stride).alias("step"))
        .explode("step")
        .join(horizons, how="cross")
        .filter(pl.col("step") + pl.col("horizon") <= pl.col("hi"))
        .select("client_id", "step", "horizon", pl.lit(part).alias("part"))
    )


def _target_pairs(
    bounds: pl.DataFrame,
    lo: int,
    hi: int,
    steps: tuple[int, ...],
    config: ForecastConfig,
    part: str,
) -> pl.DataFrame:
    """Pairs of every one of `steps` whose targets fall in [lo, hi], targets at a stride
    keeping about `max_eval_rows` rows per client; an origin lies within its client's
    bounds (`bounds`: client_id, lo, hi of each client's series)."""
    horizons = pl.DataFrame({"horizon": np.asarray(steps, dtype=np.int32)})
    frame = bounds.select(
        "client_id",
        pl.col("lo").alias("first"),
        pl.max_horizontal("lo", pl.lit(lo)).alias("lo"),
        pl.min_horizontal("hi", pl.lit(hi)).alias("hi"),
    ).filter(pl.col("hi") >= pl.col("lo"))
    n_targets = pl.col("hi") - pl.col("lo") + 1
    stride = (n_targets * len(steps) / config.max_eval_rows).ceil().clip(1).cast(pl.Int64)
    return (
        frame.select("client_id", "first", pl.int_ranges("lo", pl.col("hi") + 1, stride).alias("t"))
        .explode("t")
        .join(horizons, how="cross")
        .with_columns((pl.col("t") - pl.col("horizon")).alias("step"))
        .filter(pl.col("step") >= pl.col("first"))
        .select("client_id", "step", "horizon", pl.lit(part).alias("part"))
    )


def _with_bounds(bounds: pl.DataFrame, lo: int | None, hi: int | None) -> pl.DataFrame:
    """Per-client [lo, hi] step bounds, narrowed by global lo/hi where given."""
    frame = bounds
    if "lo" not in frame.columns:
        frame = frame.with_columns(pl.lit(lo, dtype=pl.Int64).alias("lo"))
    elif lo is not None:
        frame = frame.with_columns(pl.max_horizontal("lo", pl.lit(lo)).alias("lo"))
    if "hi" not in frame.columns:
        frame = frame.with_columns(pl.lit(hi, dtype=pl.Int64).alias("hi"))
    elif hi is not None:
        frame = frame.with_columns(pl.min_horizontal("hi", pl.lit(hi)).alias("hi"))
    return frame.select("client_id", pl.col("lo").cast(pl.Int64), pl.col("hi").cast(pl.Int64))
