"""Flow `train-forecasters`: fit one forecaster per client, register it, gate its promotion.

Clients fan out as Prefect tasks on a local process pool (feature building holds the GIL, so
threads would not use both cores) or, when PREWARM_DASK_ADDRESS is set, on that Dask cluster.
Each task fits, scores, plots, gates and registers a batch of clients, one after another:
the workers share the MLflow store, so registrations run as parallel as fits. Every version
is tagged with why it was trained (`trigger`) and how its recent rows were weighted
(`weighting`), as is its `model_runs` row.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, cast

import polars as pl
from mlflow.exceptions import MlflowException
from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture, as_completed
from prefect.task_runners import ProcessPoolTaskRunner, TaskRunner

from core.errors import PrewarmError
from core.times import utc_now
from flows.locks import warehouse_write
from flows.progress import tracker
from flows.settings import Settings, parse_freq_any
from flows.train_client import (
    ClientFailure,
    ClientTraining,
    start_worker,
    train_clients,
)
from models.evaluation import WindowScore
from models.exceedance import ExceedanceConfig, fit_exceedance_model
from models.feedback import (
    adjustments_from_signals,
    fill_usage_from_feedback,
    reported_actuals,
)
from models.forecaster import (
    Adjustments,
    ForecastConfig,
    GlobalForecaster,
    fit_global_forecaster,
    needs_fallback,
)
from models.registry import (
    CHAMPION,
    PruneReport,
    Registration,
    current_aliases,
    ensure_experiment,
    exceedance_run_of,
    load_forecaster,
    log_exceedance,
    prune_registry,
)
from models.retraining import check_trigger
from warehouse.clients import read_clients
from warehouse.feedback import read_feedback_signals, read_reported_actuals
from warehouse.predictions import write_model_runs
from warehouse.usage import read_calendar, read_recent_usage

GLOBAL_MODEL_CLIENTS = 40  # clients the global fallback model learns from, at most
EXCEEDANCE_TRAINING_ROWS = 200_000  # (client, origin, horizon, level) rows, sampled
EXCEEDANCE_CHAMPIONS_TRIED = 3  # champions loaded to find a shared model to reuse, at most
CLIENTS_PER_TASK = 8  # at most: see train_clients for what a task costs
# At least this many tasks per worker while clients last: the last tasks to finish leave the
# other workers idle for less than a task's worth of clients.
TASKS_PER_WORKER = 4


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
    pruned: PruneReport | None = None  # the retention run after registering

    @property
    def promoted(self) -> int:
        return sum(r.promoted for r in self.registrations)


def forecast_config(settings: Settings, freq_seconds: int) -> ForecastConfig:
    """The forecaster configuration for series of one bucket width."""

    def steps(duration: str) -> int:
        return max(1, parse_freq_any(duration) // freq_seconds)

    return ForecastConfig(
        freq_seconds=freq_seconds,
        horizon_steps=steps(settings.horizon),
        profile_steps=steps(settings.profile_horizon),
        profile_stride=steps(settings.profile_step),
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
) -> str | None:
    """Fit and store the shared P(concurrency >= k) classifier of a frequency group: the run
    holding it (None without concurrency data)."""
    if "concurrency" not in usage.columns or not usage.get_column("concurrency").drop_nulls().len():
        return None
    model = fit_exceedance_model(
        usage.select("client_id", "ts", "concurrency").drop_nulls(),
        ExceedanceConfig(
            freq_seconds=config.freq_seconds,
            horizon_steps=config.horizon_steps,
            max_level=settings.exceedance_levels,
            max_rows=EXCEEDANCE_TRAINING_ROWS,
        ),
        clients.select("client_id", "container_memory_mb"),
    )
    return log_exceedance(model, settings.mlflow_tracking_uri, settings.mlflow_artifacts_dir)


def _shared_exceedance(
    group: pl.DataFrame,
    clients: pl.DataFrame,
    aliases: dict[str, dict[str, str]],
    config: ForecastConfig,
    settings: Settings,
    subset: bool,
) -> tuple[str | None, str]:
    """The run holding the shared P(concurrency >= k) model for the clients of `group` (one
    frequency group, stored once for all of them), and where it came from.

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
    uri = settings.mlflow_tracking_uri
    for cid in champions[:EXCEEDANCE_CHAMPIONS_TRIED]:
        loaded = load_forecaster(cid, uri)
        if loaded is None or getattr(loaded[0], "exceedance", None) is None:
            continue
        # A champion registered before shared models were stored apart carries its own copy.
        run_id = exceedance_run_of(cid, loaded[1], uri) or log_exceedance(
            loaded[0].exceedance, uri, settings.mlflow_artifacts_dir
        )
        return run_id, f"reused from forecaster-{cid} v{loaded[1]}"
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
) -> dict[Any, list[str]]:
    """Submit `train_clients` tasks for the clients of a frequency group, in batches
    (`_batches`): future -> its client ids.

    Clients with a model of their own start at once; the global fallback is fitted here
    meanwhile (this process only waits on the workers), then its clients follow. Tasks may
    run in other processes, so each gets only what it needs.
    """
    histories = group.partition_by("client_id", as_dict=True, maintain_order=True)
    reasons = {cid: needs_fallback(h, config) for (cid,), h in histories.items()}
    group_clients = clients.filter(pl.col("client_id").is_in(list(reasons)))
    exceedance_run, source = _shared_exceedance(group, clients, aliases, config, settings, subset)
    summary.exceedance_sources[config.freq_seconds] = source

    def submit(batch: list[str], global_model: GlobalForecaster | None) -> Any:
        jobs = [
            ClientTraining(
                cid,
                histories[(cid,)],
                calendar,
                attributes.get(cid),
                config,
                adjustments.get(cid),
                global_model,
            )
            for cid in batch
        ]
        champions = {cid for cid in batch if CHAMPION in aliases.get(cid, {})}
        return train_clients.submit(jobs, champions, exceedance_run, settings, summary.trigger)

    own = [cid for cid, why in reasons.items() if not why]
    futures = {submit(batch, None): batch for batch in _batches(own, settings.train_workers)}
    if fallback := [cid for cid, why in reasons.items() if why]:
        global_model = _fit_global(group, group_clients, calendar, config, reasons)
        batches = _batches(fallback, settings.train_workers)
        futures |= {submit(batch, global_model): batch for batch in batches}
    return futures


