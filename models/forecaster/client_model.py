"""A client's own forecaster: `ClientForecaster`, its fit, and when a client needs the
global fallback instead (`needs_fallback`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import cast

import polars as pl

from models.exceedance import ExceedanceModel
from models.features import (
    DAY_SECONDS,
    FeatureSpec,
    assemble_rows,
    build_series,
    regular_grid,
    step_of,
    to_long,
)
from models.forecaster.calibration import MetricModel
from models.forecaster.config import WAREHOUSE_METRICS, Adjustments, ForecastConfig
from models.forecaster.frames import _only_client, _scales, client_frame, feature_spec
from models.forecaster.holdout import fit_metrics
from models.forecaster.prediction import forecast_origins
from models.forecaster.reach import can_reach, fit_reach
from models.forecaster.slicing import _eval_pairs, _sample_pairs, _slice_lengths, min_fit_steps

log = logging.getLogger(__package__)  # "models.forecaster", as before the split


@dataclass
class ClientForecaster:
    """A client's forecaster: predicts p10/p50/p90 per metric for 1..H steps after the origin
    (`predict`), and every `profile_stride` steps past them when it has a `reach`
    (`models.forecaster.forecast_latest`).

    `holdout[metric]` holds the honest evaluation (see `HOLDOUT_KEYS`); `fallback` is None for
    a model of the client's own, or the reason the shared global model serves it.
    """

    client_id: str
    config: ForecastConfig
    feature_spec: FeatureSpec
    metrics: list[str]
    fallback: str | None
    trained_until: datetime
    holdout: dict[str, dict[str, float | None]]
    models: dict[str, MetricModel]
    client: dict[str, object] | None = None
    bias: dict[str, float] = field(default_factory=dict)
    exceedance: ExceedanceModel | None = None  # shared by the clients of a training run
    # A profile's reach past the horizon (models.forecaster.reach): per metric its far
    # model and holdout report; None without one (too little history, or an older model).
    reach: dict[str, MetricModel] | None = None
    reach_holdout: dict[str, dict[str, float | None]] | None = None
    # The registry version it was read from (set by `models.registry` when loading); None
    # for one fresh from training. What tells two loads of one model apart from two models
    # (`scored_origins`), without keeping either loaded.
    registered_version: str | None = None

    def predict(
        self,
        history: pl.DataFrame,
        calendar: pl.DataFrame | None = None,
        horizon_steps: int | None = None,
    ) -> pl.DataFrame:
        """Forecast from the last bucket of this client's rows in `history`.

        Returns client_id, metric, origin, ts, horizon, p10, p50, p90 sorted by metric and
        horizon; metrics without any value in the history are left out.
        """
        horizon = self.config.horizon_steps if horizon_steps is None else horizon_steps
        if not 1 <= horizon <= self.config.horizon_steps:
            raise ValueError(
                f"horizon_steps must be 1..{self.config.horizon_steps} (the trained horizon),"
                f" got {horizon}"
            )
        own = history.filter(pl.col("client_id") == self.client_id)
        if own.height == 0:
            raise ValueError(f"history has no rows for client {self.client_id!r}")
        # polars types max() as any scalar; that of a `ts` column is a datetime.
        last = cast(datetime, own.get_column("ts").max())
        return forecast_origins(self, own, [last], calendar, horizon)

    def predict_exceedance(
        self, history: pl.DataFrame, horizon_steps: int | None = None, levels: int | None = None
    ) -> pl.DataFrame:
        """P(concurrency >= k) from the attached exceedance model (`exceedance`, set by the
        caller); a ValueError when none is attached."""
        if self.exceedance is None:
            raise ValueError(f"forecaster of {self.client_id!r} carries no exceedance model")
        own = (
            history.filter(pl.col("client_id") == self.client_id)
            .select("client_id", "ts", "concurrency")
            .drop_nulls()
        )
        clients = client_frame(self.client_id, self.client)
        return self.exceedance.predict(own, horizon_steps, levels, clients)


def fit_client_forecaster(
    history: pl.DataFrame,
    config: ForecastConfig,
    calendar: pl.DataFrame | None = None,
    client: dict | None = None,
    adjustments: Adjustments | None = None,
) -> ClientForecaster:
    """Fit one client's quantile forecasters on its own history (one client_id only)."""
    adjustments = adjustments or Adjustments()
    client_id = _only_client(history)
    metrics = present_metrics(history, config)
    if not metrics:
        raise ValueError(f"client {client_id!r} has no metric with values to model")
    clients = client_frame(client_id, client)
    grid = regular_grid(history, config.freq_seconds, metrics, missing_as=0.0)
    first = int(grid.get_column("step")[0])
    n_steps = grid.height
    train_steps, cal_steps, holdout_steps = _slice_lengths(n_steps, config)
    cal_start, holdout_start = first + train_steps, first + train_steps + cal_steps
    last = first + n_steps - 1

    reaches = can_reach(train_steps, config)
    spec = feature_spec(config, train_steps, clients, calendar, metrics, reaches)
    long = to_long(grid, metrics)
    scales = _scales(long.filter(pl.col("step") < cal_start))
    series = build_series(long, spec, scales, calendar, clients)
    bounds = pl.DataFrame({"client_id": [client_id]})
    pairs = pl.concat(
        [
            _sample_pairs(bounds, first, cal_start - 1, config.max_train_rows, config, "train"),
            _eval_pairs(bounds, cal_start, holdout_start - 1, config, "cal"),
            _eval_pairs(bounds, holdout_start, last, config, "holdout"),
        ]
    )
    rows = assemble_rows(series, pairs, spec).filter(pl.col("target").is_not_null())
    values = {m: grid.get_column(m).to_numpy() for m in metrics}

    scale_of = dict(scales.select("metric", "scale").iter_rows())
    models, holdout = fit_metrics(
        rows, {m: float(scale_of[m]) for m in metrics}, spec, config, adjustments, values, first
    )
    for metric in sorted(set(metrics) - set(models)):
        log.warning("client %s metric %s: too few training rows, skipped", client_id, metric)
    if not models:
        raise ValueError(f"client {client_id!r}: no metric had enough history to train on")
    reach, reach_holdout = None, None
    if reaches:
        reach, reach_holdout = fit_reach(
            series,
            bounds.with_columns(pl.lit(first).alias("lo"), pl.lit(last).alias("hi")),
            (cal_start, holdout_start, last),
            spec,
            config,
            adjustments,
            {m: model.scale for m, model in models.items() if model.scale is not None},
            values,
        )
    return ClientForecaster(
        client_id=client_id,
        config=config,
        feature_spec=spec,
        metrics=list(models),
        fallback=None,
        trained_until=cast(datetime, history.get_column("ts").max()),
        holdout=holdout,
        models=models,
        client=dict(client) if client else None,
        bias=dict(adjustments.bias),
        reach=reach or None,
        reach_holdout=reach_holdout or None,
    )


