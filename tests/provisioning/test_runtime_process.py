"""ProcessRuntime on real worker processes: tiers, labels, activation, release, restarts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from provisioning.runtime import MemberNotFound, select_runtime
from provisioning.runtime.base import (
    LABEL_CLIENT,
    LABEL_MANAGED,
    LABEL_PLAN,
    LABEL_TIER,
    ContainerRuntime,
    ContainerSpec,
    probe_once,
)
from provisioning.runtime.process_runtime import ProcessRuntime
from provisioning.runtime.process_spawn import WORKER_SCRIPT
from tests.provisioning.processes import kernel_state, running, wait_until

SpecMaker = Callable[..., ContainerSpec]
REPO = Path(__file__).resolve().parents[2]


def test_create_puts_each_tier_in_its_process_state(
    process_runtime: ProcessRuntime, make_spec: SpecMaker
) -> None:
    cold = process_runtime.create(make_spec("cold"))
    shadow = process_runtime.create(make_spec("shadow"))
    active = process_runtime.create(make_spec("active"))

    assert (cold.tier, cold.endpoint, cold.details["pid"]) == ("cold", None, None)
    assert shadow.tier == "shadow" and kernel_state(shadow.details["pid"]) == "T"
    assert active.tier == "active" and probe_once(active.endpoint, 2.0)
    assert {m.runtime for m in (cold, shadow, active)} == {"process"}
    assert isinstance(process_runtime, ContainerRuntime)


def test_list_filters_by_label_equality_and_current_tier(
    process_runtime: ProcessRuntime, make_spec: SpecMaker, plan_id: str
) -> None:
    a = process_runtime.create(make_spec("shadow", client_id="a", labels={"team": "x"}))
    b = process_runtime.create(make_spec("cold", client_id="b"))

    assert {m.id for m in process_runtime.list({LABEL_PLAN: plan_id})} == {a.id, b.id}
    assert [m.id for m in process_runtime.list({LABEL_CLIENT: "a"})] == [a.id]
    assert [m.id for m in process_runtime.list({"team": "x", LABEL_MANAGED: "1"})] == [a.id]
    assert process_runtime.list({LABEL_PLAN: plan_id, "team": "y"}) == []

    process_runtime.activate(a.id)
    assert [m.id for m in process_runtime.list({LABEL_PLAN: plan_id, LABEL_TIER: "active"})] == [
        a.id
    ]
    assert process_runtime.list({LABEL_PLAN: plan_id, LABEL_TIER: "shadow"}) == []


def test_stopped_worker_answers_only_once_activated(
    process_runtime: ProcessRuntime, make_spec: SpecMaker
) -> None:
    shadow = process_runtime.create(make_spec("shadow"))
    assert shadow.endpoint is not None

    assert not probe_once(shadow.endpoint, timeout_s=0.3)  # SIGSTOPped: no answer, a timeout

    member, ms = process_runtime.activate(shadow.id)
    assert ms > 0
    assert member.tier == "active" and member.endpoint == shadow.endpoint
    assert kernel_state(member.details["pid"]) in ("S", "R")
    assert probe_once(member.endpoint, 2.0)
    assert member.details["timings_ms"]["first_answer"] == ms


def test_activating_a_cold_member_spawns_its_worker(
    process_runtime: ProcessRuntime, make_spec: SpecMaker
) -> None:
    cold = process_runtime.create(make_spec("cold", env={"GREETING": "hi"}))

    member, ms = process_runtime.activate(cold.id)

    assert ms > 0 and member.tier == "active" and probe_once(member.endpoint, 2.0)
    environ = Path(f"/proc/{member.details['pid']}/environ").read_bytes().split(b"\0")
    assert b"GREETING=hi" in environ and f"PREWARM_MEMBER={cold.id}".encode() in environ


def test_only_a_call_that_changes_the_worker_saves_the_record(
    process_runtime: ProcessRuntime, make_spec: SpecMaker
) -> None:
    shadow = process_runtime.create(make_spec("shadow"))
    cold = process_runtime.create(make_spec("cold"))

    def saved(member_id: str) -> bytes:
        return (process_runtime.records.directory / f"{member_id}.json").read_bytes()

    before = saved(shadow.id)
    process_runtime.activate(shadow.id)  # SIGCONT: tier and timings only
    process_runtime.shadow(shadow.id)
    assert saved(shadow.id) == before

    member, _ = process_runtime.activate(cold.id)  # spawned: its process is on record
    record = json.loads(saved(cold.id))
    assert (record["pid"], record["endpoint"]) == (member.details["pid"], member.endpoint)


def test_shadow_freezes_active_and_cold_members(
    process_runtime: ProcessRuntime, make_spec: SpecMaker
) -> None:
    active = process_runtime.create(make_spec("active"))
    cold = process_runtime.create(make_spec("cold"))

    for member in (process_runtime.shadow(active.id), process_runtime.shadow(cold.id)):
        assert member.tier == "shadow" and kernel_state(member.details["pid"]) == "T"
    assert process_runtime.shadow(active.id).details["pid"] == active.details["pid"]


def test_release_leaves_no_process_and_is_idempotent(
    process_runtime: ProcessRuntime, make_spec: SpecMaker, plan_id: str
) -> None:
    members = [process_runtime.create(make_spec(tier)) for tier in ("active", "shadow", "cold")]
    pids = [m.details["pid"] for m in members if m.details["pid"]]

    for member in members:
        process_runtime.release(member.id)
    process_runtime.release(members[0].id)
    process_runtime.release("prewarm-never-existed")

    assert [pid for pid in pids if kernel_state(pid) is not None] == []  # reaped, not zombies
    assert process_runtime.list({LABEL_PLAN: plan_id}) == []


def test_workers_run_in_their_own_session(
    process_runtime: ProcessRuntime, make_spec: SpecMaker
) -> None:
    pid = process_runtime.create(make_spec("active")).details["pid"]

    assert os.getsid(pid) == pid != os.getsid(0)
    assert os.getpgid(pid) != os.getpgid(0)


def test_a_restarted_prewarm_finds_the_workers_a_finished_one_left(
    process_state: Path, plan_id: str
) -> None:
    script = f"""
