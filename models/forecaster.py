"""Per-client quantile forecasters (p10/p50/p90 per metric) and the global fallback.

Each metric gets three LightGBM quantile boosters trained on direct multi-horizon rows (see
`models.features`). The target is the change from the last value in units of a per-series
scale (so the level can follow a trend and one model can serve clients of any size), divided
by the typical change at that horizon (so a leaf mixing near and far horizons still suits
each of them). The p10/p90 boosters get fewer rounds than p50: calibration corrects them.

A client's history is cut in time into three slices:

    train (boosters) | calibration | holdout (honest evaluation)

On the calibration slice, per horizon bucket, the predicted change is shrunk toward 0 (the
naive forecast) by the factor that minimises absolute error, so p50 is rarely worse than
naive, and each tail of the interval gets a conformal offset (conformalised quantile
regression) because raw quantile boosters under-cover badly on real data. The holdout slice
then measures the result against naive and seasonal naive on the same points, and the
calibration is re-estimated on calibration + holdout (the boosters are not refit: the time
budget does not allow it) so the deployed model is calibrated on the most recent data.

Calibration still lags a change in volatility, so at prediction the interval also moves by
half the conformal offset measured on the model's own forecasts whose targets fell in the
last day before the origin (sliding-window conformal). The holdout is scored that way too.

Clients whose own history would starve a model (too short, too sparse) get a
`GlobalForecaster` trained across clients with client attributes as features.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import lightgbm as lgb
import numpy as np
import polars as pl

from core.vocabulary import METRICS
from models.baselines import coverage, naive_forecast, pinball, seasonal_naive_forecast, wmape
from models.features import (
    DAY_SECONDS,
    WEEK_SECONDS,
    FeatureSpec,
    assemble_rows,
    build_series,
    cross_features,
    feature_matrix,
    make_feature_spec,
    regular_grid,
    step_of,
    to_long,
    ts_of,
)

log = logging.getLogger(__name__)

QUANTILES: tuple[float, float, float] = (0.1, 0.5, 0.9)
WAREHOUSE_METRICS: tuple[str, ...] = METRICS

_EPOCH = datetime(1970, 1, 1)
_KEYS = ["client_id", "metric"]
_MIN_HORIZON_SECONDS = 600  # 10 minutes: a 1-minute series forecast past one cycle
_MAX_HORIZON_SECONDS = 48 * 3_600
_SHRINK_GRID = np.linspace(0.0, 1.0, 21)
_MIN_BUCKET_POINTS = 30  # fewer calibration points than this: use all horizons pooled
_MIN_CLIENT_CAL_POINTS = 200  # a global-model client below this uses the pooled calibration
_MIN_RECENT_POINTS = 48  # recent targets needed before they move an interval


@dataclass(frozen=True)
class ForecastConfig:
    """How forecasters are built: horizon, LightGBM hyper-parameters, slices and budgets.

    `metrics` None means the warehouse metrics present in the history; set it to model other
    numeric columns (e.g. a bare trace in a backtest).
    """

    freq_seconds: int = 300
    horizon_steps: int = 12
    metrics: tuple[str, ...] | None = None
    # LightGBM: small trees, few rounds, one thread per booster (callers parallelise
    # clients). Measured on a 2-core machine: ~0.47 s CPU per 14-day, 6-metric client.
    n_estimators: int = 30  # rounds of the p50 booster
    tail_estimators: int = 10  # rounds of p10/p90: conformal calibration corrects them anyway
    learning_rate: float = 0.15
    num_leaves: int = 15
    min_data_in_leaf: int = 30
    max_bin: int = 63
    feature_fraction: float = 0.5  # also regularises: series features are highly redundant
    lambda_l2: float = 1.0
    # Sampled training rows per metric (origin, horizon pairs): the main cost lever.
    max_train_rows: int = 3_000
    max_eval_rows: int = 1_500  # per client and slice, for calibration and holdout
    # Slices at the end of the history: each min(days, fraction of history), never under
    # one horizon plus a margin so every horizon step is calibrated and evaluated.
    holdout_days: float = 1.0
    calibration_days: float = 1.0
    slice_fraction: float = 0.25
    # The p10-p90 interval aims a point above 80 %: on real traces the calibration windows
    # understate the spread that follows them by about that much.
    coverage_target: float = 0.81
    horizon_buckets: int = 4  # shrink and interval offsets are fitted per bucket
    # At prediction, intervals also follow the model's own errors over the last
    # `recalibration_days` (at this weight): calibration alone lags a change in volatility.
    recalibration_days: float = 0.5
    recalibration_weight: float = 0.75
    cross_metric_features: bool = True  # the client's other metrics' recent change
    # When a client's own model would starve, and how the global model samples clients.
    min_history_days: float = 2.0
    min_nonzero_share: float = 0.05
    global_rows_per_client: int = 300
    seed: int = 7

    def __post_init__(self) -> None:
        if self.freq_seconds < 1:
            raise ValueError(f"freq_seconds must be >= 1, got {self.freq_seconds}")
        seconds = self.horizon_steps * self.freq_seconds
        if not _MIN_HORIZON_SECONDS <= seconds <= _MAX_HORIZON_SECONDS:
            low = math.ceil(_MIN_HORIZON_SECONDS / self.freq_seconds)
            high = _MAX_HORIZON_SECONDS // self.freq_seconds
            raise ValueError(
                f"horizon_steps={self.horizon_steps} at {self.freq_seconds} s covers"
                f" {seconds / 3600:g} h; it must cover 10 min to 48 h, i.e. {low}..{high} steps"
            )
        if not 0 < self.coverage_target < 1:
            raise ValueError(f"coverage_target must be in (0, 1), got {self.coverage_target}")
        if min(self.n_estimators, self.tail_estimators, self.max_train_rows) < 1:
            raise ValueError("n_estimators, tail_estimators and max_train_rows must be >= 1")

    @property
    def steps_per_day(self) -> int:
        return max(1, round(DAY_SECONDS / self.freq_seconds))


@dataclass(frozen=True)
class Adjustments:
    """Feedback from reconciliation applied to the next fit.

    `bias` adds a constant (metric units) to a metric's p10/p50/p90; `recent_weight` is the
    sample weight of training rows whose target time is at or after `recent_since`.
    """

    bias: dict[str, float] = field(default_factory=dict)
    recent_since: datetime | None = None
    recent_weight: float = 1.0


@dataclass(frozen=True)
class Calibration:
    """Post-processing of raw quantiles (in scale units of change): shrink, then widen."""

    shrink: tuple[float, ...]  # per horizon bucket: share of the predicted change kept
    lower: tuple[float, ...]  # per horizon bucket: subtracted from p10
    upper: tuple[float, ...]  # per horizon bucket: added to p90
    horizon_steps: int

    @classmethod
    def identity(cls, horizon_steps: int, buckets: int) -> Calibration:
        return cls((1.0,) * buckets, (0.0,) * buckets, (0.0,) * buckets, horizon_steps)


@dataclass
class QuantileBoosters:
    """p10, p50 and p90 boosters of the change in scale units, divided by `horizon_scale`.

    `horizon_scale[h - 1]` is the typical |change| h steps ahead in the training rows.
    """

    boosters: tuple[lgb.Booster, lgb.Booster, lgb.Booster]
    horizon_scale: tuple[float, ...]

    def fingerprint(self) -> str:
        """Identity of the boosters' content: equal for copies loaded apart (the global
        model's boosters arrive once per client it serves), computed once per object."""
        cached = self.__dict__.get("_fingerprint")
        if cached is None:
            digest = hashlib.sha256(repr(self.horizon_scale).encode())
            for booster in self.boosters:
                digest.update(booster.model_to_string().encode())
            cached = self.__dict__["_fingerprint"] = digest.hexdigest()
        return cached


