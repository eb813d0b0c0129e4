"""Scoring the latest origin of many clients at once (`forecast_latest`): one metric's
assembled rows of one part (the horizon, its recent origins, the reach) for every client.

Clients sharing boosters (the global model's) score all their rows in one booster call per
quantile, and a client's horizon rows go in the same call as its recent origins (the
recalibration scores those with the same boosters): a booster call costs about as much as
scoring a hundred rows. Calibration stays per client, on arrays sliced by position: a polars
frame per client and metric cost more than the arithmetic it carried. A booster scores each
row on its own, so the values equal scoring each client alone, bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from models.features import FeatureSpec, feature_matrix
from models.forecaster.calibration import (
    MetricModel,
    Outcomes,
    RecentErrors,
    _recalibrated,
    _to_values,
)
from models.forecaster.config import ForecastConfig
from models.forecaster.training import _raw_of_matrix

if TYPE_CHECKING:
    from models.forecaster.client_model import ClientForecaster

_NONE = slice(0, 0)

# (forecaster, metric, outcomes just scored) -> the errors its recalibration reads
PastErrors = Callable[["ClientForecaster", str, Outcomes], RecentErrors]


def fresh_errors(forecaster: ClientForecaster, metric: str, fresh: Outcomes) -> RecentErrors:
    """The errors of outcomes just scored, with nothing remembered from earlier runs."""
    return RecentErrors.of(forecaster.models[metric], fresh)


@dataclass(frozen=True)
class Part:
    """One metric's rows of one part for every client, their model input, the columns
    calibration reads, and each client's rows (contiguous: `assemble_rows` sorts by client)."""

    rows: pl.DataFrame
    matrix: np.ndarray
    horizon: np.ndarray
    step: np.ndarray
    target: np.ndarray
    anchor: np.ndarray
    scale: np.ndarray
    at: dict[str, slice]

    @classmethod
    def of(cls, rows: pl.DataFrame, spec: FeatureSpec) -> Part:
        runs = rows.get_column("client_id").rle().struct.unnest()
        lengths = runs.get_column("len").to_list()
        ends = np.cumsum(lengths, dtype=np.int64).tolist()
        at = {
            client: slice(end - n, end)
            for client, n, end in zip(runs.get_column("value"), lengths, ends, strict=True)
        }
        return cls(
            rows,
            feature_matrix(rows, spec),
            horizon=rows.get_column("horizon").to_numpy(),
            step=rows.get_column("step").to_numpy(),
            target=rows.get_column("target").to_numpy(),
            anchor=rows.get_column("anchor").to_numpy(),
            scale=rows.get_column("scale").to_numpy(),
            at=at,
        )


def score_near(
    users: list[ClientForecaster],
    metric: str,
    now: Part,
    past: Part,
    config: ForecastConfig,
    past_errors: PastErrors = fresh_errors,
) -> pl.DataFrame | None:
    """One metric's forecasts over the horizon (`now`) for `users`, each recalibrated on
    its errors at the recent origins: those of `past`, as `past_errors` completes them
    with origins scored by earlier runs (`scored_origins`). None when no user has rows."""
    values = np.zeros((now.rows.height, 3))
    scored = np.zeros(now.rows.height, dtype=bool)
    for group in _by_boosters(users, metric, reach=False):
        mine = [f for f in group if f.client_id in now.at]
        if not mine:
            continue
        near = [now.at[f.client_id] for f in mine]
        back = [past.at.get(f.client_id, _NONE) for f in mine]
        raw = _raw_of_matrix(
            mine[0].models[metric].boosters,
            np.concatenate([now.matrix[s] for s in near] + [past.matrix[s] for s in back]),
            np.concatenate([now.horizon[s] for s in near] + [past.horizon[s] for s in back]),
        )
        first = 0
        later = sum(s.stop - s.start for s in near)
        for forecaster, s, b in zip(mine, near, back, strict=True):
            size, recent_size = s.stop - s.start, b.stop - b.start
            fresh = Outcomes(
                raw[later : later + recent_size], past.horizon[b], past.step[b], past.target[b]
            )
            recent = past_errors(forecaster, metric, fresh)
            scaled = _recalibrated(
                forecaster.models[metric],
                config,
                raw[first : first + size],
                now.horizon[s],
                now.step[s],
                recent,
            )
            values[s] = _to_values(
                scaled, now.anchor[s], now.scale[s], forecaster.bias.get(metric, 0.0)
            )
            scored[s] = True
            first, later = first + size, later + recent_size
    return forecast_frame(now.rows.filter(scored), values[scored]) if scored.any() else None


def score_far(
    users: list[ClientForecaster], metric: str, far: Part, config: ForecastConfig
) -> pl.DataFrame | None:
    """One metric's forecasts past the horizon (`far`) for `users` with a reach: calibrated,
    not recalibrated (see `models.forecaster.reach`); None when no user has rows."""
    values = np.zeros((far.rows.height, 3))
    scored = np.zeros(far.rows.height, dtype=bool)
    for group in _by_boosters(users, metric, reach=True):
        mine = [f for f in group if f.client_id in far.at]
        if not mine:
            continue
        spans = [far.at[f.client_id] for f in mine]
        models = [m for f in mine if (m := _model(f, metric, reach=True)) is not None]
        raw = _raw_of_matrix(
            models[0].boosters,
            np.concatenate([far.matrix[s] for s in spans]),
            np.concatenate([far.horizon[s] for s in spans]),
        )
        first = 0
        for forecaster, model, s in zip(mine, models, spans, strict=True):
            size = s.stop - s.start
            scaled = _recalibrated(
                model, config, raw[first : first + size], far.horizon[s], far.step[s], None
            )
            values[s] = _to_values(
                scaled, far.anchor[s], far.scale[s], forecaster.bias.get(metric, 0.0)
            )
            scored[s] = True
            first += size
    return forecast_frame(far.rows.filter(scored), values[scored]) if scored.any() else None


def forecast_frame(rows: pl.DataFrame, values: np.ndarray) -> pl.DataFrame:
    """Forecast rows (`FORECAST_SCHEMA` columns) of assembled `rows` and their quantiles."""
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
