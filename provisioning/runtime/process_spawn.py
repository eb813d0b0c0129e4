"""Spawning a process-runtime worker: on a socket bound here, in its own session, rlimited.

Each member is one `worker.py` process serving `/health` on 127.0.0.1, in its own session
and process group (setsid), so it outlives the prewarm that started it, with a clean
environment like a container's. A spawn is written to the state file (its endpoint, no pid
yet) before the worker exists and again, with its pid, before waiting for its health (see
`process_strays.py` for what a load does with a spawn that was interrupted in between).

Limits: each worker gets RLIMIT_AS (the spec's memory, at least what the interpreter needs)
and RLIMIT_NPROC, set with prlimit right after the spawn, while the worker's interpreter is
still starting and before it serves anything. RLIMIT_NPROC counts every process of the
*user*, so it only caps a worker relative to everything else that user runs, and Linux does
not enforce it for root (CAP_SYS_RESOURCE): run prewarm as an unprivileged user, or use the
Docker runtime (a per-member pids limit), where that matters. CPU is recorded but not
enforced (that needs cgroups).
"""

from __future__ import annotations

import logging
import resource
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

from provisioning.runtime.process_control import _SPAWNED, _read_proc_stat
from provisioning.runtime.process_records import _Record

# Logs as the process runtime, the name its records have always carried.
log = logging.getLogger("provisioning.runtime.process_runtime")

WORKER_SCRIPT = Path(__file__).with_name("worker.py")
# Virtual address space a worker's interpreter needs (measured VmPeak ~25 MiB, with room):
# a spec asking for less memory gets this much, or the worker could not start at all.
WORKER_MIN_AS_MB = 64
WORKER_NPROC = 128  # see the module docstring: per user, not enforced for root


def spawn_worker(
    record: _Record, python: str, state_path: Path, log_dir: Path, save: Callable[[], None]
) -> None:
    """Start the worker on a listening socket bound here, so its endpoint is known now.

    `save` saves the pool holding `record`: before the worker exists and again once its pid
    is known, so a kill at any point leaves a record that owns, or finds, the worker.
    """
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{record.id}.log"
        record.endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
        record.log_path = str(log_path)
        save()  # endpoint without pid = "spawn under way" (see ProcessRuntime._drop_dead)
        with open(log_path, "ab") as log_file:
            popen = subprocess.Popen(
                [
                    *(python, "-I", "-S", str(WORKER_SCRIPT)),
                    *("--fd", str(listener.fileno()), "--member", record.id),
                    *("--state", str(state_path.resolve())),
                ],
                pass_fds=(listener.fileno(),),
                # Own session and process group: outlives us, immune to our Ctrl-C.
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                env=_worker_env(record),
            )
    finally:
        listener.close()
    _SPAWNED[popen.pid] = popen
    stat = _read_proc_stat(popen.pid)
    record.pid = popen.pid
    record.pid_start = stat.start_ticks if stat else None
    save()
    _limit(popen.pid, record.memory_mb)


def _worker_env(record: _Record) -> dict[str, str]:
    # A clean environment, like a container's: only the spec's variables and who it is.
    return {
        **record.env,
        "PREWARM_MEMBER": record.id,
        "PREWARM_CLIENT": record.client_id,
        "PREWARM_PLAN": record.plan_id,
    }


def _limit(pid: int, memory_mb: int) -> None:
    """Cap a worker's address space and process count (see the module docstring)."""
    address_space = max(memory_mb, WORKER_MIN_AS_MB) * 2**20
    try:
        resource.prlimit(pid, resource.RLIMIT_AS, (address_space, address_space))
        resource.prlimit(pid, resource.RLIMIT_NPROC, (WORKER_NPROC, WORKER_NPROC))
    except (ProcessLookupError, PermissionError) as error:
        # Gone already (its health wait says so), or an OS that refuses: never fatal.
        log.warning("could not limit worker pid %s: %s", pid, error)


def _limits_of(pid: int) -> dict[str, int]:
    """The worker's hard RLIMIT_AS (MiB) and RLIMIT_NPROC, as the kernel holds them."""
    try:
        address_space = resource.prlimit(pid, resource.RLIMIT_AS)[1]
        nproc = resource.prlimit(pid, resource.RLIMIT_NPROC)[1]
    except (ProcessLookupError, PermissionError):
        return {}
    return {"as_mb": address_space // 2**20, "nproc": nproc}