@dataclass
class MetricModel:
    """One metric's boosters, scale and calibration.

    `scale` None means "derive from the history given at prediction" (a global-model client
    that was not in the training data).
    """

    boosters: QuantileBoosters
    scale: float | None
    calibration: Calibration


@dataclass
class ClientForecaster:
    """A client's forecaster: predicts p10/p50/p90 per metric for 1..H steps after the origin.

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
    exceedance: object | None = None

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
        return forecast_origins(self, own, [own.get_column("ts").max()], calendar, horizon)

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
        predict = self.exceedance.predict  # type: ignore[attr-defined]
        return predict(own, horizon_steps, levels, clients)


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


# --- public entry points ------------------------------------------------------------------


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

    spec = make_feature_spec(
        config.freq_seconds, config.horizon_steps, train_steps, clients, calendar,
        metrics if config.cross_metric_features else (),
    )  # fmt: skip
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

    models: dict[str, MetricModel] = {}
    holdout: dict[str, dict[str, float | None]] = {}
    for metric in metrics:
        metric_rows = rows.filter(pl.col("metric") == metric)
        train = metric_rows.filter(pl.col("part") == "train")
        if train.height < config.min_data_in_leaf * 2:
            log.warning("client %s metric %s: too few training rows, skipped", client_id, metric)
            continue
        boosters = _train_boosters(train, spec, config, adjustments)
        scale = float(scales.filter(pl.col("metric") == metric).get_column("scale")[0])
        model, report = _calibrate_and_evaluate(
            boosters, scale, metric_rows, spec, config, values[metric], first,
            adjustments.bias.get(metric, 0.0),
        )  # fmt: skip
        models[metric] = model
        holdout[metric] = report
    if not models:
        raise ValueError(f"client {client_id!r}: no metric had enough history to train on")
    return ClientForecaster(
        client_id=client_id,
        config=config,
        feature_spec=spec,
        metrics=list(models),
        fallback=None,
        trained_until=history.get_column("ts").max(),
        holdout=holdout,
        models=models,
        client=dict(client) if client else None,
        bias=dict(adjustments.bias),
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
    n_steps = int(steps.max() - steps.min()) + 1
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


# --- global fallback ----------------------------------------------------------------------


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
    first, last = int(bounds["lo"].min()), int(bounds["hi"].max())
    train_steps, cal_steps, _ = _slice_lengths(last - first + 1, config)
    cal_start, holdout_start = first + train_steps, first + train_steps + cal_steps
    spec = make_feature_spec(
        config.freq_seconds, config.horizon_steps, train_steps, clients, calendar,
        metrics if config.cross_metric_features else (),
    )  # fmt: skip
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
    for metric in metrics:
        one = long.filter(pl.col("metric") == metric)
        inputs = _GlobalInputs(one, scales, cross, grid.select("client_id", "step", metric))
        fitted = _fit_global_metric(
            inputs, metric, bounds, (cal_start, holdout_start), spec, config, calendar, clients,
            states,
        )  # fmt: skip
        if fitted is not None:
            boosters[metric], pooled[metric] = fitted
    if not boosters:
        raise ValueError("too little usage to train a global model")
    return GlobalForecaster(
        config=config,
        feature_spec=spec,
        metrics=list(boosters),
        trained_until=usage.get_column("ts").max(),
        boosters=boosters,
        calibrations=pooled,
        client_states=states,
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
) -> tuple[QuantileBoosters, Calibration] | None:
    """Train one metric's shared boosters; fill each served client's scale, calibration and
    holdout (`states` holds the served clients)."""
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
    return boosters, pooled


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
        holdout, part, model, spec, own.get_column(metric).to_numpy(), first, config, 0.0,
        (raw[~is_cal], raw),
    )  # fmt: skip
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


# --- slicing and sampling -----------------------------------------------------------------


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
) -> pl.DataFrame:
    """Random (origin, horizon) pairs per client with lo <= origin and origin + h <= hi.

    `bounds` has client_id and optionally per-client lo/hi columns (used where lo/hi None).
    """
    frame = _with_bounds(bounds, lo, hi)
    rng = np.random.default_rng(config.seed)
    n_clients = frame.height
    horizon = rng.integers(1, config.horizon_steps + 1, size=(n_clients, n_per_client))
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


def _scales(long: pl.DataFrame) -> pl.DataFrame:
    """Per (client, metric) scale: mean absolute value (1 when that is 0 or unknown)."""
    mean_abs = pl.col("value").abs().mean()
    return long.group_by("client_id", "metric").agg(
        pl.when(mean_abs > 0).then(mean_abs).otherwise(1.0).alias("scale")
    )


# --- training, calibration, evaluation ----------------------------------------------------


def _lgb_params(config: ForecastConfig) -> dict[str, object]:
    return {
        "objective": "quantile",
        "learning_rate": config.learning_rate,
        "num_leaves": config.num_leaves,
        "min_data_in_leaf": config.min_data_in_leaf,
        "max_bin": config.max_bin,
        "feature_fraction": config.feature_fraction,
        "lambda_l2": config.lambda_l2,
        "num_threads": 1,
        "seed": config.seed,
        "deterministic": True,
        "force_col_wise": True,
        "verbosity": -1,
    }


def _train_boosters(
    train: pl.DataFrame, spec: FeatureSpec, config: ForecastConfig, adjustments: Adjustments
) -> QuantileBoosters:
    """Three quantile boosters on one shared, binned Dataset."""
    weight = None
    if adjustments.recent_since is not None and adjustments.recent_weight != 1.0:
        recent = (train.get_column("target_ts") >= adjustments.recent_since).to_numpy()
        weight = np.where(recent, adjustments.recent_weight, 1.0)
    horizons = train.get_column("horizon").to_numpy()
    target = train.get_column("target").to_numpy()
    horizon_scale = _horizon_scale(horizons, target, config.horizon_steps)
    params = _lgb_params(config)
    dataset = lgb.Dataset(
        feature_matrix(train, spec),
        label=target / horizon_scale[horizons - 1],
        weight=weight,
        feature_name=list(spec.feature_names),
        params=params,
        free_raw_data=False,
    )

    # The tails are recalibrated anyway, so they get fewer, larger steps than the median.
    tail_rate = config.learning_rate * config.n_estimators / config.tail_estimators
    tail_params = {"learning_rate": min(tail_rate, 1.0)}
    boosters = [
        lgb.train(
            {**params, "alpha": q, **({} if q == 0.5 else tail_params)},
            dataset,
            num_boost_round=config.n_estimators if q == 0.5 else config.tail_estimators,
        )
        for q in QUANTILES
    ]
    return QuantileBoosters((boosters[0], boosters[1], boosters[2]), tuple(horizon_scale))


def _horizon_scale(horizons: np.ndarray, target: np.ndarray, horizon_steps: int) -> np.ndarray:
    """Typical |change| per horizon step: a power law a * h^b fitted to per-step means.

    Dividing targets by it puts all horizons on one footing, so a leaf mixing near and far
    horizons still predicts sensibly for each. A power law keeps it smooth when some
    steps have few training rows.
    """
    steps = np.arange(1, horizon_steps + 1)
    sums = np.bincount(horizons - 1, weights=np.abs(target), minlength=horizon_steps)
    counts = np.bincount(horizons - 1, minlength=horizon_steps)
    ok = (counts > 0) & (sums > 0)
    if ok.sum() == 0:
        return np.ones(horizon_steps)
    means = sums[ok] / counts[ok]
    if ok.sum() == 1:
        return np.full(horizon_steps, means[0])
    slope, intercept = np.polyfit(np.log(steps[ok]), np.log(means), 1, w=np.sqrt(counts[ok]))
    return np.exp(intercept + slope * np.log(steps))


def _raw_quantiles(model: QuantileBoosters, rows: pl.DataFrame, spec: FeatureSpec) -> np.ndarray:
    """Predicted change (scale units) per row as an (n, 3) array, sorted so it never crosses."""
    if rows.height == 0:
        return np.zeros((0, 3))
    matrix = feature_matrix(rows, spec)
    raw = np.column_stack([b.predict(matrix, num_threads=1) for b in model.boosters])
    horizons = rows.get_column("horizon").to_numpy()
    return np.sort(raw * np.asarray(model.horizon_scale)[horizons - 1, None], axis=1)


def _bucket_of(horizons: np.ndarray, horizon_steps: int, buckets: int) -> np.ndarray:
    return np.minimum((np.asarray(horizons) - 1) * buckets // horizon_steps, buckets - 1)


def _n_buckets(config: ForecastConfig) -> int:
    return max(1, min(config.horizon_buckets, config.horizon_steps))


def _fit_calibration(raw: np.ndarray, rows: pl.DataFrame, config: ForecastConfig) -> Calibration:
    """Per horizon bucket: the shrink toward naive minimising absolute error, then offsets.

    Each tail gets its own offset, the `(1 + coverage) / 2` quantile of how far targets fall
    outside it, so p10 and p90 each miss about (1 - coverage) / 2 of the time.
    """
    buckets = _n_buckets(config)
    if rows.height == 0:
        return Calibration.identity(config.horizon_steps, buckets)
    target = rows.get_column("target").to_numpy()
    of = _bucket_of(rows.get_column("horizon").to_numpy(), config.horizon_steps, buckets)
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
        horizon_steps=config.horizon_steps,
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


def _calibrated(raw: np.ndarray, calibration: Calibration, rows: pl.DataFrame) -> np.ndarray:
    """Apply a calibration to raw (sorted) scaled-change quantiles of `rows`."""
    horizons = rows.get_column("horizon").to_numpy()
    of = _bucket_of(horizons, calibration.horizon_steps, len(calibration.lower))
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
        evaluated.filter(~pl.Series(is_cal)), evaluated, model, spec, values, first_step,
        config, bias, (raw[~is_cal], raw),
    )  # fmt: skip
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
    report["naive_wmape"] = wmape(actual, naive_forecast(values, origins, horizons))
    for key, seconds in (("day", DAY_SECONDS), ("week", WEEK_SECONDS)):
        season = round(seconds / config.freq_seconds)
        forecast = seasonal_naive_forecast(values, origins, horizons, season)
        ok = forecast is not None and not np.isnan(forecast).any()
        report[f"seasonal_naive_{key}_wmape"] = wmape(actual, forecast) if ok else None
    report["n_points"] = float(len(actual))
    return {key: report[key] for key in HOLDOUT_KEYS}


def point_metrics(actual: np.ndarray, quantiles: np.ndarray) -> dict[str, float | None]:
    """wMAPE of p50, pinball per quantile and their mean, and p10-p90 coverage."""
    losses = [pinball(actual, quantiles[:, i], q) for i, q in enumerate(QUANTILES)]
    return {
        "wmape": wmape(actual, quantiles[:, 1]),
        "pinball_p10": losses[0],
        "pinball_p50": losses[1],
        "pinball_p90": losses[2],
        "pinball": None if None in losses else float(np.mean(losses)),
        "coverage_80": coverage(actual, quantiles[:, 0], quantiles[:, 2]),
    }


def _empty_report() -> dict[str, float | None]:
    report: dict[str, float | None] = dict.fromkeys(HOLDOUT_KEYS)
    report["n_points"] = 0.0
    return report


# --- prediction ---------------------------------------------------------------------------


def forecast_origins(
    forecaster: ClientForecaster,
    history: pl.DataFrame,
    origins: list[datetime],
    calendar: pl.DataFrame | None = None,
    horizon_steps: int | None = None,
) -> pl.DataFrame:
    """Forecasts from several origins of one history in one feature build (for backtests).

    Each origin's forecast uses only rows at or before it, exactly as `predict` on the
    history cut at that origin would; columns as `ClientForecaster.predict`.
    """
    horizon = forecaster.config.horizon_steps if horizon_steps is None else horizon_steps
    spec = forecaster.feature_spec
    freq = forecaster.config.freq_seconds
    own = history.filter(pl.col("client_id") == forecaster.client_id)
    metrics = [m for m in forecaster.metrics if m in own.columns]
    if not metrics or not origins:
        return _empty_forecast()
    steps = sorted({_step_of_datetime(o, freq) for o in origins})
    recent = _recent_origins(steps, forecaster.config)
    # Only what features can reach: the lookback before the first origin up to the last.
    since = ts_of(pl.lit(min([*steps, *recent]) - spec.lookback_steps - 1), freq)
    until = ts_of(pl.lit(steps[-1]), freq)
    tail = own.filter((pl.col("ts") > since) & (pl.col("ts") <= until))
    # Cross-metric features need the client's other metrics even when they are not forecast.
    inputs = list(dict.fromkeys([*metrics, *(m for m in spec.cross_metrics if m in own.columns)]))
    grid = regular_grid(tail, freq, inputs, extend_steps=horizon, missing_as=0.0)
    long = to_long(grid, inputs)
    scales = _prediction_scales(forecaster, long, steps[0])
    clients = client_frame(forecaster.client_id, forecaster.client)
    series = build_series(long, spec, scales, calendar, clients)
    pairs = pl.concat(
        [
            _origin_pairs(forecaster.client_id, steps, horizon, "forecast"),
            _origin_pairs(forecaster.client_id, recent, forecaster.config.horizon_steps, "recent"),
        ]
    )
    rows = assemble_rows(series, pairs, spec).filter(pl.col("anchor").is_not_null())
    rows = rows.filter((pl.col("part") == "forecast") | pl.col("target").is_not_null())
    frames = []
    for metric in metrics:
        metric_rows = rows.filter(pl.col("metric") == metric)
        wanted = metric_rows.filter(pl.col("part") == "forecast")
        if wanted.height:
            recent_rows = metric_rows.filter(pl.col("part") == "recent")
            frames.append(_forecast_rows(forecaster, metric, wanted, recent_rows))
    if not frames:
        return _empty_forecast()
    return pl.concat(frames).sort("origin", "metric", "horizon")


def forecast_latest(
    forecasters: dict[str, ClientForecaster],
    histories: dict[str, pl.DataFrame],
    calendar: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Each client's forecast from the last bucket of its history, as `predict` gives it,
    for many clients at once.

    Clients whose forecasters share a configuration and feature spec (the global model's,
    or own models fitted together) get their features built in one pass, and boosters
    shared by several clients (the global model's) score all their rows in one call; only
    the per-client calibration runs client by client. Equal to calling `predict` per client.
    """
    families: dict[tuple[ForecastConfig, FeatureSpec], list[ClientForecaster]] = {}
    for client_id, forecaster in forecasters.items():
        if client_id in histories:
            key = (forecaster.config, forecaster.feature_spec)
            families.setdefault(key, []).append(forecaster)
    frames = [_forecast_family(members, histories, calendar) for members in families.values()]
    frames = [f for f in frames if f.height]
    if not frames:
        return _empty_forecast()
    return pl.concat(frames).sort("client_id", "origin", "metric", "horizon")


