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
from models.forecaster.config import Adjustments, ForecastConfig
from models.forecaster.training import QuantileBoosters, _raw_quantiles, _train_boosters
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


def fit_metrics(
    rows: pl.DataFrame,
    scales: dict[str, float],
    spec: FeatureSpec,
    config: ForecastConfig,
    adjustments: Adjustments,
    values: dict[str, np.ndarray],
    first_step: int,
    steps: tuple[int, int] | None = None,
) -> tuple[dict[str, MetricModel], dict[str, dict[str, float | None]]]:
    """Per metric of `scales`: boosters trained on its `train` rows, calibrated and judged
    on the others (`_calibrate_and_evaluate`), with its holdout report. A metric with too
    few rows to train on is left out. `steps`: the reach's (first, last) horizon steps,
    None for the near horizon."""
    models: dict[str, MetricModel] = {}
    reports: dict[str, dict[str, float | None]] = {}
    for metric, scale in scales.items():
        metric_rows = rows.filter(pl.col("metric") == metric)
        train = metric_rows.filter(pl.col("part") == "train")
        if train.height < config.min_data_in_leaf * 2:
            continue
        boosters = _train_boosters(train, spec, config, adjustments, steps[1] if steps else None)
        models[metric], reports[metric] = _calibrate_and_evaluate(
            boosters,
            scale,
            metric_rows,
            spec,
            config,
            values[metric],
            first_step,
            adjustments.bias.get(metric, 0.0),
            steps,
        )
    return models, reports


def _calibrate_and_evaluate(
    boosters: QuantileBoosters,
    scale: float,
    rows: pl.DataFrame,
    spec: FeatureSpec,
    config: ForecastConfig,
    values: np.ndarray,
    first_step: int,
    bias: float,
    steps: tuple[int, int] | None = None,
) -> tuple[MetricModel, dict[str, float | None]]:
    """Calibrate on the calibration slice, evaluate on the holdout, recalibrate on both.

    `steps` (first, last) are the horizon steps of a profile's reach, whose forecasts are
    evaluated as they are predicted: without the recalibration on recent errors (see
    `models.forecaster.reach`). None: the horizon.
    """
    evaluated = rows.filter(pl.col("part") != "train")
    raw = _raw_quantiles(boosters, evaluated, spec)
    is_cal = evaluated.get_column("part").to_numpy() == "cal"
    calibrated = evaluated.filter(pl.Series(is_cal))
    model = MetricModel(boosters, scale, _fit_calibration(raw[is_cal], calibrated, config, steps))
    recent, raw_recent = (evaluated, raw) if steps is None else (evaluated.clear(), raw[:0])
    report = _holdout_report(
        evaluated.filter(~pl.Series(is_cal)),
        recent,
        model,
        spec,
        values,
        first_step,
        config,
        bias,
        (raw[~is_cal], raw_recent),
    )
    model.calibration = _fit_calibration(raw, evaluated, config, steps)
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
