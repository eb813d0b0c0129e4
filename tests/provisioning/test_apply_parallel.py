"""An apply runs up to `parallel` runtime calls of a phase at once, never more, and never
starts a phase before the one before it ended (releases free memory before creates take it).

The runtime here is a recording stand-in: what is under test is the apply's scheduling, the
layer above the runtime (test_apply.py runs the same apply on real processes and Docker)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pytest

from provisioning.apply import MAX_PARALLEL, apply_actions, execution_order
from provisioning.reconciler import Action
from provisioning.runtime.base import ContainerSpec, Member


@dataclass
class _RecordingRuntime:
    """Sleeps a little in every call and records what was in flight."""

    name: str = "process"
    in_flight: int = 0
    most_in_flight: int = 0
    log: list[tuple[str, str, str]] = field(default_factory=list)  # (edge, kind, client)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _call(self, kind: str, client_id: str) -> None:
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            self.log.append(("start", kind, client_id))
        time.sleep(0.02)
        with self.lock:
            self.in_flight -= 1
            self.log.append(("end", kind, client_id))

    def create(self, spec: ContainerSpec) -> Member:
        self._call("create", spec.client_id)
        return Member(
            id=f"m-{spec.client_id}",
            client_id=spec.client_id,
            plan_id=spec.plan_id,
            tier=spec.tier,
            runtime="process",
            endpoint=None,
            created_at=datetime.now(UTC),
        )

    def release(self, member_id: str) -> None:
        self._call("release", member_id)

    def list(self, selector: dict[str, str] | None = None) -> list[Member]:
        return []


def _create(client_id: str) -> Action:
    spec = ContainerSpec(
        client_id=client_id, plan_id="p1", tier="shadow", image="img", cpu=0.1, memory_mb=64
    )
    return Action(kind="create", client_id=client_id, tier="shadow", reason="r", spec=spec)


def _release(member_id: str) -> Action:
    return Action(kind="release", client_id="old", tier="shadow", reason="r", member_id=member_id)


ACTIONS = [_create(f"c{i}") for i in range(8)] + [_release(f"gone{i}") for i in range(3)]


def test_no_more_than_parallel_calls_run_at_once_and_events_keep_execution_order():
    runtime = _RecordingRuntime()
    progress: list[int] = []

    result = apply_actions(
        runtime,  # type: ignore[arg-type]
        ACTIONS,
        "p1",
        lambda done, total, _e: progress.append(done),
        parallel=3,
    )

    assert runtime.most_in_flight == 3
    assert result.failed == 0
    expected = [(a.kind, a.client_id) for a in execution_order(ACTIONS)]
    events = result.pool_events.select("action", "client_id").rows()
    assert events == expected
    assert progress == list(range(1, len(ACTIONS) + 1))


def test_a_phase_starts_only_once_the_one_before_has_ended():
    runtime = _RecordingRuntime()
    apply_actions(runtime, ACTIONS, "p1", parallel=8)  # type: ignore[arg-type]
    last_release_end = max(i for i, (edge, kind, _) in enumerate(runtime.log) if kind == "release")
    first_create_start = min(
        i for i, (edge, kind, _) in enumerate(runtime.log) if kind == "create" and edge == "start"
    )
    assert last_release_end < first_create_start
    assert runtime.most_in_flight == 8  # the eight creates together


def test_one_at_a_time_by_default():
    runtime = _RecordingRuntime()
    apply_actions(runtime, ACTIONS, "p1")  # type: ignore[arg-type]
    assert runtime.most_in_flight == 1


@pytest.mark.parametrize("parallel", [0, MAX_PARALLEL + 1])
def test_a_bound_out_of_range_is_refused(parallel: int) -> None:
    runtime = _RecordingRuntime()
    with pytest.raises(ValueError, match=f"parallel {parallel} must be between 1 and 32"):
        apply_actions(runtime, ACTIONS, "p1", parallel=parallel)  # type: ignore[arg-type]
    assert runtime.log == []
