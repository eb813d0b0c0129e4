"""ProcessRuntime: pool members as plain OS processes, the fallback when Docker is absent.

Each member is one worker process (`worker/`) serving on 127.0.0.1, each port it declares
mapped to a free one (`Member.ports`). Tiers map onto
process states: active = running; shadow = spawned, healthy, then SIGSTOPped (memory held,
no CPU); cold = recorded only, with no process yet: a process has nothing like Docker's
"created" container that holds a filesystem and config without running, and a worker
stopped before its interpreter starts would hold memory like a shadow, so we do not pretend
it is cold. Activating a cold member therefore spawns it.

Workers run in their own session and process group (setsid), so they outlive the prewarm
that started them. The pool is persisted one record file per member, each guarded by its
own flock (`process_records.py`; a version-1 state file, the whole pool in one JSON, is
migrated on first use: `process_state.py`). A call on a member locks, reads and writes that
member alone, so its cost does not grow with the pool and calls on different members run at
once, in threads or in prewarm processes sharing the state file. A call holds its member's
lock from start to end, spawn and health wait included, so two calls on one member (an
activation racing a release) run one after the other; a listing waits for no lock, and
reports a member whose worker a call is still spawning as it was before that call.

A new ProcessRuntime on the same file (a restarted prewarm) finds its workers again,
identified by pid *and* the process start time from /proc/<pid>/stat, so a recycled pid is
never mistaken for a worker (`process_control.py`). A record whose process is gone is
dropped by the first call or listing that meets it, and a worker whose spawn was
interrupted is stopped (`process_strays.py`). Each worker is spawned with RLIMIT_AS and
RLIMIT_NPROC (`process_spawn.py`); CPU is recorded but not enforced. Each worker keeps its
database in a directory of its own beside the state file (`<state>-data/<member>`), removed
with the worker. Linux only (/proc).
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import os
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from provisioning.runtime.base import (
    LABEL_CLIENT,
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
from provisioning.runtime.loop_health import LoopPendingRequest
from provisioning.runtime.member_files import is_member_id
from provisioning.runtime.process_control import (
    _CLOCK_TICKS,
    _STOPPED_STATES,
    _is_alive_as,
    _is_same_process,
    _ProcStat,
    _read_proc_stat,
    _reap,
    _rss_mb,
    _signal,
    _terminate,
    _uptime_s,
)
from provisioning.runtime.process_records import MemberRecords, _Record, records_dir
from provisioning.runtime.process_spawn import _limits_of, remove_data, spawn_worker
from provisioning.runtime.process_state import prepare_state
from provisioning.runtime.process_strays import stop_interrupted_spawn, stop_strays, stray_workers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Seen:
    """A record as a listing met it, with its worker's /proc stat read once."""

    record: _Record
    stat: _ProcStat | None
    busy: bool  # a call holds the member's lock, so the record was left as it was