def _forecast_family(
    members: list[ClientForecaster],
    histories: dict[str, pl.DataFrame],
    calendar: pl.DataFrame | None,
) -> pl.DataFrame:
    """`forecast_latest` for forecasters of one configuration and feature spec."""
    config, spec = members[0].config, members[0].feature_spec
    freq, horizon = config.freq_seconds, config.horizon_steps
    tails, pairs, origins, attributes = [], [], [], []
    inputs: list[str] = []
    served: list[ClientForecaster] = []
    for forecaster in members:
        own = histories[forecaster.client_id].filter(pl.col("client_id") == forecaster.client_id)
        metrics = [m for m in forecaster.metrics if m in own.columns]
        if own.height == 0 or not metrics:
            continue
        step = _step_of_datetime(own.get_column("ts").max(), freq)
        recent = _recent_origins([step], config)
        since = ts_of(pl.lit(min([step, *recent]) - spec.lookback_steps - 1), freq)
        tails.append(
            own.filter((pl.col("ts") > since) & (pl.col("ts") <= ts_of(pl.lit(step), freq)))
        )
        inputs += [*metrics, *(m for m in spec.cross_metrics if m in own.columns)]
        pairs += [
            _origin_pairs(forecaster.client_id, [step], horizon, "forecast"),
            _origin_pairs(forecaster.client_id, recent, horizon, "recent"),
        ]
        origins.append((forecaster.client_id, step))
        attributes.append(client_frame(forecaster.client_id, forecaster.client))
        served.append(forecaster)
    if not served:
        return _empty_forecast()
    inputs = list(dict.fromkeys(inputs))
    grid = regular_grid(pl.concat(tails, how="diagonal_relaxed"), freq, inputs,
                        extend_steps=horizon, missing_as=0.0)  # fmt: skip
    long = to_long(grid, inputs)
    scales = _family_scales(served, long, origins)
    known = [a for a in attributes if a is not None]
    clients = pl.concat(known, how="vertical_relaxed") if known else None
    series = build_series(long, spec, scales, calendar, clients)
    rows = assemble_rows(series, pl.concat(pairs), spec).filter(pl.col("anchor").is_not_null())
    rows = rows.filter((pl.col("part") == "forecast") | pl.col("target").is_not_null())
    frames = []
    present = set(rows.get_column("client_id").unique().to_list())
    for metric in dict.fromkeys(m for f in served for m in f.metrics):
        users = [f for f in served if metric in f.metrics and f.client_id in present]
        by_boosters: dict[str, list[ClientForecaster]] = {}
        for forecaster in users:
            key = forecaster.models[metric].boosters.fingerprint()
            by_boosters.setdefault(key, []).append(forecaster)
        metric_rows = rows.filter(pl.col("metric") == metric)
        for group in by_boosters.values():
            frames += _score_group(group, metric, metric_rows, spec, config)
    if not frames:
        return _empty_forecast()
    return pl.concat(frames)


