"""Forecasting from fitted models: several origins of one client over the horizon
(`forecast_origins`) and the latest origin of many clients at once, their profiles' reach
included (`forecast_latest`), with `FORECAST_SCHEMA` columns."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, cast

import numpy as np
import polars as pl

from models.features import (
    CLIENT_FEATURES,
    FeatureSpec,
    assemble_rows,
    build_series,
    client_codes,
    feature_matrix,
    regular_grid,
    to_long,
    ts_of,
)
from models.forecaster.calibration import MetricModel, _final_quantiles, _to_values
from models.forecaster.config import ForecastConfig
from models.forecaster.frames import _scales, _step_of_datetime, client_frame
from models.forecaster.training import _raw_quantiles

if TYPE_CHECKING:
    from models.forecaster.client_model import ClientForecaster

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
    followed by its profile's reach (every `profile_stride` steps past the horizon) when its
    forecaster has one, for many clients at once.

    Clients whose forecasters share a configuration and feature spec shape (the global
    model's, or own models, whose specs differ only in the vocabularies of their own
    attributes) get their features built in one pass, and boosters
    shared by several clients (the global model's) score all their rows in one call; only
    the per-client calibration runs client by client. Over the horizon, equal to calling
    `predict` per client.
    """
    families: dict[tuple[ForecastConfig, FeatureSpec], list[ClientForecaster]] = {}
    for client_id, forecaster in forecasters.items():
        if client_id in histories:
            key = (forecaster.config, forecaster.feature_spec.shape)
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
    """`forecast_latest` for forecasters of one configuration and feature spec shape."""
    config, spec = members[0].config, members[0].feature_spec.shape
    freq, horizon = config.freq_seconds, config.horizon_steps
    furthest = horizon
    tails, pairs, origins, attributes = [], [], [], []
    inputs: list[str] = []
    served: list[ClientForecaster] = []
    for forecaster in members:
        own = histories[forecaster.client_id].filter(pl.col("client_id") == forecaster.client_id)
        metrics = [m for m in forecaster.metrics if m in own.columns]
        if own.height == 0 or not metrics:
            continue
        # polars types max() as any scalar; that of a `ts` column is a datetime.
        step = _step_of_datetime(cast(datetime, own.get_column("ts").max()), freq)
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
        if forecaster.reach:
            pairs.append(_origin_pairs(forecaster.client_id, [step], config.reach_steps, "reach"))
            furthest = config.profile_steps
        origins.append((forecaster.client_id, step))
        attributes.append(client_frame(forecaster.client_id, forecaster.client))
        served.append(forecaster)
    if not served:
        return _empty_forecast()
    inputs = list(dict.fromkeys(inputs))
    grid = regular_grid(
        pl.concat(tails, how="diagonal_relaxed"),
        freq,
        inputs,
        extend_steps=furthest,
        missing_as=0.0,
    )
    long = to_long(grid, inputs)
    scales = _family_scales(served, long, origins)
    known = [a for a in attributes if a is not None]
    clients = pl.concat(known, how="vertical_relaxed") if known else None
    series = _with_own_codes(build_series(long, spec, scales, calendar, clients), served, clients)
    rows = assemble_rows(series, pl.concat(pairs), spec).filter(pl.col("anchor").is_not_null())
    rows = rows.filter((pl.col("part") != "recent") | pl.col("target").is_not_null())
    frames = []
    present = set(rows.get_column("client_id").unique().to_list())
    for metric in dict.fromkeys(m for f in served for m in f.metrics):
        users = [f for f in served if metric in f.metrics and f.client_id in present]
        # Each part's model input is built once for all clients, each group takes its own:
        # a frame filtered, or a matrix built, per group would cost more with every client.
        now, past, far = (
            _Part.of(rows, metric, part, spec) for part in ("forecast", "recent", "reach")
        )
        for group in _by_boosters(users, metric, reach=False):
            frames += _score_group(group, metric, now.take(group), past.take(group), spec, config)
        for group in _by_boosters(users, metric, reach=True):
            frames += _score_reach(group, metric, far.take(group), spec, config)
    if not frames:
        return _empty_forecast()
    return pl.concat(frames)


def _with_own_codes(
    series: pl.DataFrame, served: list[ClientForecaster], clients: pl.DataFrame | None
) -> pl.DataFrame:
    """`series` (built with the family's spec shape) with each client's attribute codes
    under its own spec's vocabularies, as its model learnt them."""
    by_spec: dict[FeatureSpec, list[str]] = {}
    for forecaster in served:
        by_spec.setdefault(forecaster.feature_spec, []).append(forecaster.client_id)
    codes = pl.concat(
        client_codes(
            pl.DataFrame({"client_id": ids}, schema={"client_id": pl.String}), spec, clients
        )
        for spec, ids in by_spec.items()
    )
    return series.drop(CLIENT_FEATURES).join(codes, on="client_id", how="left")


@dataclass(frozen=True)
class _Part:
    """One metric's rows of one part (forecast, recent or reach) for every client, their
    model input (`feature_matrix`) and each client's row positions."""

    rows: pl.DataFrame
    matrix: np.ndarray
    at: dict[tuple[str], np.ndarray]

    @classmethod
    def of(cls, rows: pl.DataFrame, metric: str, part: str, spec: FeatureSpec) -> _Part:
        mine = rows.filter((pl.col("metric") == metric) & (pl.col("part") == part))
        return cls(mine, feature_matrix(mine, spec), _positions(mine))

    def take(self, group: list[ClientForecaster]) -> tuple[pl.DataFrame, np.ndarray]:
        """The rows of a group's clients, client after client, and their model input."""
        none = np.zeros(0, np.int64)
        at = np.concatenate([self.at.get((f.client_id,), none) for f in group])
        return self.rows[at], self.matrix[at]


