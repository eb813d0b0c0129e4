"""Flow `predict-profiles`: refresh forecasts and predicted profiles from the latest usage.

No training here: each client's champion (or, before any champion exists, its latest
challenger) predicts from its recent history. Loaded models are cached per process by
version, so a served deployment running every few minutes pays MLflow's load cost once,
and so are the recent origins they scored (`models.forecaster.scored_origins`): each run
scores only the origins that came in since the last. The two have bounds of their own: a
model is ~0.3 MB and saves a load (~20 ms), a client's scored origins ~0.12 MB and save
rescoring them (~40 ms), so past the model cache a client still keeps its origins.

One task per bucket width, not one per client: a Prefect task run costs tens of
milliseconds of its own, more than a client's prediction (`models.prediction` does the
work: pure, shared with the soak's simulator).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import polars as pl
from mlflow.exceptions import MlflowException
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE

from core.errors import PrewarmError
from core.memory import release_freed_memory
from core.times import utc_now
from flows.locks import warehouse_write
from flows.progress import tracker
from flows.settings import Settings
from flows.task_inputs import unwalked
from models.forecaster.scored_origins import ScoredOrigins
from models.prediction import Predictions, predict_clients
from models.registry import (
    StoredVersion,
    current_aliases,
    load_forecaster_version,
    locate_versions,
    serving_version,
)
from warehouse.clients import read_clients
from warehouse.predictions import has_model_runs, write_predictions
from warehouse.usage import read_calendar, read_recent_usage

log = logging.getLogger(__name__)

# Bounded by PREWARM_PREDICT_CACHE_CLIENTS and PREWARM_PREDICT_SCORED_CLIENTS, each keeping
# the first clients it meets: cycles predict clients in the same order, so evicting the
# least recent would miss on every client once the bound is below the client count.
_CACHE: dict[str, tuple[str, Any]] = {}  # client -> (version, loaded forecaster)
_CACHE_LOCK = threading.Lock()
# Recent origins scored per client and model version: a run scores only the origins it adds.
_SCORED = ScoredOrigins()
_FULL_SAID = threading.Event()  # the cache being full is said once per process
# Clients whose models are loaded, then predicted, at a time: models past the cache are
# dropped after their chunk, so a run holds at most this many of them (~0.3 MB each; all
# 2,000 of a 10,000-client cycle were held at once, 3.6 GB above the cache when a loaded
# model was 1.8 MB of LightGBM boosters).
CLIENTS_PER_LOAD = 200


@dataclass
class PredictSummary:
    """What one prediction run wrote."""

    clients: int = 0
    forecasts: int = 0
    profiles: int = 0
    without_model: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _cached(client_id: str, version: str) -> Any:
    """The client's loaded model at `version` if this process keeps it, else None."""
    with _CACHE_LOCK:
        cached = _CACHE.get(client_id)
    return cached[1] if cached is not None and cached[0] == version else None


def _forecaster(
    client_id: str,
    alias: str,
    version: str,
    tracking_uri: str,
    max_clients: int,
    stored: StoredVersion | None = None,
) -> Any:
    """The client's model at `version`, loaded once per process for the first
    `max_clients` clients (later ones load it every run); one version per client is kept (a
    retrained client's older one is dropped). `stored`: where its file is, when known."""
    cached = _cached(client_id, version)
    if cached is not None:
        return cached
    try:
        loaded = load_forecaster_version(client_id, version, tracking_uri, stored)
    except MlflowException as error:  # deleted meanwhile: the next run sees the new aliases
        log.warning(
            "forecaster %s version %s (%s) could not be loaded: %s",
            client_id,
            version,
            alias,
            error,
        )
        return None
    with _CACHE_LOCK:
        if client_id in _CACHE or len(_CACHE) < max_clients:
            _CACHE[client_id] = (version, loaded)
        elif not _FULL_SAID.is_set():
            _FULL_SAID.set()
            log.warning(
                "prediction keeps %d clients' models in memory (PREWARM_PREDICT_CACHE_CLIENTS,"
                " ~0.3 MB each); the others load theirs every run",
                max_clients,
            )
    return loaded


