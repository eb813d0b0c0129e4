"""Nothing is left running unowned when a prewarm command is killed with SIGKILL (issue 12),
and process-runtime workers run apart from prewarm, under limits.

Each case runs the real thing in a child process, kills it with SIGKILL at the worst moment,
then checks what is left: the process runtime's workers (during a create, as an apply does)
and the temporary Prefect server a flow command starts.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

import httpx
import pytest

from provisioning.apply import release_all
from provisioning.runtime.base import ContainerSpec, probe_once
from provisioning.runtime.process_records import MemberRecords, records_dir
from provisioning.runtime.process_runtime import ProcessRuntime
from provisioning.runtime.process_spawn import WORKER_MIN_AS_MB, WORKER_NPROC, WORKER_SCRIPT
from tests.security.cli import PREWARM, isolated_env

REPO = Path(__file__).resolve().parents[2]
SCOPE = {"prewarm.pool": "leak-test"}

# Creates one member the way an apply does, in a process the test kills with SIGKILL.
CREATOR = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from provisioning.runtime.base import ContainerSpec
    from provisioning.runtime.process_runtime import ProcessRuntime

    state, python, die_on_pid_save = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    if die_on_pid_save:
        # SIGKILL at the worst instant: the worker runs, its pid is not yet on disk.
        save = ProcessRuntime._save
        def dying_save(self, record):
            if record.pid is not None:
                os.kill(os.getpid(), signal.SIGKILL)
            save(self, record)
        ProcessRuntime._save = dying_save
    runtime = ProcessRuntime(Path(state), python=python, health_timeout_s=120)
    runtime.create(ContainerSpec(
        client_id="acme", plan_id="test-leaks", tier="shadow", image="-", cpu=0.5,
        memory_mb=64, labels={"prewarm.pool": "leak-test"},
    ))
    """
)

# A "python" whose worker takes its time to answer (slow start on a busy host): one process
# that sleeps, then becomes the real interpreter.
SLOW_PYTHON = f"""#!{sys.executable}
import os, sys, time
time.sleep(30)
os.execv({sys.executable!r}, [{sys.executable!r}, *sys.argv[1:]])
"""


def _alive(pid: int) -> bool:
    """Running (a zombie, already dead and waiting for init to reap it, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZXx"


def _wait(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _workers_of(state: Path) -> dict[int, str]:
    """pid -> --member of every live worker process serving this state file."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if str(WORKER_SCRIPT) in argv and str(state.resolve()) in argv and _alive(int(entry.name)):
            found[int(entry.name)] = argv[argv.index("--member") + 1]
    return found


def _records(state: Path) -> list[dict]:
    return [asdict(r) for r in MemberRecords(records_dir(state)).read_all()]


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    """The pool's state file; every worker serving it is killed afterwards, whatever happened."""
    path = tmp_path / "data" / "process-pool.json"
    yield path
    for pid in _workers_of(path):
        os.kill(pid, signal.SIGKILL)


def _start_creator(state: Path, python: str, die_on_pid_save: bool) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", CREATOR, str(state), python, "1" if die_on_pid_save else "0"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def test_a_worker_spawned_by_a_killed_apply_is_on_record_and_released(
    state: Path, tmp_path: Path
) -> None:
    slow = tmp_path / "slow-python"
    slow.write_text(SLOW_PYTHON)
    slow.chmod(0o755)
    creator = _start_creator(state, str(slow), die_on_pid_save=False)
    # Killed while it waits for the worker's first health answer.
    assert _wait(lambda: any(r["pid"] for r in _records(state)), 60), creator.stderr
    creator.kill()
    creator.wait()

    (record,) = _records(state)
    assert _workers_of(state) == {record["pid"]: record["id"]}  # left running, but owned
    runtime = ProcessRuntime(state, grace_s=0.5)
    assert [m.id for m in runtime.list(SCOPE)] == [record["id"]]
    assert runtime.strays() == {}

    assert release_all(runtime, SCOPE) == 1  # what `prewarm pools --release-all` does
    assert _wait(lambda: not _alive(record["pid"]), 5)
    assert _workers_of(state) == {} and runtime.list() == []