def _family_scales(
    served: list[ClientForecaster], long: pl.DataFrame, origins: list[tuple[str, int]]
) -> pl.DataFrame:
    """`_prediction_scales` of every served client at once."""
    origin = pl.DataFrame(
        origins, schema={"client_id": pl.String, "origin": pl.Int64}, orient="row"
    )
    observed = _scales(
        long.join(origin, on="client_id").filter(pl.col("step") <= pl.col("origin")).drop("origin")
    )
    stored = pl.DataFrame(
        [(f.client_id, m, model.scale) for f in served for m, model in f.models.items()],
        schema={"client_id": pl.String, "metric": pl.String, "stored": pl.Float64},
        orient="row",
    )
    return observed.join(stored, on=["client_id", "metric"], how="left").select(
        "client_id", "metric", pl.coalesce("stored", "scale").alias("scale")
    )


def _score_group(
    group: list[ClientForecaster],
    metric: str,
    metric_rows: pl.DataFrame,
    spec: FeatureSpec,
    config: ForecastConfig,
) -> list[pl.DataFrame]:
    """One metric's forecasts for clients sharing boosters: one booster call for all rows,
    then each client's own calibration, recalibration and bias."""
    ids = [f.client_id for f in group]
    rows = metric_rows.filter(pl.col("client_id").is_in(ids)).with_row_index("_row")
    wanted, recent = (
        rows.filter(pl.col("part") == "forecast"),
        rows.filter(pl.col("part") == "recent"),
    )
    boosters = group[0].models[metric].boosters
    raw_wanted = _raw_quantiles(boosters, wanted, spec)
    raw_recent = _raw_quantiles(boosters, recent, spec)
    wanted_at = {cid: idx for (cid,), idx in _positions(wanted).items()}
    recent_at = {cid: idx for (cid,), idx in _positions(recent).items()}
    frames = []
    for forecaster in group:
        at = wanted_at.get(forecaster.client_id)
        if at is None:
            continue
        mine = wanted[at]
        back = recent_at.get(forecaster.client_id, np.zeros(0, np.int64))
        model = forecaster.models[metric]
        scaled = _final_quantiles(
            model, mine, recent[back], spec, config, raw=(raw_wanted[at], raw_recent[back])
        )
        values = _to_values(
            scaled,
            mine.get_column("anchor").to_numpy(),
            mine.get_column("scale").to_numpy(),
            forecaster.bias.get(metric, 0.0),
        )
        frames.append(
            mine.select(
                "client_id",
                "metric",
                pl.col("origin_ts").alias("origin"),
                pl.col("target_ts").alias("ts"),
                pl.col("horizon").cast(pl.Int32),
                pl.Series("p10", values[:, 0]),
                pl.Series("p50", values[:, 1]),
                pl.Series("p90", values[:, 2]),
            )  # fmt: skip
        )
    return frames


