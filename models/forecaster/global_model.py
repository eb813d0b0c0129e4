"""The global fallback: one set of boosters trained across clients (client attributes as
features), with each served client's own scale, calibration and holdout report."""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import cast

import polars as pl

from models.features import (
    FeatureSpec,
    assemble_rows,
    build_series,
    cross_features,
    regular_grid,
    to_long,
)
from models.forecaster.calibration import Calibration, MetricModel, _fit_calibration
from models.forecaster.client_model import ClientForecaster, needs_fallback, present_metrics
from models.forecaster.config import Adjustments, ForecastConfig
from models.forecaster.frames import _scales, feature_spec
from models.forecaster.holdout import _empty_report, _holdout_report
from models.forecaster.reach import can_reach, reach_pairs, reach_span
from models.forecaster.slicing import _eval_pairs, _sample_pairs, _slice_lengths
from models.forecaster.training import QuantileBoosters, _raw_quantiles, _train_boosters

log = logging.getLogger(__package__)  # "models.forecaster", as before the split

_KEYS = ["client_id", "metric"]
_MIN_CLIENT_CAL_POINTS = 200  # a global-model client below this uses the pooled calibration


@dataclass
class _ClientState:
    scales: dict[str, float]
    calibrations: dict[str, Calibration]
    holdout: dict[str, dict[str, float | None]]
    attributes: dict[str, object] | None
    reason: str | None
    metrics: list[str]


@dataclass
class GlobalForecaster:
    """Quantile boosters shared by all clients, plus each known client's own scale/calibration."""

    config: ForecastConfig
    feature_spec: FeatureSpec
    metrics: list[str]
    trained_until: datetime
    boosters: dict[str, QuantileBoosters]
    calibrations: dict[str, Calibration]  # pooled over clients, per metric
    client_states: dict[str, _ClientState]
    # A profile's reach (models.forecaster.reach): far boosters and their pooled calibration
    # per metric, None when the history was too short for it (or an older model).
    reach: dict[str, tuple[QuantileBoosters, Calibration]] | None = None

    def for_client(
        self,
        client_id: str,
        client_attributes: dict | None = None,
        reason: str | None = None,
    ) -> ClientForecaster:
        """This client's view of the global model; `fallback` says why it is used."""
        state = self.client_states.get(client_id)
        attributes = client_attributes or (state.attributes if state else None)
        metrics = [m for m in (state.metrics if state else self.metrics) if m in self.boosters]
        models = {
            m: MetricModel(
                boosters=self.boosters[m],
                scale=state.scales.get(m) if state else None,
                calibration=(state.calibrations.get(m) if state else None) or self.calibrations[m],
            )
            for m in metrics
        }
        reach = {
            m: MetricModel(boosters, models[m].scale, calibration)
            for m, (boosters, calibration) in (self.reach or {}).items()
            if m in models
        }
        holdout = state.holdout if state else {m: _empty_report() for m in metrics}
        why = reason or (state.reason if state else None) or "global model requested"
        if state is None and reason is None:
            why = "no history when the global model was trained"
        return ClientForecaster(
            client_id=client_id,
            config=self.config,
            feature_spec=self.feature_spec,
            metrics=metrics,
            fallback=why,
            trained_until=self.trained_until,
            holdout={m: holdout.get(m, _empty_report()) for m in metrics},
            models=models,
            client=dict(attributes) if attributes else None,
            reach=reach or None,
        )