def test_a_worker_whose_pid_never_reached_the_record_is_stopped_by_the_next_load(
    state: Path,
) -> None:
    creator = _start_creator(state, sys.executable, die_on_pid_save=True)
    creator.wait(timeout=60)
    assert creator.returncode == -signal.SIGKILL, creator.stderr.read() if creator.stderr else ""

    (record,) = _records(state)
    assert record["pid"] is None and record["endpoint"] is not None  # spawn was under way
    (pid,) = _workers_of(state)  # the worker it started runs, and no record has its pid

    members = ProcessRuntime(state, grace_s=0.5).list(SCOPE)

    assert [(m.id, m.tier, m.endpoint) for m in members] == [(record["id"], "cold", None)]
    assert _wait(lambda: not _alive(pid), 5)
    assert _workers_of(state) == {}


def _prefect_server_child(parent: int) -> int | None:
    """The child of `parent` serving Prefect's API app (flows/prefect_api.py's server)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            argv = (entry / "cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if f"\nPPid:\t{parent}\n" in status and any(
            "prefect.server.api.server:create_app" in arg for arg in argv
        ):
            return int(entry.name)
    return None


def _listening_port(pid: int) -> int | None:
    """The TCP port the process's listening socket (its inherited fd) is bound to."""
    inodes = set()
    try:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(FileNotFoundError):  # closed while we looked
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        table = Path(f"/proc/{pid}/net/tcp").read_text()
    except FileNotFoundError:  # the process is gone (or still exec'ing): not listening yet
        return None
    for line in table.splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and fields[9] in inodes:  # 0A = LISTEN
            return int(fields[1].split(":")[1], 16)
    return None


def test_the_temporary_prefect_server_dies_with_a_killed_flow_command(tmp_path: Path) -> None:
    # Never `prewarm up`'s server, should one run here: a temporary one is the case.
    env = isolated_env(tmp_path, PREWARM_PREFECT_PORT="1")
    bystander = subprocess.Popen(["sleep", "120"])  # must survive: nothing else is killed
    command = subprocess.Popen(
        # Enough rows that the command is still at work when it is killed: a tiny ingest
        # could finish, its server with it, between finding the server and killing it.
        [PREWARM, "ingest", "--source", "synthetic", "--clients", "200", "--days", "14"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = None
    try:
        found: list[int | None] = []  # the pid seen, kept: a second look could miss it
        assert _wait(lambda: found.append(_prefect_server_child(command.pid)) or found[-1], 120)
        server = found[-1]
        assert server is not None
        assert _wait(lambda: _listening_port(server) is not None, 60)
        port = _listening_port(server)
        assert _wait(lambda: _answers(f"http://127.0.0.1:{port}/api/health"), 120)

        command.send_signal(signal.SIGKILL)
        command.wait()

        assert _wait(lambda: not _alive(server), 10), "the temporary server outlived its command"
        assert not _answers(f"http://127.0.0.1:{port}/api/health")
        assert bystander.poll() is None
    finally:
        command.kill()
        command.wait()
        if server is not None and _alive(server):
            os.kill(server, signal.SIGKILL)
        bystander.kill()
        bystander.wait()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def test_workers_run_in_their_own_process_group_under_rlimits(state: Path) -> None:
    runtime = ProcessRuntime(state, grace_s=0.5)
    spec = dict(client_id="acme", plan_id="test-limits", image="-", cpu=0.5, labels=SCOPE)
    big = runtime.create(ContainerSpec(tier="active", memory_mb=200, **spec))
    # Smaller than the interpreter needs: it gets the floor and still answers.
    tiny = runtime.create(ContainerSpec(tier="active", memory_mb=6, **spec))
    try:
        for member, address_space_mb in ((big, 200), (tiny, WORKER_MIN_AS_MB)):
            pid = member.details["pid"]
            assert os.getpgid(pid) == pid and os.getsid(pid) == pid  # not in our group
            limits = Path(f"/proc/{pid}/limits").read_text()
            assert _limit_line(limits, "Max address space") == address_space_mb * 2**20
            assert _limit_line(limits, "Max processes") == WORKER_NPROC
            assert member.details["rlimits"] == {"as_mb": address_space_mb, "nproc": WORKER_NPROC}
            assert probe_once(member.endpoint or "", 2.0)
    finally:
        assert release_all(runtime, SCOPE) == 2


def _limit_line(limits: str, name: str) -> int:
    """The hard limit on one line of /proc/<pid>/limits."""
    (line,) = (line for line in limits.splitlines() if line.startswith(name))
    return int(line[len(name) :].split()[1])
