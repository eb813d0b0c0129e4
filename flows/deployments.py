"""The deployments `prewarm up` serves from one long-running process.

    prewarm-cycle       every PREWARM_CYCLE (5 min): ingest -> predict -> plan -> apply -> score
    train-forecasters   daily at 02:00 UTC
    retrain-drifted     after a cycle that found clients to retrain (the cycle starts it)
    predict-profiles, provision-pools, score-outcomes
                        no schedule: the cycle's steps, runnable on their own from the UI

One chained cycle on the short interval, not four flows firing at the same instant in no
fixed order: each cycle's steps share one watermark and one clock. At most one cycle runs at
a time (a concurrency limit of one that cancels a run due while another still runs, on top
of the cycle's own lock); a late cycle says so. There is no scheduled ingest of its own: the
cycle ingests from the feed the warehouse follows, and nothing else writes usage.

The cycle's runs execute in this process, one after another (flows/cycle_runner.py), so
prediction's caches (loaded forecasters, origins already scored: flows/predict.py) outlive a
cycle: a fresh process per cycle would pay ~4x for its prediction. Prefect's Runner serves
the others, each run in a process of its own: they are rare, and their memory goes back to
the system when they end. All share the warehouse file safely (see flows/locks.py). All run
at niceness PREWARM_BATCH_NICE (10): batch work, which yields the CPU to the client API's
requests on a shared host (`run_as_batch`). Run `python -m flows.deployments` against a
Prefect server.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from flows.settings import Settings
from provisioning.runtime.spawn_priority import keep_spawn_priority

DAILY_0200_UTC = "0 2 * * *"
CYCLE = "prewarm-cycle"
# A cycle still running at a stop gets this long (inside the 10 s `prewarm up` gives the
# whole process before SIGKILL), then is reported crashed.
STOP_GRACE_S = 5.0
# (deployment name, schedule) as the UI and `prewarm up --check` show them.
SCHEDULED: dict[str, str] = {
    CYCLE: "every PREWARM_CYCLE",
    "train-forecasters": "daily at 02:00 UTC",
}
ON_DEMAND: tuple[str, ...] = (
    "retrain-drifted",
    "predict-profiles",
    "provision-pools",
    "score-outcomes",
)


def build_deployments(settings: Settings) -> list[Any]:
    """The RunnerDeployments, parameterised from settings."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.schedules import Cron

    from flows.cycle import prewarm_cycle
    from flows.predict import predict_profiles
    from flows.provision import provision_pools
    from flows.retrain import retrain_drifted
    from flows.scoring import score_outcomes
    from flows.train import train_flow

    tags = ["prewarm"]
    one_at_a_time = ConcurrencyLimitConfig(
        limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW
    )
    return [
        prewarm_cycle.to_deployment(
            name=CYCLE,
            interval=timedelta(seconds=settings.cycle_seconds),
            tags=tags,
            concurrency_limit=one_at_a_time,
            description="Ingest from the feed, predict, plan, apply, score: one watermark.",
        ),
        train_flow(settings).to_deployment(
            name="train-forecasters",
            schedules=[Cron(DAILY_0200_UTC, timezone="UTC")],
            parameters={"trigger": "schedule"},
            tags=tags,
            concurrency_limit=one_at_a_time,
            description="Fit, score, register and gate every client's forecaster.",
        ),
        retrain_drifted.to_deployment(
            name="retrain-drifted",
            tags=tags,
            concurrency_limit=one_at_a_time,
            description="Retrain drifted clients past their cooldown and with new data.",
        ),
        predict_profiles.to_deployment(
            name="predict-profiles",
            tags=tags,
            description="Forecasts and predicted profiles from the latest usage.",
        ),
        provision_pools.to_deployment(
            name="provision-pools",
            tags=tags,
            concurrency_limit=one_at_a_time,
            description="Plan warm pools and make the runtime match.",
        ),
        score_outcomes.to_deployment(
            name="score-outcomes",
            tags=tags,
            concurrency_limit=one_at_a_time,
            description="Predicted vs actual, drift detection and retraining.",
        ),
    ]


def run_as_batch(nice: int, idle: bool = False) -> None:
    """Run this process (and the threads and processes it starts from now on) at niceness
    `nice` at least: the flows are batch work, and on a shared host the client API's
    requests should get the CPU first. The flows still take all of it when the API is idle.
    Beside a cycle at the same priority, the API's p99 warm activation was 26-48 ms; with
    the cycle at 10, 18 ms (`make bench-api`, docs/BENCHMARKS.md). The process runtime's
    workers it spawns from now on start at the priority it had before (`spawn_priority`):
    they serve client requests.

    With `idle`, also under SCHED_IDLE: a core only when no other task wants one. Niceness
    10 still leaves the flows ~10 % of a core another task keeps busy; SCHED_IDLE leaves
    them ~0.3 %, so the API's slowest answers beside a cycle improve, and a host its members
    keep busy stops the loop (`PREWARM_BATCH_IDLE`)."""
    keep_spawn_priority()
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if nice > current:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    if idle:
        # The calling thread's policy, inherited by the threads and processes it starts.
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def main() -> None:
    """Run the cycle's scheduled runs here and serve the other deployments until stopped."""
    from prefect import get_client, serve

    from flows.cycle import prewarm_cycle
    from flows.cycle_runner import InProcessRunner
    from flows.logs import hide_expected_tracebacks
    from flows.settings import configure_environment

    settings = Settings()
    run_as_batch(settings.batch_nice, settings.batch_idle)
    configure_environment(settings)
    hide_expected_tracebacks()
    deployments = build_deployments(settings)
    cycle = next(d for d in deployments if d.name == CYCLE)
    # Registered with its schedule and limit, but not served: the Runner would run it too.
    cycle_id = cycle.apply()
    runner = InProcessRunner(prewarm_cycle, cycle_id)
    runner.start()
    try:
        serve(*(d for d in deployments if d is not cycle), limit=4)
    finally:
        runner.stop(STOP_GRACE_S)
        # As `serve` does for the schedules it served: no runs pile up while nobody runs them.
        with get_client(sync_client=True) as client:
            client.pause_deployment(cycle_id)


if __name__ == "__main__":
    main()