def _batches(client_ids: list[str], workers: int) -> list[list[str]]:
    """`client_ids` in one batch a task: at most CLIENTS_PER_TASK, and small enough to give
    each worker TASKS_PER_WORKER of them."""
    size = max(1, min(CLIENTS_PER_TASK, len(client_ids) // (workers * TASKS_PER_WORKER)))
    return [client_ids[start : start + size] for start in range(0, len(client_ids), size)]


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
    scores, feedback = read_feedback_signals(path, since=datetime(1970, 1, 1))
    adjustments = adjustments_from_signals(scores, feedback, utc_now())
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
            group,
            clients,
            calendar,
            attributes,
            adjustments,
            aliases,
            config,
            settings,
            summary,
            subset=client_ids is not None,
        )
        for future in as_completed(list(futures)):
            try:
                outcomes = future.result()
            except Exception as error:  # a task that died (its worker, say) fails its clients
                outcomes = [ClientFailure.of(cid, error) for cid in futures[future]]
            for outcome in outcomes:
                done += 1
                if progress:
                    progress(done, total)
                cid = outcome.client_id
                if isinstance(outcome, ClientFailure):
                    summary.failures[cid] = outcome.error
                    logger.warning("client %s: training failed: %s", cid, outcome.error)
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
    summary.pruned = _prune(settings, summary)
    summary.wall_seconds = time.perf_counter() - started
    logger.info(
        "trained %d clients (%s: %d promoted, %d on the global model, %d failed) in %.1f s;"
        " shared exceedance model: %s; %d old versions pruned",
        len(summary.registrations),
        trigger,
        summary.promoted,
        len(summary.fallbacks),
        len(summary.failures),
        summary.wall_seconds,
        summary.exceedance_sources or "none",
        len(summary.pruned.pruned) if summary.pruned else 0,
    )
    return summary


def _prune(settings: Settings, summary: TrainSummary) -> PruneReport | None:
    """Retention for the models this run added versions to: their aliased versions and
    newest PREWARM_REGISTRY_KEEP stay. A failure is only logged: the new versions are
    registered either way, and the next run prunes again."""
    if not summary.registrations:
        return None
    try:
        return prune_registry(
            settings.mlflow_tracking_uri,
            settings.registry_keep,
            clients=[r.client_id for r in summary.registrations],
        )
    except (PrewarmError, MlflowException, OSError) as error:
        get_run_logger().warning("pruning old forecaster versions failed: %s", error)
        return None


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
        "client_id": pl.String,
        "model_name": pl.String,
        "model_version": pl.String,
        "alias": pl.String,
        "fallback": pl.String,
        "reason": pl.String,
        "trained_until": pl.Datetime("us"),
        "wmape": pl.Float64,
        "baseline_wmape": pl.Float64,
        "trained_at": pl.Datetime("us"),
        "trigger": pl.String,
        "weighting": pl.String,
    }
    return pl.DataFrame(rows, schema=schema)