import json, sys
from pathlib import Path
from provisioning.runtime.base import ContainerSpec
from provisioning.runtime.process_runtime import ProcessRuntime
rt = ProcessRuntime(Path({str(process_state)!r}))
spec = lambda tier: ContainerSpec("acme", {plan_id!r}, tier, "img", 0.5, 64)
print(json.dumps({{t: rt.create(spec(t)).id for t in ("shadow", "active", "cold")}}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)

    runtime = ProcessRuntime(process_state, grace_s=0.5)  # the parent is gone; a new prewarm
    try:
        found = {m.tier: m for m in runtime.list({LABEL_PLAN: plan_id})}
        assert {tier: m.id for tier, m in found.items()} == created
        assert probe_once(found["active"].endpoint, 2.0)

        member, ms = runtime.activate(created["shadow"])
        assert ms > 0 and probe_once(member.endpoint, 2.0)
        pids = [found["shadow"].details["pid"], found["active"].details["pid"]]
    finally:
        for member in runtime.list({LABEL_PLAN: plan_id}):
            runtime.release(member.id)
    # Not our children: init (or the sandbox's pid 1) reaps them; they must not run on.
    assert not any(running(pid) for pid in pids)


def test_entries_whose_process_died_are_dropped(
    process_runtime: ProcessRuntime, make_spec: SpecMaker, process_state: Path, plan_id: str
) -> None:
    doomed = process_runtime.create(make_spec("active"))
    kept = process_runtime.create(make_spec("shadow"))
    os.kill(doomed.details["pid"], signal.SIGKILL)
    wait_until(lambda: not running(doomed.details["pid"]))

    restarted = ProcessRuntime(process_state)

    assert [m.id for m in restarted.list({LABEL_PLAN: plan_id})] == [kept.id]
    assert [r.id for r in restarted.records.read_all()] == [kept.id]
    with pytest.raises(MemberNotFound):
        restarted.activate(doomed.id)


def test_a_listing_writes_nothing_when_nothing_died(
    process_runtime: ProcessRuntime, make_spec: SpecMaker, process_state: Path, plan_id: str
) -> None:
    member = process_runtime.create(make_spec("shadow"))
    cold = process_runtime.create(make_spec("cold"))

    def files() -> dict[str, tuple[int, bytes]]:
        paths = [process_state, *process_runtime.records.directory.iterdir()]
        return {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in paths}

    before = files()
    for _ in range(3):
        assert {m.id for m in process_runtime.list({LABEL_PLAN: plan_id})} == {member.id, cold.id}
    assert files() == before


def test_a_reused_pid_is_neither_trusted_nor_signalled(
    process_runtime: ProcessRuntime, make_spec: SpecMaker
) -> None:
    member = process_runtime.create(make_spec("active"))
    pid = member.details["pid"]
    record = process_runtime.records.read(member.id)
    assert record is not None and record.pid_start is not None
    record.pid_start += 1  # as if the worker died and its pid was recycled
    process_runtime.records.write(record)
    try:
        assert process_runtime.list() == []
        process_runtime.release(member.id)
        assert running(pid)  # the stranger holding the pid was left alone
    finally:
        os.kill(pid, signal.SIGKILL)  # dropped from the pool, so the fixture cannot reach it
        os.waitpid(pid, 0)


def test_stats_report_cpu_and_resident_memory(
    process_runtime: ProcessRuntime, make_spec: SpecMaker
) -> None:
    active = process_runtime.create(make_spec("active"))
    cold = process_runtime.create(make_spec("cold"))

    stats = process_runtime.stats(active.id)

    assert stats["memory_mb"] > 1 and stats["cpu_percent"] >= 0 and stats["tier"] == "active"
    assert process_runtime.stats(cold.id)["memory_mb"] == 0.0


def test_unknown_members_raise_member_not_found(process_runtime: ProcessRuntime) -> None:
    for operation in (process_runtime.activate, process_runtime.shadow, process_runtime.stats):
        with pytest.raises(MemberNotFound, match="nope"):
            operation("nope")


def test_worker_script_runs_standalone_despite_the_sibling_select_module(tmp_path: Path) -> None:
    # Run as a plain script (no -I), the runtime package's select.py sits next to it.
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    worker = subprocess.Popen(
        [sys.executable, str(WORKER_SCRIPT), "--port", str(port)], cwd=tmp_path
    )
    try:
        assert wait_until(lambda: probe_once(f"http://127.0.0.1:{port}", 0.5), timeout_s=10)
    finally:
        worker.terminate()
        worker.wait(timeout=5)


def test_select_runtime_gives_processes_on_request(tmp_path: Path) -> None:
    runtime = select_runtime("process", tmp_path)

    assert isinstance(runtime, ProcessRuntime) and runtime.name == "process"
    assert runtime.state_path == tmp_path / "process-pool.json"
    with pytest.raises(ValueError, match="auto, docker or process"):
        select_runtime("kubernetes", tmp_path)  # type: ignore[arg-type]
