"""The honest evaluation of a fitted metric model on its holdout slice, against baselines.

`HOLDOUT_KEYS` are the keys of every report (`ClientForecaster.holdout[metric]`); the
measures themselves come from `models.scoring`.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from models.features import FeatureSpec
from models.forecaster.calibration import (
    MetricModel,
    _final_quantiles,
    _fit_calibration,
    _to_values,
)
from models.forecaster.config import ForecastConfig
from models.forecaster.training import QuantileBoosters, _raw_quantiles
from models.scoring import baseline_wmapes, point_metrics

HOLDOUT_KEYS: tuple[str, ...] = (
    "wmape",
    "pinball_p10",
    "pinball_p50",
    "pinball_p90",
    "pinball",
    "coverage_80",
    "naive_wmape",
    "seasonal_naive_day_wmape",
    "seasonal_naive_week_wmape",
    "n_points",
)


def _calibrate_and_evaluate(
    boosters: QuantileBoosters,
    scale: float,
    rows: pl.DataFrame,
    spec: FeatureSpec,
    config: ForecastConfig,
    values: np.ndarray,
    first_step: int,
    bias: float,
) -> tuple[MetricModel, dict[str, float | None]]:
    """Calibrate on the calibration slice, evaluate on the holdout, recalibrate on both."""
    evaluated = rows.filter(pl.col("part") != "train")
    raw = _raw_quantiles(boosters, evaluated, spec)
    is_cal = evaluated.get_column("part").to_numpy() == "cal"
    calibration = _fit_calibration(raw[is_cal], evaluated.filter(pl.Series(is_cal)), config)
    model = MetricModel(boosters, scale, calibration)
    report = _holdout_report(
        evaluated.filter(~pl.Series(is_cal)),
        evaluated,
        model,
        spec,
        values,
        first_step,
        config,
        bias,
        (raw[~is_cal], raw),
    )
    model.calibration = _fit_calibration(raw, evaluated, config)
    return model, report


def _holdout_report(
    holdout: pl.DataFrame,
    recent: pl.DataFrame,
    model: MetricModel,
    spec: FeatureSpec,
    values: np.ndarray,
    first_step: int,
    config: ForecastConfig,
    bias: float,
    raw: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, float | None]:
    """Accuracy of the calibrated forecasts and of the baselines on the holdout points."""
    if holdout.height == 0:
        return _empty_report()
    horizons = holdout.get_column("horizon").to_numpy()
    scale = holdout.get_column("scale").to_numpy()
    anchor = holdout.get_column("anchor").to_numpy()
    actual = (anchor + holdout.get_column("target").to_numpy()) * scale
    scaled = _final_quantiles(model, holdout, recent, spec, config, raw)
    quantiles = _to_values(scaled, anchor, scale, bias)
    origins = holdout.get_column("step").to_numpy() - first_step
    report = point_metrics(actual, quantiles)
    baselines = baseline_wmapes(actual, values, origins, horizons, config.freq_seconds)
    for name in ("naive", "seasonal_naive_day", "seasonal_naive_week"):
        report[f"{name}_wmape"] = baselines.get(name)  # None: a season not available
    report["n_points"] = float(len(actual))
    return {key: report[key] for key in HOLDOUT_KEYS}


def _empty_report() -> dict[str, float | None]:
    report: dict[str, float | None] = dict.fromkeys(HOLDOUT_KEYS)
    report["n_points"] = 0.0
    return report
