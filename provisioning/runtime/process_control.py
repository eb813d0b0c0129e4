"""Worker processes seen through /proc and moved with signals: state, identity, reaping.

A worker is identified by its pid *and* its process start time from /proc/<pid>/stat, so a
recycled pid is never mistaken for a worker, nor signalled. Workers run in their own session
and process group (setsid), so they outlive the prewarm that started them: one that is not
our child is reaped by its parent (or init), and we only wait until it is gone. Linux only
(/proc).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from provisioning.runtime.member_files import read_small

# Logs as the process runtime, the name its records have always carried.
log = logging.getLogger("provisioning.runtime.process_runtime")

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_STOPPED_STATES = {"T", "t"}
_DEAD_STATES = {"Z", "X", "x"}

# Popen handles of the workers this interpreter spawned, shared by every ProcessRuntime in
# it, so whichever instance releases a worker reaps it through its Popen (no zombie, no
# "still running" warning when an earlier instance is garbage-collected).
_SPAWNED: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class _ProcStat:
    state: str
    start_ticks: int
    cpu_s: float


def _read_proc_stat(pid: int) -> _ProcStat | None:
    """State, start time and CPU seconds of a pid from /proc, or None if it is gone."""
    try:
        text = read_small(f"/proc/{pid}/stat").decode()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return _ProcStat(fields[0], int(fields[19]), (utime + stime) / _CLOCK_TICKS)


def _is_same_process(pid: int, start_ticks: int | None) -> bool:
    """True when `pid` is alive (not a zombie) and is the process started at `start_ticks`."""
    return _is_alive_as(_read_proc_stat(pid), start_ticks)


def _is_alive_as(stat: _ProcStat | None, start_ticks: int | None) -> bool:
    """True when a /proc stat already read is of a live process started at `start_ticks`."""
    return stat is not None and stat.start_ticks == start_ticks and stat.state not in _DEAD_STATES


def _rss_mb(pid: int) -> float:
    """Resident memory of a pid in MiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


def _worker_processes(script: str) -> Iterator[tuple[int, list[str]]]:
    """(pid, argv) of every live process running the worker script."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        if script in argv:
            stat = _read_proc_stat(int(entry.name))
            if stat is not None and stat.state not in _DEAD_STATES:
                yield int(entry.name), argv


def _argument(argv: list[str], name: str) -> str | None:
    """The value following `name` in an argv, or None."""
    try:
        return argv[argv.index(name) + 1]
    except (ValueError, IndexError):
        return None


def _uptime_s() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


def _reap(pid: int, start_ticks: int | None) -> bool:
    """Collect an exited worker if it is our child; True once the process is gone."""
    popen = _SPAWNED.get(pid)
    if popen is not None:
        if popen.poll() is None:
            return False
        del _SPAWNED[pid]
        return True
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return True
    except ChildProcessError:
        pass  # not our child: its parent (or init) reaps it
    return not _is_same_process(pid, start_ticks)


def _wait_gone(pid: int, start_ticks: int | None, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not _reap(pid, start_ticks):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


def _signal(pid: int, start_ticks: int | None, signum: int) -> None:
    """Send a signal only if the pid is still the worker we recorded."""
    if _is_same_process(pid, start_ticks):
        with suppress(ProcessLookupError):
            os.kill(pid, signum)


def _terminate(pid: int, start_ticks: int | None, grace_s: float) -> None:
    """SIGTERM, then SIGKILL after the grace period; reap either way."""
    _signal(pid, start_ticks, signal.SIGTERM)
    # A stopped worker only acts on SIGTERM once continued.
    _signal(pid, start_ticks, signal.SIGCONT)
    if _wait_gone(pid, start_ticks, grace_s):
        return
    log.warning("worker pid %s ignored SIGTERM for %.1f s; killing it", pid, grace_s)
    _signal(pid, start_ticks, signal.SIGKILL)
    if not _wait_gone(pid, start_ticks, 5.0):
        log.error("worker pid %s survived SIGKILL for 5 s", pid)
