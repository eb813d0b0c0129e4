"""Spawning a process-runtime worker: on sockets bound here, in its own session, rlimited.

Each member is one worker process (`worker/`, the same code a Docker member runs) serving
on 127.0.0.1, in its own session and process group (setsid), so it outlives the prewarm that
started it, with a clean environment like a container's and a directory of its own for its
database. Members share the host's ports, so each port a member declares is mapped to a free
one bound here and handed down (`--fd` for the first, the probed one; `--port-fd
DECLARED=FD` for the others): the record keeps the mapping. A spawn is written to the
member's record (its endpoints, no pid yet) before the worker exists and again, with its
pid, before waiting for its health (see `process_strays.py` for what the next call or
listing does with a spawn that was interrupted in between).

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
import shutil
import socket
import subprocess
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from provisioning.runtime.base import declared_ports
from provisioning.runtime.process_control import _SPAWNED, _read_proc_stat
from provisioning.runtime.process_records import _Record
from provisioning.runtime.spawn_priority import at_spawn_priority

# Logs as the process runtime, the name its records have always carried.
log = logging.getLogger("provisioning.runtime.process_runtime")

# The worker package, run as a directory (`python -I -S <dir>`): its path in a process's
# arguments is how a worker is recognised (`process_strays.py`).
WORKER_SCRIPT = Path(__file__).with_name("worker")
# Virtual address space a worker's interpreter needs (measured VmPeak ~29 MiB, with room):
# a spec asking for less memory gets this much, or the worker could not start at all.
WORKER_MIN_AS_MB = 64
WORKER_NPROC = 128  # see the module docstring: per user, not enforced for root


def spawn_worker(
    record: _Record,
    python: str,
    state_path: Path,
    log_dir: Path,
    data_dir: Path,
    save: Callable[[], None],
) -> None:
    """Start the worker on listening sockets bound here, so its endpoints are known now.

    `save` saves the pool holding `record`: before the worker exists and again once its pid
    is known, so a kill at any point leaves a record that owns, or finds, the worker.
    """
    with ExitStack() as listeners:
        sockets = {}
        for port in declared_ports(record.port, record.env):
            sockets[port] = listeners.enter_context(_listener())
        first, *others = sockets
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{record.id}.log"
        record.ports = {
            str(port): f"http://127.0.0.1:{sock.getsockname()[1]}" for port, sock in sockets.items()
        }
        record.endpoint = record.ports[str(first)]
        record.log_path = str(log_path)
        record.data_dir = str(data_dir / record.id)
        save()  # endpoint without pid = "spawn under way" (see ProcessRuntime._settle)
        handed = [f"{port}={sockets[port].fileno()}" for port in others]
        with open(log_path, "ab") as log_file:
            command = [
                *(python, "-I", "-S", str(WORKER_SCRIPT)),
                *("--fd", str(sockets[first].fileno()), "--member", record.id),
                *(argument for pair in handed for argument in ("--port-fd", pair)),
                *("--data-dir", record.data_dir),
                *("--state", str(state_path.resolve())),
            ]
            # Not at the batch priority of a cycle that spawns it (`spawn_priority`).
            popen = at_spawn_priority(
                lambda: subprocess.Popen(
                    command,
                    pass_fds=[sock.fileno() for sock in sockets.values()],
                    # Own session and process group: outlives us, immune to our Ctrl-C.
                    start_new_session=True,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=log_file,
                    env=_worker_env(record),
                )
            )
    _SPAWNED[popen.pid] = popen
    stat = _read_proc_stat(popen.pid)
    record.pid = popen.pid
    record.pid_start = stat.start_ticks if stat else None
    save()
    _limit(popen.pid, record.memory_mb)


def remove_data(record: _Record) -> None:
    """Delete the worker's own directory (its database), if it has one."""
    if record.data_dir is not None:
        shutil.rmtree(record.data_dir, ignore_errors=True)
        record.data_dir = None


def _listener() -> socket.socket:
    """A socket listening on a free port of 127.0.0.1 (its backlog holds the requests a
    frozen worker receives until it thaws)."""
    return socket.create_server(("127.0.0.1", 0), backlog=128)


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
