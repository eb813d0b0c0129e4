"""Stray workers of a process-runtime state file: running, but owned by no record.

Nothing is left running unowned: a spawn is written to the member's record (its endpoint, no
pid yet) before the worker exists and again, with its pid, before waiting for its health, so
a prewarm killed (even with SIGKILL) in between leaves a record: the next call or listing
that meets it stops a worker whose spawn was interrupted (found by its `--member` argument)
and keeps the member cold, and `--release-all` finds a worker recorded before its health
answered. A worker is told
apart by its arguments: `--state` (the resolved state file path, the `marker` below) and
`--member`.
"""

from __future__ import annotations

import logging

from provisioning.runtime.base import LABEL_TIER
from provisioning.runtime.process_control import (
    _argument,
    _read_proc_stat,
    _terminate,
    _worker_processes,
)
from provisioning.runtime.process_records import _Record
from provisioning.runtime.process_spawn import WORKER_SCRIPT, remove_data

# Logs as the process runtime, the name its records have always carried.
log = logging.getLogger("provisioning.runtime.process_runtime")


def stray_workers(marker: str, owned: set[int]) -> dict[int, str]:
    """Workers of the state file `marker` whose pid is not `owned` (pid -> member id)."""
    script = str(WORKER_SCRIPT)
    found = {}
    for pid, argv in _worker_processes(script):
        if pid in owned or _argument(argv, "--state") != marker:
            continue
        found[pid] = _argument(argv, "--member") or "?"
    return found


def stop_strays(strays: dict[int, str], grace_s: float) -> list[str]:
    """Stop every stray worker (pid -> member id); return the member ids they served."""
    swept = []
    for pid, member_id in strays.items():
        stat = _read_proc_stat(pid)
        if stat is None:
            continue
        _terminate(pid, stat.start_ticks, grace_s)
        log.warning("stopped stray worker pid %s (member %s): no record owned it", pid, member_id)
        swept.append(member_id)
    return swept


def stop_interrupted_spawn(marker: str, record: _Record, grace_s: float) -> None:
    """A record with an endpoint but no pid: its spawner died before recording the pid.
    Stop the worker it may have started; the member stays, cold."""
    for pid, argv in _worker_processes(str(WORKER_SCRIPT)):
        if _argument(argv, "--member") == record.id and _argument(argv, "--state") == marker:
            stat = _read_proc_stat(pid)
            if stat is not None:
                _terminate(pid, stat.start_ticks, grace_s)
                log.warning(
                    "stopped worker pid %s of %s: its spawn was interrupted", pid, record.id
                )
    remove_data(record)
    record.endpoint = record.log_path = None
    record.ports = {}
    record.labels[LABEL_TIER] = "cold"
