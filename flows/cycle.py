"""Flow `prewarm-cycle`: the loop, once, on one clock: ingest -> predict -> plan -> apply -> score.

Every step works from one watermark, the newest usage bucket once the cycle has ingested
its feed, and one clock (`flows.clock`): predictions start from the watermark, the plan's
first window starts after the cycle is expected to end, and the scores cover the buckets
that arrived. Steps that have nothing new to do do nothing: no new data and no new model
means no prediction; a plan equal to the pool means no runtime action. So two cycles on the
same data make zero runtime actions the second time.

Overlap is impossible: a cycle holds an exclusive lock on the data directory for its whole
run, and a second one refuses at once, naming the running one (under `prewarm up` the
deployment also has a concurrency limit of one). A cycle that starts later than scheduled
says by how much. Drift is detected and recorded here; retraining never runs inside a cycle
(it would hold the pool's next update hostage to a model fit): the `retrain-drifted` flow
runs after it.

Each cycle records a `cycles` row (its clock, watermark, lead, lag, duration and actions),
which `prewarm pools`, the `v_cycles`/`v_churn` views and the Prefect artifact show.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import polars as pl
from prefect import flow, get_client, get_run_logger, task
from prefect import runtime as prefect_runtime
from prefect.cache_policies import NONE

from core.errors import PrewarmError
from core.times import utc_now
from flows.artifacts import publish_cycle
from flows.clock import clock_rate, expected_lead_seconds
from flows.feed import complete_feed, ingest_feed
from flows.locks import warehouse_session, warehouse_write
from flows.predict import predict_and_write
from flows.predict_budget import clients_to_predict
from flows.provision import PlannedPool, action_counts, apply_targets, make_plan, record_plan
from flows.scoring import record_drift, score_buckets
from flows.settings import Settings
from flows.task_inputs import unwalked
from models.registry import current_aliases
from warehouse.cycles import churn_last_hour, finish_cycle, last_prediction, start_cycle
from warehouse.db import shared_connection
from warehouse.feeds import Feed, feed_clock, follow_feed, parse_feed, read_feed, watermark
from warehouse.history import prune_due, prune_history, record_prune
from warehouse.inventory import read_host_placement
from warehouse.predictions import prune_predictions

log = logging.getLogger(__name__)

ACTION_KINDS = ("create", "release", "pause", "unpause", "start")
# Old prediction runs and history are pruned at most this often (retentions are days: a row
# outlives its retention by an hour at most), not every cycle: a prune scans the tables.
PRUNE_EVERY = timedelta(hours=1)


class CycleBusy(PrewarmError):
    """Another cycle is running on this data directory."""


@dataclass
class CycleSummary:
    """What one cycle did, in the shape `prewarm cycle --json` writes."""

    cycle_id: str
    feed: str
    clock: str
    watermark: str | None = None
    seconds: float = 0.0
    lag_s: float | None = None
    late_s: float | None = None
    lead_s: float = 0.0
    ingested_rows: int = 0
    predicted: bool = False
    predicted_clients: int = 0  # clients whose forecasts this cycle refreshed
    predict_left: int = 0  # clients with a model left for later cycles (over the budget)
    plan_id: str | None = None
    first_window: str | None = None
    runtime: str | None = None
    actions: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ACTION_KINDS, 0))
    failed_actions: int = 0
    drained: int = 0
    scored_buckets: int = 0
    drifted: dict[str, str] = field(default_factory=dict)
    retrain_eligible: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    step_seconds: dict[str, float] = field(default_factory=dict)  # where the time went
    churn_per_hour: int = 0  # members created + released by the controller, last hour
    cancelled_before: str | None = None  # the step a cancel from the UI stopped it at

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def prediction_text(self) -> str:
        """What the predict step did, for people (the CLI, the cycle's artifact)."""
        if not self.predicted:
            return "no new data or model: forecasts current"
        if not self.predict_left:
            return f"predicted {self.predicted_clients} clients"
        return (
            f"predicted {self.predicted_clients} clients, the oldest forecasts first; "
            f"{self.predict_left} keep theirs until their turn (PREWARM_PREDICT_CLIENTS_PER_CYCLE)"
        )


@contextmanager
def cycle_lock(settings: Settings) -> Iterator[None]:
    """Hold the data directory's cycle lock; refuse at once when another cycle holds it."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    path = settings.data_dir / "cycle.lock"
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise CycleBusy(
                f"Another cycle is running on {settings.data_dir} ({holder}); cycles never "
                "overlap. This one did nothing; the next scheduled one will run."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {utc_now():%Y-%m-%d %H:%M:%S} UTC")
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()


def _resolve_feed(settings: Settings, feed: str | None, speed: float | None) -> Feed:
    """The feed named now (then followed from here on), else the one the warehouse follows."""
    path = settings.warehouse_path
    if feed is not None:
        wanted = parse_feed(feed, speed=speed or 1.0)
        current = read_feed(path) if path.exists() else None
        if (
            current is not None
            and current.describe() == wanted.describe()
            and (speed is None or current.params.get("speed") == wanted.params.get("speed"))
        ):
            return current
        with warehouse_write():
            return follow_feed(path, complete_feed(wanted, settings), now=utc_now())
    current = read_feed(path) if path.exists() else None
    return current if current is not None else parse_feed("none")


def _late_seconds() -> float | None:
    """How long after its scheduled time this run started (None when not scheduled)."""
    try:
        from prefect.runtime import flow_run

        scheduled = flow_run.scheduled_start_time
        if scheduled is None or flow_run.deployment_id is None:
            return None
        return max(0.0, (utc_now() - scheduled.replace(tzinfo=None)).total_seconds())
    except Exception:  # outside a run, or an older server: lateness is unknown
        return None


def _models_fingerprint(settings: Settings) -> str:
    """A short digest of every client's current model versions (changes when one does)."""
    aliases = current_aliases(settings.mlflow_tracking_uri)
    canonical = json.dumps(aliases, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _prediction_due(settings: Settings, mark: datetime | None) -> tuple[bool, str | None]:
    """(whether to predict, the models' fingerprint): not when the last prediction used the
    same watermark and the same model versions."""
    if mark is None:
        return False, None
    models = _models_fingerprint(settings)
    last_mark, last_models = last_prediction(settings.warehouse_path)
    return not (last_mark == mark and last_models == models), models


@flow(name="prewarm-cycle")
def prewarm_cycle(
    feed: str | None = None,
    speed: float | None = None,
    at: datetime | None = None,
    lead_seconds: float | None = None,
) -> CycleSummary:
    """Ingest from the feed, predict, plan, apply and score, on one watermark and clock.

    `feed` (none | spool:DIR | trace:DIR | synthetic) is followed from now on; by default
    the warehouse's own feed. `at` pins the clock and `lead_seconds` the expected duration
    (tests, and a soak's first cycle, which completes before its traffic starts)."""
    settings = Settings()
    logger = get_run_logger()
    started = time.perf_counter()
    path = settings.warehouse_path
    with cycle_lock(settings):
        late = _late_seconds()
        with warehouse_session(path):
            followed = _resolve_feed(settings, feed, speed)
            clock = at or feed_clock(path, followed, utc_now())
            cycle_id = f"cycle-{utc_now():%Y%m%dT%H%M%S%f}"
            start_cycle(path, cycle_id, followed.describe(), clock, late)
        summary = CycleSummary(cycle_id, followed.describe(), clock.isoformat(), late_s=late)
        if late is not None and late > settings.cycle_seconds:
            logger.warning(
                "this cycle starts %.0f s after its scheduled time (the previous one ran long?)",
                late,
            )
        try:
            _run(settings, followed, clock, summary, started, lead_seconds)
            if summary.cancelled_before is not None:
                _finish_cancelled(settings, summary, started)
                return summary
        except BaseException as error:
            summary.seconds = time.perf_counter() - started
            with warehouse_write():
                finish_cycle(
                    path,
                    cycle_id,
                    "failed",
                    f"{type(error).__name__}: {error}",
                    seconds=summary.seconds,
                )
            raise
    publish_cycle(summary, read_host_placement(path))
    if summary.retrain_eligible:
        _start_retraining(summary.retrain_eligible)
    logger.info(
        "cycle %s: watermark %s, %s, lag %s s, %.1f s",
        cycle_id,
        summary.watermark,
        summary.actions,
        f"{summary.lag_s:.0f}" if summary.lag_s is not None else "-",
        summary.seconds,
    )
    return summary


class _StepTimer:
    """Records the seconds since the previous call under each step's name."""

    def __init__(self, into: dict[str, float]) -> None:
        self.into = into
        self.last = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.into[name] = round(now - self.last, 3)
        self.last = now


@task(cache_policy=NONE)
def score(settings: Settings) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Score the buckets that arrived, record drift, and once every PRUNE_EVERY prune old
    prediction runs and history: one task (each task run costs a cycle tens of
    milliseconds of its own)."""
    now = utc_now()
    scored = score_buckets.fn(settings, now)
    drift = record_drift.fn(settings, now)
    path = settings.warehouse_path
    if not prune_due(path, now, PRUNE_EVERY):
        return scored, drift
    before = now - timedelta(seconds=settings.prediction_retention_seconds)
    history_before = now - timedelta(seconds=settings.history_retention_seconds)
    with warehouse_write():
        pruned = prune_predictions(path, before)
        history = prune_history(path, history_before)
        record_prune(path, now)
    if pruned:
        log.info("pruned %d prediction rows generated before %s", pruned, before)
    if history:
        rows = ", ".join(f"{n} {table}" for table, n in history.items())
        log.info("pruned history recorded before %s: %s rows", history_before, rows)
    return scored, drift


def _cancel_requested() -> bool:
    """Whether this cycle's flow run was cancelled (from the UI or the API) since it started.

    Under `prewarm up` the cycle runs in the deployment server's own process
    (`flows.cycle_runner`), which a cancel cannot kill: the cycle asks before the steps
    that change what is deployed, and stops there. An API that does not answer is no
    reason to stop a cycle: it goes on.
    """
    run_id = prefect_runtime.flow_run.id
    if run_id is None:  # the steps called outside a flow run (tests)
        return False
    try:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(UUID(run_id)).state
    except Exception as error:  # noqa: BLE001 - any API failure means "not cancelled"
        log.warning("could not read whether this cycle was cancelled (%s); going on", error)
        return False
    return state is not None and state.is_cancelling()


def _stopped_by_cancel(summary: CycleSummary, before: str) -> bool:
    """True, with the step it stops before noted in `summary`, when the run was cancelled."""
    if _cancel_requested():
        summary.cancelled_before = before
    return summary.cancelled_before is not None


def _finish_cancelled(settings: Settings, summary: CycleSummary, started: float) -> None:
    """The cycle row of a cycle stopped by a cancel: nothing after its step was done."""
    summary.seconds = time.perf_counter() - started
    message = f"cancelled before {summary.cancelled_before}: no plan recorded or applied"
    with warehouse_write():
        finish_cycle(
            settings.warehouse_path,
            summary.cycle_id,
            "cancelled",
            message,
            seconds=summary.seconds,
            ingested_rows=summary.ingested_rows,
            predicted=summary.predicted,
        )
    get_run_logger().warning("cycle %s %s", summary.cycle_id, message)


def _run(
    settings: Settings,
    feed: Feed,
    clock: datetime,
    summary: CycleSummary,
    started: float,
    lead_seconds: float | None,
) -> None:
    """The steps of one cycle, filling `summary` and the cycle's row."""
    path = settings.warehouse_path
    step = _StepTimer(summary.step_seconds)
    if feed.kind != "none":
        ingested = ingest_feed(settings, feed, clock)
        summary.ingested_rows = int(ingested.rows_loaded)
        summary.notes.extend(ingested.notes)
    step("ingest")
    if _stopped_by_cancel(summary, before="predict"):
        return
    with shared_connection(path):
        mark = watermark(path)
        due, models = _prediction_due(settings, mark)
    summary.watermark = mark.isoformat() if mark else None
    if due:
        choice = clients_to_predict(settings)
        budget = settings.predict_clients_per_cycle
        get_run_logger().info("predicting %s", choice.describe(budget))
        horizon = settings.horizon_steps * settings.freq_seconds
        if too_old := choice.too_old_for(budget, settings.cycle_seconds, horizon):
            get_run_logger().warning(too_old)
        summary.predicted_clients = predict_and_write(settings, choice.clients).clients
        summary.predict_left = choice.left_for_later
    summary.predicted = due
    step("predict")
    if _stopped_by_cancel(summary, before="plan"):
        return
    with warehouse_session(path):
        summary.lead_s = (
            expected_lead_seconds(settings, feed) if lead_seconds is None else lead_seconds
        )
        planned = make_plan(
            settings,
            clock,
            summary.lead_s,
            plan_id=f"plan-{summary.cycle_id.removeprefix('cycle-')}",
            clock_rate=clock_rate(feed),
        )
        record_plan(settings, planned, dry_run=False, cycle_id=summary.cycle_id)
    summary.plan_id = planned.plan.plan_id
    summary.first_window = planned.span[0].isoformat()
    step("plan")
    summary.runtime, result = apply_targets(settings, unwalked(planned))
    step("apply")
    summary.actions = action_counts(result.pool_events)
    summary.failed_actions = result.failed
    summary.drained = len(result.drained)
    applied_clock = clock + timedelta(seconds=(time.perf_counter() - started) * clock_rate(feed))
    if mark is not None:
        bucket = timedelta(seconds=settings.freq_seconds)
        summary.lag_s = max(0.0, (applied_clock - (mark + bucket)).total_seconds())
    with warehouse_session(path):
        _score_and_finish(settings, summary, step, started, mark, models, planned, lead_seconds)


def _score_and_finish(
    settings: Settings,
    summary: CycleSummary,
    step: _StepTimer,
    started: float,
    mark: datetime | None,
    models: str | None,
    planned: PlannedPool,
    lead_seconds: float | None,
) -> None:
    """Churn, scoring and drift, then the cycle's row: on one connection."""
    path = settings.warehouse_path
    summary.churn_per_hour = churn_last_hour(path, utc_now())
    scored, drift = score(settings)
    if drift.height:
        summary.drifted = dict(drift.select("client_id", "reason").iter_rows())
        if "eligible" in drift.columns:
            summary.retrain_eligible = sorted(
                drift.filter("eligible").get_column("client_id").to_list()
            )
    summary.scored_buckets = (
        scored.select("client_id", "window_start").unique().height if scored.height else 0
    )
    step("score")
    summary.seconds = time.perf_counter() - started
    finish_cycle(
        path,
        summary.cycle_id,
        "done",
        watermark=mark,
        ingested_rows=summary.ingested_rows,
        predicted=summary.predicted,
        models=models,
        plan_id=summary.plan_id,
        first_window=planned.span[0],
        lead_seconds=summary.lead_s,
        runtime=summary.runtime,
        creates=summary.actions["create"],
        releases=summary.actions["release"],
        pauses=summary.actions["pause"],
        unpauses=summary.actions["unpause"] + summary.actions["start"],
        failed_actions=summary.failed_actions,
        seconds=summary.seconds,
        lag_seconds=summary.lag_s,
        drifted=len(summary.drifted),
        pinned=lead_seconds is not None,
    )


def _start_retraining(clients: list[str]) -> None:
    """Under `prewarm up`, start a `retrain-drifted` run now that the cycle is done (it runs
    on its own, never holding up the next cycle); elsewhere `prewarm retrain` does it."""
    from prefect.runtime import deployment

    if deployment.id is None:
        log.info("%d clients may be retrained: run `prewarm retrain`", len(clients))
        return
    from prefect.deployments import run_deployment

    try:
        run_deployment("retrain-drifted/retrain-drifted", timeout=0)
    except Exception as error:  # the schedule retries; the cycle itself succeeded
        log.warning("could not start retrain-drifted: %s", error)


def write_json(summary: CycleSummary, out: Path) -> None:
    """The cycle summary as JSON (`prewarm cycle --json OUT`)."""
    out.write_text(json.dumps(summary.to_json(), indent=2, default=str) + "\n")
