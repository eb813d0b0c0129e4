"""ProcessRuntime's event-loop path (`LoopActivation`), on real workers: a shadow resumed
with its health answer awaited, everything else declined with nothing done, a missing
answer handled as `activate` handles it, and a listing that never waits."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from provisioning.runtime.base import (
    LABEL_PLAN,
    ActivationTimeout,
    ContainerSpec,
    LoopActivation,
    Member,
    probe_once,
)
from provisioning.runtime.loop_health import LoopPendingRequest
from provisioning.runtime.process_runtime import ProcessRuntime
from tests.provisioning.processes import kernel_state, wait_until

SpecMaker = Callable[..., ContainerSpec]


def _record_file(runtime: ProcessRuntime, member_id: str) -> Path:
    return runtime.records.directory / f"{member_id}.json"


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """An address whose kernel accepts connections that nobody ever answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def _point_at(runtime: ProcessRuntime, member_id: str, endpoint: str) -> None:
    with runtime.records.locked(member_id):
        record = runtime.records.read(member_id)
        assert record is not None
        record.endpoint = endpoint
        runtime.records.write(record)


def test_a_shadow_is_resumed_on_the_loop_and_its_record_left_as_it_was(
    process_runtime: ProcessRuntime, make_spec: SpecMaker
) -> None:
    shadow = process_runtime.create(make_spec("shadow"))
    before = _record_file(process_runtime, shadow.id).read_bytes()
    assert isinstance(process_runtime, LoopActivation)

    served = asyncio.run(process_runtime.activate_on_loop(shadow.id))

    assert served is not None
    member, ms = served
    assert member.id == shadow.id and member.tier == "active" and ms > 0
    assert kernel_state(member.details["pid"]) in ("R", "S")
    assert member.endpoint is not None and probe_once(member.endpoint, 2.0)
    timings = member.details["timings_ms"]
    assert timings["first_answer"] == ms and 0 <= timings["resume"] <= ms
    assert _record_file(process_runtime, shadow.id).read_bytes() == before
    # The member is as the thread path left it: it freezes and resumes again.
    assert process_runtime.shadow(shadow.id).tier == "shadow"
    assert process_runtime.activate(shadow.id)[0].tier == "active"


def test_what_the_loop_cannot_do_without_waiting_is_declined_untouched(
    process_runtime: ProcessRuntime, make_spec: SpecMaker
) -> None:
    shadow = process_runtime.create(make_spec("shadow"))
    active = process_runtime.create(make_spec("active"))
    cold = process_runtime.create(make_spec("cold"))

    with process_runtime.records.locked(shadow.id):  # a call (a release, a freeze) holds it
        assert asyncio.run(process_runtime.activate_on_loop(shadow.id)) is None
    assert kernel_state(shadow.details["pid"]) == "T"
    for member in (active, cold):
        assert asyncio.run(process_runtime.activate_on_loop(member.id)) is None
    assert asyncio.run(process_runtime.activate_on_loop("prewarm-nobody-00000000")) is None
    assert asyncio.run(process_runtime.activate_on_loop("../escape")) is None
    files = {p.name for p in process_runtime.records.directory.iterdir()}
    assert not any(name.startswith("prewarm-nobody") for name in files)  # no lock file left
    tiers = {m.id: m.tier for m in process_runtime.list({LABEL_PLAN: shadow.plan_id})}
    assert tiers == {shadow.id: "shadow", active.id: "active", cold.id: "cold"}


def test_a_dead_worker_is_declined_and_left_for_a_call_to_settle(
    process_runtime: ProcessRuntime, make_spec: SpecMaker
) -> None:
    doomed = process_runtime.create(make_spec("shadow"))
    kept = process_runtime.create(make_spec("shadow"))
    os.kill(doomed.details["pid"], signal.SIGKILL)
    wait_until(lambda: kernel_state(doomed.details["pid"]) in (None, "Z"))
    labels = {LABEL_PLAN: doomed.plan_id}

    assert asyncio.run(process_runtime.activate_on_loop(doomed.id)) is None
    assert [m.id for m in process_runtime.list_on_loop(labels)] == [kept.id]
    assert _record_file(process_runtime, doomed.id).exists()  # not settled on the loop

    assert [m.id for m in process_runtime.list(labels)] == [kept.id]
    assert not _record_file(process_runtime, doomed.id).exists()  # settled by a call


