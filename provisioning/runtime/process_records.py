"""The process runtime's records: one JSON file per member, each guarded by its own flock.

The pool is persisted so that a new ProcessRuntime on the same state file (a restarted
prewarm) finds its workers again, and so that several prewarms on one file (the cycle and
the API server) see each other's members. Each member is a file `<id>.json` in a directory
beside the state file, written whole to a temporary file and renamed over the old one, so a
reader without any lock sees the previous record or the next, never half of one; a call on a
member locks that member's own `<id>.lock`, so a call costs the same whatever the pool's
size and calls on different members never wait for one another.

A release deletes the lock file while holding it; whoever was waiting for that lock then
holds a lock on a file nobody else can open, so `locked` checks, once it has the lock, that
the path still names the file it locked, and opens it again if not.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from provisioning.runtime.process_control import _read_small

# Logs as the process runtime, the name its records have always carried.
log = logging.getLogger("provisioning.runtime.process_runtime")

# Member ids are `prewarm-<client>-<hex>` (`safe_name_part`): anything else names no file.
_MEMBER_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")


@dataclass
class _Record:
    """One member as persisted in its record file."""

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
    # Declared port (as text: JSON keys) -> endpoint; the first is `endpoint`.
    ports: dict[str, str] = field(default_factory=dict)
    data_dir: str | None = None  # the worker's own writable directory (its database)
    # The call spawning this member's worker ("create", "activate", "shadow"), on record
    # until that call ends: with the member's lock held, a call is under way; free, the
    # call was killed (see `ProcessRuntime._settle`).
    spawning: str | None = None


def records_dir(state_path: Path) -> Path:
    """Where the member records of a state file live (`<state>-members`)."""
    return state_path.with_name(state_path.stem + "-members")


def is_member_id(member_id: str) -> bool:
    """True when `member_id` can name a record file (no path separators, no dot files)."""
    return _MEMBER_ID.fullmatch(member_id) is not None


class MemberLocks:
    """One directory of per-member files, each member with its own lock file `<id><suffix>`.

    The locking half of the member records, shared with the lease book (`leases.py`, whose
    lock file also holds the member's entry)."""

    def __init__(self, directory: Path, suffix: str = ".lock") -> None:
        self.directory = directory
        self.suffix = suffix

    def remove(self, member_id: str) -> None:
        """Delete the member's lock file; only while holding that lock."""
        (self.directory / f"{member_id}{self.suffix}").unlink(missing_ok=True)

    @contextmanager
    def locked(self, member_id: str, *, new: bool = False) -> Iterator[int]:
        """Hold the member's lock, waiting for it; yields the lock file, open for reading and
        writing. `new`: the member is being created, so its lock file must not exist yet."""
        fd = self._acquire(member_id, new=new, wait=True)
        try:
            yield fd
        finally:
            os.close(fd)

    @contextmanager
    def try_locked(self, member_id: str) -> Iterator[bool]:
        """Hold the member's lock if it is free now (True), else yield False at once."""
        try:
            fd = self._acquire(member_id, new=False, wait=False)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            os.close(fd)

    def _acquire(self, member_id: str, *, new: bool, wait: bool) -> int:
        path = self.directory / f"{member_id}{self.suffix}"
        flags = os.O_RDWR | os.O_CREAT | (os.O_EXCL if new else 0)
        while True:
            try:
                fd = os.open(path, flags, 0o644)
            except FileNotFoundError:  # the first member of the directory
                self.directory.mkdir(parents=True, exist_ok=True)
                fd = os.open(path, flags, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
                if _names(path, fd):
                    return fd
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # released (and unlinked) while we waited: lock the current file


class MemberRecords(MemberLocks):
    """The directory of per-member record files and their locks."""

    def read(self, member_id: str) -> _Record | None:
        """The member's record, or None when there is none (or it cannot be read)."""
        return _load(self.directory / f"{member_id}.json")

    def read_all(self, prefix: str = "") -> list[_Record]:
        """Every record whose member id starts with `prefix`, read without any lock."""
        try:
            names = [e.name for e in os.scandir(self.directory) if e.name.startswith(prefix)]
        except FileNotFoundError:
            return []
        paths = (self.directory / name for name in sorted(names) if name.endswith(".json"))
        return [record for record in map(_load, paths) if record is not None]

    def discard(self, member_id: str) -> None:
        """Delete the member's record and its lock file; only while holding that lock."""
        (self.directory / f"{member_id}.json").unlink(missing_ok=True)
        self.remove(member_id)

    def write(self, record: _Record) -> None:
        """Replace the member's record (a reader sees the old one or this one, whole)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{record.id}.json"
        tmp = path.with_name(path.name + ".tmp")  # one writer per member: it holds the lock
        tmp.write_text(json.dumps(asdict(record), indent=1))
        os.replace(tmp, path)


def _names(path: Path, fd: int) -> bool:
    """True when `path` is still the file open as `fd`."""
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _load(path: Path) -> _Record | None:
    try:
        data = _read_small(str(path))
    except FileNotFoundError:  # released since it was listed
        return None
    try:
        return _Record(**json.loads(data))
    except (ValueError, TypeError) as error:
        # Torn by a power loss (records are renamed into place, not synced): skipped, so
        # one bad file never stops a listing; its worker, if any, is a stray to sweep.
        log.warning("skipping unreadable member record %s: %s", path, error)
        return None
