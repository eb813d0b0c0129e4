"""The process runtime's records: one JSON file per member, each guarded by its own flock.

The pool is persisted so that a new ProcessRuntime on the same state file (a restarted
prewarm) finds its workers again, and so that several prewarms on one file (the cycle and
the API server) see each other's members. Each member is a file `<id>.json` in a directory
beside the state file, written whole to a temporary file and renamed over the old one, so a
reader without any lock sees the previous record or the next, never half of one; a call on a
member locks that member's own `<id>.lock` (`member_files.MemberLocks`), so a call costs
the same whatever the pool's size and calls on different members never wait for one another.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from functools import lru_cache
from pathlib import Path

from provisioning.runtime.member_files import MemberLocks, read_small

# Logs as the process runtime, the name its records have always carried.
log = logging.getLogger("provisioning.runtime.process_runtime")


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


# A directory's mtime comes from a coarse clock: a change in the same tick as the one before
# it can leave the mtime as it was. So the names of a directory are kept only if it had not
# changed for longer than the coarsest tick (FAT's 2 s) when they were read (git's "racily
# clean" rule); until then, every listing reads the directory again.
_SETTLED_NS = 3_000_000_000
# Parsed records kept (by the same rule, per file): an activation reads its member's record
# twice (listing, then the call), and parsing one costs more than the rest of the reads.
# At most this many (~1-2 KB each): past it, the ones kept stay and the others are parsed
# on every read. (Dropping all and keeping again as read re-parsed every record of every
# listing once the pool outgrew the bound: 25,000 members at 10,000 clients did.) A whole
# listing forgets the records of released members, so the bound holds the pool as it is.
_MAX_PARSED = 50_000


class _Parsed:
    """One directory's parsed records, shared by every `MemberRecords` of it in this
    process: a cycle opens the runtime anew for its plan and for its apply, and each parsed
    the whole pool again (25,000 records, ~4 s of a 10,000-client cycle). Safe to share: a
    record is used only while its file's (inode, mtime, size) is the one it was read at."""

    def __init__(self) -> None:
        # file name -> ((inode, mtime ns, size) when read, the record parsed)
        self.kept: dict[str, tuple[tuple[int, int, int], _Record]] = {}


@lru_cache(maxsize=8)  # directories (pools) a process keeps; the least recently opened go
def _parsed_of(directory: Path) -> _Parsed:
    """The parsed records this process keeps for `directory` (resolved)."""
    return _Parsed()


@dataclass(frozen=True)
class _Listing:
    """A settled directory's file names, sorted, and the directory they were read from."""

    signature: tuple[int, int]  # (inode, mtime ns), taken before the names were read
    names: list[str]


class MemberRecords(MemberLocks):
    """The directory of per-member record files and their locks."""

    _listing: _Listing | None = None

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self._parsed = _parsed_of(directory.resolve())

    def read(self, member_id: str) -> _Record | None:
        """The member's record, or None when there is none (or it cannot be read)."""
        return self._read(f"{member_id}.json")

    def read_all(self, prefix: str = "") -> list[_Record]:
        """Every record whose member id starts with `prefix`, read without any lock.

        The directory's names are kept until it changes (its mtime): an API activation lists
        its client's records, and reading the whole directory cost ~0.5 us a member of the
        pool (1.6 ms at 2,000 members) for the few of one client."""
        names = [name for name in self._names(prefix) if name.endswith(".json")]
        if not prefix and self._parsed.kept:
            listed = set(names)
            kept = self._parsed.kept
            self._parsed.kept = {n: record for n, record in kept.items() if n in listed}
        return [record for record in map(self._read, names) if record is not None]

    def _read(self, name: str) -> _Record | None:
        """The record in file `name`, parsed again only when the file changed (a copy: the
        caller may change it). A record is written whole to a new file renamed into place,
        so a change is a new (inode, mtime, size); one kept was read at least `_SETTLED_NS`
        after it was written, so a later write cannot share its mtime tick."""
        path = f"{self.directory}/{name}"
        try:
            stat = os.stat(path)
        except FileNotFoundError:  # released since it was listed
            self._parsed.kept.pop(name, None)
            return None
        signature = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        kept = self._parsed.kept.get(name)
        if kept is not None and kept[0] == signature:
            return _copy(kept[1])
        record = _load(path)
        if (
            record is not None
            and time.time_ns() - stat.st_mtime_ns >= _SETTLED_NS
            and (name in self._parsed.kept or len(self._parsed.kept) < _MAX_PARSED)
        ):
            # Read after the stat: at worst newer than its signature, never older.
            self._parsed.kept[name] = (signature, _copy(record))
        return record

    def _names(self, prefix: str) -> list[str]:
        """The directory's file names that start with `prefix`, sorted."""
        try:
            stat = os.stat(self.directory)
            signature = (stat.st_ino, stat.st_mtime_ns)
            listing = self._listing
            if listing is None or listing.signature != signature:
                if time.time_ns() - stat.st_mtime_ns < _SETTLED_NS:
                    # Not kept, so not sorted whole: filtering while reading costs less.
                    return sorted(
                        e.name for e in os.scandir(self.directory) if e.name.startswith(prefix)
                    )
                listing = _Listing(signature, sorted(e.name for e in os.scandir(self.directory)))
                self._listing = listing  # one assignment: safe across threads
        except FileNotFoundError:
            return []
        names = listing.names
        first = end = bisect.bisect_left(names, prefix)
        while end < len(names) and names[end].startswith(prefix):
            end += 1
        return names[first:end]

    def discard(self, member_id: str) -> None:
        """Delete the member's record and its lock file; only while holding that lock."""
        (self.directory / f"{member_id}.json").unlink(missing_ok=True)
        self._parsed.kept.pop(f"{member_id}.json", None)
        self.remove(member_id)

    def write(self, record: _Record) -> None:
        """Replace the member's record (a reader sees the old one or this one, whole)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{record.id}.json"
        tmp = path.with_name(path.name + ".tmp")  # one writer per member: it holds the lock
        tmp.write_text(json.dumps(asdict(record), indent=1))
        os.replace(tmp, path)


def _copy(record: _Record) -> _Record:
    """A record whose dicts (all the mutable parts it has) are its own."""
    return replace(
        record,
        labels=dict(record.labels),
        env=dict(record.env),
        timings_ms=dict(record.timings_ms),
        ports=dict(record.ports),
    )


def _load(path: str) -> _Record | None:
    try:
        data = read_small(path)
    except FileNotFoundError:  # released since it was listed
        return None
    try:
        return _Record(**json.loads(data))
    except (ValueError, TypeError) as error:
        # Torn by a power loss (records are renamed into place, not synced): skipped, so
        # one bad file never stops a listing; its worker, if any, is a stray to sweep.
        log.warning("skipping unreadable member record %s: %s", path, error)
        return None
