"""Flow `predict-profiles`: refresh forecasts and predicted profiles from the latest usage.

No training here: each client's champion (or, before any champion exists, its latest
challenger) predicts from its recent history. Loaded models are cached per process by
version, so a served deployment running every few minutes pays MLflow's load cost once.

One task per bucket width, not one per client: a Prefect task run costs tens of
milliseconds of its own, more than a client's prediction. The shared P(need >= k) model is
scored once for every client carrying the same one (its clients' features are built in
one pass), not once per client.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import polars as pl
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from flows.locks import warehouse_write
from flows.settings import Settings
from models.forecaster import client_frame
from models.profile import build_profiles, idle_floors
from models.registry import CHALLENGER, CHAMPION, current_aliases, load_forecaster, model_name
from warehouse.db import utc_now
from warehouse.errors import PrewarmError
from warehouse.predictions import write_predictions
from warehouse.reads import read_calendar, read_clients, read_recent_usage

_CACHE: dict[tuple[str, str], Any] = {}
_CACHE_LOCK = threading.Lock()


@dataclass
class PredictSummary:
    """What one prediction run wrote."""

    clients: int = 0
    forecasts: int = 0
    profiles: int = 0
    without_model: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _forecaster(client_id: str, alias: str, version: str, tracking_uri: str) -> Any:
    key = (client_id, version)
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
    loaded = load_forecaster(client_id, tracking_uri, alias)
    if loaded is None:
        return None
    with _CACHE_LOCK:
        _CACHE[key] = loaded[0]
    return loaded[0]


def _exceedance_key(exceedance: Any) -> str:
    """Identity of a shared exceedance model (clients' copies of one model compare equal)."""
    return hashlib.sha256(exceedance.booster_string.encode()).hexdigest()


@task(cache_policy=NONE)
def predict_group(
    histories: dict[str, pl.DataFrame],
    calendar: pl.DataFrame,
    models: dict[str, tuple[str, str]],
    tracking_uri: str,
) -> tuple[pl.DataFrame, pl.DataFrame | None, pl.DataFrame]:
    """Forecasts, exceedance and holdout quality of clients of one bucket width, each from
    its registered model (`models`: client -> (alias, version))."""
    forecasts, quality = [], []
    # exceedance key -> (the model, its clients, their attribute rows)
    shared: dict[str, tuple[Any, list[str], list[pl.DataFrame]]] = {}
    versions = {}
    for client_id, (alias, version) in models.items():
        forecaster = _forecaster(client_id, alias, version, tracking_uri)
        if forecaster is None:
            continue
        versions[client_id] = version
        forecasts.append(
            forecaster.predict(histories[client_id], calendar).with_columns(
                pl.lit(model_name(client_id)).alias("model_name"),
                pl.lit(version).alias("model_version"),
            )
        )
        quality.append(_quality(client_id, forecaster.holdout))
        if forecaster.exceedance is not None:
            key = _exceedance_key(forecaster.exceedance)
            entry = shared.setdefault(key, (forecaster.exceedance, [], []))
            entry[1].append(client_id)
            attributes = client_frame(client_id, forecaster.client)
            if attributes is not None:
                entry[2].append(attributes)
    exceedance = [
        _score_exceedance(model, [histories[c] for c in clients], attributes, versions)
        for model, clients, attributes in shared.values()
    ]
    return (
        pl.concat(forecasts) if forecasts else pl.DataFrame(),
        pl.concat(exceedance) if exceedance else None,
        pl.concat(quality) if quality else pl.DataFrame(schema=_QUALITY_SCHEMA),
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


_QUALITY_SCHEMA = {
    "client_id": pl.String, "metric": pl.String, "coverage_80": pl.Float64, "pinball": pl.Float64,
}  # fmt: skip


def _quality(client_id: str, holdout: dict[str, dict[str, Any]]) -> pl.DataFrame:
    """One row per metric: the holdout coverage and pinball the profile's confidence uses."""
    return pl.DataFrame(
        [
            {"client_id": client_id, "metric": metric, "coverage_80": report.get("coverage_80"),
             "pinball": report.get("pinball")}
            for metric, report in holdout.items()
        ],
        schema=_QUALITY_SCHEMA,
    )  # fmt: skip


@flow(name="predict-profiles")
def predict_profiles(client_ids: list[str] | None = None) -> PredictSummary:
    """Forecast every client with a registered model and write forecasts and profiles."""
    started = time.perf_counter()
    settings = Settings()
    logger = get_run_logger()
    path = settings.warehouse_path
    usage = read_recent_usage(path, settings.predict_history_days, client_ids)
    if usage.height == 0:
        raise PrewarmError("No usage to predict from. Ingest some first: `prewarm ingest`.")
    calendar = read_calendar(path)
    frequencies = read_clients(path).select("client_id", "freq_seconds")
    aliases = current_aliases(settings.mlflow_tracking_uri)
    summary = PredictSummary()
    generated_at = utc_now()
    all_forecasts, all_exceedance, all_profiles = [], [], []
    for (freq,), group in usage.join(frequencies, on="client_id").group_by(
        "freq_seconds", maintain_order=True
    ):
        group = group.drop("freq_seconds")
        histories, models = {}, {}
        for (cid,), history in group.partition_by("client_id", as_dict=True).items():
            known = aliases.get(cid, {})
            alias = CHAMPION if CHAMPION in known else CHALLENGER if CHALLENGER in known else None
            if alias is None:
                summary.without_model.append(cid)
                continue
            histories[cid], models[cid] = history, (alias, known[alias])
        if not models:
            continue
        forecasts, exceedance, quality = predict_group(
            histories, calendar, models, settings.mlflow_tracking_uri
        )
        if forecasts.height == 0:
            continue
        stamp = pl.lit(generated_at).cast(pl.Datetime("us")).alias("generated_at")
        forecasts = forecasts.with_columns(stamp)
        if exceedance is not None:
            exceedance = exceedance.with_columns(stamp)
        profiles = build_profiles(
            forecasts, idle_floors(group, int(freq)), quality, int(freq), generated_at, exceedance
        )
        all_forecasts.append(forecasts)
        all_profiles.append(profiles)
        if exceedance is not None:
            all_exceedance.append(exceedance)
        summary.clients += forecasts.get_column("client_id").n_unique()
    if all_forecasts:
        forecasts = pl.concat(all_forecasts)
        profiles = pl.concat(all_profiles)
        with warehouse_write():
            write_predictions(
                path, forecasts, profiles, pl.concat(all_exceedance) if all_exceedance else None
            )
        summary.forecasts, summary.profiles = forecasts.height, profiles.height
    if summary.without_model:
        logger.warning(
            "%d clients have no registered model yet (run `prewarm train`): %s",
            len(summary.without_model), ", ".join(summary.without_model[:10]),
        )  # fmt: skip
    summary.seconds = time.perf_counter() - started
    logger.info(
        "predicted %d clients: %d forecast rows, %d profile windows in %.1f s",
        summary.clients, summary.forecasts, summary.profiles, summary.seconds,
    )  # fmt: skip
    return summary
