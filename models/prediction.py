"""Predict a group of clients from their loaded forecasters: forecasts, exceedance, profiles.

Pure: forecasters in memory, frames in, frames out. Clients sharing a model family are
forecast together (`models.forecaster.forecast_latest`). `flows.predict` loads the registered
models and writes the results; the soak's simulator calls the same function, so the live
loop and its simulation predict alike.

The shared P(need >= k) model is scored once for all the clients that carry the same one
(their features built in one pass), not once per client.

Every metric's forecast past the horizon (a profile's reach) shapes its windows, but only
the demand metric's is kept with the forecasts (what `prewarm profile` charts): a day of
every metric would be five times the rows each run writes, and every scoring run reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl

from models.forecaster import client_frame, forecast_latest
from models.forecaster.scored_origins import ScoredOrigins
from models.profile import build_profiles, demand_metric, idle_floors
from models.registry import model_name

QUALITY_SCHEMA: dict[str, Any] = {
    "client_id": pl.String,
    "metric": pl.String,
    "coverage_80": pl.Float64,
    "pinball": pl.Float64,
}


@dataclass(frozen=True)
class Predictions:
    """What a group's forecasters predicted (exceedance None when no model carries one)."""

    forecasts: pl.DataFrame
    exceedance: pl.DataFrame | None
    profiles: pl.DataFrame

    @staticmethod
    def joined(parts: list[Predictions]) -> Predictions | None:
        """The predictions of several groups of clients as one (None for none): each
        client's rows come from its own group alone."""
        if not parts:
            return None
        exceedance = [p.exceedance for p in parts if p.exceedance is not None]
        return Predictions(
            pl.concat([p.forecasts for p in parts]),
            pl.concat(exceedance) if exceedance else None,
            pl.concat([p.profiles for p in parts]),
        )


def predict_clients(
    histories: dict[str, pl.DataFrame],
    calendar: pl.DataFrame,
    forecasters: dict[str, tuple[Any, str]],
    freq_seconds: int,
    generated_at: datetime,
    scored: ScoredOrigins | None = None,
) -> Predictions | None:
    """Forecasts, exceedance and profiles of clients of one bucket width.

    Args:
        histories: client -> its recent usage (the forecast starts after its last bucket).
        forecasters: client -> (loaded forecaster, registered version).
        scored: recent origins remembered from earlier runs (`ScoredOrigins`), kept by a
            caller that predicts the same loaded forecasters cycle after cycle.
    Returns None when no client could be predicted.
    """
    quality = []
    # exceedance key -> (the model, its clients, their attribute rows)
    shared: dict[str, tuple[Any, list[str], list[pl.DataFrame]]] = {}
    versions = {}
    for client_id, (forecaster, version) in forecasters.items():
        versions[client_id] = version
        quality.append(_quality(client_id, forecaster.holdout))
        if forecaster.exceedance is not None:
            key = forecaster.exceedance.fingerprint()
            entry = shared.setdefault(key, (forecaster.exceedance, [], []))
            entry[1].append(client_id)
            attributes = client_frame(client_id, forecaster.client)
            if attributes is not None:
                entry[2].append(attributes)
    if not versions:
        return None
    stamp = pl.lit(generated_at).cast(pl.Datetime("us")).alias("generated_at")
    latest = forecast_latest(
        {c: f for c, (f, _) in forecasters.items()}, histories, calendar, scored=scored
    )
    forecast_rows = latest.with_columns(
        pl.col("client_id")
        .replace_strict({c: model_name(c) for c in versions}, return_dtype=pl.String)
        .alias("model_name"),
        pl.col("client_id").replace_strict(versions, return_dtype=pl.String).alias("model_version"),
        stamp,
    )
    kept = _kept_forecasts(forecast_rows, {c: f for c, (f, _) in forecasters.items()})
    exceedance = None
    if shared:
        exceedance = pl.concat(
            [
                _score_exceedance(model, [histories[c] for c in clients], attributes, versions)
                for model, clients, attributes in shared.values()
            ]
        ).with_columns(stamp)
    group = pl.concat([histories[c] for c in forecasters], how="diagonal_relaxed")
    profiles = build_profiles(
        forecast_rows,
        idle_floors(group, freq_seconds),
        pl.concat(quality),
        freq_seconds,
        generated_at,
        exceedance,
    )
    return Predictions(kept, exceedance, profiles)


def _kept_forecasts(forecasts: pl.DataFrame, forecasters: dict[str, Any]) -> pl.DataFrame:
    """The forecast rows to keep: every metric over the horizon, the demand metric past it."""
    horizon = {c: f.config.horizon_steps for c, f in forecasters.items()}
    demand = {c: demand_metric(f.metrics) for c, f in forecasters.items()}
    client = pl.col("client_id")
    return forecasts.filter(
        (pl.col("horizon") <= client.replace_strict(horizon, return_dtype=pl.Int32))
        | (pl.col("metric") == client.replace_strict(demand, return_dtype=pl.String))
    )


def _score_exceedance(
    model: Any,
    histories: list[pl.DataFrame],
    attributes: list[pl.DataFrame],
    versions: dict[str, str],
) -> pl.DataFrame:
    """P(need >= k) of every client sharing one exceedance `model`, in one pass."""
    usage = pl.concat([h.select("client_id", "ts", "concurrency") for h in histories]).drop_nulls()
    clients = pl.concat(attributes, how="vertical_relaxed") if attributes else None
    scored = model.predict(usage, clients=clients)
    return scored.with_columns(
        pl.col("client_id").replace_strict(versions, return_dtype=pl.String).alias("model_version")
    )


def _quality(client_id: str, holdout: dict[str, dict[str, Any]]) -> pl.DataFrame:
    """One row per metric: the holdout coverage and pinball the profile's confidence uses."""
    return pl.DataFrame(
        [
            {
                "client_id": client_id,
                "metric": metric,
                "coverage_80": report.get("coverage_80"),
                "pinball": report.get("pinball"),
            }
            for metric, report in holdout.items()
        ],
        schema=QUALITY_SCHEMA,
    )