def needs_fallback(history: pl.DataFrame, config: ForecastConfig) -> str | None:
    """Why a client's own model would starve on this (one client's) history, or None.

    Reasons: no metric values; less than `min_history_days` (or too few buckets for the
    horizon's calibration and holdout slices); fewer than `min_nonzero_share` of the buckets
    between its first and last row with any metric above zero.
    """
    metrics = present_metrics(history, config)
    if history.height == 0 or not metrics:
        return "no usage history with metric values"
    steps = history.select(step_of(pl.col("ts"), config.freq_seconds).alias("s")).get_column("s")
    # polars types max() and min() as any scalar; those of the integer steps are ints.
    n_steps = int(cast(int, steps.max()) - cast(int, steps.min())) + 1
    days = n_steps * config.freq_seconds / DAY_SECONDS
    if days < config.min_history_days:
        return f"too little history: {days:.2f} days < {config.min_history_days:g} days"
    if n_steps < min_fit_steps(config):
        return (
            f"too little history: {n_steps} buckets < {min_fit_steps(config)} needed"
            f" for a {config.horizon_steps}-step horizon"
        )
    busy = history.select(
        pl.any_horizontal(pl.col(m).fill_null(0) > 0 for m in metrics).sum()
    ).item()
    share = busy / n_steps
    if share < config.min_nonzero_share:
        return f"too sparse: {share:.1%} of buckets non-zero < {config.min_nonzero_share:.0%}"
    return None


def present_metrics(frame: pl.DataFrame, config: ForecastConfig) -> list[str]:
    """The metric columns of `frame` that hold at least one value."""
    wanted = config.metrics if config.metrics is not None else WAREHOUSE_METRICS
    candidates = [m for m in wanted if m in frame.columns]
    if not candidates or frame.height == 0:
        return []
    counts = frame.select(pl.col(m).is_not_null().sum() for m in candidates).row(0)
    return [m for m, n in zip(candidates, counts, strict=True) if n > 0]
