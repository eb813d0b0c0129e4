"""The flows `prewarm up` serves run as batch work: below the client API's CPU priority."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BASE = os.getpriority(os.PRIO_PROCESS, 0)  # what the probe starts from (the suite's own)

# Prints the niceness of the process after each call, then that of a thread started after.
PROBE = """
import os, threading
from flows.deployments import run_as_batch
for nice in map(int, os.environ["NICES"].split()):
    run_as_batch(nice)
    print(os.getpriority(os.PRIO_PROCESS, 0))
seen = []
thread = threading.Thread(target=lambda: seen.append(os.getpriority(os.PRIO_PROCESS, 0)))
thread.start(); thread.join()
print(seen[0])
"""


def _niceness_after(*nices: int) -> list[int]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        env={"NICES": " ".join(map(str, nices)), "PATH": "/usr/bin:/bin"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [int(line) for line in done.stdout.split()]


def test_flows_run_at_the_batch_niceness_and_their_threads_too() -> None:
    assert BASE <= 10, f"the suite itself runs at niceness {BASE}"
    assert _niceness_after(10) == [10, 10]


def test_the_niceness_is_only_ever_lowered_never_raised() -> None:
    assert BASE <= 12, f"the suite itself runs at niceness {BASE}"
    # A second, smaller value (a priority raise) is ignored; 0 leaves the process as it was.
    assert _niceness_after(0, 12, 5) == [BASE, 12, 12, 12]


# Lowers its niceness as `prewarm up` does (with PREWARM_BATCH_IDLE when argv[2] is "idle"),
# then starts a thread, a process-runtime worker (a real member) and a plain child; prints
# the niceness and the scheduling policy of this thread, the later thread, the worker and
# the plain child, one "name nice policy" line each.
SPAWN_PROBE = """
import os, subprocess, sys, threading
from pathlib import Path
from flows.deployments import run_as_batch
from provisioning.runtime.base import ContainerSpec
from provisioning.runtime.process_runtime import ProcessRuntime
run_as_batch(10, idle=sys.argv[2] == "idle")
def priority(pid=0):
    return os.getpriority(os.PRIO_PROCESS, pid), os.sched_getscheduler(pid)
seen = []
thread = threading.Thread(target=lambda: seen.append(priority()))
thread.start(); thread.join()
runtime = ProcessRuntime(Path(sys.argv[1]), grace_s=0.5)
member = runtime.create(ContainerSpec("acme", "plan-nice", "active", "img", 0.5, 64))
plain = subprocess.Popen(["sleep", "30"])
try:
    found = {"flow": priority(), "thread": seen[0],
             "worker": priority(member.details["pid"]), "plain": priority(plain.pid)}
    for name, (nice, policy) in found.items():
        print(name, nice, policy)
finally:
    plain.kill()
    runtime.release(member.id)
"""


def _spawn_probe(tmp_path: Path, idle: bool) -> dict[str, tuple[int, int]]:
    """SPAWN_PROBE's (niceness, policy) of the flow, a later thread, a worker, a child."""
    assert BASE <= 10, f"the suite itself runs at niceness {BASE}"
    assert os.sched_getscheduler(0) == os.SCHED_OTHER, "the suite runs under another policy"
    done = subprocess.run(
        [sys.executable, "-c", SPAWN_PROBE, str(tmp_path / "pool.json"), "idle" if idle else ""],
        env={"PATH": "/usr/bin:/bin"},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = (line.split() for line in done.stdout.splitlines())
    return {name: (int(nice), int(policy)) for name, nice, policy in lines}


def test_workers_spawned_by_batch_work_serve_at_the_priority_it_had_before(
    tmp_path: Path,
) -> None:
    found = _spawn_probe(tmp_path, idle=False)
    # What any child of the lowered thread gets.
    assert found["flow"] == found["thread"] == found["plain"] == (10, os.SCHED_OTHER)
    # The member: at the priority the process had before.
    assert found["worker"] == (BASE, os.SCHED_OTHER)


def test_idle_batch_work_keeps_its_workers_at_the_normal_policy(tmp_path: Path) -> None:
    found = _spawn_probe(tmp_path, idle=True)
    # The flows, their later threads and what they start plainly: idle.
    assert found["flow"] == found["thread"] == found["plain"] == (10, os.SCHED_IDLE)
    # The member serving requests: the policy and niceness the process had before.
    assert found["worker"] == (BASE, os.SCHED_OTHER)
