"""ProcessRuntime: pool members as plain OS processes, the fallback when Docker is absent.

Each member is one `worker.py` process serving `/health` on 127.0.0.1. Tiers map onto
process states: active = running; shadow = spawned, healthy, then SIGSTOPped (memory held,
no CPU); cold = recorded only, with no process yet: a process has nothing like Docker's
"created" container that holds a filesystem and config without running, and a worker
stopped before its interpreter starts would hold memory like a shadow, so we do not pretend
it is cold. Activating a cold member therefore spawns it.

Workers run in their own session and process group (setsid), so they outlive the prewarm
that started them. The pool is persisted in a JSON file guarded by an flock; a new
ProcessRuntime on the same file (a restarted prewarm) finds its workers again, identified by
pid *and* the process start time from /proc/<pid>/stat, so a recycled pid is never mistaken
for a worker. Entries whose process is gone are dropped on every load.

Nothing is left running unowned: a spawn is written to the state file (its endpoint, no pid
yet) before the worker exists and again, with its pid, before waiting for its health, so a
prewarm killed (even with SIGKILL) in between leaves a record: the next load stops a worker
whose spawn was interrupted (found by its `--member` argument) and keeps the member cold,
and `--release-all` finds a worker recorded before its health answered.

Limits: each worker gets RLIMIT_AS (the spec's memory, at least what the interpreter needs)
and RLIMIT_NPROC, set with prlimit right after the spawn, while the worker's interpreter is
still starting and before it serves anything. RLIMIT_NPROC counts every process of the
*user*, so it only caps a worker relative to everything else that user runs, and Linux does
not enforce it for root (CAP_SYS_RESOURCE): run prewarm as an unprivileged user, or use the
Docker runtime (a per-member pids limit), where that matters. CPU is recorded but not
enforced (that needs cgroups). Linux only (/proc).
"""

from __future__ import annotations

import builtins
import fcntl
import json
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from provisioning.runtime.base import (
    LABEL_TIER,
    ActivationTimeout,
    ContainerSpec,
    CpuMeter,
    Member,
    MemberNotFound,
    PendingRequest,
    RuntimeName,
    Tier,
    matches_labels,
    ms_since,
    safe_name_part,
    utc_now,
    wait_until_answering,
)

log = logging.getLogger(__name__)

WORKER_SCRIPT = Path(__file__).with_name("worker.py")
STATE_VERSION = 1
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_STOPPED_STATES = {"T", "t"}
_DEAD_STATES = {"Z", "X", "x"}
# Virtual address space a worker's interpreter needs (measured VmPeak ~25 MiB, with room):
# a spec asking for less memory gets this much, or the worker could not start at all.
WORKER_MIN_AS_MB = 64
WORKER_NPROC = 128  # see the module docstring: per user, not enforced for root

# Popen handles of the workers this interpreter spawned, shared by every ProcessRuntime in
# it, so whichever instance releases a worker reaps it through its Popen (no zombie, no
# "still running" warning when an earlier instance is garbage-collected).
_SPAWNED: dict[int, subprocess.Popen[bytes]] = {}


@dataclass
class _Record:
    """One member as persisted in the state file."""

    id: str
    client_id: str
    plan_id: str
    labels: dict[str, str]
    env: dict[str, str]
    cpu: float
    memory_mb: int
    port: int
    created_at: str
    pid: int | None = None
    pid_start: int | None = None
    endpoint: str | None = None
    log_path: str | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class _ProcStat:
    state: str
    start_ticks: int
    cpu_s: float