class ProcessRuntime:
    """ContainerRuntime over local worker processes, persisted one record file per member."""

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
        self.records = MemberRecords(records_dir(self.state_path))
        self.log_dir = self.state_path.with_name(self.state_path.stem + "-logs")
        self.data_dir = self.state_path.with_name(self.state_path.stem + "-data")
        self._cpu = CpuMeter()
        self._prepared = False

    # -- the ContainerRuntime interface ------------------------------------------------

    def create(self, spec: ContainerSpec) -> Member:
        """Record a member; spawn it unless cold, and freeze it when shadow."""
        self._ready()
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
        with self.records.locked(record.id, new=True):
            try:
                if spec.tier != "cold":
                    self._start_healthy(record, "create")
                if spec.tier == "shadow":
                    self._freeze(record)
                self._commit(record)
            except BaseException:
                # The caller never learns the id of a failed create: leave nothing behind.
                self._stop(record)
                self.records.discard(record.id)
                raise
        log.info("created %s member %s for %s", spec.tier, record.id, spec.client_id)
        return self._member(record)

    def shadow(self, member_id: str) -> Member:
        """Freeze a member (spawning it first if it is cold)."""
        with self._claimed(member_id) as record:
            if record.pid is None:
                self._start_healthy(record, "shadow")
            self._freeze(record)
        return self._member(record)

    def activate(self, member_id: str) -> tuple[Member, float]:
        """SIGCONT a shadow or spawn a cold member; ms until /health first answers."""
        with self._claimed(member_id) as record:
            from_tier = self._tier(record)
            started = time.perf_counter()
            resume_ms, resumed_at = self._resume(record, from_tier)
            elapsed = ms_since(started)
            record.timings_ms = _activation_timings(started, resume_ms, resumed_at, elapsed)
            record.labels[LABEL_TIER] = "active"
        log.info("activated %s from %s in %.1f ms", member_id, from_tier, elapsed)
        return self._member(record), elapsed

    def release(self, member_id: str) -> None:
        """Terminate and forget a member; a gone member is fine."""
        self._ready()
        if not is_member_id(member_id):
            return
        with self.records.locked(member_id):
            record = self._settled(member_id)
            if record is None:
                return
            # Stopped before it is forgotten: an interrupted release leaves a record, not an
            # untracked process.
            self._stop(record)
            self.records.discard(member_id)
        self._cpu.forget(member_id)
        log.info("released %s", member_id)

    def list(self, labels: dict[str, str] | None = None) -> list[Member]:
        """Members whose labels (with the current tier) equal every given label."""
        return self._list(labels, settle=True)

    # -- the LoopActivation interface (what the API does on its event loop) -------------

    def list_on_loop(self, labels: dict[str, str]) -> builtins.list[Member]:
        """`list` without settling: a record whose worker died or whose spawn was
        interrupted is reported as while a call holds its lock (`_as_listed`), and left
        for the next call to catch up, as that can wait seconds for a worker to stop."""
        return self._list(labels, settle=False)

    async def activate_on_loop(self, member_id: str) -> tuple[Member, float] | None:
        """`activate` of a shadow, without blocking the running loop: its lock taken only if
        free now, the health request sent before SIGCONT (as `activate` does), its answer
        awaited. None, with nothing done, when the member's lock is held, its record needs
        settling, it is not a healthy-looking shadow, or its endpoint takes no connection
        now: the caller then calls `activate` in a thread. When no answer comes, the rest is
        `activate`'s, in a thread: poll, then stop the worker and raise ActivationTimeout."""
        if not is_member_id(member_id):
            return None
        with self.records.try_locked(member_id) as mine:
            if not mine:
                return None
            record = self.records.read(member_id)
            if record is None:
                self.records.discard(member_id)  # the lock file this look created
                return None
            if record.spawning is not None or record.endpoint is None:
                return None
            stat = _read_proc_stat(record.pid) if record.pid is not None else None
            if record.pid is None or not _is_alive_as(stat, record.pid_start):
                return None
            if _tier_of(record, stat) != "shadow":
                return None
            started = time.perf_counter()
            pending = await LoopPendingRequest.send(record.endpoint)
            if pending is None:
                return None
            began = time.perf_counter()
            with suppress(ProcessLookupError):  # identity checked just now, under the lock
                os.kill(record.pid, signal.SIGCONT)
            resumed = time.perf_counter()
            if not await pending.answered_ok(self.health_timeout_s):
                # In a thread, under this lock: it must not end before the thread does.
                await _to_the_end(asyncio.to_thread(self._health_or_stop, record))
            elapsed = ms_since(started)
            resume_ms = (resumed - began) * 1000.0
            record.timings_ms = _activation_timings(started, resume_ms, resumed, elapsed)
            record.labels[LABEL_TIER] = "active"
            member = self._member(record)
        log.info("activated %s from shadow in %.1f ms (on the loop)", member_id, elapsed)
        return member, elapsed

    def strays(self) -> dict[int, str]:
        """Workers of this state file that no record owns (pid -> member id): left running
        when a process was killed between spawning a worker and saving its record."""
        marker = self._marker()
        # Workers first, records second: a worker's record is on disk before the worker
        # exists, so every worker found now is on record when the records are read.
        workers = stray_workers(marker, set())
        seen = self._survey()
        owned = {s.record.pid for s in seen if s.record.pid is not None}
        spawning = {s.record.id for s in seen if s.busy}  # its pid may not be on record yet
        # Looked for again: a worker released meanwhile is gone, its record with it.
        found = stray_workers(marker, owned)
        return {pid: m for pid, m in found.items() if pid in workers and m not in spawning}

    def sweep_strays(self) -> builtins.list[str]:
        """Stop every stray worker of this state file; return the member ids they served."""
        return stop_strays(self.strays(), self.grace_s)

    def stats(self, member_id: str) -> dict[str, Any]:
        """CPU percent and resident memory from /proc (zeros for a cold member)."""
        self._ready()
        record = self.records.read(member_id) if is_member_id(member_id) else None
        seen = self._look(record) if record is not None else None
        if seen is None:
            raise _not_found(member_id)
        record, stat = seen.record, seen.stat
        tier = _tier_of(record, stat)
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

    # -- records ----------------------------------------------------------------------

    def _ready(self) -> None:
        """Migrate a version-1 state file the first time this runtime is used."""
        if not self._prepared:
            prepare_state(self.state_path, self.records)
            self._prepared = True

    def _marker(self) -> str:
        """The state file as workers name it (`--state`)."""
        return str(self.state_path.resolve())

    @contextmanager
    def _claimed(self, member_id: str) -> Iterator[_Record]:
        """Hold one member's lock for a call, its record settled; saved back on the way out
        even when the call fails, so a worker spawned before the failure stays on record.

        Saved only when the call changed what the record is for (its process, endpoints,
        files): a warm activation or a freeze changes nothing but the tier, which is read
        from /proc, and the timings it returns, so it writes nothing (a file replaced per
        activation costs more than the SIGCONT and health answer together)."""
        self._ready()
        if not is_member_id(member_id):
            raise _not_found(member_id)
        with self.records.locked(member_id):
            record = self._settled(member_id)
            if record is None:
                raise _not_found(member_id)
            with self._saving(record):
                yield record

    @contextmanager
    def _saving(self, record: _Record) -> Iterator[None]:
        """Save a record whose lock is held on the way out, if the call changed what it is
        for or left a spawn on record (`_claimed`)."""
        before = _essence(record)
        try:
            yield
        finally:
            if record.spawning is not None or _essence(record) != before:
                self._commit(record)

    def _settled(self, member_id: str) -> _Record | None:
        """The member's record, its lock held: None, with no file left, when it has none or
        its worker died."""
        record = self.records.read(member_id)
        if record is None:
            self.records.discard(member_id)  # the lock file this look created
            return None
        return self._settle(record)

    def _settle(self, record: _Record) -> _Record | None:
        """Catch a record whose lock we hold up with its worker: a spawn interrupted before
        its pid was saved has its worker stopped and the member is cold; a worker that died
        is dropped with its record (None); a call killed in its health wait leaves a worker
        on record, kept like any other."""
        unsettled = record.spawning is not None or _interrupted(record)
        if _interrupted(record):
            stop_interrupted_spawn(self._marker(), record, self.grace_s)
        if record.pid is not None and not _is_same_process(record.pid, record.pid_start):
            log.warning(
                "worker %s (pid %s) is gone; dropping it (its log, kept: %s)",
                record.id,
                record.pid,
                record.log_path,
            )
            _reap(record.pid, record.pid_start)
            self.records.discard(record.id)
            return None
        if unsettled:
            self._commit(record)
        return record

    def _list(self, labels: dict[str, str] | None, *, settle: bool) -> builtins.list[Member]:
        client = (labels or {}).get(LABEL_CLIENT)
        # A member id starts with its client's name part: listing one client's members (what
        # every activation through the API does) reads that client's records only.
        prefix = f"prewarm-{safe_name_part(client)}-" if client is not None else ""
        listed = (_as_listed(seen) for seen in self._survey(prefix, settle=settle))
        members = [self._member(seen.record, seen.stat) for seen in listed if seen is not None]
        return [m for m in members if matches_labels(m.labels, labels)]

    def _survey(self, prefix: str = "", *, settle: bool = True) -> builtins.list[_Seen]:
        """Every record whose id starts with `prefix`, as `_look` sees it."""
        self._ready()
        seen = (self._look(record, settle) for record in self.records.read_all(prefix))
        return [s for s in seen if s is not None]

    def _look(self, record: _Record, settle: bool = True) -> _Seen | None:
        """A record read without its lock, with its worker's stat. One whose worker died or
        whose spawn is under way is settled if its lock is free (None once dropped), and
        left as it is, busy, when a call holds the lock (that call is working on it) or
        when not to `settle`."""
        stat = _read_proc_stat(record.pid) if record.pid is not None else None
        alive = record.pid is None or _is_alive_as(stat, record.pid_start)
        if alive and record.spawning is None and not _interrupted(record):
            return _Seen(record, stat, busy=False)
        if not settle:
            return _Seen(record, stat, busy=True)
        with self.records.try_locked(record.id) as mine:
            if not mine:
                return _Seen(record, stat, busy=True)
            settled = self._settled(record.id)
        if settled is None:
            return None
        pid = settled.pid
        return _Seen(settled, _read_proc_stat(pid) if pid is not None else None, busy=False)

    def _commit(self, record: _Record) -> None:
        """Save a record at the end of a call: no spawn is under way any more."""
        record.spawning = None
        self._save(record)

    def _save(self, record: _Record) -> None:
        """Write a member's record (every save, the spawn's too, goes through here)."""
        self.records.write(record)

    # -- processes --------------------------------------------------------------------

    def _spawn(self, record: _Record, call: str) -> None:
        """Start the worker (see `spawn_worker`), saving its record before and after."""
        record.spawning = call
        spawn_worker(
            record,
            self.python,
            self.state_path,
            self.log_dir,
            self.data_dir,
            lambda: self._save(record),
        )

    def _start_healthy(self, record: _Record, call: str) -> None:
        """Spawn and wait for the first health answer (the worker is killed if none comes)."""
        started = time.perf_counter()
        self._spawn(record, call)
        self._await_health(record, self._pending(record))
        record.timings_ms = {"spawn_to_healthy": ms_since(started)}

    def _resume(self, record: _Record, tier: Tier) -> tuple[float, float]:
        """Get the worker running and answering.

        Returns the resume step's duration in ms and the perf_counter instant it ended.
        """
        if tier == "cold":
            began = time.perf_counter()
            self._spawn(record, "activate")
            spawned = time.perf_counter()
            self._await_health(record, self._pending(record))
            return (spawned - began) * 1000.0, spawned
        # Sent before SIGCONT: the kernel queues it, the worker answers the moment it runs.
        pending = self._pending(record)
        began = time.perf_counter()
        if tier == "shadow" and record.pid is not None:
            # Identity was verified when the record was read, under its lock, just now; if
            # it died since, the health wait below fails and says so.
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

    def _health_or_stop(self, record: _Record) -> None:
        """`_await_health` by polling, for a resumed worker whose pending request went
        unanswered, its record saved if the worker is stopped (lock held by the caller)."""
        with self._saving(record):
            self._await_health(record, None)

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

    def _tier(self, record: _Record) -> Tier:
        """The true tier, from the process state rather than what we last recorded."""
        return _tier_of(record, _read_proc_stat(record.pid) if record.pid is not None else None)

    def _member(self, record: _Record, stat: _ProcStat | None = None) -> Member:
        """The member a record describes; `stat`: its worker's, when just read (else read)."""
        if stat is None and record.pid is not None:
            stat = _read_proc_stat(record.pid)
        tier = _tier_of(record, stat)
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


