"""ProcessRuntime at scale, on real worker processes: a call touches its own member only,
calls on different members run at once (threads and processes), calls on one member run one
after the other, and a version-1 state file (the whole pool in one JSON) still loads.

Workers that must stay in their health wait are started by a "python" that waits for a gate
file before becoming the real interpreter: the test opens the gate, so what overlaps is
decided by the test, never by timing."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import asdict
from pathlib import Path

import pytest

from provisioning.runtime import MemberNotFound
from provisioning.runtime.base import LABEL_CLIENT, LABEL_PLAN, ContainerSpec, probe_once
from provisioning.runtime.process_records import _Record
from provisioning.runtime.process_runtime import ProcessRuntime
from provisioning.runtime.process_state import STATE_VERSION
from tests.provisioning.processes import running, wait_until
from tests.provisioning.test_runtime_process import REPO

SpecMaker = Callable[..., ContainerSpec]


@pytest.fixture
def gate(tmp_path: Path) -> Iterator[Path]:
    """The file whose creation lets gated workers start; created at teardown whatever
    happened, so no gated worker waits on."""
    path = tmp_path / "gate"
    yield path
    path.touch()


@pytest.fixture
def gated(
    gate: Path, tmp_path: Path, process_state: Path, plan_id: str
) -> Iterator[ProcessRuntime]:
    """A ProcessRuntime on the test's state file whose workers wait for the gate."""
    python = tmp_path / "gated-python"
    python.write_text(
        textwrap.dedent(
            f"""\
            #!{sys.executable}
            import os, sys, time
            while not os.path.exists({str(gate)!r}):
                time.sleep(0.005)
            os.execv({sys.executable!r}, [{sys.executable!r}, *sys.argv[1:]])
            """
        )
    )
    python.chmod(0o755)
    yield ProcessRuntime(process_state, grace_s=0.5, health_timeout_s=60, python=str(python))
    gate.touch()
    cleaner = ProcessRuntime(process_state, grace_s=0.5)
    for member in cleaner.list({LABEL_PLAN: plan_id}):
        cleaner.release(member.id)


@contextmanager
def _threads(gate: Path, n: int) -> Iterator[ThreadPoolExecutor]:
    """Threads for calls held at the gate, opened before they are joined even when the test
    fails, so a failure never hangs."""
    with ThreadPoolExecutor(n) as threads:
        try:
            yield threads
        finally:
            gate.touch()


def _waiting_for_health(runtime: ProcessRuntime, n: int) -> Callable[[], bool]:
    """True once `n` members have a worker on record (their calls now wait for health)."""
    return lambda: sum(r.pid is not None for r in runtime.records.read_all()) == n


def test_creates_of_different_members_wait_for_health_all_at_once(
    gated: ProcessRuntime, gate: Path, make_spec: SpecMaker, plan_id: str
) -> None:
    n = 4
    with _threads(gate, n) as threads:
        creates = [threads.submit(gated.create, make_spec("shadow")) for _ in range(n)]
        assert wait_until(_waiting_for_health(gated, n), timeout_s=30)
        assert not any(create.done() for create in creates)  # all n in their health wait

        # Neither waits for those calls: a listing, which shows no member until its create
        # returns, and a look for strays, which counts a worker being created as owned.
        with ThreadPoolExecutor(1) as other:
            assert other.submit(gated.list, {LABEL_PLAN: plan_id}).result(timeout=10) == []
            assert other.submit(gated.strays).result(timeout=10) == {}

        gate.touch()
        members = [create.result(timeout=60) for create in creates]
    assert [m.tier for m in gated.list({LABEL_PLAN: plan_id})] == ["shadow"] * n
    assert len({m.details["pid"] for m in members}) == n


