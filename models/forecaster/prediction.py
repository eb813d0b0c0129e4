"""Forecasting from fitted models: several origins of one client over the horizon
(`forecast_origins`) and the latest origin of many clients at once, their profiles' reach
included (`forecast_latest`), with `FORECAST_SCHEMA` columns."""

from __future__ import annotations

import math
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import polars as pl

from models.features import (
    CLIENT_FEATURES,
    FeatureSpec,
    assemble_rows,
    build_series,
    regular_grid,
    to_long,
    ts_of,
)
from models.forecaster.batch_scoring import (
    Part,
    forecast_frame,
    fresh_errors,
    score_far,
    score_near,
)
from models.forecaster.calibration import Outcomes, RecentErrors, _final_quantiles, _to_values
from models.forecaster.config import ForecastConfig
from models.forecaster.frames import _scales, _step_of_datetime, client_frame
from models.series_at import build_series_at

if TYPE_CHECKING:
    from models.forecaster.client_model import ClientForecaster
    from models.forecaster.scored_origins import ScoredOrigins

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


# (client, origin steps, horizon steps: 1..n or those given, part) of `_origin_pairs`
_Origins = tuple[str, list[int], int | tuple[int, ...], str]


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
    pairs = _origin_pairs(
        [
            (forecaster.client_id, steps, horizon, "forecast"),
            (forecaster.client_id, recent, forecaster.config.horizon_steps, "recent"),
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


# Clients whose features are built in one pass. Measured on 500 trained clients, every
# recent origin scored (a first run): passes of 500 held 3.2-3.5 GB above the models while
# they ran, of 100 0.6-0.7 GB, of 50 0.3 GB, of 25 0.1 GB, in 12-16 s at every size but 25
# (15.4 s: the per-pass work starts to show). The peak RSS of a cycle was this transient.
CLIENTS_PER_PASS = 50


def forecast_latest(
    forecasters: dict[str, ClientForecaster],
    histories: dict[str, pl.DataFrame],
    calendar: pl.DataFrame | None = None,
    clients_per_pass: int = CLIENTS_PER_PASS,
    scored: ScoredOrigins | None = None,
) -> pl.DataFrame:
    """Each client's forecast from the last bucket of its history, as `predict` gives it,
    followed by its profile's reach (every `profile_stride` steps past the horizon) when its
    forecaster has one, for many clients at once.

    Clients whose forecasters share a configuration and feature spec shape (the global
    model's, or own models, whose specs differ only in the vocabularies of their own
    attributes) get their features built together, at just the steps their rows read
    (`models.series_at`), `clients_per_pass` at a time (so memory stays bounded however
    many clients there are), and boosters shared by several clients (the global model's)
    score all their rows in one call (`batch_scoring`); only the per-client calibration runs
    client by client. Over the horizon, equal to calling `predict` per client, bit for bit,
    unless `scored` remembers recent origins from earlier runs (see `scored_origins`).
    """
    families: dict[tuple[ForecastConfig, FeatureSpec], list[ClientForecaster]] = {}
    for client_id, forecaster in forecasters.items():
        if client_id in histories:
            key = (forecaster.config, forecaster.feature_spec.shape)
            families.setdefault(key, []).append(forecaster)
    frames = [
        _forecast_family(members[start : start + clients_per_pass], histories, calendar, scored)
        for members in families.values()
        for start in range(0, len(members), clients_per_pass)
    ]
    frames = [f for f in frames if f.height]
    if not frames:
        return _empty_forecast()
    return pl.concat(frames).sort("client_id", "origin", "metric", "horizon")


def _forecast_family(
    members: list[ClientForecaster],
    histories: dict[str, pl.DataFrame],
    calendar: pl.DataFrame | None,
    scored: ScoredOrigins | None = None,
) -> pl.DataFrame:
    """`forecast_latest` for forecasters of one configuration and feature spec shape."""
    config, spec = members[0].config, members[0].feature_spec.shape
    freq, horizon = config.freq_seconds, config.horizon_steps
    furthest = horizon
    tails, origins, attributes = [], [], []
    pairs: list[_Origins] = []
    inputs: list[str] = []
    served: list[ClientForecaster] = []
    remembered: dict[str, list[int]] = {}  # recent origins of the clients `scored` keeps
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
        mine = [*metrics, *(m for m in spec.cross_metrics if m in own.columns)]
        inputs += mine
        fresh = recent
        if scored is not None and _scales_stored(forecaster, mine):
            remembered[forecaster.client_id] = recent
            fresh = scored.unscored(forecaster, recent)
        pairs += [
            (forecaster.client_id, [step], horizon, "forecast"),
            (forecaster.client_id, fresh, horizon, "recent"),
        ]
        if forecaster.reach:
            pairs.append((forecaster.client_id, [step], config.reach_steps, "reach"))
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
    scales = _family_scales(served, grid, inputs, origins)
    known = [a for a in attributes if a is not None]
    clients = pl.concat(known, how="vertical_relaxed") if known else None
    wanted = _origin_pairs(pairs)
    series = build_series_at(grid, inputs, wanted, spec, scales, calendar, clients)
    series = _with_own_codes(series, served, clients)
    rows = assemble_rows(series, wanted, spec).filter(pl.col("anchor").is_not_null())
    rows = rows.filter((pl.col("part") != "recent") | pl.col("target").is_not_null())
    frames: list[pl.DataFrame | None] = []
    present = set(rows.get_column("client_id").unique().to_list())
    parts = rows.partition_by("metric", "part", as_dict=True)
    empty = rows.clear()

    def past_errors(forecaster: ClientForecaster, metric: str, fresh: Outcomes) -> RecentErrors:
        if scored is None or forecaster.client_id not in remembered:
            return fresh_errors(forecaster, metric, fresh)
        return scored.errors(forecaster, metric, fresh, remembered[forecaster.client_id])

    for metric in dict.fromkeys(m for f in served for m in f.metrics):
        users = [f for f in served if metric in f.metrics and f.client_id in present]
        # Each part's model input is built once for all clients, each group takes its own:
        # a frame filtered, or a matrix built, per group would cost more with every client.
        now, past, far = (
            Part.of(parts.get((metric, part), empty), spec)
            for part in ("forecast", "recent", "reach")
        )
        frames += [
            score_near(users, metric, now, past, config, past_errors),
            score_far(users, metric, far, config),
        ]
    if scored is not None:
        for forecaster in served:
            if forecaster.client_id in remembered:
                scored.mark(forecaster, remembered[forecaster.client_id])
    done = [f for f in frames if f is not None]
    return pl.concat(done) if done else _empty_forecast()


def _scales_stored(forecaster: ClientForecaster, inputs: list[str]) -> bool:
    """Whether every input's scale is the model's own, not measured on each run's history
    (only then can an origin's scaled outcome be remembered: `scored_origins`)."""
    return all(
        (model := forecaster.models.get(m)) is not None and model.scale is not None for m in inputs
    )


def _with_own_codes(
    series: pl.DataFrame, served: list[ClientForecaster], clients: pl.DataFrame | None
) -> pl.DataFrame:
    """`series` (built with the family's spec shape) with each client's attribute codes
    under its own spec's vocabularies, as its model learnt them: `client_codes` in plain
    Python, since each own model has a spec of its own and a polars pass per spec cost more
    than the rest of that client's features."""
    rows_of = clients.iter_rows(named=True) if clients is not None else ()
    known: dict[str, dict[str, Any]] = {r["client_id"]: r for r in rows_of}
    rows = []
    for forecaster in served:
        attributes, spec = known.get(forecaster.client_id, {}), forecaster.feature_spec
        vocabularies = {"tier": spec.tiers, "region": spec.regions, "service": spec.services}
        codes = [
            float(vocabulary.index(value))
            if (value := attributes.get(name)) in vocabulary
            else None
            for name, vocabulary in vocabularies.items()
        ]
        sizes = [attributes.get("container_cpu"), attributes.get("container_memory_mb")]
        rows.append((forecaster.client_id, *codes, *sizes))
    schema = {"client_id": pl.String, **dict.fromkeys(CLIENT_FEATURES, pl.Float64)}
    own = pl.DataFrame(rows, schema=schema, orient="row")
    return series.drop(CLIENT_FEATURES).join(own, on="client_id", how="left")


def _family_scales(
    served: list[ClientForecaster],
    grid: pl.DataFrame,
    inputs: list[str],
    origins: list[tuple[str, int]],
) -> pl.DataFrame:
    """`_prediction_scales` of every served client at once, for each of the `inputs`.

    Own models store a scale for every metric they forecast, so the family's history is
    only measured when some input lacks one (a cross metric not forecast, a global-model
    client that joined later), and then over all of it, as it always was.
    """
    stored = pl.DataFrame(
        [(f.client_id, m, model.scale) for f in served for m, model in f.models.items()],
        schema={"client_id": pl.String, "metric": pl.String, "stored": pl.Float64},
        orient="row",
    )
    keys = pl.DataFrame(
        [(f.client_id, m) for f in served for m in inputs],
        schema={"client_id": pl.String, "metric": pl.String},
        orient="row",
    )
    scales = keys.join(stored, on=["client_id", "metric"], how="left")
    if scales.get_column("stored").null_count() == 0:
        return scales.select("client_id", "metric", pl.col("stored").alias("scale"))
    origin = pl.DataFrame(
        origins, schema={"client_id": pl.String, "origin": pl.Int64}, orient="row"
    )
    long = to_long(grid, inputs).join(origin, on="client_id")
    observed = _scales(long.filter(pl.col("step") <= pl.col("origin")).drop("origin"))
    return scales.join(observed, on=["client_id", "metric"], how="left").select(
        "client_id", "metric", pl.coalesce("stored", "scale").alias("scale")
    )


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
    return forecast_frame(rows, values)


def _origin_pairs(origins: list[_Origins]) -> pl.DataFrame:
    """Every origin with every horizon step, for each (client, origin steps, horizon, part)
    of `origins`: steps 1..horizon, or those given. One frame for all: a frame per client
    cost more than the rest of its rows' building."""
    steps, horizons, counts = [], [], []
    for _, origin_steps, horizon, _ in origins:
        ahead = np.arange(1, horizon + 1) if isinstance(horizon, int) else np.asarray(horizon)
        steps.append(np.repeat(np.asarray(origin_steps, dtype=np.int64), len(ahead)))
        horizons.append(np.tile(ahead.astype(np.int32), len(origin_steps)))
        counts.append(len(origin_steps) * len(ahead))
    of = np.repeat(np.arange(len(origins)), counts)
    return pl.DataFrame(
        {
            "client_id": pl.Series([o[0] for o in origins], dtype=pl.String).gather(of),
            "step": np.concatenate(steps),
            "part": pl.Series([o[3] for o in origins], dtype=pl.String).gather(of),
            "horizon": np.concatenate(horizons),
        },
        schema={"client_id": pl.String, "step": pl.Int64, "part": pl.String, "horizon": pl.Int32},
    )


def _recent_origins(steps: list[int], config: ForecastConfig) -> list[int]:
    """Past origins whose targets fall in the recalibration window of some requested origin,
    every `stride` steps, on a grid fixed in absolute steps (multiples of the stride).

    Fixed, not counted back from each run's newest origin: with a stride of 2, origins
    counted back from consecutive steps alternate between odd and even, so a run one step
    after another shared none of its origins (`scored_origins` remembered nothing a next run
    could use, and every other run scored all ~70 again). On the grid, a run scores only the
    origins that came in since the last one it remembers.
    """
    window = round(config.recalibration_days * config.steps_per_day)
    if window <= 0 or config.recalibration_weight == 0 or not steps:
        return []
    horizon = config.horizon_steps
    stride = max(1, math.ceil(window * horizon / config.max_eval_rows))
    first = steps[0] - window - horizon + 1
    newest = steps[-1] - horizon
    return list(range(newest - newest % stride, first - 1, -stride))[::-1]


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
