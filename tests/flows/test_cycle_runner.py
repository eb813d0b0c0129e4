"""The cycle deployment's due runs execute in the deployment server's own process, so its
caches outlive a run; older due runs are cancelled as late; the loop survives API errors
and stops on request. A small stand-in flow plays the cycle, on a real Prefect API."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest
from prefect import flow, get_client
from prefect.client.schemas.objects import (
    ConcurrencyLimitConfig,
    ConcurrencyLimitStrategy,
    StateType,
)
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Cancelling, Pending, Running, Scheduled, State

from flows.cycle_runner import LATE, ORPHANED, InProcessRunner

_cache: dict[str, int] = {}  # a process-lifetime cache, like prediction's loaded models
_seen: list[tuple[int, int]] = []  # (pid, cache entries found) per run
_release = threading.Event()  # lets a blocked run finish


@flow(name="stand-in-cycle")
def stand_in_cycle(label: str = "run") -> int:
    _seen.append((os.getpid(), len(_cache)))
    _cache[label] = len(_cache)
    return len(_cache)


@flow(name="blocked-cycle")
def blocked_cycle() -> None:
    _release.wait(30)


def _deploy(cycle: Callable[..., object]) -> UUID:
    """A deployment of `cycle` with the cycle's limit, under a name of its own per test."""
    limit = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW)
    deployment = cycle.to_deployment(name=f"test-{uuid4().hex[:8]}", concurrency_limit=limit)  # type: ignore[attr-defined]
    return deployment.apply()


def _schedule(deployment_id: UUID, seconds_from_now: float, **parameters: str) -> UUID:
    when = datetime.now(UTC) + timedelta(seconds=seconds_from_now)
    with get_client(sync_client=True) as client:
        run = client.create_flow_run_from_deployment(
            deployment_id, parameters=parameters, state=Scheduled(scheduled_time=when)
        )
    return run.id


def _state(run_id: UUID) -> State:
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run_id).state
    assert state is not None
    return state


def _wait_for(run_id: UUID, kind: StateType, timeout_s: float = 30.0) -> State:
    deadline = time.monotonic() + timeout_s
    while (state := _state(run_id)).type != kind and time.monotonic() < deadline:
        time.sleep(0.2)
    return state


@pytest.fixture(autouse=True)
def fresh_process_state() -> None:
    _cache.clear()
    _seen.clear()
    _release.clear()


def test_due_runs_execute_in_this_process_one_after_another(prefect_harness: None):
    deployment = _deploy(stand_in_cycle)
    runner = InProcessRunner(stand_in_cycle, deployment, poll_seconds=0.2)
    runner.start()
    try:
        first = _schedule(deployment, -1, label="first")
        assert _wait_for(first, StateType.COMPLETED).is_completed()
        second = _schedule(deployment, -1, label="second")
        assert _wait_for(second, StateType.COMPLETED).is_completed()
    finally:
        runner.stop(grace_s=10)
    # Both in this very process: the second run found what the first cached.
    assert _seen == [(os.getpid(), 0), (os.getpid(), 1)]
    assert _cache == {"first": 0, "second": 1}
    assert not runner.is_alive()


def test_only_the_newest_due_run_runs_and_older_ones_are_cancelled_as_late(
    prefect_harness: None,
):
    deployment = _deploy(stand_in_cycle)
    older = [_schedule(deployment, -30, label="older"), _schedule(deployment, -20, label="old")]
    newest = _schedule(deployment, -10, label="newest")
    future = _schedule(deployment, 600, label="future")
    runner = InProcessRunner(stand_in_cycle, deployment)

    assert runner.run_due() == newest

    assert _state(newest).is_completed()
    assert _cache == {"newest": 0}
    for run in older:
        state = _state(run)
        assert (state.type, state.message) == (StateType.CANCELLED, LATE)
    assert _state(future).is_scheduled()  # not due yet: left for its time
    assert runner.run_due() is None


@contextmanager
def _blocked_run() -> Iterator[tuple[InProcessRunner, UUID]]:
    """A runner and its run of `blocked_cycle`, running; afterwards the run is let go to
    its end (under `prewarm up` the process would end instead) and the runner stopped."""
    deployment = _deploy(blocked_cycle)
    runner = InProcessRunner(blocked_cycle, deployment, poll_seconds=0.2)
    runner.start()
    run = _schedule(deployment, -1)
    try:
        assert _wait_for(run, StateType.RUNNING).is_running()
        yield runner, run
    finally:
        _release.set()
        runner.stop(grace_s=30)
    assert not runner.is_alive()


def test_a_stop_waits_briefly_then_reports_the_run_in_progress_crashed(prefect_harness: None):
    with _blocked_run() as (runner, run):
        started = time.monotonic()
        runner.stop(grace_s=0.5)
        assert time.monotonic() - started < 5
        state = _state(run)
        assert state.is_crashed() and "stopped during this run" in (state.message or "")


def test_a_run_cancelled_from_the_ui_ends_its_steps_and_is_recorded_cancelled(
    prefect_harness: None,
):
    with _blocked_run() as (_, run):
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(run, Cancelling())  # what the UI's Cancel does
        _release.set()  # the run cannot be killed: it goes on to its end
        state = _wait_for(run, StateType.CANCELLED)
    assert state.is_cancelled() and "stopped at its next step" in (state.message or "")


def test_runs_a_killed_server_left_unfinished_are_reported_crashed_at_the_next_start(
    prefect_harness: None,
):
    deployment = _deploy(stand_in_cycle)
    running, claimed = _schedule(deployment, -60), _schedule(deployment, -30)
    with get_client(sync_client=True) as client:  # where a kill -9 leaves them
        client.set_flow_run_state(running, Running(), force=True)
        client.set_flow_run_state(claimed, Pending(), force=True)
    other = _deploy(stand_in_cycle)
    elsewhere = _schedule(other, -60)
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(elsewhere, Running(), force=True)
    due = _schedule(deployment, -1, label="due")
    runner = InProcessRunner(stand_in_cycle, deployment, poll_seconds=0.2)

    runner.start()
    try:
        assert _wait_for(due, StateType.COMPLETED).is_completed()  # and polling goes on
    finally:
        runner.stop(grace_s=10)

    for run in (running, claimed):
        state = _state(run)
        assert (state.type, state.message) == (StateType.CRASHED, ORPHANED)
    assert _state(elsewhere).is_running()  # another deployment's run is not this runner's
    assert runner.crash_orphans() == []


def test_an_idle_loop_stops_at_once_and_claims_nothing_after(prefect_harness: None):
    deployment = _deploy(stand_in_cycle)
    runner = InProcessRunner(stand_in_cycle, deployment, poll_seconds=60)
    runner.start()
    time.sleep(0.5)  # inside its first wait
    started = time.monotonic()
    runner.stop(grace_s=10)
    assert time.monotonic() - started < 2 and not runner.is_alive()
    run = _schedule(deployment, -1)
    time.sleep(0.5)
    assert _state(run).is_scheduled()


def test_api_errors_are_logged_and_polling_goes_on(
    prefect_harness: None, caplog: pytest.LogCaptureFixture
):
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api"}):  # nothing listens
        runner = InProcessRunner(stand_in_cycle, uuid4(), poll_seconds=0.1)
    with caplog.at_level(logging.ERROR, logger="prefect.cycle-runner"):
        runner.start()
        deadline = time.monotonic() + 20
        while len(caplog.records) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert runner.is_alive()
        runner.stop(grace_s=10)
    failures = [r for r in caplog.records if "polling deployment" in r.getMessage()]
    assert len(failures) >= 3 and not runner.is_alive()