def _read_proc_stat(pid: int) -> _ProcStat | None:
    """State, start time and CPU seconds of a pid from /proc, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return _ProcStat(fields[0], int(fields[19]), (utime + stime) / _CLOCK_TICKS)


def _is_same_process(pid: int, start_ticks: int | None) -> bool:
    """True when `pid` is alive (not a zombie) and is the process started at `start_ticks`."""
    stat = _read_proc_stat(pid)
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


class ProcessRuntime:
    """ContainerRuntime over local `worker.py` processes, persisted in a JSON state file."""

    name: RuntimeName = "process"

    def __init__(
        self,
        state_path: Path,
        *,
        grace_s: float = 1.0,
        health_timeout_s: float = 10.0,
        python: str = sys.executable,
    ) -> None:
        self.state_path = Path(state_path)
        self.grace_s = grace_s
        self.health_timeout_s = health_timeout_s
        self.python = python
        self.log_dir = self.state_path.with_name(self.state_path.stem + "-logs")
        self._cpu = CpuMeter()

    # -- the ContainerRuntime interface ------------------------------------------------

    def create(self, spec: ContainerSpec) -> Member:
        """Record a member; spawn it unless cold, and freeze it when shadow."""
        record = _Record(
            id=f"prewarm-{safe_name_part(spec.client_id)}-{uuid.uuid4().hex[:8]}",
            client_id=spec.client_id,
            plan_id=spec.plan_id,
            labels=spec.member_labels(),
            env=dict(spec.env),
            cpu=spec.cpu,
            memory_mb=spec.memory_mb,
            port=spec.port,
            created_at=utc_now().isoformat(),
        )
        with self._pool() as pool:
            pool[record.id] = record
            try:
                if spec.tier != "cold":
                    self._start_healthy(record, pool)
                if spec.tier == "shadow":
                    self._freeze(record)
            except BaseException:
                # The caller never learns the id of a failed create: leave nothing behind.
                del pool[record.id]
                self._stop(record)
                raise
        log.info("created %s member %s for %s", spec.tier, record.id, spec.client_id)
        return self._member(record)

    def shadow(self, member_id: str) -> Member:
        """Freeze a member (spawning it first if it is cold)."""
        with self._pool() as pool:
            record = self._get(pool, member_id)
            if record.pid is None:
                self._start_healthy(record, pool)
            self._freeze(record)
        return self._member(record)

    def activate(self, member_id: str) -> tuple[Member, float]:
        """SIGCONT a shadow or spawn a cold member; ms until /health first answers."""
        with self._pool() as pool:
            record = self._get(pool, member_id)
            from_tier = self._tier(record)
            started = time.perf_counter()
            resume_ms, resumed_at = self._resume(record, from_tier, pool)
            elapsed = ms_since(started)
            record.timings_ms = {
                "resume": resume_ms,
                "resume_returned": (resumed_at - started) * 1000.0,
                "first_answer": elapsed,
            }
            record.labels[LABEL_TIER] = "active"
        log.info("activated %s from %s in %.1f ms", member_id, from_tier, elapsed)
        return self._member(record), elapsed

    def release(self, member_id: str) -> None:
        """Terminate and forget a member; a gone member is fine."""
        with self._pool() as pool:
            record = pool.get(member_id)
            if record is None:
                return
            # Stopped before it is forgotten: an interrupted release leaves a record, not an
            # untracked process.
            self._stop(record)
            del pool[member_id]
        self._cpu.forget(member_id)
        log.info("released %s", member_id)

    def list(self, labels: dict[str, str] | None = None) -> list[Member]:
        """Members whose labels (with the current tier) equal every given label."""
        with self._pool() as pool:
            members = [self._member(record) for record in pool.values()]
        return [m for m in members if matches_labels(m.labels, labels)]

    def strays(self) -> dict[int, str]:
        """Workers of this state file that no record owns (pid -> member id): left running
        when a process was killed between spawning a worker and saving its record."""
        marker = str(self.state_path.resolve())
        script = str(WORKER_SCRIPT)
        with self._pool() as pool:
            owned = {record.pid for record in pool.values() if record.pid is not None}
            found = {}
            for pid, argv in _worker_processes(script):
                if pid in owned or _argument(argv, "--state") != marker:
                    continue
                found[pid] = _argument(argv, "--member") or "?"
        return found

    def sweep_strays(self) -> builtins.list[str]:
        """Stop every stray worker of this state file; return the member ids they served."""
        swept = []
        for pid, member_id in self.strays().items():
            stat = _read_proc_stat(pid)
            if stat is None:
                continue
            _terminate(pid, stat.start_ticks, self.grace_s)
            log.warning(
                "stopped stray worker pid %s (member %s): no record owned it", pid, member_id
            )
            swept.append(member_id)
        return swept

    def stats(self, member_id: str) -> dict[str, Any]:
        """CPU percent and resident memory from /proc (zeros for a cold member)."""
        with self._pool() as pool:
            record = self._get(pool, member_id)
        tier = self._tier(record)
        stat = _read_proc_stat(record.pid) if record.pid is not None else None
        if record.pid is None or stat is None:
            return {"cpu_percent": 0.0, "memory_mb": 0.0, "tier": tier, "pid": None}
        cpu_percent = self._cpu.percent(
            member_id, stat.cpu_s, _uptime_s(), stat.start_ticks / _CLOCK_TICKS
        )
        return {
            "cpu_percent": cpu_percent,
            "memory_mb": _rss_mb(record.pid),
            "cpu_seconds": stat.cpu_s,
            "tier": tier,
            "pid": record.pid,
        }

    # -- state file -------------------------------------------------------------------

    @contextmanager
    def _pool(self) -> Iterator[dict[str, _Record]]:
        """Load the pool under an exclusive lock, drop dead entries, save it back on exit."""
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.state_path.with_name(self.state_path.name + ".lock")
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            pool = self._drop_dead(self._load())
            try:
                yield pool
            finally:
                # Saved even when the body fails, so a worker spawned before the failure
                # stays on record and can be released.
                self._save(pool)

    def _load(self) -> dict[str, _Record]:
        if not self.state_path.exists():
            return {}
        data = json.loads(self.state_path.read_text())
        return {m["id"]: _Record(**m) for m in data.get("members", [])}

    def _save(self, pool: dict[str, _Record]) -> None:
        payload = {"version": STATE_VERSION, "members": [asdict(r) for r in pool.values()]}
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        tmp.write_text(json.dumps(payload, indent=1))
        os.replace(tmp, self.state_path)

    def _drop_dead(self, pool: dict[str, _Record]) -> dict[str, _Record]:
        kept = {}
        for member_id, record in pool.items():
            if record.pid is None and record.endpoint is not None:
                self._stop_interrupted_spawn(record)
            if record.pid is None or _is_same_process(record.pid, record.pid_start):
                kept[member_id] = record
                continue
            log.warning(
                "worker %s (pid %s) is gone; dropping it (its log, kept: %s)",
                member_id,
                record.pid,
                record.log_path,
            )
            _reap(record.pid, record.pid_start)
        return kept

    def _stop_interrupted_spawn(self, record: _Record) -> None:
        """A record with an endpoint but no pid: its spawner died before recording the pid.
        Stop the worker it may have started; the member stays, cold."""
        marker = str(self.state_path.resolve())
        for pid, argv in _worker_processes(str(WORKER_SCRIPT)):
            if _argument(argv, "--member") == record.id and _argument(argv, "--state") == marker:
                stat = _read_proc_stat(pid)
                if stat is not None:
                    _terminate(pid, stat.start_ticks, self.grace_s)
                    log.warning(
                        "stopped worker pid %s of %s: its spawn was interrupted", pid, record.id
                    )
        record.endpoint = record.log_path = None
        record.labels[LABEL_TIER] = "cold"

    # -- processes --------------------------------------------------------------------

    def _spawn(self, record: _Record, pool: dict[str, _Record]) -> None:
        """Start the worker on a listening socket bound here, so its endpoint is known now.

        The pool (holding `record`) is saved before the worker exists and again once its
        pid is known: a kill at any point leaves a record that owns, or finds, the worker.
        """
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.bind(("127.0.0.1", 0))
            listener.listen(128)
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log_path = self.log_dir / f"{record.id}.log"
            record.endpoint = f"http://127.0.0.1:{listener.getsockname()[1]}"
            record.log_path = str(log_path)
            self._save(pool)  # endpoint without pid = "spawn under way" (see _drop_dead)
            with open(log_path, "ab") as log_file:
                popen = subprocess.Popen(
                    [
                        *(self.python, "-I", "-S", str(WORKER_SCRIPT)),
                        *("--fd", str(listener.fileno()), "--member", record.id),
                        *("--state", str(self.state_path.resolve())),
                    ],
                    pass_fds=(listener.fileno(),),
                    # Own session and process group: outlives us, immune to our Ctrl-C.
                    start_new_session=True,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=log_file,
                    env=self._worker_env(record),
                )
        finally:
            listener.close()
        _SPAWNED[popen.pid] = popen
        stat = _read_proc_stat(popen.pid)
        record.pid = popen.pid
        record.pid_start = stat.start_ticks if stat else None
        self._save(pool)
        _limit(popen.pid, record.memory_mb)

    def _start_healthy(self, record: _Record, pool: dict[str, _Record]) -> None:
        """Spawn and wait for the first health answer (the worker is killed if none comes)."""
        started = time.perf_counter()
        self._spawn(record, pool)
        self._await_health(record, self._pending(record))
        record.timings_ms = {"spawn_to_healthy": ms_since(started)}

    def _resume(self, record: _Record, tier: Tier, pool: dict[str, _Record]) -> tuple[float, float]:
        """Get the worker running and answering.

        Returns the resume step's duration in ms and the perf_counter instant it ended.
        """
        if tier == "cold":
            began = time.perf_counter()
            self._spawn(record, pool)
            spawned = time.perf_counter()
            self._await_health(record, self._pending(record))
            return (spawned - began) * 1000.0, spawned
        # Sent before SIGCONT: the kernel queues it, the worker answers the moment it runs.
        pending = self._pending(record)
        began = time.perf_counter()
        if tier == "shadow" and record.pid is not None:
            # Identity was verified when the pool was loaded, under the lock, just now; if it
            # died since, the health wait below fails and says so.
            with suppress(ProcessLookupError):
                os.kill(record.pid, signal.SIGCONT)
        resumed = time.perf_counter()
        self._await_health(record, pending)
        return (resumed - began) * 1000.0, resumed

    def _pending(self, record: _Record) -> PendingRequest | None:
        if record.endpoint is None:
            return None
        try:
            return PendingRequest(record.endpoint, self.health_timeout_s)
        except OSError:
            return None  # not accepting connections (yet): fall back to polling

    def _await_health(self, record: _Record, pending: PendingRequest | None) -> None:
        if pending is not None and pending.answered_ok():
            return
        try:
            if record.endpoint is None:
                raise ActivationTimeout(f"member {record.id} has no endpoint")
            wait_until_answering(record.endpoint, self.health_timeout_s)
        except ActivationTimeout as error:
            # An unhealthy worker is useless warm capacity: kill it, the member is cold again;
            # its log stays for whoever investigates.
            log_path = record.log_path
            self._stop(record, keep_log=True)
            raise ActivationTimeout(f"{error} (worker log: {log_path})") from error

    def _freeze(self, record: _Record, timeout_s: float = 2.0) -> None:
        """SIGSTOP the worker and wait until the kernel reports it stopped."""
        if record.pid is None:
            raise ActivationTimeout(f"member {record.id} has no process to freeze")
        _signal(record.pid, record.pid_start, signal.SIGSTOP)
        deadline = time.monotonic() + timeout_s
        while True:
            stat = _read_proc_stat(record.pid)
            if stat is None or stat.state in _STOPPED_STATES:
                break
            if time.monotonic() >= deadline:
                raise ActivationTimeout(f"worker pid {record.pid} did not stop in {timeout_s} s")
            time.sleep(0.001)
        record.labels[LABEL_TIER] = "shadow"

    def _stop(self, record: _Record, keep_log: bool = False) -> None:
        """Terminate the worker (if any) and forget its process; the record becomes cold."""
        if record.pid is not None:
            _terminate(record.pid, record.pid_start, self.grace_s)
        if record.log_path and not keep_log:
            Path(record.log_path).unlink(missing_ok=True)
        record.pid = record.pid_start = None
        record.endpoint = record.log_path = None
        record.labels[LABEL_TIER] = "cold"

    def _worker_env(self, record: _Record) -> dict[str, str]:
        # A clean environment, like a container's: only the spec's variables and who it is.
        return {
            **record.env,
            "PREWARM_MEMBER": record.id,
            "PREWARM_CLIENT": record.client_id,
            "PREWARM_PLAN": record.plan_id,
        }

    # -- views ------------------------------------------------------------------------

    @staticmethod
    def _get(pool: dict[str, _Record], member_id: str) -> _Record:
        try:
            return pool[member_id]
        except KeyError:
            raise MemberNotFound(f"no process-runtime member {member_id!r}") from None

    @staticmethod
    def _tier(record: _Record) -> Tier:
        """The true tier, from the process state rather than what we last recorded."""
        if record.pid is None:
            return "cold"
        stat = _read_proc_stat(record.pid)
        return "shadow" if stat is not None and stat.state in _STOPPED_STATES else "active"

    def _member(self, record: _Record) -> Member:
        tier = self._tier(record)
        stat = _read_proc_stat(record.pid) if record.pid is not None else None
        return Member(
            id=record.id,
            client_id=record.client_id,
            plan_id=record.plan_id,
            tier=tier,
            runtime="process",
            endpoint=record.endpoint,
            created_at=datetime.fromisoformat(record.created_at),
            labels={**record.labels, LABEL_TIER: tier},
            details={
                "pid": record.pid,
                "process_state": stat.state if stat else None,
                "log": record.log_path,
                "cpu": record.cpu,
                "memory_mb": record.memory_mb,
                "limits_enforced": False,  # cgroup-style CPU and memory: see rlimits
                "rlimits": _limits_of(record.pid) if record.pid is not None else {},
                "timings_ms": dict(record.timings_ms),
            },
        )