def fit_global_forecaster(
    usage: pl.DataFrame,
    clients: pl.DataFrame | None,
    calendar: pl.DataFrame | None,
    config: ForecastConfig,
    serve: Collection[str] | None = None,
) -> GlobalForecaster:
    """Fit one set of quantile boosters across all clients in `usage` (time slices are global).

    Clients in `serve` (all when None) get their own state: scale, calibration and holdout
    report. The others only lend training rows and calibration points to the pooled
    calibration: the per-client work is most of the fit, and training asks for the state
    of the few clients the model will actually serve.
    """
    metrics = present_metrics(usage, config)
    if not metrics:
        raise ValueError("usage has no metric with values to model")
    grid = regular_grid(usage, config.freq_seconds, metrics, missing_as=0.0)
    bounds = grid.group_by("client_id").agg(
        pl.col("step").min().alias("lo"), pl.col("step").max().alias("hi")
    )
    # polars types min() and max() as any scalar; those of the integer steps are ints.
    first, last = int(cast(int, bounds["lo"].min())), int(cast(int, bounds["hi"].max()))
    train_steps, cal_steps, _ = _slice_lengths(last - first + 1, config)
    cal_start, holdout_start = first + train_steps, first + train_steps + cal_steps
    reaches = can_reach(train_steps, config)
    spec = feature_spec(config, train_steps, clients, calendar, metrics, reaches)
    long = to_long(grid, metrics)
    present = long.group_by(_KEYS).agg(pl.col("value").is_not_null().any().alias("any"))
    long = long.join(present.filter("any").select(_KEYS), on=_KEYS)
    # A client's scale comes from its training slice, or from all it has when it joined later.
    early = _scales(long.filter(pl.col("step") < cal_start))
    scales = (
        _scales(long)
        .join(early, on=_KEYS, how="left", suffix="_early")
        .select(*_KEYS, pl.coalesce("scale_early", "scale").alias("scale"))
    )
    cross = None
    if spec.cross_metrics:
        scaled = long.join(scales, on=_KEYS).with_columns(
            (pl.col("value") / pl.col("scale")).alias("z")
        )
        cross = cross_features(scaled, spec)
    reasons = _fallback_reasons(usage, config)
    attributes = _attributes_by_client(clients)
    served = bounds.get_column("client_id").to_list()
    if serve is not None:
        wanted = set(serve)
        served = [cid for cid in served if cid in wanted]
    states = {
        cid: _ClientState({}, {}, {}, attributes.get(cid), reasons.get(cid), []) for cid in served
    }
    boosters: dict[str, QuantileBoosters] = {}
    pooled: dict[str, Calibration] = {}
    reach: dict[str, tuple[QuantileBoosters, Calibration]] = {}
    for metric in metrics:
        one = long.filter(pl.col("metric") == metric)
        inputs = _GlobalInputs(one, scales, cross, grid.select("client_id", "step", metric))
        fitted = _fit_global_metric(
            inputs,
            metric,
            bounds,
            (cal_start, holdout_start),
            spec,
            config,
            calendar,
            clients,
            states,
        )
        if fitted is None:
            continue
        boosters[metric], pooled[metric], series = fitted
        if reaches:
            cuts = (cal_start, holdout_start, last)
            if (far := _fit_global_reach(series, bounds, cuts, spec, config)) is not None:
                reach[metric] = far
    if not boosters:
        raise ValueError("too little usage to train a global model")
    return GlobalForecaster(
        config=config,
        feature_spec=spec,
        metrics=list(boosters),
        trained_until=cast(datetime, usage.get_column("ts").max()),
        boosters=boosters,
        calibrations=pooled,
        client_states=states,
        reach=reach or None,
    )


@dataclass(frozen=True)
class _GlobalInputs:
    """One metric's long frame, every series' scale, cross features and the raw values."""

    long: pl.DataFrame
    scales: pl.DataFrame
    cross: pl.DataFrame | None
    values: pl.DataFrame  # client_id, step, <metric>