def _positions(rows: pl.DataFrame) -> dict[tuple[str], np.ndarray]:
    """Row positions of each client in `rows`, in order."""
    if rows.height == 0:
        return {}
    indexed = rows.select("client_id").with_row_index("_pos")
    return {
        key: part.get_column("_pos").to_numpy().astype(np.int64)
        for key, part in indexed.partition_by(
            "client_id", as_dict=True, maintain_order=True
        ).items()
    }


def _forecast_rows(
    forecaster: ClientForecaster, metric: str, rows: pl.DataFrame, recent: pl.DataFrame
) -> pl.DataFrame:
    """Calibrated quantiles in metric units for one metric's assembled rows."""
    model = forecaster.models[metric]
    spec = forecaster.feature_spec
    scaled = _final_quantiles(model, rows, recent, spec, forecaster.config)
    values = _to_values(
        scaled,
        rows.get_column("anchor").to_numpy(),
        rows.get_column("scale").to_numpy(),
        forecaster.bias.get(metric, 0.0),
    )
    return rows.select(
        "client_id", "metric", pl.col("origin_ts").alias("origin"),
        pl.col("target_ts").alias("ts"), pl.col("horizon").cast(pl.Int32),
        pl.Series("p10", values[:, 0]), pl.Series("p50", values[:, 1]),
        pl.Series("p90", values[:, 2]),
    )  # fmt: skip


