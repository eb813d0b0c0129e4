"""Training clients: fit each one's forecaster, score it on its holdout, register it and gate
its promotion (one Prefect task per batch of clients, run in a worker process)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

import polars as pl
from prefect import get_run_logger, task
from prefect.cache_policies import NONE

from flows.settings import Settings
from models.evaluation import WindowScore, holdout_start, score_window
from models.feedback import describe_weighting
from models.forecaster import (
    FORECAST_SCHEMA,
    Adjustments,
    ClientForecaster,
    ForecastConfig,
    GlobalForecaster,
    fit_client_forecaster,
    needs_fallback,
)
from models.plots import plot_forecast_vs_actual
from models.profile import demand_metric
from models.promotion import decide_promotion
from models.registry import (
    ModelCard,
    Registration,
    ensure_experiment,
    load_forecaster,
    register_forecaster,
)

INPUT_EXAMPLE_ROWS = 12  # a small, valid history slice shown in the MLflow UI


@dataclass(frozen=True)
class ClientTraining:
    """What fitting one client needs; travels to a worker as one task argument."""

    client_id: str
    history: pl.DataFrame
    calendar: pl.DataFrame
    client: dict[str, Any] | None  # its attributes
    config: ForecastConfig
    adjustments: Adjustments | None
    global_model: GlobalForecaster | None  # for a client too short for a model of its own


@dataclass
class FittedClient:
    """A fitted forecaster and what was measured about it before registration."""

    client_id: str
    forecaster: ClientForecaster
    score: WindowScore | None
    plot_svg: bytes | None
    fit_seconds: float
    example_input: pl.DataFrame  # a small valid history slice, shown in the MLflow UI
    example_output: pl.DataFrame  # what the model predicts from it (the signature's output)


@dataclass
class ClientOutcome:
    """What training one client produced (small: it travels back from a worker)."""

    client_id: str
    registration: Registration
    score: WindowScore | None
    fallback: str | None
    fit_seconds: float
    weighting: str  # how its recent rows were weighted (models.feedback.describe_weighting)


@dataclass
class ClientFailure:
    """A client whose training raised; the other clients of its task still train."""

    client_id: str
    error: str  # "<exception type>: <message>"

    @classmethod
    def of(cls, client_id: str, error: Exception) -> ClientFailure:
        return cls(client_id, f"{type(error).__name__}: {error}")


def fit_client(job: ClientTraining) -> FittedClient:
    """Fit one client's forecaster (its own, or its view of the global model) and score it
    on its holdout day, with the plot a reviewer opens."""
    started = time.perf_counter()
    client_id, history, calendar, config = job.client_id, job.history, job.calendar, job.config
    global_model = job.global_model
    reason = needs_fallback(history, config)
    if reason is not None and global_model is not None:
        forecaster = global_model.for_client(client_id, job.client, reason)
    else:
        forecaster = fit_client_forecaster(history, config, calendar, job.client, job.adjustments)
    score = score_window(forecaster, history, holdout_start(history, config.holdout_days), calendar)
    example = history.tail(INPUT_EXAMPLE_ROWS)
    if score is None:
        plot, output = None, forecaster.predict(example)
    else:
        metric = demand_metric(forecaster.metrics)
        shown = score.predictions.filter(pl.col("metric") == metric)
        kind = f"global model ({forecaster.fallback})" if forecaster.fallback else "own model"
        plot = plot_forecast_vs_actual(
            shown, f"{client_id}: {metric}, holdout forecast vs actual, {kind}", metric
        )
        # The signature's output example: this model's forecast from the last holdout
        # origin, already computed by the scoring (a fresh prediction costs 0.05 s).
        last = score.predictions.filter(pl.col("origin") == pl.col("origin").max())
        output = last.select(list(FORECAST_SCHEMA))
    return FittedClient(
        client_id, forecaster, score, plot, time.perf_counter() - started, example, output
    )


@task(cache_policy=NONE)
def start_worker(settings: Settings) -> int:
    """Load what a training task needs (libraries, the MLflow store) in a worker process
    while the flow reads usage and fits the shared models, so the first clients do not pay
    for it (about 5 s of a 2-minute run)."""
    ensure_experiment(settings.mlflow_tracking_uri, settings.mlflow_artifacts_dir)
    return os.getpid()


@task(cache_policy=NONE)
def train_clients(
    jobs: list[ClientTraining],
    champions: set[str],
    exceedance_run: str | None,
    settings: Settings,
    trigger: str = "schedule",
) -> list[ClientOutcome | ClientFailure]:
    """`train_client` for each of `jobs` in turn (`champions`: the ids of those with a
    champion to beat), in job order; a client that fails is reported, not raised.

    Clients travel in batches because a Prefect task costs about 0.2 s of bookkeeping
    (settings serialised and rebuilt, an API client, its states recorded by the API), a
    sixth of a client's fit and registration.
    """
    results: list[ClientOutcome | ClientFailure] = []
    for job in jobs:
        has_champion = job.client_id in champions
        try:
            results.append(train_client(job, exceedance_run, has_champion, settings, trigger))
        except Exception as error:  # one client's failure must not stop the others
            get_run_logger().warning("client %s: training failed", job.client_id, exc_info=True)
            results.append(ClientFailure.of(job.client_id, error))
    return results


def train_client(
    job: ClientTraining,
    exceedance_run: str | None,
    has_champion: bool,
    settings: Settings,
    trigger: str = "schedule",
) -> ClientOutcome:
    """Fit, score, gate and register one client's forecaster (`exceedance_run`: the run
    holding its group's shared exceedance model, which the version names).

    Registration happens here, in the worker, right after the fit: the workers share the
    MLflow store (SQLite or a tracking server), so registrations run as parallel as fits.
    """
    fitted = fit_client(job)
    shared = exceedance_run if "concurrency" in fitted.forecaster.metrics else None
    # The global model's view of a client is fitted without the client's adjustments.
    weighting = describe_weighting(None if fitted.forecaster.fallback else job.adjustments)
    registration = register_client(
        fitted,
        job.history,
        job.calendar,
        job.client,
        settings,
        has_champion,
        trigger,
        weighting,
        shared,
    )
    return ClientOutcome(
        job.client_id,
        registration,
        fitted.score,
        fitted.forecaster.fallback,
        fitted.fit_seconds,
        weighting,
    )


def register_client(
    fitted: FittedClient,
    history: pl.DataFrame,
    calendar: pl.DataFrame,
    client: dict[str, Any] | None,
    settings: Settings,
    has_champion: bool,
    trigger: str = "schedule",
    weighting: str = "none",
    exceedance_run: str | None = None,
) -> Registration:
    """Register the fitted forecaster, naming the shared exceedance model stored in
    `exceedance_run`; promote it past the champion only when it is better."""
    forecaster, score = fitted.forecaster, fitted.score
    champion_wmape = None
    current = (
        load_forecaster(fitted.client_id, settings.mlflow_tracking_uri) if has_champion else None
    )
    if current is not None and score is not None:
        start = holdout_start(history, forecaster.config.holdout_days)
        champion_score = score_window(current[0], history, start, calendar)
        champion_wmape = champion_score.wmape if champion_score else None
    promote, reason = decide_promotion(
        score.wmape if score else float("nan"),
        champion_wmape,
        score.baseline_wmape if score else None,
        score.baseline if score else "seasonal naive",
    )
    card = _model_card(fitted, history, client, champion_wmape, trigger, weighting)
    return register_forecaster(
        forecaster,
        fitted.client_id,
        card,
        promote,
        reason,
        settings.mlflow_tracking_uri,
        settings.mlflow_artifacts_dir,
        exceedance_run,
    )


def _model_card(
    fitted: FittedClient,
    history: pl.DataFrame,
    client: dict[str, Any] | None,
    champion_wmape: float | None,
    trigger: str,
    weighting: str,
) -> ModelCard:
    forecaster, score = fitted.forecaster, fitted.score
    config = forecaster.config
    # The profile's reach past the horizon is judged on the same holdout (its own boosters).
    metrics = _holdout_metrics(forecaster.holdout, "")
    metrics |= _holdout_metrics(forecaster.reach_holdout or {}, "reach.")
    if score is not None:
        metrics["window.wmape"] = score.wmape
        if score.baseline_wmape is not None:
            metrics["window.baseline_wmape"] = score.baseline_wmape
        if score.coverage_80 is not None:
            metrics["window.coverage_80"] = score.coverage_80
    if champion_wmape is not None:
        metrics["window.champion_wmape"] = champion_wmape
    metrics["fit_seconds"] = fitted.fit_seconds
    # "ts" is a Datetime column, so its min and max are datetimes (None only when empty);
    # polars types Series.min/max as any Python literal.
    first = cast("datetime | None", history.get_column("ts").min())
    last = cast("datetime | None", history.get_column("ts").max())
    return ModelCard(
        params={
            "freq_seconds": config.freq_seconds,
            "horizon_steps": config.horizon_steps,
            "profile_steps": config.profile_steps if forecaster.reach else config.horizon_steps,
            "profile_stride": config.profile_stride,
            "n_estimators": config.n_estimators,
            "num_leaves": config.num_leaves,
            "learning_rate": config.learning_rate,
            "max_train_rows": config.max_train_rows,
            "metrics": ",".join(forecaster.metrics),
            "history_rows": history.height,
        },
        metrics=metrics,
        tags={
            "tier": str((client or {}).get("tier") or "unset"),
            "region": str((client or {}).get("region") or "unset"),
            "model_kind": "global" if forecaster.fallback else "per-client",
            "fallback": forecaster.fallback or "none",
            "data_window": f"{first:%Y-%m-%dT%H:%M} .. {last:%Y-%m-%dT%H:%M}",
            "trigger": trigger,
            "weighting": weighting,
        },
        plot_svg=fitted.plot_svg,
        input_example=fitted.example_input.to_pandas(),
        output_example=fitted.example_output.to_pandas(),
    )


def _holdout_metrics(reports: dict[str, dict[str, float | None]], prefix: str) -> dict[str, float]:
    """Holdout reports as MLflow metrics: <prefix><metric>.<measure>."""
    return {
        f"{prefix}{metric}.{key}": float(value)
        for metric, report in reports.items()
        for key, value in report.items()
        if value is not None
    }