def test_a_listing_on_the_loop_does_not_stop_an_interrupted_spawn(
    process_runtime: ProcessRuntime, make_spec: SpecMaker, silent_endpoint: str
) -> None:
    member = process_runtime.create(make_spec("cold"))
    # What a spawner killed between saving the endpoint and the pid leaves behind.
    _point_at(process_runtime, member.id, silent_endpoint)
    labels = {LABEL_PLAN: member.plan_id}

    assert process_runtime.list_on_loop(labels) == []
    record = process_runtime.records.read(member.id)
    assert record is not None and record.endpoint == silent_endpoint

    assert [(m.id, m.tier) for m in process_runtime.list(labels)] == [(member.id, "cold")]
    record = process_runtime.records.read(member.id)
    assert record is not None and record.endpoint is None


@pytest.fixture
def unanswering(
    process_state: Path, make_spec: SpecMaker, silent_endpoint: str
) -> Iterator[tuple[ProcessRuntime, Member]]:
    """A runtime with a short health timeout, and a shadow whose record points at a silent
    endpoint (its worker, once resumed, never answers there); released afterwards."""
    runtime = ProcessRuntime(process_state, grace_s=0.5, health_timeout_s=0.3)
    shadow = runtime.create(make_spec("shadow"))
    _point_at(runtime, shadow.id, silent_endpoint)
    yield runtime, shadow
    runtime.release(shadow.id)


def test_no_health_answer_stops_the_worker_as_activate_does(
    unanswering: tuple[ProcessRuntime, Member],
) -> None:
    runtime, shadow = unanswering
    pid = shadow.details["pid"]

    with pytest.raises(ActivationTimeout, match="worker log"):
        asyncio.run(runtime.activate_on_loop(shadow.id))

    assert kernel_state(pid) is None
    record = runtime.records.read(shadow.id)
    assert record is not None and (record.pid, record.endpoint) == (None, None)
    assert [m.tier for m in runtime.list({LABEL_PLAN: shadow.plan_id})] == ["cold"]


def test_a_cancelled_request_keeps_the_lock_until_its_worker_is_stopped(
    unanswering: tuple[ProcessRuntime, Member],
) -> None:
    runtime, shadow = unanswering
    pid = shadow.details["pid"]
    seen_at_cancel: list[object] = []

    async def cancel_in_the_thread_fallback() -> None:
        task = asyncio.create_task(runtime.activate_on_loop(shadow.id))
        await asyncio.sleep(0.45)  # the answer timed out (0.3 s); the thread is polling
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        record = runtime.records.read(shadow.id)
        seen_at_cancel.append(record.pid if record is not None else "gone")
        seen_at_cancel.append(kernel_state(pid))

    asyncio.run(cancel_in_the_thread_fallback())

    assert seen_at_cancel == [None, None]  # the record was cold, the worker gone, by then


def test_the_pending_request_gives_up_on_names_and_silence() -> None:
    async def run() -> tuple[object, object, bool]:
        named = await LoopPendingRequest.send("http://localhost:1")
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            port = closed.getsockname()[1]
        refused = await LoopPendingRequest.send(f"http://127.0.0.1:{port}")
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            pending = await LoopPendingRequest.send(f"http://127.0.0.1:{listener.getsockname()[1]}")
            assert pending is not None
            began = time.perf_counter()
            answered = await pending.answered_ok(0.2)
            assert 0.19 <= time.perf_counter() - began < 2.0
        return named, refused, answered

    assert asyncio.run(run()) == (None, None, False)


def test_only_a_200_answer_is_ok() -> None:
    def serve(answer: bytes, listener: socket.socket) -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(4096)
            connection.sendall(answer)

    async def ask(answer: bytes) -> bool:
        with socket.socket() as listener:
            listener.bind(("127.0.0.1", 0))
            listener.listen(1)
            server = threading.Thread(target=serve, args=(answer, listener))
            server.start()
            pending = await LoopPendingRequest.send(f"http://127.0.0.1:{listener.getsockname()[1]}")
            assert pending is not None
            ok = await pending.answered_ok(2.0)
            server.join()
            return ok

    assert asyncio.run(ask(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")) is True
    assert asyncio.run(ask(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")) is False
    assert asyncio.run(ask(b"not http at all")) is False
