"""Run one deployment's due flow runs in this process, one at a time: `prewarm-cycle`'s.

Prefect's Runner (`prefect.serve`) starts every flow run in a fresh interpreter. The cycle
runs every few minutes and its prediction keeps process-lifetime caches (loaded
forecasters, the origins already scored: flows/predict.py) that a fresh interpreter loses:
at 100 clients a cold prediction costs ~4x a warm one. So the cycle's deployment is
registered but not served; this loop polls for its runs and runs them here, in its own
thread, with Prefect's own engine: the UI shows each run, its state and logs as before.

- Only the newest due run runs; older due ones are cancelled as late, so a slow cycle never
  makes runs pile up.
- A run is claimed by proposing Pending, as the Runner does, so the deployment's
  concurrency limit applies; a refused claim is left to the server's verdict.
- A cancel from the UI cannot kill a run that shares this process (nor can the server stop
  its tasks): the cycle asks before the steps that change what is deployed and stops there
  (`flows.cycle`), a step under way runs to its end; the run is then recorded as cancelled.
- `stop()`: no new claims; a run in progress gets a grace period to finish, then is
  reported crashed and abandoned with the process. A server killed outright cannot say so:
  the next one's `start()` reports the runs it left Pending or Running as crashed.
- An API error is logged and the next poll, an interval later, tries again.
"""

from __future__ import annotations

import contextvars
import threading
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from prefect import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.exceptions import Abort
from prefect.flow_engine import run_flow
from prefect.logging import get_logger
from prefect.states import Cancelled, Crashed, Pending, State
from prefect.utilities.engine import propose_state_sync

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.objects import FlowRun
    from prefect.client.schemas.responses import FlowRunResponse

# Prefect's logging configuration shows it in the deployment server's log, like the Runner's.
log = get_logger("cycle-runner")

LATE = "late: a newer cycle was due"
ORPHANED = "The deployment server ended during this run (found at its next start)."


class InProcessRunner:
    """Polls for `deployment_id`'s due runs and runs the newest with `flow` in this process."""

    def __init__(self, flow: Flow[..., Any], deployment_id: UUID, poll_seconds: float = 5.0):
        self.flow = flow
        self.deployment_id = deployment_id
        self.poll_seconds = poll_seconds
        self.running: UUID | None = None  # the run in progress, if any
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cycle-runner", daemon=True)
        # A thread starts with empty context variables: give it the Prefect settings of the
        # code that made this runner (which API, which profile).
        self._context = contextvars.copy_context()

    def start(self) -> None:
        """Report runs a previous server left unfinished as crashed, then poll in a daemon
        thread."""
        try:
            self.crash_orphans()
        except Exception:  # the API may still be starting: those runs wait for the next start
            log.exception("could not look for runs a previous server left unfinished")
        log.info(
            "deployment %s: polling every %g s, its runs execute in this process",
            self.deployment_id,
            self.poll_seconds,
        )
        self._thread.start()

    def stop(self, grace_s: float) -> None:
        """Claim nothing more; give a run in progress `grace_s` to finish, else report it
        crashed (the daemon thread running it dies with the process)."""
        self._stopping.set()
        self._thread.join(grace_s)
        abandoned = self.running
        if self._thread.is_alive() and abandoned is not None:
            log.warning("flow run %s did not finish within %g s: abandoned", abandoned, grace_s)
            with get_client(sync_client=True) as client:
                client.set_flow_run_state(
                    abandoned, Crashed(message="The deployment server stopped during this run.")
                )

    def crash_orphans(self) -> list[UUID]:
        """Report this deployment's runs still Pending or Running as crashed: their ids.

        Only this runner executes the deployment's runs, and a new one has not claimed any:
        such runs belong to a server that ended without its stop (killed, or its machine
        restarted). Left as they are, the UI shows them running for ever, and a claimed one
        may hold the deployment's only concurrency slot until its lease expires.
        """
        with get_client(sync_client=True) as client:
            unfinished = client.read_flow_runs(
                deployment_filter=DeploymentFilter(
                    id=DeploymentFilterId(any_=[self.deployment_id])
                ),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType.PENDING, StateType.RUNNING])
                    )
                ),
            )
            for run in unfinished:
                client.set_flow_run_state(run.id, Crashed(message=ORPHANED))
                log.warning("flow run %s (%s): %s", run.name, run.id, ORPHANED)
        return [run.id for run in unfinished]

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._context.run(self.run_due)
            except (Exception, Abort):  # the API may be down or restarting: poll again
                log.exception("polling deployment %s failed; retrying", self.deployment_id)
            self._stopping.wait(self.poll_seconds)

    def run_due(self) -> UUID | None:
        """Cancel all due runs but the newest as late, claim and run that one; its id, or
        None when nothing was due or the claim was refused."""
        with get_client(sync_client=True) as client:
            due = client.get_scheduled_flow_runs_for_deployments(
                [self.deployment_id], scheduled_before=datetime.now(UTC)
            )
            if not due or self._stopping.is_set():
                return None
            *older, newest = due  # the server sorts them by scheduled start
            for run in older:
                _cancel_late(client, run)
            claimed = _claim(client, newest)
            if claimed is None:
                return None
            # From its claim on, a run is ours to finish, or to report crashed at a stop.
            self.running = claimed.id
        self._execute(claimed)
        return claimed.id

    def _execute(self, flow_run: FlowRun) -> None:
        try:
            run_flow(self.flow, flow_run=flow_run, return_type="state")
        except Abort as refused:  # cancelled between the claim and its start
            log.info("flow run %s was not started: %s", flow_run.id, refused)
        finally:
            self.running = None
        with get_client(sync_client=True) as client:
            ended = client.read_flow_run(flow_run.id)
            if ended.state is not None and ended.state.is_cancelling():
                # The Runner marks a run cancelled once it killed its process; here the
                # run is over when the engine returns (the server refused its Completed).
                client.set_flow_run_state(
                    flow_run.id,
                    Cancelled(message="Cancelled: the cycle stopped at its next step."),
                )


def _cancel_late(client: SyncPrefectClient, run: FlowRunResponse) -> None:
    late: State[None] = Cancelled(message=LATE)
    result = client.set_flow_run_state(run.id, late)
    log.info("flow run %s (%s): %s, %s", run.name, run.id, LATE, result.status.value)


def _claim(client: SyncPrefectClient, run: FlowRunResponse) -> FlowRun | None:
    """The run, re-read in its Pending state, or None when the server refused it (e.g. its
    deployment's concurrency limit)."""
    try:
        state = propose_state_sync(client, Pending(), flow_run_id=run.id)
    except Abort as refused:
        log.info("flow run %s not claimed: %s", run.id, refused)
        return None
    if not state.is_pending():
        log.info("flow run %s not claimed: the server made it %s", run.id, state.type.value)
        return None
    # Re-read, as a Runner's child process does: the Pending state carries the concurrency
    # slot's lease, which the engine keeps renewed while the run lasts.
    return client.read_flow_run(run.id)