def test_another_prewarm_works_on_its_members_while_one_call_waits_for_health(
    gated: ProcessRuntime,
    gate: Path,
    process_runtime: ProcessRuntime,
    make_spec: SpecMaker,
    process_state: Path,
) -> None:
    creator = subprocess.Popen(
        [sys.executable, "-c", CREATOR, str(process_state), gated.python, make_spec().plan_id],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_until(_waiting_for_health(gated, 1), timeout_s=30)

        # Every call on other members completes while that process's create waits.
        cold = process_runtime.create(make_spec("cold"))
        shadow = process_runtime.create(make_spec("shadow"))
        activated, _ = process_runtime.activate(shadow.id)
        assert process_runtime.shadow(cold.id).tier == "shadow"
        assert process_runtime.stats(activated.id)["tier"] == "active"
        process_runtime.release(activated.id)
        assert creator.poll() is None

        gate.touch()
        out, err = creator.communicate(timeout=60)
    finally:
        creator.kill()
    assert creator.returncode == 0, err
    assert process_runtime.stats(out.strip())["tier"] == "shadow"


# Creates one shadow member, as the cycle's apply does, in a process of its own.
CREATOR = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from provisioning.runtime.base import ContainerSpec
    from provisioning.runtime.process_runtime import ProcessRuntime

    state, python, plan_id = sys.argv[1:4]
    runtime = ProcessRuntime(Path(state), python=python, health_timeout_s=60)
    print(runtime.create(ContainerSpec("acme", plan_id, "shadow", "-", 0.5, 64)).id)
    """
)


def test_a_release_waits_for_the_activation_of_its_member(
    gated: ProcessRuntime, gate: Path, make_spec: SpecMaker, plan_id: str
) -> None:
    cold = gated.create(make_spec("cold"))
    with _threads(gate, 2) as threads:
        activation = threads.submit(gated.activate, cold.id)
        assert wait_until(_waiting_for_health(gated, 1), timeout_s=30)
        release = threads.submit(gated.release, cold.id)
        # A listing meanwhile shows the member as it was before its activation.
        assert [(m.tier, m.endpoint) for m in gated.list({LABEL_PLAN: plan_id})] == [("cold", None)]
        assert not release.done() and not activation.done()

        gate.touch()  # a release that had not waited would have killed the worker by now
        member, _ = activation.result(timeout=60)
        release.result(timeout=60)
    assert member.tier == "active"
    assert wait_until(lambda: not running(member.details["pid"]))
    assert gated.list({LABEL_PLAN: plan_id}) == [] and gated.records.read_all() == []


@pytest.mark.parametrize("call", ["activate", "shadow", "stats"])
def test_a_call_racing_a_release_of_its_member_leaves_nothing_behind(
    process_runtime: ProcessRuntime, make_spec: SpecMaker, plan_id: str, call: str
) -> None:
    for _ in range(4):
        member = process_runtime.create(make_spec("shadow"))
        _race(getattr(process_runtime, call), process_runtime.release, member.id)

        assert wait_until(lambda: not running(member.details["pid"]))  # noqa: B023
        assert process_runtime.records.read(member.id) is None  # never brought back
    assert process_runtime.list({LABEL_PLAN: plan_id}) == []


def _race(call: Callable[[str], object], release: Callable[[str], None], member_id: str) -> None:
    """Start both on one member at the same instant; the call either runs before the
    release or finds the member gone."""
    start = threading.Barrier(2)

    def after_start(work: Callable[[str], object]) -> object:
        start.wait()
        return work(member_id)

    with ThreadPoolExecutor(2) as threads:
        racer, released = threads.submit(after_start, call), threads.submit(after_start, release)
        released.result(timeout=30)
        with suppress(MemberNotFound):
            racer.result(timeout=30)


def test_a_call_reads_and_writes_its_own_member_only(
    process_runtime: ProcessRuntime,
    make_spec: SpecMaker,
    plan_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for i in range(30):  # the rest of the pool: never read by a call on another member
        process_runtime.create(make_spec("cold", client_id=f"other{i}"))
    process_runtime.create(make_spec("shadow", client_id="other"))
    touched = _count_record_io(process_runtime, monkeypatch)

    member = process_runtime.create(make_spec("cold"))
    calls: list[Callable[[], object]] = [
        lambda: process_runtime.activate(member.id),
        lambda: process_runtime.shadow(member.id),
        lambda: process_runtime.stats(member.id),
        lambda: process_runtime.activate(member.id),
        lambda: process_runtime.release(member.id),
    ]
    for call in calls:
        call()
    assert set(touched["read"]) == set(touched["written"]) == {member.id}
    assert len(touched["read"]) == len(calls) and touched["listed"] == []  # one read a call

    mine = process_runtime.create(make_spec("shadow", client_id="acme"))
    touched["read"].clear()
    listed = process_runtime.list({LABEL_CLIENT: "acme", LABEL_PLAN: plan_id})
    assert [m.id for m in listed] == [mine.id] and touched["read"] == [mine.id]


def _count_record_io(
    runtime: ProcessRuntime, monkeypatch: pytest.MonkeyPatch
) -> dict[str, list[str]]:
    """Record the member ids whose record files are read, written, and each full listing."""
    import provisioning.runtime.process_records as records

    touched: dict[str, list[str]] = {"read": [], "written": [], "listed": []}
    load, write, read_all = records._load, runtime.records.write, runtime.records.read_all

    def counted_load(path: str) -> _Record | None:
        touched["read"].append(Path(path).stem)
        return load(path)

    def counted_write(record: _Record) -> None:
        touched["written"].append(record.id)
        write(record)

    def counted_read_all(prefix: str = "") -> list[_Record]:
        touched["listed"].append(prefix)
        return read_all(prefix)

    monkeypatch.setattr(records, "_load", counted_load)
    monkeypatch.setattr(runtime.records, "write", counted_write)
    monkeypatch.setattr(runtime.records, "read_all", counted_read_all)
    return touched


def test_a_version_1_state_file_is_migrated_on_first_use(
    process_runtime: ProcessRuntime, make_spec: SpecMaker, process_state: Path, plan_id: str
) -> None:
    shadow = process_runtime.create(make_spec("shadow"))
    cold = process_runtime.create(make_spec("cold", client_id="b"))
    doomed = process_runtime.create(make_spec("active"))
    # The same members as a version-1 prewarm kept them: every one in the state file.
    members = [asdict(r) for r in process_runtime.records.read_all()]
    for member in members:
        del member["spawning"]  # not a field of version 1
        process_runtime.records.discard(member["id"])
    process_state.write_text(json.dumps({"version": 1, "members": members}, indent=1))
    subprocess.run(["kill", "-9", str(doomed.details["pid"])], check=True)
    assert wait_until(lambda: not running(doomed.details["pid"]))

    upgraded = ProcessRuntime(process_state, grace_s=0.5)  # a new prewarm on the old file
    listed = {m.id: m.tier for m in upgraded.list({LABEL_PLAN: plan_id})}

    assert listed == {shadow.id: "shadow", cold.id: "cold"}  # the dead worker dropped
    assert json.loads(process_state.read_text())["version"] == STATE_VERSION
    assert {r.id for r in upgraded.records.read_all()} == {shadow.id, cold.id}
    member, ms = upgraded.activate(shadow.id)
    assert ms > 0 and member.details["pid"] == shadow.details["pid"]
    assert probe_once(member.endpoint or "", 2.0)
    # The first runtime, used again, finds them where the migration put them.
    assert {m.id for m in process_runtime.list({LABEL_PLAN: plan_id})} == {shadow.id, cold.id}


def test_a_listing_drops_a_dead_worker_and_rewrites_nothing_else(
    process_runtime: ProcessRuntime, make_spec: SpecMaker, plan_id: str
) -> None:
    doomed = process_runtime.create(make_spec("active"))
    kept = process_runtime.create(make_spec("shadow"))
    kept_file = process_runtime.records.directory / f"{kept.id}.json"
    before = kept_file.stat().st_mtime_ns
    subprocess.run(["kill", "-9", str(doomed.details["pid"])], check=True)
    assert wait_until(lambda: not running(doomed.details["pid"]))

    assert [m.id for m in process_runtime.list({LABEL_PLAN: plan_id})] == [kept.id]
    assert [r.id for r in process_runtime.records.read_all()] == [kept.id]
    assert sorted(p.name for p in process_runtime.records.directory.iterdir()) == [
        f"{kept.id}.json",
        f"{kept.id}.lock",
    ]
    assert kept_file.stat().st_mtime_ns == before