async def _to_the_end(work: Awaitable[None]) -> None:
    """Await `work` to its end even when the caller is cancelled meanwhile (the cancel is
    raised once it has ended)."""
    task = asyncio.ensure_future(work)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        with suppress(Exception):
            await task
        raise


def _activation_timings(
    started: float, resume_ms: float, resumed_at: float, elapsed_ms: float
) -> dict[str, float]:
    """What an activation reports in `details["timings_ms"]`: the resume step, when it
    returned (from `started`, a perf_counter reading) and the first health answer, in ms."""
    return {
        "resume": resume_ms,
        "resume_returned": (resumed_at - started) * 1000.0,
        "first_answer": elapsed_ms,
    }


def _tier_of(record: _Record, stat: _ProcStat | None) -> Tier:
    if record.pid is None:
        return "cold"
    return "shadow" if stat is not None and stat.state in _STOPPED_STATES else "active"


def _essence(record: _Record) -> dict[str, Any]:
    """What a record is for: all it holds but the tier label and the last call's timings.

    Its dicts are copied (a call changes them in place), one level deep: they hold strings
    only. Not `dataclasses.asdict`, whose deep copy cost ~0.1 ms a look, twice a call."""
    essence = {name: dict(v) if isinstance(v, dict) else v for name, v in vars(record).items()}
    del essence["timings_ms"]
    essence["labels"].pop(LABEL_TIER, None)
    return essence


def _interrupted(record: _Record) -> bool:
    """An endpoint but no pid: the spawner saved the first but never the second."""
    return record.pid is None and record.endpoint is not None


def _as_listed(seen: _Seen) -> _Seen | None:
    """How a listing reports a record: a member a call is spawning as it was before that
    call (a create's: not yet there; an activation's or a shadow's: cold), and one whose
    worker died while a call holds it (being released, or failing) not at all."""
    record = seen.record
    if not seen.busy:
        return seen
    if record.spawning is None or record.spawning == "create":
        return None
    cold = replace(
        record,
        pid=None,
        pid_start=None,
        endpoint=None,
        log_path=None,
        ports={},
        labels={**record.labels, LABEL_TIER: "cold"},
    )
    return _Seen(cold, None, busy=True)


def _not_found(member_id: str) -> MemberNotFound:
    return MemberNotFound(f"no process-runtime member {member_id!r}")
