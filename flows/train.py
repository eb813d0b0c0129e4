"""Flow `train-forecasters`: fit one forecaster per client, register it, gate its promotion.

Clients fan out as Prefect tasks on a local process pool (feature building holds the GIL, so
threads would not use both cores) or, when PREWARM_DASK_ADDRESS is set, on that Dask cluster.
Each task fits, scores, plots, gates and registers one client: the workers share the MLflow
store, so registrations run as parallel as fits. Every version is tagged with why it was
trained (`trigger`) and how its recent rows were weighted (`weighting`), as is its
`model_runs` row.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import polars as pl
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NONE
from prefect.futures import PrefectFuture, as_completed
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner

from core.errors import PrewarmError
from core.times import utc_now
from flows.locks import warehouse_write
from flows.progress import tracker
from flows.settings import Settings, parse_freq_any
from models.evaluation import WindowScore, holdout_start, score_window
from models.exceedance import ExceedanceConfig, fit_exceedance_model
from models.feedback import (
    adjustments_from_signals,
    describe_weighting,
    fill_usage_from_feedback,
    reported_actuals,
)
from models.forecaster import (
    FORECAST_SCHEMA,
    Adjustments,
    ClientForecaster,
    ForecastConfig,
    GlobalForecaster,
    fit_client_forecaster,
    fit_global_forecaster,
    needs_fallback,
)
from models.plots import plot_forecast_vs_actual
from models.profile import demand_metric
from models.promotion import decide_promotion
from models.registry import (
    CHAMPION,
    ModelCard,
    Registration,
    current_aliases,
    ensure_experiment,
    load_forecaster,
    register_forecaster,
)
from models.retraining import check_trigger
from warehouse.clients import read_clients
from warehouse.feedback import read_feedback_signals, read_reported_actuals
from warehouse.predictions import write_model_runs
from warehouse.usage import read_calendar, read_recent_usage

INPUT_EXAMPLE_ROWS = 12  # a small, valid history slice shown in the MLflow UI
GLOBAL_MODEL_CLIENTS = 40  # clients the global fallback model learns from, at most
EXCEEDANCE_TRAINING_ROWS = 200_000  # (client, origin, horizon, level) rows, sampled
EXCEEDANCE_CHAMPIONS_TRIED = 3  # champions loaded to find a shared model to reuse, at most


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
    plot_png: bytes | None
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
class TrainSummary:
    """What one training run did, per client and in total."""

    trigger: str = "schedule"  # why this run trained: schedule | drift | feedback | manual
    registrations: list[Registration] = field(default_factory=list)
    fallbacks: dict[str, str] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    scores: dict[str, WindowScore | None] = field(default_factory=dict)
    weightings: dict[str, str] = field(default_factory=dict)
    # Per frequency group (bucket seconds): where the shared P(need >= k) model came from.
    exceedance_sources: dict[int, str] = field(default_factory=dict)
    fit_seconds: float = 0.0
    mlflow_seconds: float = 0.0
    wall_seconds: float = 0.0

    @property
    def promoted(self) -> int:
        return sum(r.promoted for r in self.registrations)


def forecast_config(settings: Settings, freq_seconds: int) -> ForecastConfig:
    """The forecaster configuration for series of one bucket width."""
    steps = max(1, parse_freq_any(settings.horizon) // freq_seconds)
    return ForecastConfig(freq_seconds=freq_seconds, horizon_steps=steps)


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
    import matplotlib.dates  # noqa: F401 (models.plots imports it on first use)
    import matplotlib.figure  # noqa: F401

    ensure_experiment(settings.mlflow_tracking_uri, settings.mlflow_artifacts_dir)
    return os.getpid()


@task(cache_policy=NONE)
def train_client(
    job: ClientTraining,
    exceedance: Any,
    has_champion: bool,
    settings: Settings,
    trigger: str = "schedule",
) -> ClientOutcome:
    """Fit, score, gate and register one client's forecaster.

    Registration happens here, in the worker, right after the fit: the workers share the
    MLflow store (SQLite or a tracking server), so registrations run as parallel as fits.
    """
    fitted = fit_client(job)
    if "concurrency" in fitted.forecaster.metrics:
        fitted.forecaster.exceedance = exceedance
    # The global model's view of a client is fitted without the client's adjustments.
    weighting = describe_weighting(None if fitted.forecaster.fallback else job.adjustments)
    registration = register_client(
        fitted, job.history, job.calendar, job.client, settings, has_champion, trigger, weighting
    )
    return ClientOutcome(
        job.client_id, registration, fitted.score, fitted.forecaster.fallback, fitted.fit_seconds,
        weighting,
    )  # fmt: skip


def register_client(
    fitted: FittedClient,
    history: pl.DataFrame,
    calendar: pl.DataFrame,
    client: dict[str, Any] | None,
    settings: Settings,
    has_champion: bool,
    trigger: str = "schedule",
    weighting: str = "none",
) -> Registration:
    """Register the fitted forecaster; promote it past the champion only when it is better."""
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
    metrics: dict[str, float] = {}
    for metric, report in forecaster.holdout.items():
        for key, value in report.items():
            if value is not None:
                metrics[f"{metric}.{key}"] = float(value)
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
        plot_png=fitted.plot_png,
        input_example=fitted.example_input.to_pandas(),
        output_example=fitted.example_output.to_pandas(),
    )


def _client_dicts(clients: pl.DataFrame) -> dict[str, dict[str, Any]]:
    out = {}
    for row in clients.iter_rows(named=True):
        attributes = json.loads(row["attributes"]) if row.get("attributes") else {}
        out[row["client_id"]] = {
            **attributes,
            **{k: v for k, v in row.items() if k != "attributes"},
        }
    return out


def _fit_exceedance(
    usage: pl.DataFrame, clients: pl.DataFrame, config: ForecastConfig, settings: Settings
) -> Any:
    """The shared P(concurrency >= k) classifier of a frequency group (None without
    concurrency data)."""
    if "concurrency" not in usage.columns or not usage.get_column("concurrency").drop_nulls().len():
        return None
    return fit_exceedance_model(
        usage.select("client_id", "ts", "concurrency").drop_nulls(),
        ExceedanceConfig(
            freq_seconds=config.freq_seconds,
            horizon_steps=config.horizon_steps,
            max_level=settings.exceedance_levels,
            max_rows=EXCEEDANCE_TRAINING_ROWS,
        ),
        clients.select("client_id", "container_memory_mb"),
    )


def _shared_exceedance(
    group: pl.DataFrame,
    clients: pl.DataFrame,
    aliases: dict[str, dict[str, str]],
    config: ForecastConfig,
    settings: Settings,
    subset: bool,
) -> tuple[Any, str]:
    """The shared P(concurrency >= k) model for the clients of `group` (one frequency group),
    and where it came from.

    A training of every client fits it on the group. A training of some clients (`subset`:
    say a drift retrain of one or two) would fit it on those alone and serve them badly: an
    existing champion's shared model is reused, else one is fitted on the whole group's
    recent usage.
    """
    group_ids = set(
        clients.filter(pl.col("freq_seconds") == config.freq_seconds).get_column("client_id")
    )
    training = set(group.get_column("client_id").unique())
    if not subset or training >= group_ids:
        return _fit_exceedance(group, clients, config, settings), "fitted on the group"
    if "concurrency" not in group.columns or not group.get_column("concurrency").drop_nulls().len():
        return None, "no concurrency data"
    # Champions of clients not being retrained first: their shared model is the most likely
    # to come from a whole-group training.
    champions = sorted(
        (cid for cid in group_ids if CHAMPION in aliases.get(cid, {})),
        key=lambda cid: (cid in training, cid),
    )
    for cid in champions[:EXCEEDANCE_CHAMPIONS_TRIED]:
        loaded = load_forecaster(cid, settings.mlflow_tracking_uri)
        if loaded is not None and getattr(loaded[0], "exceedance", None) is not None:
            return loaded[0].exceedance, f"reused from forecaster-{cid} v{loaded[1]}"
    whole = read_recent_usage(
        settings.warehouse_path, settings.train_history_days, sorted(group_ids)
    )
    whole = fill_usage_from_feedback(
        whole, reported_actuals(read_reported_actuals(settings.warehouse_path, sorted(group_ids)))
    )
    fitted = _fit_exceedance(whole, clients, config, settings)
    return fitted, f"fitted on the whole group ({whole.get_column('client_id').n_unique()} clients)"


def _fit_global(
    usage: pl.DataFrame,
    clients: pl.DataFrame,
    calendar: pl.DataFrame,
    config: ForecastConfig,
    reasons: dict[str, str | None],
) -> GlobalForecaster:
    """The global fallback of a frequency group. It learns from the clients that need it plus
    a fixed sample of the others (GLOBAL_MODEL_CLIENTS): enough to learn shapes shared across
    clients while staying quick."""
    needing = sorted(cid for cid, why in reasons.items() if why)
    others = sorted(
        (cid for cid, why in reasons.items() if not why),
        key=lambda cid: hashlib.blake2b(cid.encode(), digest_size=4).digest(),
    )
    chosen = [*needing, *others[: max(0, GLOBAL_MODEL_CLIENTS - len(needing))]]
    return fit_global_forecaster(
        usage.filter(pl.col("client_id").is_in(chosen)),
        clients.filter(pl.col("client_id").is_in(chosen)),
        calendar,
        config,
        serve=needing,
    )


def _submit_group(
    group: pl.DataFrame,
    clients: pl.DataFrame,
    calendar: pl.DataFrame,
    attributes: dict[str, dict[str, Any]],
    adjustments: dict[str, Adjustments],
    aliases: dict[str, dict[str, str]],
    config: ForecastConfig,
    settings: Settings,
    summary: TrainSummary,
    subset: bool,
) -> dict[Any, str]:
    """Submit one `train_client` task per client of a frequency group: future -> client id.

    Clients with a model of their own start at once; the global fallback is fitted here
    meanwhile (this process only waits on the workers), then its clients follow. Tasks may
    run in other processes, so each gets only what it needs.
    """
    histories = group.partition_by("client_id", as_dict=True, maintain_order=True)
    reasons = {cid: needs_fallback(h, config) for (cid,), h in histories.items()}
    group_clients = clients.filter(pl.col("client_id").is_in(list(reasons)))
    exceedance, source = _shared_exceedance(group, clients, aliases, config, settings, subset)
    summary.exceedance_sources[config.freq_seconds] = source

    def submit(cid: str, global_model: GlobalForecaster | None) -> Any:
        job = ClientTraining(
            cid, histories[(cid,)], calendar, attributes.get(cid), config, adjustments.get(cid),
            global_model,
        )  # fmt: skip
        has_champion = CHAMPION in aliases.get(cid, {})
        return train_client.submit(job, exceedance, has_champion, settings, summary.trigger)

    futures = {submit(cid, None): cid for cid, why in reasons.items() if not why}
    if fallback := [cid for cid, why in reasons.items() if why]:
        global_model = _fit_global(group, group_clients, calendar, config, reasons)
        futures |= {submit(cid, global_model): cid for cid in fallback}
    return futures


def train_flow(settings: Settings) -> Any:
    """`train_forecasters` on a local process pool, or on the Dask cluster at
    PREWARM_DASK_ADDRESS (the path beyond one machine)."""
    if settings.dask_address:
        from prefect_dask import DaskTaskRunner

        # Prefect types task_runner as TaskRunner[PrefectFuture[Any]], but TaskRunner is
        # invariant in its future type, so no concrete runner matches (Prefect casts its own
        # default runner the same way in Flow.__init__).
        return train_forecasters.with_options(
            task_runner=cast(
                "TaskRunner[PrefectFuture[Any]]", DaskTaskRunner(address=settings.dask_address)
            )
        )
    return train_forecasters.with_options(
        task_runner=cast(
            "TaskRunner[PrefectFuture[Any]]",
            ProcessPoolTaskRunner(max_workers=settings.train_workers),
        )
    )


# Clients train in worker processes: feature building and scoring hold the GIL too long
# for threads to use both cores.
# (The cast: see train_flow.)
@flow(
    name="train-forecasters",
    task_runner=cast("TaskRunner[PrefectFuture[Any]]", ProcessPoolTaskRunner(max_workers=2)),
)
def train_forecasters(
    client_ids: list[str] | None = None, trigger: str = "schedule"
) -> TrainSummary:
    """Fit, score, register and gate one forecaster per client (all clients by default);
    `trigger` says why (schedule, drift, feedback or manual) on every version trained."""
    started = time.perf_counter()
    try:
        check_trigger(trigger)
    except ValueError as error:
        raise PrewarmError(f"Cannot train: {error}.") from error
    settings = Settings()
    logger = get_run_logger()
    # Made once here: workers registering at once must not race to create it.
    ensure_experiment(settings.mlflow_tracking_uri, settings.mlflow_artifacts_dir)
    workers = [start_worker.submit(settings) for _ in range(settings.train_workers)]
    path = settings.warehouse_path
    usage = read_recent_usage(path, settings.train_history_days, client_ids)
    if usage.height == 0:
        raise PrewarmError("No usage to train on. Ingest some first: `prewarm ingest`.")
    # What clients reported with their feedback labels the buckets the warehouse never measured.
    usage = fill_usage_from_feedback(
        usage, reported_actuals(read_reported_actuals(path, client_ids))
    )
    clients = read_clients(path)
    calendar = read_calendar(path)
    attributes = _client_dicts(clients)
    reconciliations, feedback = read_feedback_signals(path, since=datetime(1970, 1, 1))
    adjustments = adjustments_from_signals(reconciliations, feedback, utc_now())
    aliases = current_aliases(settings.mlflow_tracking_uri)
    summary = TrainSummary(trigger=trigger)

    frequencies = clients.select("client_id", "freq_seconds")
    grouped = usage.join(frequencies, on="client_id")
    progress = tracker("Training forecasters")
    total, done = grouped.get_column("client_id").n_unique(), 0
    for (freq,), group in grouped.group_by("freq_seconds", maintain_order=True):
        config = forecast_config(settings, int(freq))
        group = group.drop("freq_seconds")
        futures = _submit_group(
            group, clients, calendar, attributes, adjustments, aliases, config, settings,
            summary, subset=client_ids is not None,
        )  # fmt: skip
        for future in as_completed(list(futures)):
            cid = futures[future]
            done += 1
            if progress:
                progress(done, total)
            try:
                outcome = future.result()
            except Exception as error:  # one client's failure must not stop the others
                summary.failures[cid] = f"{type(error).__name__}: {error}"
                logger.warning("client %s: training failed: %s", cid, error)
                continue
            summary.fit_seconds += outcome.fit_seconds
            summary.scores[cid] = outcome.score
            summary.weightings[cid] = outcome.weighting
            if outcome.fallback:
                summary.fallbacks[cid] = outcome.fallback
            summary.registrations.append(outcome.registration)
            summary.mlflow_seconds += outcome.registration.mlflow_seconds

    for worker in workers:
        worker.wait()
    with warehouse_write():
        write_model_runs(path, _model_runs(summary, usage))
    summary.wall_seconds = time.perf_counter() - started
    logger.info(
        "trained %d clients (%s: %d promoted, %d on the global model, %d failed) in %.1f s;"
        " shared exceedance model: %s",
        len(summary.registrations), trigger, summary.promoted, len(summary.fallbacks),
        len(summary.failures), summary.wall_seconds, summary.exceedance_sources or "none",
    )  # fmt: skip
    return summary


def _model_runs(summary: TrainSummary, usage: pl.DataFrame) -> pl.DataFrame:
    last_ts = dict(usage.group_by("client_id").agg(pl.col("ts").max()).iter_rows())
    now = utc_now()
    rows = [
        {
            "client_id": r.client_id,
            "model_name": r.name,
            "model_version": r.version,
            "alias": "champion" if r.promoted else "challenger",
            "fallback": summary.fallbacks.get(r.client_id),
            "reason": r.reason,
            "trained_until": last_ts[r.client_id],
            "wmape": score.wmape if (score := summary.scores.get(r.client_id)) else None,
            "baseline_wmape": score.baseline_wmape if score else None,
            "trained_at": now,
            "trigger": summary.trigger,
            "weighting": summary.weightings.get(r.client_id, "none"),
        }
        for r in summary.registrations
    ]
    schema: dict[str, pl.DataType | type[pl.DataType]] = {
        "client_id": pl.String, "model_name": pl.String, "model_version": pl.String,
        "alias": pl.String, "fallback": pl.String, "reason": pl.String,
        "trained_until": pl.Datetime("us"), "wmape": pl.Float64, "baseline_wmape": pl.Float64,
        "trained_at": pl.Datetime("us"), "trigger": pl.String, "weighting": pl.String,
    }  # fmt: skip
    return pl.DataFrame(rows, schema=schema)
