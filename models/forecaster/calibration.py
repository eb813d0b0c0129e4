"""Post-processing of raw quantiles: per-horizon-bucket shrink toward naive and conformal
interval offsets (`Calibration`), and the sliding-window recalibration applied at prediction
(`_final_quantiles`): the interval also moves by the conformal offset measured on the
model's own recent forecasts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from models.features import FeatureSpec
from models.forecaster.config import ForecastConfig
from models.forecaster.training import QuantileBoosters, _raw_quantiles

_SHRINK_GRID = np.linspace(0.0, 1.0, 21)
_MIN_BUCKET_POINTS = 30  # fewer calibration points than this: use all horizons pooled
_MIN_RECENT_POINTS = 48  # recent targets needed before they move an interval


@dataclass(frozen=True)
class Calibration:
    """Post-processing of raw quantiles (in scale units of change): shrink, then widen."""

    shrink: tuple[float, ...]  # per horizon bucket: share of the predicted change kept
    lower: tuple[float, ...]  # per horizon bucket: subtracted from p10
    upper: tuple[float, ...]  # per horizon bucket: added to p90
    horizon_steps: int  # the last step calibrated; buckets split first_step..horizon_steps
    first_step: int = 1  # past 1 for a profile's reach (models.forecaster.reach)

    @classmethod
    def identity(cls, horizon_steps: int, buckets: int, first_step: int = 1) -> Calibration:
        return cls((1.0,) * buckets, (0.0,) * buckets, (0.0,) * buckets, horizon_steps, first_step)


@dataclass
class MetricModel:
    """One metric's boosters, scale and calibration.

    `scale` None means "derive from the history given at prediction" (a global-model client
    that was not in the training data).
    """

    boosters: QuantileBoosters
    scale: float | None
    calibration: Calibration


def _bucket_of(horizons: np.ndarray, first: int, last: int, buckets: int) -> np.ndarray:
    """Each step's bucket: steps first..last split into `buckets` equal runs."""
    span = last - first + 1
    return np.clip((np.asarray(horizons) - first) * buckets // span, 0, buckets - 1)


def _fit_calibration(
    raw: np.ndarray,
    rows: pl.DataFrame,
    config: ForecastConfig,
    steps: tuple[int, int] | None = None,
) -> Calibration:
    """Per horizon bucket: the shrink toward naive minimising absolute error, then offsets.

    Each tail gets its own offset, the `(1 + coverage) / 2` quantile of how far targets fall
    outside it, so p10 and p90 each miss about (1 - coverage) / 2 of the time. `steps`
    (first, last) are the horizon steps the buckets split: 1..horizon_steps by default.
    """
    first, last = steps or (1, config.horizon_steps)
    buckets = max(1, min(config.horizon_buckets, last - first + 1))
    if rows.height == 0:
        return Calibration.identity(last, buckets, first)
    target = rows.get_column("target").to_numpy()
    of = _bucket_of(rows.get_column("horizon").to_numpy(), first, last, buckets)
    pooled = _fit_bucket(raw, target, config)
    fitted = [
        _fit_bucket(raw[of == b], target[of == b], config)
        if (of == b).sum() >= _MIN_BUCKET_POINTS
        else pooled
        for b in range(buckets)
    ]
    return Calibration(
        shrink=tuple(f[0] for f in fitted),
        lower=tuple(f[1] for f in fitted),
        upper=tuple(f[2] for f in fitted),
        horizon_steps=last,
        first_step=first,
    )


def _fit_bucket(
    raw: np.ndarray, target: np.ndarray, config: ForecastConfig
) -> tuple[float, float, float]:
    """(shrink, lower offset, upper offset) for one group of calibration points."""
    errors = np.abs(target[:, None] - raw[:, 1:2] * _SHRINK_GRID[None, :]).sum(axis=0)
    shrink = float(_SHRINK_GRID[int(np.argmin(errors))])
    shifted = _shrunk(raw, np.full(len(raw), shrink))
    tail = (1.0 + config.coverage_target) / 2.0
    lower = float(np.quantile(shifted[:, 0] - target, tail))
    upper = float(np.quantile(target - shifted[:, 2], tail))
    return shrink, lower, upper


def _shrunk(raw: np.ndarray, shrink: np.ndarray) -> np.ndarray:
    """Keep `shrink` of each row's predicted median change; the interval moves with it."""
    return raw - ((1.0 - shrink) * raw[:, 1])[:, None]


def _calibrated(raw: np.ndarray, calibration: Calibration, horizons: np.ndarray) -> np.ndarray:
    """Apply a calibration to raw (sorted) scaled-change quantiles at `horizons`."""
    of = _bucket_of(
        horizons, calibration.first_step, calibration.horizon_steps, len(calibration.lower)
    )
    out = _shrunk(raw, np.asarray(calibration.shrink)[of])
    out[:, 0] -= np.asarray(calibration.lower)[of]
    out[:, 2] += np.asarray(calibration.upper)[of]
    return out


def _to_values(
    scaled: np.ndarray, anchor: np.ndarray, scale: np.ndarray | float, bias: float
) -> np.ndarray:
    """Scaled changes to metric values: add the anchor, unscale, bias, clip at 0, sort."""
    scale_col = np.reshape(np.asarray(scale, dtype=np.float64), (-1, 1))
    values = (np.asarray(anchor)[:, None] + scaled) * scale_col + bias
    return np.sort(np.maximum(values, 0.0), axis=1)


@dataclass(frozen=True)
class Outcomes:
    """Earlier forecasts whose targets are known, as the recalibration reads them: raw
    quantiles, horizon, origin step and target per row."""

    raw: np.ndarray
    horizon: np.ndarray
    step: np.ndarray
    target: np.ndarray

    @classmethod
    def of(cls, raw: np.ndarray, rows: pl.DataFrame) -> Outcomes:
        columns = (rows.get_column(c).to_numpy() for c in ("horizon", "step", "target"))
        return cls(raw, *columns)


@dataclass(frozen=True)
class RecentErrors:
    """What the recalibration reads of earlier forecasts whose targets are known, per row:
    the origin step, the step its target was known at, and how far the target fell below
    the calibrated p10 (`low`) and above the calibrated p90 (`high`), in units of the typical
    change at its horizon. A row's errors depend on its model alone, so a caller that keeps
    them between runs (`scored_origins`) computes each once."""

    step: np.ndarray
    known_at: np.ndarray
    low: np.ndarray
    high: np.ndarray

    @classmethod
    def of(cls, model: MetricModel, outcomes: Outcomes) -> RecentErrors:
        horizon, target = outcomes.horizon, outcomes.target
        calibrated = _calibrated(outcomes.raw, model.calibration, horizon)
        unit = model.boosters.horizon_scale[horizon - 1]
        return cls(
            outcomes.step,
            outcomes.step + horizon,
            (calibrated[:, 0] - target) / unit,
            (target - calibrated[:, 2]) / unit,
        )


def _final_quantiles(
    model: MetricModel,
    rows: pl.DataFrame,
    recent: pl.DataFrame | None,
    spec: FeatureSpec,
    config: ForecastConfig,
    raw: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Calibrated quantiles (scale units of change), widened by recent errors when known.

    `recent` holds rows of earlier origins whose targets are known (see `_recalibrated`).
    `raw` may carry the boosters' outputs for (rows, recent) when already computed.
    """
    if raw is None:
        raw_rows = _raw_quantiles(model.boosters, rows, spec)
        raw_recent = _raw_quantiles(model.boosters, recent, spec) if recent is not None else None
    else:
        raw_rows, raw_recent = raw
    known = (
        None
        if recent is None or raw_recent is None
        else RecentErrors.of(model, Outcomes.of(raw_recent, recent))
    )
    horizons, origins = (rows.get_column(c).to_numpy() for c in ("horizon", "step"))
    return _recalibrated(model, config, raw_rows, horizons, origins, known)


def _recalibrated(
    model: MetricModel,
    config: ForecastConfig,
    raw: np.ndarray,
    horizons: np.ndarray,
    origins: np.ndarray,
    recent: RecentErrors | None,
) -> np.ndarray:
    """Calibrated quantiles of rows at `horizons` from origin steps `origins`, widened by
    recent errors: for each origin the interval moves by `recalibration_weight` times the
    conformal offset measured on the `recent` targets within the last `recalibration_days`
    up to that origin."""
    out = _calibrated(raw, model.calibration, horizons)
    if recent is None or len(recent.low) == 0 or config.recalibration_weight == 0:
        return out
    unit = model.boosters.horizon_scale
    known_at = recent.known_at
    steps, at = np.unique(origins, return_inverse=True)
    window = round(config.recalibration_days * config.steps_per_day)
    seen = (known_at[None, :] <= steps[:, None]) & (known_at[None, :] > steps[:, None] - window)
    tail = (1.0 + config.coverage_target) / 2.0
    low = _masked_quantile(recent.low, seen, tail)
    high = _masked_quantile(recent.high, seen, tail)
    widen = config.recalibration_weight * unit[horizons - 1]
    out[:, 0] -= widen * low[at]
    out[:, 2] += widen * high[at]
    return np.sort(out, axis=1)


def _masked_quantile(values: np.ndarray, mask: np.ndarray, q: float) -> np.ndarray:
    """Per row of `mask`, the q-quantile of `values` where it is True (0 with too few)."""
    counts = mask.sum(axis=1)
    ordered = np.sort(np.where(mask, values[None, :], np.inf), axis=1)
    position = q * np.maximum(counts - 1, 0)
    below = np.floor(position).astype(np.int64)
    above = np.minimum(below + 1, np.maximum(counts - 1, 0))
    rows = np.arange(len(counts))
    enough = counts >= _MIN_RECENT_POINTS
    low = np.where(enough, ordered[rows, below], 0.0)  # rows without points hold inf
    high = np.where(enough, ordered[rows, above], 0.0)
    weight = position - below
    return low * (1 - weight) + high * weight
