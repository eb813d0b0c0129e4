"""ProcessRuntime: pool members as plain OS processes, the fallback when Docker is absent.

Each member is one worker process (`worker/`) serving on 127.0.0.1, each port it declares
mapped to a free one (`Member.ports`). Tiers map onto
process states: active = running; shadow = spawned, healthy, then SIGSTOPped (memory held,
no CPU); cold = recorded only, with no process yet: a process has nothing like Docker's
"created" container that holds a filesystem and config without running, and a worker
stopped before its interpreter starts would hold memory like a shadow, so we do not pretend
it is cold. Activating a cold member therefore spawns it.

Workers run in their own session and process group (setsid), so they outlive the prewarm
that started them. The pool is persisted in a JSON file guarded by an flock
(`process_records.py`); a new ProcessRuntime on the same file (a restarted prewarm) finds
its workers again, identified by pid *and* the process start time from /proc/<pid>/stat, so
a recycled pid is never mistaken for a worker (`process_control.py`). Entries whose process
is gone are dropped on every load, and a worker whose spawn was interrupted is stopped
(`process_strays.py`). Each worker is spawned with RLIMIT_AS and RLIMIT_NPROC
(`process_spawn.py`); CPU is recorded but not enforced. Each worker keeps its database in
a directory of its own beside the state file (`<state>-data/<member>`), removed with the
worker. Linux only (/proc).
"""

from __future__ import annotations

import builtins
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
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
from provisioning.runtime.process_control import (
    _CLOCK_TICKS,
    _STOPPED_STATES,
    _is_same_process,
    _read_proc_stat,
    _reap,
    _rss_mb,
    _signal,
    _terminate,
    _uptime_s,
)
from provisioning.runtime.process_records import _Record, load_records, locked, save_records
from provisioning.runtime.process_spawn import _limits_of, remove_data, spawn_worker
from provisioning.runtime.process_strays import stop_interrupted_spawn, stop_strays, stray_workers

log = logging.getLogger(__name__)


class ProcessRuntime:
    """ContainerRuntime over local worker processes, persisted in a JSON state file."""

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
        self.data_dir = self.state_path.with_name(self.state_path.stem + "-data")
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
        with self._pool(read_only=True) as pool:
            members = [self._member(record) for record in pool.values()]
        return [m for m in members if matches_labels(m.labels, labels)]

    def strays(self) -> dict[int, str]:
        """Workers of this state file that no record owns (pid -> member id): left running
        when a process was killed between spawning a worker and saving its record."""
        marker = str(self.state_path.resolve())
        with self._pool() as pool:
            owned = {record.pid for record in pool.values() if record.pid is not None}
            found = stray_workers(marker, owned)
        return found

    def sweep_strays(self) -> builtins.list[str]:
        """Stop every stray worker of this state file; return the member ids they served."""
        return stop_strays(self.strays(), self.grace_s)

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
    def _pool(self, read_only: bool = False) -> Iterator[dict[str, _Record]]:
        """Load the pool under an exclusive lock, drop dead entries, save it back on exit.

        `read_only` (a listing): saved only when dead entries were dropped, so the many
        listings of an apply or of the API do not rewrite the whole file under the lock."""
        with locked(self.state_path):
            loaded = load_records(self.state_path)
            pool = self._drop_dead(loaded)
            try:
                yield pool
            finally:
                # Saved even when the body fails, so a worker spawned before the failure
                # stays on record and can be released.
                if not read_only or len(pool) != len(loaded):
                    self._save(pool)

    def _save(self, pool: dict[str, _Record]) -> None:
        """Write the pool to the state file (every save, the spawn's too, goes through here)."""
        save_records(self.state_path, pool)

    def _drop_dead(self, pool: dict[str, _Record]) -> dict[str, _Record]:
        kept = {}
        for member_id, record in pool.items():
            if record.pid is None and record.endpoint is not None:
                stop_interrupted_spawn(str(self.state_path.resolve()), record, self.grace_s)
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

    # -- processes --------------------------------------------------------------------

    def _spawn(self, record: _Record, pool: dict[str, _Record]) -> None:
        """Start the worker (see `spawn_worker`), saving the pool before and after."""
        spawn_worker(
            record,
            self.python,
            self.state_path,
            self.log_dir,
            self.data_dir,
            lambda: self._save(pool),
        )

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
        remove_data(record)
        record.pid = record.pid_start = None
        record.endpoint = record.log_path = None
        record.ports = {}
        record.labels[LABEL_TIER] = "cold"

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
            ports={int(port): endpoint for port, endpoint in record.ports.items()},
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