def _origin_pairs(client_id: str, steps: list[int], horizon: int, part: str) -> pl.DataFrame:
    return pl.DataFrame(
        {"client_id": client_id, "step": steps, "part": part},
        schema={"client_id": pl.String, "step": pl.Int64, "part": pl.String},
    ).join(pl.DataFrame({"horizon": np.arange(1, horizon + 1, dtype=np.int32)}), how="cross")


def _recent_origins(steps: list[int], config: ForecastConfig) -> list[int]:
    """Past origins whose targets fall in the recalibration window of some requested origin."""
    window = round(config.recalibration_days * config.steps_per_day)
    if window <= 0 or config.recalibration_weight == 0 or not steps:
        return []
    horizon = config.horizon_steps
    stride = max(1, math.ceil(window * horizon / config.max_eval_rows))
    first = steps[0] - window - horizon + 1
    return list(range(steps[-1] - horizon, first - 1, -stride))[::-1]


def _final_quantiles(
    model: MetricModel,
    rows: pl.DataFrame,
    recent: pl.DataFrame | None,
    spec: FeatureSpec,
    config: ForecastConfig,
    raw: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Calibrated quantiles (scale units of change), widened by recent errors when known.

    `recent` holds rows of earlier origins whose targets are known: for each origin of `rows`
    the interval moves by `recalibration_weight` times the conformal offset measured on
    those targets within the last `recalibration_days` up to that origin. `raw` may carry
    the boosters' outputs for (rows, recent) when already computed.
    """
    horizons = rows.get_column("horizon").to_numpy()
    if raw is None:
        raw = (
            _raw_quantiles(model.boosters, rows, spec),
            _raw_quantiles(model.boosters, recent, spec) if recent is not None else None,
        )
    out = _calibrated(raw[0], model.calibration, rows)
    if recent is None or recent.height == 0 or config.recalibration_weight == 0:
        return out
    rec_h = recent.get_column("horizon").to_numpy()
    rec = _calibrated(raw[1], model.calibration, recent)
    unit = np.asarray(model.boosters.horizon_scale)
    target = recent.get_column("target").to_numpy()
    known_at = recent.get_column("step").to_numpy() + rec_h
    origin = rows.get_column("step").to_numpy()
    steps, at = np.unique(origin, return_inverse=True)
    window = round(config.recalibration_days * config.steps_per_day)
    seen = (known_at[None, :] <= steps[:, None]) & (known_at[None, :] > steps[:, None] - window)
    tail = (1.0 + config.coverage_target) / 2.0
    low = _masked_quantile((rec[:, 0] - target) / unit[rec_h - 1], seen, tail)
    high = _masked_quantile((target - rec[:, 2]) / unit[rec_h - 1], seen, tail)
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


def _prediction_scales(
    forecaster: ClientForecaster, long: pl.DataFrame, origin: int
) -> pl.DataFrame:
    """Stored scales; a metric without one takes it from the history given."""
    observed = _scales(long.filter(pl.col("step") <= origin))
    stored = pl.DataFrame(
        {
            "client_id": [forecaster.client_id] * len(forecaster.models),
            "metric": list(forecaster.models),
            "stored": [m.scale for m in forecaster.models.values()],
        },
        schema={"client_id": pl.String, "metric": pl.String, "stored": pl.Float64},
    )
    return observed.join(stored, on=["client_id", "metric"], how="left").select(
        "client_id", "metric", pl.coalesce("stored", "scale").alias("scale")
    )


FORECAST_SCHEMA: dict[str, pl.DataType] = {
    "client_id": pl.String(),
    "metric": pl.String(),
    "origin": pl.Datetime("us"),
    "ts": pl.Datetime("us"),
    "horizon": pl.Int32(),
    "p10": pl.Float64(),
    "p50": pl.Float64(),
    "p90": pl.Float64(),
}


def _empty_forecast() -> pl.DataFrame:
    return pl.DataFrame(schema=FORECAST_SCHEMA)


# --- small helpers ------------------------------------------------------------------------


def _step_of_datetime(moment: datetime, freq_seconds: int) -> int:
    """Bucket index of a naive UTC datetime (datetime.timestamp would assume local time)."""
    return (moment - _EPOCH) // timedelta(seconds=1) // freq_seconds


def _only_client(history: pl.DataFrame) -> str:
    ids = history.get_column("client_id").unique().to_list()
    if len(ids) != 1:
        raise ValueError(f"history must hold exactly one client, found {len(ids)}")
    return str(ids[0])


def client_frame(client_id: str, client: dict | None) -> pl.DataFrame | None:
    """A one-row clients frame from an attribute dict (missing attributes are null)."""
    if not client:
        return None
    return pl.DataFrame(
        {
            "client_id": [client_id],
            "tier": [client.get("tier")],
            "region": [client.get("region")],
            "service": [client.get("service")],
            "container_cpu": [client.get("container_cpu")],
            "container_memory_mb": [client.get("container_memory_mb")],
        },
        schema={
            "client_id": pl.String,
            "tier": pl.String,
            "region": pl.String,
            "service": pl.String,
            "container_cpu": pl.Float64,
            "container_memory_mb": pl.Float64,
        },
    )


__all__ = [
    "HOLDOUT_KEYS",
    "QUANTILES",
    "WAREHOUSE_METRICS",
    "Adjustments",
    "Calibration",
    "ClientForecaster",
    "ForecastConfig",
    "GlobalForecaster",
    "MetricModel",
    "QuantileBoosters",
    "fit_client_forecaster",
    "fit_global_forecaster",
    "forecast_origins",
    "min_fit_steps",
    "needs_fallback",
    "present_metrics",
]