def _by_boosters(
    forecasters: list[ClientForecaster], metric: str, reach: bool
) -> list[list[ClientForecaster]]:
    """The forecasters with a model of `metric` (their reach's with `reach`), grouped by
    the boosters they share.

    A reach comes from the same fit as the horizon's boosters (a client's own, or the
    global model's), so the horizon's fingerprint groups both: fingerprinting serialises
    boosters, 8 s for the reach of 500 clients when they are first loaded.
    """
    groups: dict[str, list[ClientForecaster]] = {}
    for forecaster in forecasters:
        if _model(forecaster, metric, reach) is not None:
            key = forecaster.models[metric].boosters.fingerprint()
            groups.setdefault(key, []).append(forecaster)
    return list(groups.values())


def _model(forecaster: ClientForecaster, metric: str, reach: bool) -> MetricModel | None:
    """The forecaster's model of `metric` over the horizon, or past it (`reach`)."""
    models = (forecaster.reach or {}) if reach else forecaster.models
    return models.get(metric)


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
    forecast: tuple[pl.DataFrame, np.ndarray],
    past: tuple[pl.DataFrame, np.ndarray],
    spec: FeatureSpec,
    config: ForecastConfig,
) -> list[pl.DataFrame]:
    """One metric's forecasts for clients sharing boosters (`forecast` and `past`: their
    rows of the forecast and of recent origins, with their model input): one booster call
    for all rows, then each client's own calibration, recalibration and bias."""
    (wanted, wanted_matrix), (recent, recent_matrix) = forecast, past
    boosters = group[0].models[metric].boosters
    raw_wanted = _raw_quantiles(boosters, wanted, spec, wanted_matrix)
    raw_recent = _raw_quantiles(boosters, recent, spec, recent_matrix)
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
        frames.append(_quantile_frame(mine, scaled, forecaster.bias.get(metric, 0.0)))
    return frames


def _score_reach(
    group: list[ClientForecaster],
    metric: str,
    reach: tuple[pl.DataFrame, np.ndarray],
    spec: FeatureSpec,
    config: ForecastConfig,
) -> list[pl.DataFrame]:
    """One metric's forecasts past the horizon (`reach`: its clients' rows of the reach and
    their model input) for clients sharing far boosters: one booster call, then each
    client's calibration and bias (no recalibration: see `models.forecaster.reach`)."""
    wanted, matrix = reach
    members = {f.client_id: f for f in group}
    models = {
        cid: model for cid, f in members.items() if (model := _model(f, metric, True)) is not None
    }
    raw = _raw_quantiles(next(iter(models.values())).boosters, wanted, spec, matrix)
    frames = []
    for (client_id,), at in _positions(wanted).items():
        forecaster, model = members[client_id], models[client_id]
        mine = wanted[at]
        scaled = _final_quantiles(model, mine, None, spec, config, raw=(raw[at], raw[:0]))
        frames.append(_quantile_frame(mine, scaled, forecaster.bias.get(metric, 0.0)))
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
    return _quantile_frame(rows, scaled, forecaster.bias.get(metric, 0.0))


def _quantile_frame(rows: pl.DataFrame, scaled: np.ndarray, bias: float) -> pl.DataFrame:
    """Forecast rows (FORECAST_SCHEMA order) from calibrated quantiles in scale units."""
    values = _to_values(
        scaled, rows.get_column("anchor").to_numpy(), rows.get_column("scale").to_numpy(), bias
    )
    return rows.select(
        "client_id",
        "metric",
        pl.col("origin_ts").alias("origin"),
        pl.col("target_ts").alias("ts"),
        pl.col("horizon").cast(pl.Int32),
        pl.Series("p10", values[:, 0]),
        pl.Series("p50", values[:, 1]),
        pl.Series("p90", values[:, 2]),
    )


def _origin_pairs(
    client_id: str, steps: list[int], horizon: int | tuple[int, ...], part: str
) -> pl.DataFrame:
    """Every origin of `steps` with every horizon step: 1..horizon, or those given."""
    horizons = np.arange(1, horizon + 1) if isinstance(horizon, int) else np.asarray(horizon)
    return pl.DataFrame(
        {"client_id": client_id, "step": steps, "part": part},
        schema={"client_id": pl.String, "step": pl.Int64, "part": pl.String},
    ).join(pl.DataFrame({"horizon": horizons.astype(np.int32)}), how="cross")


def _recent_origins(steps: list[int], config: ForecastConfig) -> list[int]:
    """Past origins whose targets fall in the recalibration window of some requested origin."""
    window = round(config.recalibration_days * config.steps_per_day)
    if window <= 0 or config.recalibration_weight == 0 or not steps:
        return []
    horizon = config.horizon_steps
    stride = max(1, math.ceil(window * horizon / config.max_eval_rows))
    first = steps[0] - window - horizon + 1
    return list(range(steps[-1] - horizon, first - 1, -stride))[::-1]


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