@task(cache_policy=NONE)
def predict_group(
    histories: dict[str, pl.DataFrame],
    calendar: pl.DataFrame,
    models: dict[str, tuple[str, str]],
    tracking_uri: str,
    freq_seconds: int,
    generated_at: datetime,
    cache_clients: int,
    scored_clients: int,
) -> Predictions | None:
    """Forecasts, exceedance and profiles of clients of one bucket width, each from its
    registered model (`models`: client -> (alias, version)); the first `cache_clients`
    clients' models, and the first `scored_clients` clients' scored origins, are kept for
    the next run in this process."""
    _SCORED.max_clients = scored_clients
    to_load = {
        client_id: version
        for client_id, (_, version) in models.items()
        if _cached(client_id, version) is None
    }
    stored = locate_versions(tracking_uri, to_load) if to_load else {}
    bar = tracker("Predicting clients")
    chunks: list[Predictions] = []
    clients = list(models)
    for start in range(0, len(clients), CLIENTS_PER_LOAD):
        loaded = {}
        for client_id in clients[start : start + CLIENTS_PER_LOAD]:
            alias, version = models[client_id]
            forecaster = _forecaster(
                client_id, alias, version, tracking_uri, cache_clients, stored.get(client_id)
            )
            if forecaster is not None:
                loaded[client_id] = (forecaster, version)
        predicted = predict_clients(
            histories, calendar, loaded, freq_seconds, generated_at, _SCORED
        )
        if predicted is not None:
            chunks.append(predicted)
        del loaded
        release_freed_memory()  # the chunk's temporaries, between the models kept
        if bar:
            bar(min(start + CLIENTS_PER_LOAD, len(clients)), len(clients))
    return Predictions.joined(chunks)


@flow(name="predict-profiles")
def predict_profiles(client_ids: list[str] | None = None) -> PredictSummary:
    """Forecast every client with a registered model and write forecasts and profiles."""
    return predict_and_write(Settings(), client_ids)


def predict_and_write(settings: Settings, client_ids: list[str] | None = None) -> PredictSummary:
    """The body of `predict-profiles`, callable from another flow without a subflow run."""
    started = time.perf_counter()
    logger = get_run_logger()
    path = settings.warehouse_path
    usage = read_recent_usage(path, settings.predict_history_days, client_ids)
    if usage.height == 0:
        raise PrewarmError("No usage to predict from. Ingest some first: `prewarm ingest`.")
    calendar = read_calendar(path)
    frequencies = read_clients(path).select("client_id", "freq_seconds")
    # Trained models in the warehouse but none in the registry: a lost registry, not a new one.
    aliases = current_aliases(settings.mlflow_tracking_uri, models_expected=has_model_runs(path))
    summary = PredictSummary()
    generated_at = utc_now()
    all_forecasts, all_exceedance, all_profiles = [], [], []
    for (freq,), group in usage.join(frequencies, on="client_id").group_by(
        "freq_seconds", maintain_order=True
    ):
        group = group.drop("freq_seconds")
        histories, models = {}, {}
        for (cid,), history in group.partition_by("client_id", as_dict=True).items():
            serving = serving_version(aliases.get(cid, {}))
            if serving is None:
                summary.without_model.append(cid)
                continue
            histories[cid], models[cid] = history, serving
        if not models:
            continue
        predicted = predict_group(
            unwalked(histories),
            calendar,
            unwalked(models),
            settings.mlflow_tracking_uri,
            int(freq),
            generated_at,
            settings.predict_cache_clients,
            settings.predict_scored_clients,
        )
        if predicted is None:
            continue
        all_forecasts.append(predicted.forecasts)
        all_profiles.append(predicted.profiles)
        if predicted.exceedance is not None:
            all_exceedance.append(predicted.exceedance)
        forecasts = predicted.forecasts
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
            len(summary.without_model),
            ", ".join(summary.without_model[:10]),
        )
    summary.seconds = time.perf_counter() - started
    logger.info(
        "predicted %d clients: %d forecast rows, %d profile windows in %.1f s",
        summary.clients,
        summary.forecasts,
        summary.profiles,
        summary.seconds,
    )
    return summary