def _fit_global_metric(
    inputs: _GlobalInputs,
    metric: str,
    bounds: pl.DataFrame,
    cuts: tuple[int, int],
    spec: FeatureSpec,
    config: ForecastConfig,
    calendar: pl.DataFrame | None,
    clients: pl.DataFrame | None,
    states: dict[str, _ClientState],
) -> tuple[QuantileBoosters, Calibration, pl.DataFrame] | None:
    """Train one metric's shared boosters; fill each served client's scale, calibration and
    holdout (`states` holds the served clients). Returns the boosters, their pooled
    calibration and the metric's series (for its reach)."""
    cal_start, holdout_start = cuts
    long = inputs.long
    scales = inputs.scales.filter(pl.col("metric") == metric)
    series = build_series(long, spec, scales, calendar, clients, inputs.cross)
    ids = long.select("client_id").unique()
    client_bounds = bounds.join(ids, on="client_id")
    train_bounds = client_bounds.with_columns(pl.min_horizontal("hi", cal_start - 1).alias("hi"))
    served_bounds = client_bounds.filter(pl.col("client_id").is_in(list(states)))
    pairs = pl.concat(
        [
            _sample_pairs(train_bounds, None, None, config.global_rows_per_client, config, "train"),
            _eval_pairs(client_bounds, cal_start, holdout_start - 1, config, "cal"),
            _eval_pairs(served_bounds, holdout_start, None, config, "holdout"),
        ]
    )
    rows = assemble_rows(series, pairs, spec).filter(pl.col("target").is_not_null())
    train = rows.filter(pl.col("part") == "train")
    if train.height < config.min_data_in_leaf * 2:
        log.warning("global model: too few training rows for %s, skipped", metric)
        return None
    boosters = _train_boosters(train, spec, config, Adjustments())
    evaluated = rows.filter(pl.col("part") != "train")
    raw = _raw_quantiles(boosters, evaluated, spec)
    evaluated = evaluated.with_columns(
        pl.Series("q10", raw[:, 0]), pl.Series("q50", raw[:, 1]), pl.Series("q90", raw[:, 2])
    )
    is_cal = evaluated.get_column("part").to_numpy() == "cal"
    pooled = _fit_calibration(raw[is_cal], evaluated.filter(pl.Series(is_cal)), config)
    scale_of = dict(zip(scales["client_id"].to_list(), scales["scale"].to_list(), strict=True))
    values = inputs.values.partition_by("client_id", as_dict=True)
    served = evaluated.filter(pl.col("client_id").is_in(list(states)))
    for (cid,), part in served.partition_by("client_id", as_dict=True).items():
        state = states[cid]
        state.metrics.append(metric)
        state.scales[metric] = scale_of[cid]
        shared = (boosters, pooled, spec)
        _calibrate_client(part, state, metric, shared, config, values[(cid,)])
    for cid in served_bounds.get_column("client_id").to_list():
        state = states[cid]
        if metric not in state.metrics:  # no evaluated rows: pooled calibration, no holdout
            state.metrics.append(metric)
            state.scales[metric] = scale_of[cid]
            state.holdout[metric] = _empty_report()
    return boosters, pooled, series


def _fit_global_reach(
    series: pl.DataFrame,
    bounds: pl.DataFrame,
    cuts: tuple[int, int, int],
    spec: FeatureSpec,
    config: ForecastConfig,
) -> tuple[QuantileBoosters, Calibration] | None:
    """One metric's far boosters across clients and their calibration, pooled over clients
    (a client's own would need a day of calibration targets it seldom has)."""
    ids = series.select("client_id").unique()
    pairs = reach_pairs(
        bounds.join(ids, on="client_id"), cuts, config.global_rows_per_client, config, judged=False
    )
    rows = assemble_rows(series, pairs, spec).filter(pl.col("target").is_not_null())
    train = rows.filter(pl.col("part") == "train")
    if train.height < config.min_data_in_leaf * 2:
        return None
    boosters = _train_boosters(train, spec, config, Adjustments(), config.profile_steps)
    calibrated = rows.filter(pl.col("part") == "cal")
    raw = _raw_quantiles(boosters, calibrated, spec)
    return boosters, _fit_calibration(raw, calibrated, config, reach_span(config))


def _calibrate_client(
    part: pl.DataFrame,
    state: _ClientState,
    metric: str,
    shared: tuple[QuantileBoosters, Calibration, FeatureSpec],
    config: ForecastConfig,
    own: pl.DataFrame,
) -> None:
    """A client's calibration (own when it has enough points, else pooled) and holdout."""
    raw = part.select("q10", "q50", "q90").to_numpy()
    is_cal = part.get_column("part").to_numpy() == "cal"
    boosters, calibration, spec = shared
    if is_cal.sum() >= _MIN_CLIENT_CAL_POINTS:
        calibration = _fit_calibration(raw[is_cal], part.filter(pl.Series(is_cal)), config)
    holdout = part.filter(~pl.Series(is_cal))
    first = int(own.get_column("step")[0])
    model = MetricModel(boosters, state.scales[metric], calibration)
    state.holdout[metric] = _holdout_report(
        holdout,
        part,
        model,
        spec,
        own.get_column(metric).to_numpy(),
        first,
        config,
        0.0,
        (raw[~is_cal], raw),
    )
    if part.height >= _MIN_CLIENT_CAL_POINTS:
        calibration = _fit_calibration(raw, part, config)
    state.calibrations[metric] = calibration


def _fallback_reasons(usage: pl.DataFrame, config: ForecastConfig) -> dict[str, str | None]:
    return {
        cid: needs_fallback(part, config)
        for (cid,), part in usage.partition_by("client_id", as_dict=True).items()
    }


def _attributes_by_client(clients: pl.DataFrame | None) -> dict[str, dict[str, object]]:
    if clients is None:
        return {}
    return {row["client_id"]: row for row in clients.to_dicts()}
